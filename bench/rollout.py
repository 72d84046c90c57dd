"""GRPO rollout speed: our sampler (prompt + video prefilled once, KV cache shared by G samples) against
transformers' generate(num_return_sequences=G), same model, prompts, lengths and thread count, in one run.
Each sampler runs in a fresh subprocess, so its peak RSS (and growth over the post-import RSS) is its own.

    python bench/rollout.py [--prompts 2] [--group 8] [--new 64] [--hidden 256] [--layers 4] [--threads 2]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from st_r1 import data  # noqa: E402
from st_r1.generate import generate  # noqa: E402
from st_r1.model import VideoLM  # noqa: E402
from st_r1.tiny import write_tiny_model  # noqa: E402
from st_r1.world import make_bench  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run:
        return print("RESULT " + json.dumps(run_one(a)))
    tmp = tempfile.mkdtemp()
    write_tiny_model(f"{tmp}/model", hidden=a.hidden, layers=a.layers)
    make_bench(f"{tmp}/bench", n_videos=a.prompts, n_test=1, progress=False, workers=1)
    res = {}
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    for name in ("st-r1 generate", f"transformers generate (num_return_sequences={a.group})"):
        cmd = [sys.executable, os.path.abspath(__file__), "--run", name[:5], "--tmp", tmp] + sys.argv[1:]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode or not lines:
            raise RuntimeError(f"{name} failed:\n{out.stderr[-5000:]}")
        res[name] = json.loads(lines[-1][7:])
    r = res["st-r1 generate"]
    N, C = a.prompts * a.group, a.new
    print(f"\nmodel: tiny Qwen2.5-VL, {r['n_params'] / 1e6:.1f}M params, hidden {a.hidden}, {a.layers} layers; "
          f"{a.prompts} prompts x G={a.group}, prompt {r['prompt_len']} tokens ({r['video_tokens']} video tokens "
          f"each), {C} new tokens; torch threads {a.threads}; best of 3 after a warm-up, each sampler in a fresh "
          f"process\n")
    print("| sampler | time (s) | tokens/s | speed-up | peak RSS (MB) | RSS growth (MB) |\n|---|---|---|---|---|---|")
    base = res[list(res)[1]]["best"]
    for name, r in res.items():
        print(f"| {name} | {r['best']:.2f} | {N * C / r['best']:.0f} | {base / r['best']:.2f}x | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] - r['base_mb']:.0f} |")


def run_one(a):
    """In a fresh process: load, warm up, time 3 runs of one sampler; peak RSS over the post-import baseline."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    torch.set_num_threads(a.threads)
    base_mb = _rss_mb()
    tmp = a.tmp
    tok = AutoTokenizer.from_pretrained(f"{tmp}/model")
    rows = data.load_rows(f"{tmp}/bench/train.jsonl")[::8][:a.prompts]  # one question per video
    enc = data.PromptEncoder(tok, f"{tmp}/bench", a.frames, 56 * 56, 128 * 28 * 28)
    batch = data.collate_prompts([enc.encode(r) for r in rows], tok.pad_token_id)
    ids = batch["input_ids"]
    C, video_id = a.new, tok.convert_tokens_to_ids("<|video_pad|>")
    no_eos = [tok.vocab_size + 100]  # never sampled: every row decodes exactly C tokens in both
    if a.run == "st-r1":
        model = VideoLM.from_pretrained(f"{tmp}/model").eval()

        def fn():
            generate(model, **batch, max_new_tokens=C, eos_token_ids=no_eos, pad_token_id=tok.pad_token_id,
                     num_samples=a.group, temperature=1.0, generator=torch.Generator().manual_seed(0))
    else:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(f"{tmp}/model").eval()
        type_ids = 2 * (ids == video_id).long()

        def fn():
            with torch.no_grad():
                model.generate(**batch, mm_token_type_ids=type_ids, do_sample=True, temperature=1.0, top_p=1.0,
                               top_k=0, num_return_sequences=a.group, max_new_tokens=C, min_new_tokens=C,
                               eos_token_id=no_eos[0], pad_token_id=tok.pad_token_id)
    fn()  # warm-up
    best = min(_time(fn) for _ in range(3))
    return dict(best=best, base_mb=base_mb, peak_mb=_rss_mb(), prompt_len=ids.shape[1],
                video_tokens=int((ids == video_id).sum()) // a.prompts,
                n_params=sum(p.numel() for p in model.parameters()))


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _time(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
