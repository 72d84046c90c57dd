"""The main job's steps on 1 thread, by the knobs bench/main_job.py sets, each against the way it was done before
(measured in the same run): an SFT step with logits at the answer's places only vs at every place, by micro-batch;
a GRPO update (policy + reference passes) by micro-batch; a GRPO rollout with the inverse-CDF sampler vs
torch.multinomial. Needs a main job's world and CoT SFT checkpoint (python bench/main_job.py, its first stages).

    python bench/step_speed.py [--job runs/main] [--rounds 2]
"""
import argparse
import copy
import glob
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from st_r1 import data, generate, grpo  # noqa: E402
from st_r1.model import VideoLM  # noqa: E402
from st_r1.training import batch_rows, sft_loss  # noqa: E402


def full_logits_loss(model, batch, num_tokens):
    """The SFT loss as it was before 4c0f83e: logits at every place, the unlabelled ones ignored."""
    labels = batch.pop("labels")
    logits = model(**batch).float()
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                             ignore_index=-100, reduction="sum") / num_tokens


def sft_step(model, opt, enc, rows, step, micro, loss_fn, pad):
    ex, _ = data.encode_rows(enc, batch_rows(rows, step, 16, 0), "encode_sft", log=lambda m: None)
    n = sum(sum(1 for x in e["labels"][1:] if x != -100) for _, e in ex)
    t0 = time.perf_counter()
    opt.zero_grad()
    for k in range(0, len(ex), micro):
        loss_fn(model, data.collate_prompts([e for _, e in ex[k:k + micro]], pad), n).backward()
    opt.step()
    return time.perf_counter() - t0


def multinomial_pick(logits, temperature=0.0, top_p=1.0, generator=None, banned=()):
    """pick() as it was before 4c0f83e (no top-p here: the main job samples at top_p 1): torch.multinomial, which
    on CPU draws an exponential for every token of the vocabulary."""
    logp = (logits.float() / temperature).log_softmax(-1)
    probs = logp.exp().index_fill(-1, torch.tensor(banned, dtype=torch.long), 0.0)
    rows = probs.shape[0] // len(generator)
    tok = torch.cat([torch.multinomial(probs[i * rows:(i + 1) * rows], 1, generator=g)[:, 0]
                     for i, g in enumerate(generator)])
    return tok, logp.gather(-1, tok[:, None])[:, 0], -(logp.exp() * logp).nan_to_num().sum(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default="runs/main")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(1)
    world = os.path.join(a.job, "world")
    ckpt = sorted(glob.glob(os.path.join(a.job, "seed0", "sft_cot", "ckpt-*", "model")))
    if not ckpt or not os.path.exists(os.path.join(world, "rl", "train_mcq.jsonl")):
        raise SystemExit(f"no world or CoT SFT checkpoint under {a.job}: run python bench/main_job.py first")
    model_dir = ckpt[-1]
    tok = data.load_tokenizer(model_dir)
    model = VideoLM.from_pretrained(model_dir, dtype=torch.float32)
    print(f"model {model_dir}, torch {torch.__version__}, 1 thread, {a.rounds} rounds, mean s of each")

    rows = data.load_rows(os.path.join(world, "train.jsonl"), need=("solution",))
    enc = data.PromptEncoder(tok, world, 8, 56 * 56, 128 * 28 * 28, model.spatial_merge_size, family=model.model_type)
    for s in range(12):  # every video of the timed steps decoded once, before the clock
        [enc.video(r) for r in batch_rows(rows, s, 16, 0)]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-9)
    arms = [("answer places", sft_loss, m) for m in (8, 4, 2, 1)] + [("every place", full_logits_loss, 8)]
    res = {}
    for _ in range(a.rounds):
        for name, fn, micro in arms:
            sft_step(model, opt, enc, rows, 0, micro, fn, tok.pad_token_id)
            res.setdefault((name, micro), []).append(
                sum(sft_step(model, opt, enc, rows, s, micro, fn, tok.pad_token_id) for s in range(1, 11)) / 10)
    print("\n| SFT step (16 CoT rows) | micro-batch | s a step | vs before |\n|---|---|---|---|")
    before = sum(res[("every place", 8)]) / a.rounds
    for (name, micro), v in res.items():
        s = sum(v) / len(v)
        print(f"| logits at {name} | {micro} | {s:.3f} | {s / before:.2f} |")

    rl = data.load_rows(os.path.join(world, "rl", "train_mcq.jsonl"))[:16]
    renc = data.PromptEncoder(tok, os.path.join(world, "rl"), 8, 56 * 56, 128 * 28 * 28, model.spatial_merge_size,
                              family=model.model_type)
    batch = data.collate_prompts([e for _, e in data.encode_rows(renc, rl)[0]], tok.pad_token_id)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    cfg = grpo.GRPOConfig(group_size=8, max_new_tokens=256, temperature=0.7, beta=0.04, entropy_frac=0.2)
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(16)]  # noqa: E731
    roll, ours = {}, generate.pick
    for _ in range(a.rounds):
        for name, fn in (("inverse CDF (pick)", ours), ("torch.multinomial", multinomial_pick)):
            generate.pick = fn
            t0 = time.perf_counter()
            gen = grpo.rollout(model.eval(), batch, cfg, [tok.eos_token_id], tok.pad_token_id, gens())
            roll.setdefault(name, []).append((time.perf_counter() - t0, int(gen.mask.sum())))
    generate.pick = ours
    print("\n| GRPO rollout (16 prompts x G = 8, T 0.7) | s | tokens | vs multinomial |\n|---|---|---|---|")
    m = sum(t for t, _ in roll["torch.multinomial"]) / a.rounds
    for name, v in roll.items():
        s = sum(t for t, _ in v) / a.rounds
        print(f"| {name} | {s:.2f} | {sum(n for _, n in v) // a.rounds} | {s / m:.2f} |")

    adv = torch.randn(gen.tokens.shape[0], generator=torch.Generator().manual_seed(0))
    upd = {}
    for _ in range(a.rounds):
        for micro in (32, 16, 8):
            c = grpo.GRPOConfig(**{**cfg.__dict__, "micro_batch": micro})
            t0 = time.perf_counter()
            grpo.update(model, ref, opt, batch, gen, adv, c, grpo.Timer())
            upd.setdefault(micro, []).append(time.perf_counter() - t0)
    print("\n| GRPO update (the rollout's 128 completions, + reference) | micro-batch | s | vs 32 |\n|---|---|---|---|")
    for micro, v in upd.items():
        s = sum(v) / len(v)
        print(f"| | {micro} | {s:.2f} | {s / (sum(upd[32]) / a.rounds):.2f} |")


if __name__ == "__main__":
    main()
