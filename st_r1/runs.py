"""A run folder (--out) and the integrity of its checkpoints.

One run per folder, a log that matches the resumed weights, and a sha256 per checkpoint file so that flipped bytes
are found at load time and not as a NaN loss later."""
import dataclasses
import hashlib
import json
import os

from st_r1.cli import UserError

RUN_FILES = ("latest", "log.jsonl", "config.json")


class CheckpointError(UserError):
    """A checkpoint that cannot be used as it is on disk (corrupt, truncated, edited)."""


def refuse_mixing(out, resume):
    """A fresh run (no --resume) in a folder that holds an earlier run would point `latest` at the new run, append
    to the old log and overwrite config.json: refuse, before any model is loaded."""
    if resume or not os.path.isdir(out):
        return
    found = sorted(n for n in os.listdir(out) if n in RUN_FILES or n.startswith("ckpt-"))
    if found:
        raise UserError(f"--out {out} holds an earlier run ({', '.join(found[:4])}): continue it with --resume, or "
                        f"give a fresh --out")


def resume_changes(out, cfg):
    """On --resume: 'flag: old -> new' for each flag that differs from the run's config.json (steps, and the flags
    that only say where to resume, aside). A resumed run with a forgotten flag silently trains something else."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    new = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    skip = {"out", "resume", "resume_from", "steps"} | ({"model"} if not new.get("model") else set())
    return [f"--{k.replace('_', '-')}: {old[k]!r} -> {v!r}" for k, v in new.items()
            if k not in skip and k in old and old[k] != v]


def trim_log(out, step):
    """Drop the log records of steps after `step`, the one resumed from: they are redone, and logged again.
    Rewritten atomically; a last line cut by a kill is dropped with them."""
    path = os.path.join(out, "log.jsonl")
    if not os.path.exists(path):
        return 0
    keep, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                ok = json.loads(line).get("step", 0) <= step
            except (ValueError, AttributeError):
                ok = False
            keep.append(line) if ok else None
            dropped += not ok
    if dropped:
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)
    return dropped


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def files_sha256(paths):
    """sha256 over the files' own digests, in order (1 GB/s: seconds even for a 7B checkpoint)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(bytes.fromhex(_sha256(path)))
    return h.hexdigest()


def hash_files(ckpt):
    """{relative path: sha256} of every file of a checkpoint folder except meta.json (which holds them)."""
    out = {}
    for root, _, files in os.walk(ckpt):
        for name in sorted(files):
            rel = os.path.relpath(os.path.join(root, name), ckpt)
            if rel != "meta.json":
                out[rel] = _sha256(os.path.join(root, name))
    return dict(sorted(out.items()))


def verify(ckpt):
    """Check every file of a checkpoint against the sha256 in its meta.json; raise CheckpointError naming the first
    that differs. Checkpoints written before hashes were kept pass unchecked."""
    try:
        with open(os.path.join(ckpt, "meta.json")) as f:
            want = json.load(f).get("files")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt}/meta.json: unreadable ({e})") from None
    for rel, sha in (want or {}).items():
        path = os.path.join(ckpt, rel)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing from the checkpoint")
        if _sha256(path) != sha:
            raise CheckpointError(f"{path}: corrupt (its sha256 differs from the one saved with it)")


def offer_previous(older):
    """What to say after a bad checkpoint: the newest of the `older` ones that verifies, to resume from."""
    for ckpt in reversed(older):
        try:
            verify(ckpt)
        except CheckpointError:
            continue
        return f"; the previous checkpoint is intact: --resume-from {ckpt}"
    return "; no intact earlier checkpoint is kept: start again with a fresh --out"
