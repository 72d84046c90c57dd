"""GRPO rollout speed: our sampler (prompt + video prefilled once, KV cache shared by G samples) against
transformers' generate(num_return_sequences=G), same model, prompts, lengths and thread count, in one run.
Each sampler runs in a fresh subprocess, so its peak RSS (and growth over the post-import RSS) is its own.

    python bench/rollout.py [--prompts 2] [--group 8] [--new 64] [--hidden 256] [--layers 4] [--threads 2]
    python bench/rollout.py --shape 7b --device cuda --dtype bfloat16 --batch1     # on a GPU (not run yet)
    python bench/rollout.py --shape qwen3-vl-8b --device cuda --dtype bfloat16 --batch1

--shape 7b: Qwen2.5-VL-7B's dimensions (decoder 3584 wide, 28 layers, 28 heads / 4 KV heads, MLP 18944; vision
tower 32 blocks of 1280) with the tiny tokenizer's vocabulary, random weights built on the device (no 16 GB
write). --shape qwen3-vl-8b: Qwen3-VL-8B's (decoder 4096 wide, 36 layers, 32 heads / 8 KV heads of 128, MLP 12288;
vision tower 27 blocks of 1152 on 16-px patches, DeepStack from blocks 8, 16, 24), the same way. --family picks the
tiny shape's family (Qwen3-VL prompts carry a timestamp per temporal patch). --batch1 adds our decode tokens/s at batch 1 and its fraction of the memory-bandwidth bound (bytes of the
weights a token reads + its KV cache, times tokens/s, over --bandwidth-gbs, H100 SXM's 3350 by default).
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


# Qwen2.5-VL-7B-Instruct's config.json dimensions (the vocabulary stays the tiny tokenizer's)
SEVEN_B = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
               tie_word_embeddings=False)
SEVEN_B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                      fullatt_block_indexes=[7, 15, 23, 31])
# Qwen3-VL-8B-Instruct's config.json dimensions (nested, as its release)
QWEN3_8B = dict(hidden_size=4096, intermediate_size=12288, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                tie_word_embeddings=False)
QWEN3_8B_ROPE = dict(rope_theta=5000000.0, mrope_section=[24, 20, 20], mrope_interleaved=True)
QWEN3_8B_VISION = dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                       num_position_embeddings=2304, deepstack_visual_indexes=[8, 16, 24])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=None,
                   help="decoder layers (default 4; 28 with --shape 7b, 36 with --shape qwen3-vl-8b)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shape", choices=["tiny", "7b", "qwen3-vl-8b"], default="tiny")
    p.add_argument("--family", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"], default="qwen2_5_vl",
                   help="the tiny shape's family (7b: qwen2_5_vl, qwen3-vl-8b: qwen3_vl)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--batch1", action="store_true")
    p.add_argument("--bandwidth-gbs", type=float, default=3350.0)
    p.add_argument("--run", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run:
        return print("RESULT " + json.dumps(run_one(a)))
    tmp = tempfile.mkdtemp()
    a.family = {"7b": "qwen2_5_vl", "qwen3-vl-8b": "qwen3_vl"}.get(a.shape, a.family)
    write_tiny_model(f"{tmp}/model", hidden=a.hidden, layers=a.layers or 4, weights=a.shape == "tiny", family=a.family)
    if a.shape == "qwen3-vl-8b":
        with open(f"{tmp}/model/config.json") as f:
            cfg = json.load(f)
        cfg.update(tie_word_embeddings=False)
        cfg["text_config"].update(QWEN3_8B, num_hidden_layers=a.layers or 36)
        cfg["text_config"]["rope_parameters"].update(QWEN3_8B_ROPE)
        cfg["vision_config"].update(QWEN3_8B_VISION)
        with open(f"{tmp}/model/config.json", "w") as f:
            json.dump(cfg, f)
    if a.shape == "7b":
        with open(f"{tmp}/model/config.json") as f:
            cfg = json.load(f)
        cfg.update(SEVEN_B, num_hidden_layers=a.layers or 28, max_window_layers=a.layers or 28)
        cfg["vision_config"].update(SEVEN_B_VISION, out_hidden_size=SEVEN_B["hidden_size"])
        cfg["rope_scaling"]["mrope_section"] = [16, 24, 24]
        with open(f"{tmp}/model/config.json", "w") as f:
            json.dump(cfg, f)
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
    print(f"\nmodel: {a.shape} {a.family}, {r['n_params'] / 1e6:.1f}M params, {a.dtype} on {a.device}; "
          f"{a.prompts} prompts x G={a.group}, prompt {r['prompt_len']} tokens ({r['video_tokens']} video tokens "
          f"each), {C} new tokens; torch threads {a.threads}; best of 3 after a warm-up, each sampler in a fresh "
          f"process; peak memory: {'GPU allocated' if a.device != 'cpu' else 'RSS'}\n")
    print("| sampler | time (s) | tokens/s | speed-up | peak (MB) | growth (MB) |\n|---|---|---|---|---|---|")
    base = res[list(res)[1]]["best"]
    for name, r in res.items():
        print(f"| {name} | {r['best']:.2f} | {N * C / r['best']:.0f} | {base / r['best']:.2f}x | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] - r['base_mb']:.0f} |")
    if a.batch1:
        b = res["st-r1 generate"]["batch1"]
        print(f"\nbatch 1 (st-r1): {b['tok_s']:.1f} tokens/s; {b['bytes_per_token'] / 1e9:.2f} GB read per token "
              f"(weights + KV cache) -> {b['gbs']:.0f} GB/s = {b['gbs'] / a.bandwidth_gbs:.0%} of {a.bandwidth_gbs:.0f} GB/s")


def run_one(a):
    """In a fresh process: load, warm up, time 3 runs of one sampler; peak memory over the post-import baseline."""
    import transformers
    torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    dtype = getattr(torch, a.dtype)
    base_mb = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb()
    tmp = a.tmp
    tok = data.load_tokenizer(f"{tmp}/model")
    rows = data.load_rows(f"{tmp}/bench/train.jsonl")[::8][:a.prompts]  # one question per video
    family = {"7b": "qwen2_5_vl", "qwen3-vl-8b": "qwen3_vl"}.get(a.shape, a.family)
    enc = data.PromptEncoder(tok, f"{tmp}/bench", a.frames, 56 * 56, 128 * 28 * 28, family=family)
    batch = {k: v.to(a.device) for k, v in data.collate_prompts([enc.encode(r) for r in rows], tok.pad_token_id).items()}
    batch["pixel_values_videos"] = batch["pixel_values_videos"].to(dtype)
    ids = batch["input_ids"]
    C, video_id = a.new, tok.convert_tokens_to_ids("<|video_pad|>")
    no_eos = [tok.vocab_size + 100]  # never sampled: every row decodes exactly C tokens in both
    seven_b = a.shape != "tiny"  # random weights built on the device: none were written
    if a.run == "st-r1":
        with open(f"{tmp}/model/config.json") as f:
            cfg = json.load(f)
        model = (VideoLM.from_config(cfg, dtype, a.device) if seven_b else
                 VideoLM.from_pretrained(f"{tmp}/model", dtype, a.device)).eval()

        def fn(b=batch, group=a.group):
            generate(model, **b, max_new_tokens=C, eos_token_ids=no_eos, pad_token_id=tok.pad_token_id,
                     num_samples=group, temperature=1.0, generator=torch.Generator(a.device).manual_seed(0))
    else:
        HF = {"qwen2_vl": transformers.Qwen2VLForConditionalGeneration,
              "qwen2_5_vl": transformers.Qwen2_5_VLForConditionalGeneration,
              "qwen3_vl": transformers.Qwen3VLForConditionalGeneration}[family]
        if seven_b:
            with torch.device(a.device):
                model = HF._from_config(transformers.AutoConfig.from_pretrained(f"{tmp}/model"), dtype=dtype).eval()
        else:
            model = HF.from_pretrained(f"{tmp}/model", dtype=dtype).to(a.device).eval()
        type_ids = 2 * (ids == video_id).long()

        hf_batch = {k: v for k, v in batch.items() if k != "second_per_grid_ts" or family == "qwen2_5_vl"}

        def fn():
            with torch.no_grad():
                model.generate(**hf_batch, mm_token_type_ids=type_ids, do_sample=True, temperature=1.0, top_p=1.0,
                               top_k=0, num_return_sequences=a.group, max_new_tokens=C, min_new_tokens=C,
                               eos_token_id=no_eos[0], pad_token_id=tok.pad_token_id)
    fn()  # warm-up
    best = min(_time(fn, cuda) for _ in range(3))
    out = dict(best=best, base_mb=base_mb, peak_mb=torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mb(),
               prompt_len=ids.shape[1], video_tokens=int((ids == video_id).sum()) // a.prompts,
               n_params=sum(p.numel() for p in model.parameters()))
    if a.batch1 and a.run == "st-r1":
        one = {k: v[:1] for k, v in batch.items() if k != "pixel_values_videos"}
        one["pixel_values_videos"] = batch["pixel_values_videos"][:batch["pixel_values_videos"].shape[0] // a.prompts]
        fn(one, 1)
        t = min(_time(lambda: fn(one, 1), cuda) for _ in range(3)) - min(_time(lambda: generate(
            model, **one, max_new_tokens=1, eos_token_ids=no_eos, pad_token_id=tok.pad_token_id), cuda)
            for _ in range(3))  # the prefill (and its first token) is not decoding: take it out
        # a decoded token reads every decoder weight (not the vision tower, and one row of the embedding table
        # unless it is tied to the LM head) and the whole KV cache, which ends C tokens longer than the prompt
        size = lambda ps: sum(p.numel() * p.element_size() for p in ps)
        weights = size(model.parameters()) - size(model.visual.parameters())
        if not model.tied:
            weights -= size(model.model.embed_tokens.parameters())
        kv = model.new_cache(1, 1)
        kv_per_pos = 2 * len(kv.k) * kv.k[0][0, :, 0].numel() * kv.k[0].element_size()
        per_token = weights + kv_per_pos * (ids.shape[1] + C / 2)
        out["batch1"] = dict(tok_s=(C - 1) / t, bytes_per_token=per_token, gbs=per_token * (C - 1) / t / 1e9)
    return out


def _rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _time(fn, cuda=False):
    if cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
