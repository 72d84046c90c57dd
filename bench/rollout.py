"""GRPO rollout speed: our sampler (prompt + video prefilled once, KV cache shared by G samples) against
transformers' generate(num_return_sequences=G), same model, prompts, lengths and thread count, in one run.

    python bench/rollout.py [--prompts 2] [--group 8] [--new 64] [--hidden 256] [--layers 4]
"""
import argparse
import os
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
    a = p.parse_args()
    tmp = tempfile.mkdtemp()
    write_tiny_model(f"{tmp}/model", hidden=a.hidden, layers=a.layers)
    make_bench(f"{tmp}/bench", n_videos=a.prompts, n_test=1, progress=False, workers=1)
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    tok = AutoTokenizer.from_pretrained(f"{tmp}/model")
    rows = data.load_rows(f"{tmp}/bench/train.jsonl")[::8][:a.prompts]  # one question per video
    enc = data.PromptEncoder(tok, f"{tmp}/bench", a.frames, 56 * 56, 128 * 28 * 28)
    batch = data.collate_prompts([enc.encode(r) for r in rows], tok.pad_token_id)
    ours = VideoLM.from_pretrained(f"{tmp}/model").eval()
    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(f"{tmp}/model").eval()
    ids = batch["input_ids"]
    type_ids = 2 * (ids == ours.video_token_id).long()
    N, C = a.prompts * a.group, a.new
    no_eos = [tok.vocab_size + 100]  # never sampled: every row decodes exactly C tokens in both

    def run_ours():
        generate(ours, **batch, max_new_tokens=C, eos_token_ids=no_eos, pad_token_id=tok.pad_token_id,
                 num_samples=a.group, temperature=1.0, generator=torch.Generator().manual_seed(0))

    def run_hf():
        with torch.no_grad():
            ref.generate(**batch, mm_token_type_ids=type_ids, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                         num_return_sequences=a.group, max_new_tokens=C, min_new_tokens=C,
                         eos_token_id=no_eos[0], pad_token_id=tok.pad_token_id)

    res = {}
    for name, fn in (("st-r1 generate", run_ours), ("transformers generate", run_hf)):
        fn()  # warm-up
        best = min(_time(fn) for _ in range(3))
        res[name] = best
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"\nmodel: tiny Qwen2.5-VL, {n_params / 1e6:.1f}M params, hidden {a.hidden}, {a.layers} layers; "
          f"{a.prompts} prompts x G={a.group}, prompt {ids.shape[1]} tokens "
          f"({int((ids == ours.video_token_id).sum()) // a.prompts} video tokens each), {C} new tokens; "
          f"torch threads {torch.get_num_threads()}; best of 3\n")
    print("| sampler | time (s) | tokens/s | speed-up |\n|---|---|---|---|")
    base = res["transformers generate"]
    for name, t in res.items():
        print(f"| {name} | {t:.2f} | {N * C / t:.0f} | {base / t:.2f}x |")


def _time(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
