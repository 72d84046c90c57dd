"""A script's options: one dataclass, every field a --flag (underscores become dashes); user errors as one line."""
import argparse
import dataclasses
import os
import sys


class UserError(Exception):
    """Something the user can fix (a flag, a row, a file): the scripts print the message alone and exit 2."""


# Caught at the top of a script. Anything else is a bug and keeps its traceback.
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def parse(cls, argv=None):
    p = argparse.ArgumentParser(description=(cls.__doc__ or "").strip())
    for f in dataclasses.fields(cls):
        name = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.type in (bool, "bool"):
            p.add_argument(name, action=argparse.BooleanOptionalAction, default=default)
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            p.add_argument(name, type=typ, default=default, help=f"(default: {default!r})")
    return cls(**vars(p.parse_args(sys.argv[1:] if argv is None else argv)))


def run(main, cls, argv=None):
    """`python x.py --flags`: parse, run main(cfg); a user error prints `error: message` and exits 2."""
    cfg = parse(cls, argv)
    try:
        return main(cfg)
    except USER_ERRORS as e:
        world = int(os.environ.get("WORLD_SIZE", 1))
        prefix = f"[rank {os.environ.get('RANK', 0)}] " if world > 1 else ""
        sys.stdout.flush()
        sys.stderr.write(f"{prefix}error: {e}\n")
        sys.stderr.flush()
        if world > 1:
            os._exit(2)  # no clean-up: destroying the group can block while a peer waits in a collective
        sys.exit(2)


def check(ok, flag, why):
    """Refuse a flag value at start, naming the flag (a bad value must not surface as a crash steps later)."""
    if not ok:
        raise UserError(f"--{flag.replace('_', '-')} {why}")
