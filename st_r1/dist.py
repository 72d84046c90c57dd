"""Running under torchrun or plain python: set-up, seeding, collectives, DDP / FSDP2 wrapping.

Use (the same code runs under `python x.py` and `torchrun --nproc_per_node=N x.py`):
    with distributed() as d:
        seed_everything(seed)                                  # same initial weights everywhere
        model = wrap_model(model, "fsdp", ("DecoderLayer", "VisionBlock"))
        opt = AdamW(...); sched = training.cosine_schedule(opt, warmup, total)
        seed_everything(seed, d.rank)                          # per-rank dropout / sampling
        extra = checkpoint.load_checkpoint(run_dir, model, opt, sched)    # None on a fresh run
        ... with no_sync(model, micro < accum - 1): loss.backward() ...
        checkpoint.save_checkpoint(run_dir, step, model, opt, sched, {"step": step, "data_pos": i})
"""
import contextlib
import os
import random
import sys
import traceback
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP


# ---------------------------------------------------------------- set-up

@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    is_main: bool = True


_D = Dist()  # the current process's view, set by setup(); module functions read it


def current():
    """This process's Dist (rank, world size, device, is_main), as setup() left it."""
    return _D


def setup(backend=None, timeout_s=1800):
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent: one process, no process group)."""
    global _D
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), timeout=timedelta(seconds=timeout_s),
                                device_id=device if cuda else None)
    _D = Dist(rank, world, local, device, rank == 0)
    return _D


def shutdown():
    """The last call of a run. Multi-process: every rank arrives (none tears the group down while rank 0 still
    writes its files), the group is destroyed, and the process ENDS here with os._exit(0), stdio flushed.
    Why not return into Python's teardown: gloo's worker threads may still be releasing the last collectives'
    tensors, which needs the GIL; once teardown has begun Python ends such a thread, inside a C++ destructor,
    and that is std::terminate ("terminate called without an active exception", SIGABRT) although every
    file was written. Seen with gdb in 2 of 150 two-process FSDP runs here, and in CI (RESULTS: dist teardown)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@contextlib.contextmanager
def distributed(backend=None):
    """`with distributed() as d: main(d)`. On an exception in a multi-process run we print the traceback
    and os._exit(1) instead of destroying the group: destroy_process_group (NCCL) can itself block while a
    peer waits in a collective, whereas a dead process makes gloo/NCCL peers error out and torchrun kills
    the remaining ranks when one exits non-zero. So no rank stays hung."""
    d = setup(backend)
    try:
        yield d
    except BaseException as e:
        if d.world_size == 1 or isinstance(e, SystemExit) and not e.code:
            raise
        sys.stderr.write(f"[rank {d.rank}] fatal error, aborting:\n{traceback.format_exc()}")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
    shutdown()


def seed_everything(seed, rank=0):
    """Seed python, numpy and torch with seed + rank: ranks draw different dropout masks and samples.
    (Weights still start equal: wrap_model broadcasts rank 0's.)"""
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def log(*msg):
    if _D.is_main:
        print(*msg, flush=True)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def _all_reduce(x, op):
    if not dist.is_initialized():
        return x
    dev = _D.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.as_tensor(x, dtype=torch.float64 if not torch.is_tensor(x) else None).to(dev).clone()
    dist.all_reduce(t, op=op)
    return t.item() if not torch.is_tensor(x) else t.to(x.device)


def all_reduce_mean(x):
    """Mean over ranks of a float or tensor (returns the same kind; a no-op with one process)."""
    return _all_reduce(x, dist.ReduceOp.SUM) / _D.world_size if dist.is_initialized() else x


def all_reduce_max(x):
    """Max over ranks, e.g. of micro-batch counts that every rank must match with its own passes."""
    return _all_reduce(x, dist.ReduceOp.MAX)


def all_reduce_sum(x):
    """Sum over ranks, e.g. of answer-token counts. DDP and FSDP2 AVERAGE gradients over ranks, so a loss
    that is a mean over the global batch's tokens is: local_sum / all_reduce_sum(local_count) * world_size."""
    return _all_reduce(x, dist.ReduceOp.SUM)


# ---------------------------------------------------------------- wrapping

def _is_block(module, block_types):
    return any(isinstance(module, t) if isinstance(t, type) else type(module).__name__ == t for t in block_types)


@torch.no_grad()
def _broadcast_from_rank0(model):
    for t in list(model.parameters()) + list(model.buffers()):
        buf = t.data.to(_D.device)  # NCCL only talks to GPU tensors: go through the device one tensor at a time
        dist.broadcast(buf, src=0)
        if buf is not t.data:
            t.data.copy_(buf)


def wrap_model(model, mode="none", block_types=(), find_unused_parameters=False, mp_policy=None):
    """Move to this rank's device and wrap for data parallel training.
    mode "none": as is. "ddp": torch DDP (bucketed all-reduce overlapping backward, averages gradients;
    we use it rather than a hand-written all-reduce because it overlaps communication with backward
    and handles parameter broadcast, and FSDP2 below is the hand-readable path anyway).
    "fsdp": FSDP2 fully_shard, one unit per module whose class (or class name) is in block_types, then the
    root; parameters become DTensors sharded on dim 0 across ranks. mp_policy: FSDP2's MixedPrecisionPolicy
    (precision.fsdp_policy: bf16 compute and all-gather, fp32 gradient reduction), else fully_shard's default.
    With one process every mode returns the plain model, so `python train.py --dist fsdp` still runs."""
    if mode not in ("none", "ddp", "fsdp"):
        raise ValueError(f"wrap_model: mode must be 'none', 'ddp' or 'fsdp', got {mode!r}")
    if mode == "none" or _D.world_size == 1:
        return model.to(_D.device)
    if mode == "ddp":
        return DDP(model.to(_D.device), device_ids=[_D.device.index] if _D.device.type == "cuda" else None,
                   find_unused_parameters=find_unused_parameters)
    # Each rank keeps its own slice of ITS OWN full tensor, so ranks must start equal: broadcast first.
    # The model may still be on the CPU: fully_shard moves only this rank's shards to the device.
    _broadcast_from_rank0(model)
    blocks = [m for m in model.modules() if _is_block(m, block_types)]
    if not blocks:
        raise ValueError(f"wrap_model: no module of types {block_types} in {type(model).__name__}")
    kw = {} if mp_policy is None else {"mp_policy": mp_policy}
    for m in blocks:
        fully_shard(m, **kw)
    fully_shard(model, **kw)
    return model


def unwrap(model):
    """The user's module (DDP's .module; FSDP2 shards in place, so the model itself)."""
    return model.module if isinstance(model, DDP) else model


@contextlib.contextmanager
def no_sync(model, enabled=True):
    """Skip the gradient all-reduce / reduce-scatter for accumulation micro-steps (all but the last)."""
    if not enabled or _D.world_size == 1:
        yield
    elif isinstance(model, DDP):
        with model.no_sync():
            yield
    elif isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
