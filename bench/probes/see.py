"""Does the tiny model learn to see? A perception probe for the synthetic world, without chat, options or reasoning.

The model reads one video and the question "which colour is the first landmark you pass?", and is trained on the
cross-entropy over the six colour words at the next position (one token each). Held-out accuracy is reported
with the true video and with another row's video: equal numbers mean the answer does not depend on the video.

    python bench/probes/see.py --world data/world                  # a bench written by st_r1.world (its first landmark)
    python bench/probes/see.py --squares 1 --square 28              # control: a coloured 28 px square in 1 of 8 frames

--squares N writes its own control videos (under --out): noisy grey frames with one square of the answer colour
in N of the 8 sampled frames (8: in all of them), so that the same model and loop can be checked on an easy case.
The trained model is saved to {out}/model, so probes chain into a curriculum (bench/RESULTS.md):

    python bench/probes/see.py --squares 8 --square 28 --steps 300 --out runs/see/squares
    python bench/probes/see.py --world W --model runs/see/squares/model --lr 1e-3 --steps 600 --out runs/see/world
"""
import json
import os
import random
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from st_r1 import cli, data, render, world  # noqa: E402

COLOURS = list(render.COLOURS)


@dataclass
class Probe:
    """Train the tiny VideoLM to name the colour of a video's first landmark; held-out accuracy per 100 steps."""
    world: str = ""          # a synthetic bench folder (train.jsonl, test.jsonl, videos/); empty: --squares videos
    squares: int = 1         # control videos: sampled frames (of 8) that show the square
    square: int = 28         # its side in pixels (a merged vision token covers 28 x 28)
    n_train: int = 600
    n_test: int = 120
    out: str = "runs/see"
    model: str = ""          # default: a fresh tiny random Qwen2.5-VL in {out}/init; the result goes to {out}/model
    steps: int = 400
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 0
    threads: int = 2


def square_videos(out, n_train, n_test, shown, side, seed):
    """Control bench: 16-frame noisy grey videos; a square of the label colour in `shown` of the 8 sampled frames."""
    rng = np.random.default_rng(seed)
    sampled = world.sample_positions(16)
    os.makedirs(os.path.join(out, "videos"), exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            c = COLOURS[rng.integers(len(COLOURS))]
            frames = (128 + rng.integers(-30, 30, (16, 112, 112, 3))).astype(np.uint8)
            y, x = rng.integers(0, 113 - side, 2)
            for f in rng.choice(sampled, shown, replace=False):
                frames[f, y:y + side, x:x + side] = render.COLOURS[c]
            rows.append(dict(problem="Which colour is the square?", original_answer=c, video=f"videos/{split}-{i}.mp4",
                             events={"forward": [f"pass the {c} box"]}))
            render.write_mp4(os.path.join(out, rows[-1]["video"]), frames)
        with open(os.path.join(out, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return out


def probe_rows(path, limit):
    """One row per video: (video, index of the first landmark's colour)."""
    out, seen = [], set()
    for row in data.load_rows(path):
        if row["video"] in seen:
            continue
        seen.add(row["video"])
        colours = [e.split()[2] for e in row["events"]["forward"] if e.startswith("pass the ")]
        if colours:
            out.append(dict(problem="Based on this video, which colour is the first landmark you pass?",
                            video=row["video"], y=COLOURS.index(colours[0])))
    return out[:limit]


def main(cfg):
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    from st_r1.model import VideoLM
    from st_r1.tiny import write_tiny_model
    bench = cfg.world or square_videos(os.path.join(cfg.out, "squares"), cfg.n_train, cfg.n_test, cfg.squares,
                                       cfg.square, cfg.seed)
    model_dir = cfg.model or os.path.join(cfg.out, "init")
    if not os.path.exists(os.path.join(model_dir, "model.safetensors")):
        write_tiny_model(model_dir, seed=cfg.seed)
    tok = data.load_tokenizer(model_dir)
    colour_ids = [tok.encode(" " + c) for c in COLOURS]
    if any(len(ids) != 1 for ids in colour_ids):
        raise SystemExit(f"the colour words must be single tokens of {model_dir}'s tokenizer: {colour_ids}")
    colour_ids = [ids[0] for ids in colour_ids]
    model = VideoLM.from_pretrained(model_dir)
    train = probe_rows(os.path.join(bench, "train.jsonl"), cfg.n_train)
    test = probe_rows(os.path.join(bench, "test.jsonl"), cfg.n_test)
    prior = max(sum(r["y"] == k for r in test) for k in range(len(COLOURS))) / len(test)
    print(f"{bench}: {len(train)} train / {len(test)} test videos; majority colour of the test split {prior:.2f}")
    enc = data.PromptEncoder(tok, bench)

    def colour_logits(rows, videos=None):
        ex = [enc.encode(r if videos is None else dict(r, video=v)) for r, v in zip(rows, videos or rows)]
        return model(**data.collate_prompts(ex, tok.pad_token_id), logits_to_keep=1)[:, -1][:, colour_ids]

    def accuracy():
        model.eval()
        right = right_other = 0
        with torch.no_grad():
            for i in range(0, len(test), 32):
                rows = test[i:i + 32]
                y = torch.tensor([r["y"] for r in rows])
                others = [test[(i + j + 7) % len(test)]["video"] for j in range(len(rows))]
                right += (colour_logits(rows).argmax(-1) == y).sum().item()
                right_other += (colour_logits(rows, others).argmax(-1) == y).sum().item()
        model.train()
        return right / len(test), right_other / len(test)

    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95))
    rng, t0, ema = random.Random(cfg.seed), time.time(), None
    for step in range(1, cfg.steps + 1):
        rows = rng.sample(train, cfg.batch_size)
        loss = F.cross_entropy(colour_logits(rows), torch.tensor([r["y"] for r in rows]))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 100 == 0 or step == cfg.steps:
            acc, acc_other = accuracy()
            print(f"step {step:5d}  loss {ema:.3f} (blind: log 6 = 1.792)  held-out accuracy {acc:.3f}, "
                  f"with another video {acc_other:.3f}  ({time.time() - t0:.0f} s)", flush=True)
    model.save_pretrained(os.path.join(cfg.out, "model"))  # so that a later probe can start from it (--model)
    tok.save_pretrained(os.path.join(cfg.out, "model"))


if __name__ == "__main__":
    main(cli.parse(Probe))
