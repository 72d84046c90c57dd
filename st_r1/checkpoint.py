"""Checkpoints: atomic safetensors saves of model, optimizer, scheduler and RNG state, verified loads, resume.

Layout, run_dir/ckpt-{step:08d}/ (no pickle anywhere: safetensors + JSON only):
  model/                 the model in Hugging Face layout (save_pretrained), LoRA adapters merged in
  lora.safetensors       only with LoRA: adapters A, B and the unmerged base weights, for exact resume
  optimizer.safetensors  optimizer tensors, keyed "<param fqn>/<state name>"
  optimizer.json         param_groups (params named by fqn) and non-tensor state
  scheduler.json, extra.json (caller's dict: data position, metrics), meta.json (step, world size, and a sha256
  of every other file, checked by load_checkpoint: a flipped byte is named, not trained on)
  rng-rank{r}.safetensors / .json   torch (CPU, CUDA) and python / numpy RNG of every rank
The directory is built as run_dir/.tmp-ckpt-*, renamed into place, then run_dir/latest is replaced. Every rank calls
save_checkpoint and load_checkpoint (FSDP2's gathers are collective); rank 0 writes. crash_point lets the tests kill
a save at each of its phases.

    extra = load_checkpoint(run_dir, model, opt, sched)    # None on a fresh run
    ...
    save_checkpoint(run_dir, step, model, opt, sched, {"step": step, "data_pos": i})
"""
import json
import os
import random
import re
import shutil

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule

from st_r1 import runs
from st_r1.dist import barrier, current, log, unwrap
from st_r1.lora import split_state_dict


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dict(model):
    """The full (unsharded) model state on CPU, on rank 0; {} on the other ranks.
    Collective under FSDP2 (every rank must call it): DTensor shards are all-gathered."""
    if isinstance(model, FSDPModule):
        return get_model_state_dict(model, options=_FULL)  # cpu_offload: only rank 0 keeps the result
    if not current().is_main:
        return {}
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def _plain_class(model):
    return next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def _save_model(model, sd, path, lora):
    m = unwrap(model)
    if not hasattr(m, "save_pretrained"):
        os.makedirs(path)
        save_file(_owned(sd), os.path.join(path, "model.safetensors"))
    elif not lora and not isinstance(m, FSDPModule):
        m.save_pretrained(path)
    else:
        # Sharded or adapted model: build a weightless twin on the meta device, give it the full
        # (merged) tensors, and let it write itself.
        twin = _plain_class(m).from_config(m.config, device="meta")
        twin.load_state_dict(sd, assign=True)
        twin.save_pretrained(path)


def _load_model_sd(model, path):
    m = unwrap(model)
    cls = _plain_class(m)
    if hasattr(cls, "from_pretrained") and os.path.isfile(os.path.join(path, "config.json")):
        # fp32 master weights load as fp32 even when config.json names the bf16 the run started from
        fp32 = any(p.dtype == torch.float32 for p in m.parameters())
        return cls.from_pretrained(path, dtype=torch.float32 if fp32 else None).state_dict()
    return load_file(os.path.join(path, "model.safetensors"))


def _owned(sd):
    """safetensors refuses tensors that share storage (tied weights): give each its own contiguous copy."""
    seen, out = set(), {}
    for k, v in sd.items():
        v = v.detach().cpu().contiguous()
        out[k] = v.clone() if v.untyped_storage().data_ptr() in seen else v
        seen.add(v.untyped_storage().data_ptr())
    return out


# ---------------------------------------------------------------- optimizer state <-> safetensors + JSON

def _optim_to_files(osd, path):
    tensors, scalars = {}, {}
    for fqn, st in osd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{fqn}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(fqn, {})[k] = v
    save_file(tensors, os.path.join(path, "optimizer.safetensors"))
    _write_json(os.path.join(path, "optimizer.json"), {"param_groups": osd["param_groups"], "scalars": scalars})


def _optim_from_files(path):
    tensors = load_file(os.path.join(path, "optimizer.safetensors"))
    meta = _read_json(os.path.join(path, "optimizer.json"))
    state = {fqn: dict(v) for fqn, v in meta["scalars"].items()}
    for key, t in tensors.items():
        fqn, _, k = key.rpartition("/")
        state.setdefault(fqn, {})[k] = t
    groups = meta["param_groups"]
    for g in groups:  # JSON turned tuples into lists
        g.update({k: tuple(v) for k, v in g.items() if k != "params" and isinstance(v, list)})
    return {"state": state, "param_groups": groups}


# ---------------------------------------------------------------- RNG

def _save_rng(path, rank):
    t = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        t["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    save_file(t, os.path.join(path, f"rng-rank{rank}.safetensors"))
    v, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    _write_json(os.path.join(path, f"rng-rank{rank}.json"),
                {"python": [v, list(state), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]})


def _load_rng(path, rank):
    f = os.path.join(path, f"rng-rank{rank}.safetensors")
    if not os.path.isfile(f):
        log(f"{path}: no RNG state for rank {rank} (world size changed?); RNG not restored")
        return
    t = load_file(f)
    torch.set_rng_state(t["torch"])
    if "cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(t["cuda"]))
    j = _read_json(os.path.join(path, f"rng-rank{rank}.json"))
    v, state, gauss = j["python"]
    random.setstate((v, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = j["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# ---------------------------------------------------------------- checkpoints

def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: bad JSON: {e.msg}") from None


def crash_point(where, step):
    """Test hook: ST_R1_CKPT_CRASH=<where>:<step> kills the process there (a save's phase, or "step": after a
    training step), the way a pre-empted job dies: no clean-up, no final save."""
    if os.environ.get("ST_R1_CKPT_CRASH") == f"{where}:{step}":
        os._exit(17)


_CKPT = re.compile(r"^ckpt-(\d{8,})$")


def list_checkpoints(run_dir):
    """Complete checkpoints (only renamed-into-place directories carry the name), oldest first."""
    if not os.path.isdir(run_dir):
        return []
    steps = sorted((int(m.group(1)), n) for n in os.listdir(run_dir) if (m := _CKPT.match(n)))
    return [os.path.join(run_dir, n) for _, n in steps]


def latest_model(run_dir):
    """The model folder of the latest checkpoint of a run (what --model of the next stage takes), or None."""
    ckpt = latest_checkpoint(run_dir)
    return os.path.join(ckpt, "model") if ckpt else None


def latest_checkpoint(run_dir):
    """The directory named by run_dir/latest, else the newest complete ckpt-*, else None."""
    try:
        with open(os.path.join(run_dir, "latest")) as f:
            path = os.path.join(run_dir, f.read().strip())
        if _CKPT.match(os.path.basename(path)) and os.path.isdir(path):
            return path
    except FileNotFoundError:
        pass
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def save_checkpoint(run_dir, step, model, optimizer, scheduler=None, extra=None, keep=2, tokenizer=None,
                    keep_every=0):
    """Write run_dir/ckpt-{step:08d} atomically (all ranks must call: FSDP2 gathers are collective).
    Only rank 0 writes, except each rank's RNG file. keep: newest checkpoints kept (None: all); keep_every > 0
    also keeps those whose step is a multiple of it.
    With `tokenizer`, model/ is a complete Hugging Face folder that evaluate.py or transformers can load."""
    d, name = current(), f"ckpt-{step:08d}"
    final, tmp = os.path.join(run_dir, name), os.path.join(run_dir, f".tmp-{name}")
    sd = full_state_dict(model)
    osd = get_optimizer_state_dict(model, optimizer, options=_FULL) if optimizer is not None else None
    if d.is_main:
        os.makedirs(run_dir, exist_ok=True)
        for n in os.listdir(run_dir):  # leftovers of a save that was killed
            if n.startswith(".tmp-"):
                shutil.rmtree(os.path.join(run_dir, n), ignore_errors=True)
        os.makedirs(tmp)
    barrier()
    _save_rng(tmp, d.rank)
    if d.is_main:
        merged, lora = split_state_dict(unwrap(model), sd)
        _save_model(model, merged, os.path.join(tmp, "model"), lora)
        if tokenizer is not None:
            tokenizer.save_pretrained(os.path.join(tmp, "model"))
        if lora:
            save_file(_owned(lora), os.path.join(tmp, "lora.safetensors"))
        crash_point("model", step)
        if osd is not None:
            _optim_to_files(osd, tmp)
        crash_point("optimizer", step)
        if scheduler is not None:
            _write_json(os.path.join(tmp, "scheduler.json"), scheduler.state_dict())
        _write_json(os.path.join(tmp, "extra.json"), extra or {})
    barrier()  # every rank's RNG file is in tmp
    if d.is_main:
        # a sha256 per file, checked on load: bytes flipped inside tensor data load silently otherwise
        _write_json(os.path.join(tmp, "meta.json"), {"step": step, "world_size": d.world_size,
                                                     "files": runs.hash_files(tmp)})
        old = None
        if os.path.isdir(final):  # re-saving a step after a resume: move the old one aside first
            old = os.path.join(run_dir, f".tmp-old-{name}")
            os.replace(final, old)
        os.replace(tmp, final)
        crash_point("rename", step)
        with open(os.path.join(run_dir, "latest.tmp"), "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(os.path.join(run_dir, "latest.tmp"), os.path.join(run_dir, "latest"))
        if old:
            shutil.rmtree(old, ignore_errors=True)
        if keep:
            for p in list_checkpoints(run_dir)[:-keep]:
                if p != final and not (keep_every and int(os.path.basename(p).split("-")[1]) % keep_every == 0):
                    shutil.rmtree(p, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(run_dir, model, optimizer=None, scheduler=None, path=None):
    """Restore the latest complete checkpoint of run_dir (or `path`) into the (wrapped) model, optimizer,
    scheduler and this rank's RNG. Returns its `extra` dict, or None if there is no checkpoint."""
    path = path or latest_checkpoint(run_dir)
    if path is None:
        return None
    if not os.path.isdir(path):
        raise runs.CheckpointError(f"{path}: no such checkpoint folder")
    older = [c for c in list_checkpoints(os.path.dirname(os.path.abspath(path)))
             if os.path.basename(c) < os.path.basename(path)]
    try:
        runs.verify(path)
        sd = _load_model_sd(model, os.path.join(path, "model"))
        lora_file = os.path.join(path, "lora.safetensors")
        if os.path.isfile(lora_file):
            sd.update(load_file(lora_file))
    except runs.CheckpointError as e:
        raise runs.CheckpointError(f"{e}" + runs.offer_previous(older)) from None
    except (OSError, ValueError) as e:  # SafetensorError is not one: see below
        raise runs.CheckpointError(f"{path}: cannot be loaded ({e})" + runs.offer_previous(older)) from None
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        raise runs.CheckpointError(f"{path}: a safetensors file cannot be read ({e})"
                                   + runs.offer_previous(older)) from None
    if isinstance(model, FSDPModule):
        # every rank holds the full state; each copies its own shard out of it
        set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True))
    else:
        m = unwrap(model)
        tied = {k for k in m.state_dict() if k not in sd}  # e.g. lm_head tied to the embedding
        missing, unexpected = m.load_state_dict(sd, strict=False)
        if set(missing) - tied or unexpected:
            raise KeyError(f"{path}: checkpoint does not match the model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    if optimizer is not None:
        osd = _optim_from_files(path)
        live = set(optimizer.param_groups[0])  # e.g. no "initial_lr" when no scheduler was made this time
        osd["param_groups"] = [{k: v for k, v in g.items() if k in live} for g in osd["param_groups"]]
        # strict=False: a parameter that has had no gradient yet (the vision tower in a text-only stage of
        # bench/pretrain_base.py) has no AdamW state. The loader gives it one from a zero-gradient step (step 1);
        # we drop that, so it starts as it would have without the stop. The model was matched strictly above.
        params = dict(unwrap(model).named_parameters())
        unknown = sorted(set(osd["state"]) - set(params))
        if unknown:  # what strict=False would skip silently: a state saved for a parameter this model lacks
            raise KeyError(f"{path}: optimizer state for parameters the model does not have: {unknown[:3]}")
        set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True, strict=False))
        for name, p in params.items():
            if name not in osd["state"]:
                optimizer.state.pop(p, None)
    if scheduler is not None:
        scheduler.load_state_dict(_read_json(os.path.join(path, "scheduler.json")))
    _load_rng(path, current().rank)
    barrier()
    return _read_json(os.path.join(path, "extra.json"))
