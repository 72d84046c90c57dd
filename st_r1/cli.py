"""A script's options: one dataclass, every field a --flag (underscores become dashes)."""
import argparse
import dataclasses
import sys


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
