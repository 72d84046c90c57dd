"""Told the route in words: can the tiny model answer when it is *told* the route? Separates option matching from
perception. Two probes on the same rows, whose every question starts with the true forward route in words ("You
walked: I walk straight, then pass the red door, ..."; `tell`).

The oracle bench: a copy of a synthetic bench with the route told; the videos are shared (a symlink). A model that
reads its prompt can then answer every question without seeing anything: accuracy at chance on this copy means
the bottleneck is not (only) the video. Train and score on it with the usual scripts (bench/RESULTS.md):

    python bench/probes/oracle.py --bench runs/main/world --out runs/oracle/world
    python train_sft.py --model runs/main/seed0/init --bench runs/oracle/world --steps 150 --out runs/oracle/sft
    python evaluate.py --model runs/oracle/sft/ckpt-00000150/model --bench runs/oracle/world --out runs/oracle/sft.json
    python bench/probes/oracle.py --out runs/oracle/world --check runs/oracle/sft.predictions.jsonl

--check reads the verdict lines that end chain-of-thought replies (`world.verdicts`: "A: red red ok, left right
x: no. ..."), on any bench with `events` (--out names the bench folder; e.g. runs/main/world for the main job's
replies): how often the recalled route's colours and sides are right, the options' are copied, the marks and
verdicts agree, and the letter answered is the "yes" line's. (--per-option, an earlier trial of a verdict per
option, was removed when the bench's own chains of thought got the verdict lines.)

Option matching alone (`match`, the text-only half): how much training does the tiny LM need to pick the option
that equals the route it is told, on rows that are never repeated? Every multiple-choice row of a synthetic world,
route told, is encoded with no video; the model is trained on the cross-entropy over the four letters at the position
after "<answer>" (answer-only, one token), on batches drawn from --n-train fresh worlds (6 rows each; no rendering:
24,000 rows take about half a minute). Held-out accuracy, per task, every --eval-every steps:

    python bench/probes/oracle.py match                                 # the main job's world settings
    python bench/probes/oracle.py match --landmarks 1                   # one landmark per walk
"""
import json
import os
import random
import re
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from st_r1 import chat, cli, data, world  # noqa: E402


@dataclass
class Oracle:
    """Copy a synthetic bench with the true forward route written at the start of every question (`oracle.py match
    --help`: option matching alone, text only)."""
    bench: str = "runs/main/world"  # a folder written by st_r1.world (train.jsonl, test.jsonl, videos/)
    out: str = "runs/oracle/world"
    check: str = ""                 # predictions JSONL on {out}/test.jsonl: read its replies' verdict lines


def tell(row, path):
    """The row with its route told: needs the world's `events` ground truth (the authors' rows have none)."""
    if "events" not in row:
        raise data.DataError(f"{path}:{row['_line']}: no 'events' (not a synthetic-world row): the route is unknown")
    row = {k: v for k, v in row.items() if k != "_line"}
    row["problem"] = "You walked: I " + ", then ".join(row["events"]["forward"]) + ". " + row["problem"]
    return row


def check(bench, predictions):
    """Read the verdict lines of chain-of-thought replies (world.verdicts: "A: red red ok, left right x: no. ..."):
    is the recalled route's key right, are the options' keys copied, do marks and verdicts agree, is the letter
    answered the "yes" line's."""
    from st_r1.predictions import read_predictions  # the scorer's reader: same formats, same errors
    rows = data.load_rows(bench)
    if not os.path.isfile(predictions):
        raise FileNotFoundError(f"{predictions}: no such file")
    replies = read_predictions(predictions, len(rows))

    c = dict.fromkeys(["mc", "four lines", "recall right", "options copied", "marks agree", "verdicts agree",
                       "one yes", "letter = yes line", "right", "right with the recall right"], 0)
    for i, row in enumerate(rows):
        if not row.get("options"):
            continue
        c["mc"] += 1
        text = replies.get(i) or ""
        lines = re.findall(r"([ABCD]): ([a-z ,]+): (yes|no)\.", text)
        if len(lines) != 4:
            continue
        pairs = [[p.split() for p in body.split(", ") if len(p.split()) == 3] for _, body, _ in lines]
        truth = world.project(row["events"]["reverse" if row["reverse"] else "forward"], row["task"])
        recall = [p[1] for p in pairs[0]] == world.key_words(truth)
        m = re.search(r"<answer>\s*([ABCD])", text)
        yes = [L for L, _, v in lines if v == "yes"]
        right = bool(m) and m.group(1) == row["original_answer"]
        c["four lines"] += 1
        c["recall right"] += recall
        c["options copied"] += all([p[0] for p in ps] == world.key_words(world.parse_option(row["options"][L]))
                                   for (L, _, _), ps in zip(lines, pairs))
        c["marks agree"] += all((a == b) == (mark == "ok") for ps in pairs for a, b, mark in ps)
        c["verdicts agree"] += all((v == "yes") == all(p[2] == "ok" for p in ps) for (_, _, v), ps in zip(lines, pairs))
        c["one yes"] += len(yes) == 1
        c["letter = yes line"] += bool(m) and yes == [m.group(1)]
        c["right"] += right
        c["right with the recall right"] += recall and right
    print(", ".join(f"{k}: {v}" for k, v in c.items()))
    return c


def main(o):
    if o.check:
        return check(os.path.join(o.out, "test.jsonl"), o.check)
    os.makedirs(o.out, exist_ok=True)
    videos = os.path.join(o.out, "videos")
    if not os.path.exists(videos):
        os.symlink(os.path.abspath(os.path.join(o.bench, "videos")), videos)
    for name in sorted(os.listdir(o.bench)):
        if name.endswith(".jsonl"):
            path = os.path.join(o.bench, name)
            rows = [tell(r, path) for r in data.load_rows(path)]
            tmp = os.path.join(o.out, name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            os.replace(tmp, os.path.join(o.out, name))
            print(f"{len(rows)} rows -> {os.path.join(o.out, name)}")


# ----------------------------------------------------------------------------------------------- match

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


def told_rows(split, n, cfg):
    """The multiple-choice rows of n worlds of a split, route told, nothing rendered."""
    out = []
    for i in range(n):
        w = world.world_for(cfg.seed, split, i, cfg.route_len or None, cfg.landmarks or None)
        out += [tell(r, split) for r in world.make_rows(w, "", cfg.seed, split, i) if r.get("options")]
    return out


def match(cfg):
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
    train, test = told_rows("train", cfg.n_train, cfg), told_rows("test", cfg.n_test, cfg)
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
    if sys.argv[1:2] == ["match"]:  # python bench/probes/oracle.py match --flags
        match(cli.parse(Match, sys.argv[2:]))
    else:
        main(cli.parse(Oracle))
