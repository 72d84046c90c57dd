"""Option matching without video: how much training does the tiny LM need to pick the option that equals a route
it is told? The text-only half of bench/probes/oracle.py, on rows that are never repeated.

Every multiple-choice row of a synthetic world, with the true forward route told at the start (bench/probes/oracle.py's
`tell`), is encoded with no video; the model is trained on the cross-entropy over the four letters at the
position after "<answer>" (answer-only, one token), on batches drawn from --n-train fresh worlds (6 rows each;
no rendering: 24,000 rows take about half a minute). Held-out accuracy, per task, every --eval-every steps:

    python bench/probes/match.py                                        # the main job's world settings
    python bench/probes/match.py --landmarks 1                          # one landmark per walk
"""
import json
import os
import random
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from bench.probes.oracle import tell  # noqa: E402
from st_r1 import chat, cli, data, world  # noqa: E402


@dataclass
class Match:
    """Train the tiny LM to name the option that equals a told route (text only); held-out accuracy per task."""
    model: str = ""          # default: a fresh tiny random Qwen2.5-VL in {out}/init
    out: str = "runs/match"
    n_train: int = 4000      # worlds (6 multiple-choice rows each)
    n_test: int = 100
    route_len: int = 0       # 0: the world's default (3 straight segments)
    landmarks: int = 0       # 0: the world's default
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    rope_theta: float = 0.0  # > 0: override the model's RoPE base (no weights depend on it)
    eval_every: int = 100
    seed: int = 0
    threads: int = 1


def rows(split, n, cfg):
    out = []
    for i in range(n):
        w = world.world_for(cfg.seed, split, i, cfg.route_len or None, cfg.landmarks or None)
        out += [tell(r, split) for r in world.make_rows(w, "", cfg.seed, split, i) if r.get("options")]
    return out


def main(cfg):
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    from st_r1.model import VideoLM
    from st_r1.tiny import write_tiny_model
    model_dir = cfg.model or os.path.join(cfg.out, "init")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        write_tiny_model(model_dir, seed=cfg.seed)
    tok = data.load_tokenizer(model_dir)
    model = VideoLM.from_pretrained(model_dir)
    if cfg.rope_theta:
        model.rope_theta = cfg.rope_theta
    letters = [tok.convert_tokens_to_ids(k) for k in "ABCD"]
    head = tok.encode("<answer>", add_special_tokens=False)
    train, test = rows("train", cfg.n_train, cfg), rows("test", cfg.n_test, cfg)
    print(f"{len(train)} train / {len(test)} held-out rows (text only, route told)")

    def letter_logits(batch):
        ids = [chat.prompt_ids(tok, r["problem"]) + head for r in batch]
        L = max(map(len, ids))  # left padding: the last position of every row is where its letter goes
        x = torch.tensor([[tok.pad_token_id] * (L - len(i)) + i for i in ids])
        mask = torch.tensor([[0] * (L - len(i)) + [1] * len(i) for i in ids])
        return model(x, attention_mask=mask, logits_to_keep=1)[:, -1, letters]

    def target(batch):
        return torch.tensor(["ABCD".index(r["original_answer"]) for r in batch])

    def accuracy():
        model.eval()
        right = {}
        with torch.no_grad():
            for i in range(0, len(test), 64):
                batch = test[i:i + 64]
                for r, ok in zip(batch, (letter_logits(batch).argmax(-1) == target(batch)).tolist()):
                    right.setdefault(r["task"], []).append(ok)
        model.train()
        per_task = {k: sum(v) / len(v) for k, v in right.items()}
        return sum(map(sum, right.values())) / len(test), per_task

    os.makedirs(cfg.out, exist_ok=True)
    log = open(os.path.join(cfg.out, "log.jsonl"), "a")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50))
    rng, t0, ema = random.Random(cfg.seed), time.time(), None
    for step in range(1, cfg.steps + 1):
        batch = rng.sample(train, cfg.batch_size)
        loss = F.cross_entropy(letter_logits(batch), target(batch))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        warmup.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc, per_task = accuracy()
            log.write(json.dumps(dict(step=step, loss=ema, accuracy=acc, **per_task)) + "\n")
            log.flush()
            tasks = " ".join(f"{k} {v:.2f}" for k, v in per_task.items())
            print(f"step {step:5d}  loss {ema:.3f} (chance: log 4 = 1.386)  held-out accuracy {acc:.3f} ({tasks})"
                  f"  ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main(cli.parse(Match))
