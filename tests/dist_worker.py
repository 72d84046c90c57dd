"""A toy language model trained for a few steps; run by tests/test_dist.py under torchrun or plain python.

    python -m torch.distributed.run --nproc_per_node=2 tests/dist_worker.py --mode fsdp --out DIR ...

Rank 0 writes DIR/losses.json and DIR/final.safetensors (the full state dict at the end)."""
import argparse
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from st_r1 import checkpoint as C  # noqa: E402
from st_r1 import dist as D  # noqa: E402
from st_r1 import training  # noqa: E402
from st_r1.lora import apply_lora  # noqa: E402


class Block(nn.Module):
    def __init__(self, dim, dropout):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.q_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        h = self.norm(x)
        x = x + self.drop(self.o_proj(torch.tanh(self.q_proj(h)) * self.v_proj(h)))
        return x + self.fc2(F.gelu(self.fc1(x)))


class ToyLM(nn.Module):
    """Shaped like VideoLM where checkpoint.py cares: config dict, from_config / save_pretrained /
    from_pretrained, an on-disk naming different from the in-memory one, tied output layer."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        v, d = config["vocab"], config["dim"]
        self.embed = nn.Embedding(v, d)
        self.blocks = nn.ModuleList(Block(d, config.get("dropout", 0.0)) for _ in range(config["n_blocks"]))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, v, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        x = self.embed(ids)
        for b in self.blocks:
            x = b(x)
        return self.head(self.norm(x))

    @classmethod
    def from_config(cls, config, dtype=None, device=None):
        with torch.device(device or "cpu"):
            return cls(config)

    def save_pretrained(self, path):
        os.makedirs(path, exist_ok=True)
        sd = {k.replace("blocks.", "model.layers."): v.contiguous() for k, v in self.state_dict().items()
              if k != "head.weight"}
        save_file(sd, os.path.join(path, "model.safetensors"))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(self.config, f)

    @classmethod
    def from_pretrained(cls, path, dtype=None, device=None):
        with open(os.path.join(path, "config.json")) as f:
            model = cls(json.load(f))
        sd = {k.replace("model.layers.", "blocks."): v for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
        model.load_state_dict(sd, strict=False)  # head.weight is tied
        return model


def batch(step, args, rank, world):
    """Global batch for `step`, this rank's slice. --data step: a function of the step only, so one
    process and N processes see the same global batch; --data rng: drawn from torch's global RNG."""
    n = args.batch // world
    if args.data == "step":
        g = torch.Generator().manual_seed(1000 + step)
        ids = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)[rank * n:(rank + 1) * n]
    else:
        ids = torch.randint(0, args.vocab, (n, args.seq + 1))
    return ids[:, :-1], ids[:, 1:]


def _proc_status_mb(key):
    """VmRSS / VmHWM of this process in MiB. Run with MALLOC_MMAP_THRESHOLD_=65536 so that freed tensors
    go back to the OS and RSS follows live memory."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def local_bytes(tensors):
    t = [getattr(x, "_local_tensor", x) for x in tensors]
    return sum(x.numel() * x.element_size() for x in t)


def train(args, d):
    D.seed_everything(0)  # same initial weights on every rank (wrap_model broadcasts them anyway)
    cfg = dict(vocab=args.vocab, dim=args.dim, n_blocks=args.blocks, dropout=args.dropout)
    model = ToyLM.from_config(cfg)
    if args.lora:
        apply_lora(model, r=4, alpha=8, targets=("q_proj", "v_proj"))
    model = D.wrap_model(model, args.mode, (Block,))
    params = [p for p in model.parameters() if p.requires_grad]
    rss0 = _proc_status_mb("VmRSS")
    try:  # reset the peak-RSS mark (Linux >= 4.0), so VmHWM below is the peak of the training steps
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    sched = training.cosine_schedule(opt, 2, args.steps)
    D.seed_everything(args.seed, d.rank)
    start, losses = 0, []
    if args.resume:
        extra = C.load_checkpoint(args.run_dir, model, opt, sched)
        if extra is not None:
            start, losses = extra["step"], extra["losses"]
    for step in range(start, args.steps):
        if step == args.die_at:
            os._exit(3)  # a kill between checkpoints
        if step == args.fail_step and d.rank == args.fail_rank:
            raise RuntimeError(f"injected failure on rank {d.rank} at step {step}")
        x, y = batch(step, args, d.rank, d.world_size)
        total = 0.0
        for i, (xm, ym) in enumerate(zip(x.chunk(args.accum), y.chunk(args.accum))):
            with D.no_sync(model, i < args.accum - 1):
                loss = F.cross_entropy(model(xm).flatten(0, 1), ym.flatten()) / args.accum
                loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(D.all_reduce_mean(total))
        if args.save_every and (step + 1) % args.save_every == 0:
            C.save_checkpoint(args.run_dir, step + 1, model, opt, sched, {"step": step + 1, "losses": losses})
    mem = dict(rank=d.rank, rss_after_wrap_mb=rss0, peak_rss_train_mb=_proc_status_mb("VmHWM"),
               params_mb=local_bytes(model.parameters()) / 2**20,
               grads_mb=local_bytes(p.grad for p in params if p.grad is not None) / 2**20,
               optim_mb=local_bytes(t for s in opt.state.values() for t in s.values()
                                    if torch.is_tensor(t) and t.dim() > 0) / 2**20)
    return model, losses, mem


def parse(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="none")
    ap.add_argument("--out", default=None)
    ap.add_argument("--run-dir", default=None)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--accum", type=int, default=1)
    ap.add_argument("--seq", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=32)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--data", default="step", choices=["step", "rng"])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--die-at", type=int, default=-1)
    ap.add_argument("--fail-rank", type=int, default=-1)
    ap.add_argument("--fail-step", type=int, default=-1)
    return ap.parse_args(argv)


def main():
    args = parse()
    with D.distributed() as d:
        torch.set_num_threads(1)
        model, losses, mem = train(args, d)
        sd = C.full_state_dict(model)
        print(json.dumps(mem), flush=True)
        if d.is_main and args.out:
            os.makedirs(args.out, exist_ok=True)
            save_file(C._owned(sd), os.path.join(args.out, "final.safetensors"))
            with open(os.path.join(args.out, "losses.json"), "w") as f:
                json.dump(losses, f)
    # multi-process runs never get here: dist.shutdown() ends the process (os._exit) past gloo's teardown race
    print("returned from distributed()", flush=True)


if __name__ == "__main__":
    main()
