"""Which layout of the last step of a chain of thought (from a list to its option's letter) can the tiny base learn?
Text only, from a model folder, on lists of the world's words whose four options differ as the bench's do.

    python bench/probes/formats.py --fmt pairs --steps 300          # one layout; --fmt bench: the bench's own rows
    for f in match verdict copyverdict adjacent fetch pairs bench; do python bench/probes/formats.py --fmt $f & done

Every 50 steps it prints, on 128 held-out rows and teacher-forced, the token accuracy, the last letter and the
share of rows with all four per-option verdicts right; at the end the option named in greedy replies (96 rows).
bench/RESULTS.md ("Stage 6") has what each layout gave: only "pairs" left chance.
"""
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from st_r1 import chat, cli, data, tiny, training, world  # noqa: E402
from st_r1.generate import generate  # noqa: E402
from st_r1.model import VideoLM  # noqa: E402


@dataclass
class Probe:
    """Train one reply layout text-only from a model folder; print held-out accuracy."""
    model: str = "models/tiny-base"
    fmt: str = "pairs"           # match | verdict | copyverdict | adjacent | fetch | pairs | bench
    steps: int = 400
    batch: int = 64
    lr: float = 1e-3
    threads: int = 1


VOCAB = [*world.COLOURS, *world.OBJECTS, "left", "right", "straight"]


def options(rng):
    """A list of 1-5 words and four options differing as the bench's: one slot x 4 values, or two slots x 2."""
    n = int(rng.integers(2, 6))
    ws = [VOCAB[k] for k in rng.integers(len(VOCAB), size=n)]
    i, j = rng.choice(n, 2, replace=False)
    if rng.random() < 0.5:
        opts = [ws] + [ws[:i] + [str(v)] + ws[i + 1:] for v in rng.choice([v for v in VOCAB if v != ws[i]], 3, False)]
    else:
        a, b = (str(rng.choice([v for v in VOCAB if v != ws[k]])) for k in (i, j))
        put = lambda w, k, v: w[:k] + [v] + w[k + 1:]  # noqa: E731
        opts = [ws, put(ws, i, a), put(ws, j, b), put(put(ws, i, a), j, b)]
    order = rng.permutation(4)
    return ws, [opts[k] for k in order], "ABCD"[int(np.argmax(order == 0))]


def bench_row(rng):
    """One of the bench's multiple-choice rows with the asked route told first, replied with world.verdicts."""
    w = world.world_for(2000, "train", int(rng.integers(10 ** 6)), frames=16)  # seed 2000: never the bench's maps
    fwd, task, rev = world.route_events(w), ("landmark", "direction", "action")[rng.integers(3)], bool(rng.integers(2))
    vs = [world.project(world.invert(v) if rev else v, task) for v in world.variants(fwd, task, rng)]
    order = rng.permutation(4)
    shown, letter = [vs[k] for k in order], "ABCD"[int(np.argmax(order == 0))]
    prompt = (f"You walked: {', '.join(vs[0])}. " + world.PREFIX + world.QUESTIONS[task, rev] + " Options: "
              + ", ".join(f"{L}. {world.option_text(o)}" for L, o in zip("ABCD", shown)) + world.MCQ_INSTR)
    return prompt, " " + world.verdicts(list(zip("ABCD", shown)), vs[0]) + f" So option {letter}.", letter


def row(fmt, rng):
    """(prompt, target, gold letter or None)."""
    if fmt == "bench":
        return bench_row(rng)
    ws, shown, L = options(rng)
    lst, opts = ", ".join(ws), ", ".join(f"{k}. {', '.join(o)}" for k, o in zip("ABCD", shown))
    ask = f"Which option is the list: {lst}? Options: {opts}"
    yes = lambda o: "yes" if o == ws else "no"  # noqa: E731
    if fmt == "match":
        return ask, f" {lst}, which is option {L}.", L
    if fmt == "verdict":
        return ask, " " + " ".join(f"{k}: {yes(o)}." for k, o in zip("ABCD", shown)) + f" So option {L}.", L
    if fmt == "copyverdict":
        lines = " ".join(f"{k}. {', '.join(o)}: {yes(o)}." for k, o in zip("ABCD", shown))
        return ask, f" {lines} So option {L}.", L
    if fmt == "adjacent":
        return ask, " " + " ".join(f"{k}. {', '.join(o)}; {lst}: {yes(o)}." for k, o in zip("ABCD", shown)) + \
            f" So option {L}.", L
    if fmt == "pairs":
        line = lambda k, o: f"{k}: " + ", ".join(f"{a} {b} {'ok' if a == b else 'x'}" for a, b in zip(o, ws)) + \
            f": {yes(o)}."  # noqa: E731
        return ask, " " + " ".join(line(k, o) for k, o in zip("ABCD", shown)) + f" So option {L}.", L
    if fmt == "fetch":
        k = "ABCD"[int(rng.integers(4))]
        return f"Options: {opts}. What does option {k} say?", " " + ", ".join(shown["ABCD".index(k)]) + ".", None
    raise SystemExit(f"--fmt {fmt}: not a layout")


def batch_of(tok, rows, with_target=True):
    """Left-padded chat ids and labels (-100 on the prompt), as the pretraining's text rows."""
    ids = [tok.encode(chat.prompt_text(p, instruction=""), add_special_tokens=False) for p, _, _ in rows]
    ans = [chat.answer_ids(tok, t) if with_target else [] for _, t, _ in rows]
    width = max(len(a) + len(b) for a, b in zip(ids, ans))
    x = torch.full((len(rows), width), tok.pad_token_id)
    mask, y = torch.zeros_like(x), torch.full_like(x, -100)
    for i, (a, b) in enumerate(zip(ids, ans)):
        x[i, width - len(a) - len(b):] = torch.tensor(a + b)
        mask[i, width - len(a) - len(b):] = 1
        if b:
            y[i, width - len(b):] = torch.tensor(b)
    return dict(input_ids=x, attention_mask=mask), y


@torch.no_grad()
def held_out(model, tok, fmt, letters, verdict_ids):
    model.eval()
    rows = [row(fmt, np.random.default_rng([999, i])) for i in range(128)]
    batch, y = batch_of(tok, rows)
    pred, y = model(**batch).argmax(-1)[:, :-1], y[:, 1:]
    m = y != -100
    letter, verdicts = [], []
    for b in range(len(rows)):
        at = [i for i in range(y.shape[1]) if y[b, i].item() in letters]
        letter += [pred[b, at[-1]].item() == y[b, at[-1]].item()] if at else []
        at = [i for i in range(y.shape[1]) if y[b, i].item() in verdict_ids]
        verdicts += [all(pred[b, i].item() == y[b, i].item() for i in at)] if at else []
    model.train()
    mean = lambda v: round(float(np.mean(v)), 3) if v else None  # noqa: E731
    tokens = round((((pred == y) & m).sum() / m.sum()).item(), 3)
    return dict(tokens=tokens, letter=mean(letter), verdicts=mean(verdicts))


@torch.no_grad()
def greedy(model, tok, fmt, n=96):
    model.eval()
    rows = [row(fmt, np.random.default_rng([4242, i])) for i in range(n)]
    right = 0
    for s in range(0, n, 32):
        batch, _ = batch_of(tok, rows[s:s + 32], with_target=False)
        g = generate(model, max_new_tokens=160, eos_token_ids=chat.end_of_turn_ids(tok), pad_token_id=tok.pad_token_id,
                     **batch)
        for (_, _, gold), t, m in zip(rows[s:s + 32], g.tokens, g.mask):
            said = re.findall(r"option ([ABCD])", tok.decode(t[m], skip_special_tokens=True))
            right += bool(gold) and said[-1:] == [gold]
    return right


def main(o):
    torch.set_num_threads(o.threads)
    torch.manual_seed(0)
    tok, model = data.load_tokenizer(o.model), VideoLM.from_pretrained(o.model, dtype=torch.float32)
    letters = {tok.encode(" " + L, add_special_tokens=False)[0] for L in "ABCD"}
    verdict_ids = {tok.encode(w, add_special_tokens=False)[0] for w in (" yes", " no")}  # " y" / " n"
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = training.cosine_schedule(opt, 20, o.steps, 0.1)
    print(0, held_out(model, tok, o.fmt, letters, verdict_ids), flush=True)
    t0 = time.time()
    for step in range(1, o.steps + 1):
        rng = np.random.default_rng([1, step])
        batch, y = batch_of(tok, [row(o.fmt, rng) for _ in range(o.batch)])
        logits = model(**batch).float()
        w = (y[:, 1:] != -100).float()
        w = w * (1 + 4 * torch.isin(y[:, 1:], torch.tensor(sorted(letters))))  # the letter counts 5x, as in pretraining
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), y[:, 1:].flatten(), ignore_index=-100, reduction="none")
        loss = (ce * w.flatten()).sum() / w.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == o.steps:
            print(step, f"{time.time() - t0:.0f} s, loss {loss.item():.3f}",
                  held_out(model, tok, o.fmt, letters, verdict_ids), flush=True)
    print(f"greedy: the option named right in {greedy(model, tok, o.fmt)} of 96 held-out rows "
          f"({o.fmt}; chance 24)" if o.fmt != "fetch" else "", flush=True)


if __name__ == "__main__":
    main(cli.parse(Probe))
