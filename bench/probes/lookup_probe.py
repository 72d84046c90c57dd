"""Does a model read an option's letter off a word it is told? Teacher-forced: the prompt and the target up to
"word:" are given, and the probe checks which of " A".." D" the model ranks first (chance 25%).

    python bench/probes/lookup_probe.py MODEL_DIR                       # by vocabulary, and on stage 4's lookup rows
    python bench/probes/lookup_probe.py MODEL_DIR --bench ROWS.jsonl    # rows whose solution says "<word>: <letter>"

By vocabulary: tiny.WORDS (the words the base's lookup was trained on), the tokenizer's other words
(pretrain_base.lookup_vocab), and the world's colour names (what a landmark question would look up).
"""
import argparse
import json
import os
import re
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
import pretrain_base as P  # noqa: E402
from st_r1 import data, render, tiny  # noqa: E402
from st_r1.model import VideoLM  # noqa: E402


def first_letter(model, letters, ids, **video):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), **video)
    return int(logits[0, -1, letters].argmax())


def by_vocabulary(model, tok, letters, vocab, n=64, seed=0):
    per = 2 if len(vocab) >= 8 else 1  # words per option (the six colours: one each)
    rng, right = np.random.default_rng(seed), 0
    for _ in range(n):
        words = [vocab[k] for k in rng.choice(len(vocab), 4 * per, replace=False)]
        opts = [words[i * per:(i + 1) * per] for i in range(4)]
        k = int(rng.integers(4))
        shown = ", ".join(f"{L}. {', '.join(o)}" for L, o in zip("ABCD", opts))
        ex = P.encode(tok, tiny.LOOKUP.format(shown), f" {opts[k][rng.integers(per)]}: {'ABCD'[k]}.")
        j = max(i for i, (t, y) in enumerate(zip(ex["input_ids"], ex["labels"])) if y != -100 and t in letters)
        right += first_letter(model, letters, ex["input_ids"][:j]) == k
    return right / n


def in_pretraining_lists(model, tok, letters, n=150, seed=7):
    """On the stage-4 lookup rows themselves (8-12 words over four options, tiny.WORDS mixed with the world's
    words), every asked word teacher-forced: accuracy by the kind of word asked."""
    vocab = list(tiny.WORDS) + P.WORLD_WORDS
    kinds = {**{w: "colours" for w in render.COLOURS}, **{w: "objects" for w in render.OBJECTS}, "left": "left/right",
             "right": "left/right"}
    rng, right = np.random.default_rng(seed), {}
    for _ in range(n):
        prompt, target = P.list_item(rng, vocab, lookup=1.0)
        ex = P.encode(tok, prompt, target)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ex["input_ids"]]))[0]
        at = [i for i, y in enumerate(ex["labels"]) if y in letters]  # the four letters, in the asked order
        for (word, L), i in zip(re.findall(r" (\w+): ([ABCD])\.", target), at):
            said = "ABCD"[int(logits[i - 1, letters].argmax())]
            right.setdefault(kinds.get(word, "tiny.WORDS"), []).append(said == L)
    return {k: round(float(np.mean(v)), 3) for k, v in right.items()}


def on_bench(model, tok, letters, path, pattern=r"\. (\w+): ([ABCD])\. Hence"):
    rows = data.load_rows(path)
    enc = data.PromptEncoder(tok, video_root=os.path.dirname(os.path.abspath(path)))
    right = n = 0
    for r in rows:
        m = re.search(pattern, r["solution"])
        if not m:
            continue
        ex = enc.encode(r)
        ids = ex["input_ids"] + tok.encode(r["solution"][:m.start(2) - 1], add_special_tokens=False)
        said = first_letter(model, letters, ids, pixel_values_videos=ex["pixel_values_videos"],
                            video_grid_thw=torch.as_tensor(ex["video_grid_thw"]).reshape(1, 3))
        right += "ABCD"[said] == m.group(2)
        n += 1
    return right, n


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--bench", default="")
    a = ap.parse_args()
    torch.set_num_threads(2)
    tok = data.load_tokenizer(a.model)
    model = VideoLM.from_pretrained(a.model, dtype=torch.float32).eval()
    letters = [tok.encode(" " + L, add_special_tokens=False)[0] for L in "ABCD"]
    if a.bench:
        right, n = on_bench(model, tok, letters, a.bench)
        print(json.dumps({"model": a.model, "bench": a.bench, "right": right, "n": n}))
    else:
        out = {name: by_vocabulary(model, tok, letters, v) for name, v in
               (("tiny.WORDS", list(tiny.WORDS)), ("other words", P.lookup_vocab(tok)), ("colours", list(render.COLOURS)))}
        print(json.dumps({"model": a.model, **out, "in pretraining lists": in_pretraining_lists(model, tok, letters)}))
