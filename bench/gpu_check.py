"""The GPU check of issue 19 in one run (bench/gpu_check.sh calls it): what a CPU cannot show about the bf16 path.

    bash bench/gpu_check.sh                        # CUDA: 7B-shaped random models, ~6-8 minutes on one H100 / H200
    bash bench/gpu_check.sh --device cpu --tiny    # the same sections on the tiny shape, on a CPU (the test suite)

Sections, each timed; one that fails records its error and the next one runs:
  logits   one video prompt through a random model in fp32, bf16-mixed (autocast) and pure bf16: the bf16 logits
           against fp32 (max and mean |diff|, top-1 agreement, KL(fp32 || bf16))
  train    per precision policy: 3 SFT steps and 2 GRPO steps (rollout + update with a reference model) of a model
           with fewer decoder layers; losses, times, peak memory against bench/memory.py's estimate
  rollout  bench/rollout.py: our sampler against transformers' generate (same model, prompts, lengths), and our
           batch-1 decode in tokens/s as a fraction of the memory-bandwidth bound
  trl      one GRPO step, ours against TRL's GRPOTrainer on the same text-only model and batch (needs trl)
Writes OUT/gpu_check.json (every number) and OUT/gpu_check.md (the tables).
"""
import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from st_r1 import grpo, precision  # noqa: E402
from st_r1.model import VideoLM  # noqa: E402
from st_r1.training import sft_loss  # noqa: E402

BANDWIDTH_GBS = {"H200": 4800, "H100": 3350, "A100": 2039, "L40S": 864, "A10": 600}  # HBM / GDDR peak, GB/s
PATCH = 3 * 2 * 14 * 14  # one row of pixel_values of both shapes (Qwen2.5-VL): channels x 2 frames x 14 x 14


def memory_py(*args):
    """bench/memory.py --json (the config, the setup and the estimate in bytes), run as a script: one bench script
    does not import another."""
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "memory.py"), "--json", *args],
                       capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout)


def shape(a, layers=None):
    """The model config of a section: the tiny base's layout shrunk further (hidden 64, one decoder layer, one vision
    block: seconds on a CPU), or Qwen2.5-VL-7B's widths and vocabulary with `layers` decoder layers."""
    if a.tiny:
        with open(os.path.join(ROOT, "models", "tiny-base", "config.json")) as f:
            config = json.load(f)
        config.update(hidden_size=64, intermediate_size=128, num_hidden_layers=1, max_window_layers=1)
        config["vision_config"].update(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                       fullatt_block_indexes=[0])
        config["rope_scaling"]["mrope_section"] = [2, 3, 3]
        return config
    config = memory_py("--model", "qwen2.5-vl-7b")["config"]
    config["num_hidden_layers"] = layers or 28
    return config


def video_batch(model, a, device, labels=True):
    """One row: a t x h x w-patch video (random pixels) and random text tokens."""
    t, h, w = (2, 8, 8) if a.tiny else (4, 28, 28)  # 7B: 784 video tokens, about the authors' 8 frames
    video, g = t * h * w // 4, torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (1, a.text + video + 2), generator=g)
    ids[0, 0], ids[0, 1:video + 1], ids[0, video + 1] = (model.vision_start_token_id, model.video_token_id,
                                                         model.vision_start_token_id + 1)
    out = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
               pixel_values_videos=torch.randn(t * h * w, PATCH, generator=g),
               video_grid_thw=torch.tensor([[t, h, w]]))
    if labels:
        out["labels"] = ids.clone()
    return {k: v.to(device) for k, v in out.items()}, video


class Peak:
    """Peak memory of a phase (`with peak:`), counted from when the Peak was made (before the model): CUDA's
    allocator on a GPU; on a CPU the RSS high-water mark (run with MALLOC_MMAP_THRESHOLD_=65536, as gpu_check.sh
    does, so that freed tensors leave the RSS)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.base = torch.cuda.memory_allocated() if self.cuda else _rss("VmRSS")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # VmHWM restarts from the current RSS
        return self

    def __exit__(self, *exc):
        self.bytes = (torch.cuda.max_memory_allocated() if self.cuda else _rss("VmHWM")) - self.base


def _rss(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) * 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


# ----------------------------------------------------------------------------------------------- sections

def logits(a, device):
    config = shape(a)
    torch.manual_seed(0)
    model = VideoLM.from_config(config, dtype=torch.float32, device=device).eval()
    batch, _ = video_batch(model, a, device, labels=False)
    out = {}
    with torch.no_grad():
        ref = model(**batch).float()
        model.compute_dtype = torch.bfloat16  # bf16-mixed: fp32 weights, autocast
        out["bf16-mixed"] = model(**batch).float()
        model.compute_dtype = None
        out["bf16"] = model.to(torch.bfloat16)(**batch).float()
    del model
    res = dict(params=sum(p.numel() for p in VideoLM.from_config(config, device="meta").parameters()),
               tokens=batch["input_ids"].shape[1], logit_std=ref.std().item())
    logp_ref = ref.log_softmax(-1)
    for name, x in out.items():
        res[name] = dict(max_abs_diff=(x - ref).abs().max().item(), mean_abs_diff=(x - ref).abs().mean().item(),
                         top1_agreement=(x.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                         kl_fp32_to_bf16=(logp_ref.exp() * (logp_ref - x.log_softmax(-1))).sum(-1).mean().item())
    return res


def train(a, device):
    config = shape(a, a.train_layers)
    res, setups = {}, {}  # setups: (policy, stage) -> the bench/memory.py setup of that step
    for name in precision.POLICIES:
        pol = precision.policy(name)
        torch.manual_seed(0)
        peak = Peak(device)
        model = precision.apply(VideoLM.from_config(config, dtype=pol.param_dtype, device=device), pol).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.95))
        batch, video = video_batch(model, a, device)
        n = batch["input_ids"].shape[1]
        r = res[name] = dict(sft_loss=[], sft_s=[])
        with peak:
            for _ in range(3):
                t = sync(device)
                loss = sft_loss(model, dict(batch), n)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                r["sft_s"].append(sync(device) - t)
                r["sft_loss"].append(loss.item())
        r["sft_peak_gb"] = peak.bytes / 1e9
        setups[name, "sft"] = dict(stage="sft", parallel="none", gpus=1, precision=name, rows=1, video_tokens=video,
                                   text_tokens=a.text + 2)
        # GRPO: the reference is the model as it is now, held in the policy's reference dtype
        ref = VideoLM.from_config(config, dtype=pol.ref_dtype, device="meta")
        ref.load_state_dict({k: v.to(pol.ref_dtype) for k, v in model.state_dict().items()}, assign=True)
        ref.eval().requires_grad_(False)
        prompts = {k: v for k, v in batch.items() if k != "labels"}
        cfg = grpo.GRPOConfig(group_size=a.group, max_new_tokens=a.new, micro_batch=a.group, beta=0.04)
        never = [10**9]  # no EOS: every completion is a.new tokens long
        r.update(grpo_grad_norm=[], grpo_kl=[], rollout_s=[], update_s=[], sampler_vs_update_logp=[])
        with peak:
            for step in range(2):
                timer, t = grpo.Timer(), sync(device)
                model.eval()
                gen = grpo.rollout(model, prompts, cfg, never, 0, torch.Generator(device).manual_seed(step))
                r["rollout_s"].append(sync(device) - t)
                with torch.no_grad():  # the sampler's log-probs against the update's recomputation (bf16 noise)
                    logp, _ = grpo.completion_logprobs(model, prompts, gen.tokens, gen.mask, group_size=a.group)
                r["sampler_vs_update_logp"].append((logp - gen.logprobs * gen.mask).abs().max().item())
                reward = (gen.tokens % 2 == 0).float().mean(1)  # a toy reward that differs within the group
                adv, _ = grpo.group_advantages(reward, a.group)
                t = sync(device)
                st = grpo.update(model, ref, opt, prompts, gen, adv.to(device), cfg, timer, step)
                r["update_s"].append(sync(device) - t)
                r["grpo_grad_norm"].append(st["grad_norm"])
                r["grpo_kl"].append(st["kl"])
        setups[name, "grpo"] = dict(stage="grpo", parallel="none", gpus=1, precision=name, prompts=1,
                                    group_size=a.group, new_tokens=a.new, micro_batch=a.group, video_tokens=video,
                                    text_tokens=a.text + 2)
        r.update(grpo_peak_gb=peak.bytes / 1e9,
                 master_dtype=str({p.dtype for p in model.parameters() if p.requires_grad}),
                 adamw_dtype=str({v.dtype for st in opt.state.values() for v in st.values() if v.dim() > 0}))
        del model, ref, opt, gen
        if device.type == "cuda":
            torch.cuda.empty_cache()
    # bench/memory.py's estimates of the same steps, all in one run of it: its peak above the start, no CUDA context
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f)
        estimates = memory_py("--model", f.name, "--setups", json.dumps(list(setups.values())))["estimates"]
    for (name, stage), e in zip(setups, estimates):
        res[name][f"{stage}_estimate_gb"] = (e["total"] - e["overhead"]) / 1e9
    return dict(decoder_layers=config["num_hidden_layers"], **res)


def rollout(a, device):
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    bw = next((v for k, v in BANDWIDTH_GBS.items() if k in name), 3350)
    args = ["--device", str(device), "--dtype", "bfloat16", "--batch1", "--bandwidth-gbs", str(bw)]
    args += (["--hidden", "64", "--layers", "1", "--prompts", "1", "--group", "2", "--new", "6", "--frames", "4",
              "--threads", "2"] if a.tiny else ["--shape", "7b", "--prompts", "2", "--group", "8", "--new", "64"])
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "rollout.py")] + args, capture_output=True,
                       text=True, cwd=ROOT)
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    lines = p.stdout.strip().splitlines()
    res = dict(command="python bench/rollout.py " + " ".join(args), table=[ln for ln in lines if ln.startswith("|")],
               header=next((ln for ln in lines if ln.startswith("model:")), ""), bandwidth_gbs=bw)
    m = re.search(r"batch 1 \(st-r1\): ([\d.]+) tokens/s.*-> ([\d.]+) GB/s = (\d+)%", p.stdout)
    if m:
        res.update(batch1_tok_s=float(m.group(1)), batch1_gbs=float(m.group(2)), batch1_fraction=int(m.group(3)) / 100)
    return res


def trl(a, device):
    """One GRPO step (generation + reference + update), ours and TRL's, on the same text-only model and batch."""
    if importlib.util.find_spec("trl") is None:
        return dict(skipped="trl is not installed here")
    from datasets import Dataset
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    from trl import GRPOConfig, GRPOTrainer
    from st_r1.tiny import write_tiny_model
    tmp = tempfile.mkdtemp()
    config = shape(a, a.train_layers)
    write_tiny_model(f"{tmp}/model", weights=False)  # the tokenizer; the weights are the shaped model's
    torch.manual_seed(0)
    VideoLM.from_config(config, dtype=torch.float32 if a.tiny else torch.bfloat16).save_pretrained(f"{tmp}/model")
    tok = AutoTokenizer.from_pretrained(f"{tmp}/model")
    text = ["Which way do you turn? Options: A. left B. right"] * 2
    reward = lambda completions, **kw: [(sum(map(ord, c)) % 7) / 7.0 for c in completions]
    cuda, res = device.type == "cuda", {}
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(f"{tmp}/model", dtype=torch.float32)
    args = GRPOConfig(output_dir=f"{tmp}/trl", report_to="none", save_strategy="no", logging_strategy="no",
                      use_cpu=not cuda, bf16=cuda, per_device_train_batch_size=2 * a.group, num_generations=a.group,
                      max_completion_length=a.new, generation_kwargs={"min_new_tokens": a.new}, beta=0.04,
                      learning_rate=1e-6, max_steps=3, disable_tqdm=True, seed=0, gradient_checkpointing=False)
    trainer = GRPOTrainer(model=hf, reward_funcs=reward, args=args, processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": t} for t in text * 4]))
    t = sync(device)
    trainer.train()
    res["trl_step_s"] = (sync(device) - t) / 3
    del trainer, hf
    pol = precision.policy("bf16-mixed" if cuda else "fp32")
    model = precision.apply(VideoLM.from_pretrained(f"{tmp}/model", pol.param_dtype, device), pol)
    ref = VideoLM.from_pretrained(f"{tmp}/model", pol.ref_dtype, device).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    ids = [tok.encode(x) for x in text]
    ids = torch.tensor(ids, device=device)
    prompts = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    cfg = grpo.GRPOConfig(group_size=a.group, max_new_tokens=a.new, micro_batch=2 * a.group, beta=0.04)
    times = []
    for step in range(3):
        t = sync(device)
        model.eval()
        gen = grpo.rollout(model, prompts, cfg, [10**9], tok.pad_token_id, torch.Generator(device).manual_seed(step))
        adv, _ = grpo.group_advantages(torch.tensor(reward([tok.decode(x) for x in gen.tokens])), a.group)
        grpo.update(model, ref, opt, prompts, gen, adv.to(device), cfg, grpo.Timer(), step)
        times.append(sync(device) - t)
    res["ours_step_s"] = sum(times) / 3
    res["speedup"] = res["trl_step_s"] / res["ours_step_s"]
    return res


# ----------------------------------------------------------------------------------------------- report

def markdown(r):
    out = [f"# GPU check ({r['device']}, torch {r['torch']}, {r['when']})", "", f"Command: `{r['command']}`", ""]
    for name, sec in r["sections"].items():
        if "error" in sec:
            out += [f"## {name}: FAILED after {sec['seconds']:.0f} s", "", "```", sec["error"][-1500:], "```", ""]
    lg = r["sections"].get("logits", {})
    if "bf16" in lg:
        out += [f"## bf16 vs fp32 logits ({lg['params'] / 1e6:,.1f}M-parameter random model, {lg['tokens']} tokens, "
                f"logit std {lg['logit_std']:.3f})", "", "| policy | max abs diff | mean abs diff | top-1 agreement | "
                "KL(fp32 ‖ bf16) |", "|---|---|---|---|---|"]
        out += [f"| {k} | {lg[k]['max_abs_diff']:.4f} | {lg[k]['mean_abs_diff']:.4f} | {lg[k]['top1_agreement']:.1%} | "
                f"{lg[k]['kl_fp32_to_bf16']:.2e} |" for k in ("bf16-mixed", "bf16")] + [""]
    tr = r["sections"].get("train", {})
    if "fp32" in tr:
        out += [f"## SFT and GRPO steps per policy ({tr['decoder_layers']} decoder layers; peak memory: "
                f"{'CUDA allocator' if 'cpu' not in r['device'] else 'RSS above the start, noisy at this size'})", "",
                "| policy | SFT losses | SFT step (s) | SFT peak / memory.py (GB) | GRPO grad norms | KL | rollout (s) | "
                "update (s) | GRPO peak / memory.py (GB) | sampler vs update log-prob, max abs diff | master weights | AdamW |",
                "|---" * 12 + "|"]
        for k in precision.POLICIES:
            x = tr[k]
            f = lambda v, fmt=".4f": ", ".join(f"{u:{fmt}}" for u in v)
            out.append(f"| {k} | {f(x['sft_loss'])} | {min(x['sft_s']):.2f} | {x['sft_peak_gb']:.2f} / "
                       f"{x['sft_estimate_gb']:.2f} | {f(x['grpo_grad_norm'], '.3f')} | {f(x['grpo_kl'], '.2e')} | "
                       f"{min(x['rollout_s']):.2f} | {min(x['update_s']):.2f} | {x['grpo_peak_gb']:.2f} / "
                       f"{x['grpo_estimate_gb']:.2f} | {max(x['sampler_vs_update_logp']):.1e} | {x['master_dtype']} | "
                       f"{x['adamw_dtype']} |")
        out.append("")
    ro = r["sections"].get("rollout", {})
    if "table" in ro:
        out += ["## Rollout: ours vs transformers generate", "", f"`{ro['command']}`", "", ro["header"], ""]
        out += ro["table"] + [""]
        if "batch1_tok_s" in ro:
            out += [f"Batch-1 decode: {ro['batch1_tok_s']:.1f} tokens/s = {ro['batch1_gbs']:.0f} GB/s, "
                    f"{ro['batch1_fraction']:.0%} of {ro['bandwidth_gbs']} GB/s.", ""]
    tl = r["sections"].get("trl", {})
    if tl and "error" not in tl:
        out += ["## One GRPO step: ours vs TRL", "", "skipped: " + tl["skipped"] if "skipped" in tl else
                f"TRL {tl['trl_step_s']:.2f} s, ours {tl['ours_step_s']:.2f} s: {tl['speedup']:.2f}x", ""]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="the tiny base's shape instead of 7B-shaped models")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_check"))
    p.add_argument("--sections", default="logits,train,rollout,trl")
    p.add_argument("--train-layers", type=int, default=4, help="decoder layers of the train and trl sections (7B)")
    p.add_argument("--text", type=int, default=200, help="text tokens of a prompt (besides the video)")
    p.add_argument("--group", type=int, default=4, help="G of the GRPO steps")
    p.add_argument("--new", type=int, default=32, help="new tokens per completion in the GRPO steps")
    a = p.parse_args()
    if a.tiny:
        a.text, a.new = min(a.text, 24), min(a.new, 6)
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the comparisons
    else:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    os.makedirs(a.out, exist_ok=True)
    r = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
             torch=torch.__version__, when=time.strftime("%Y-%m-%d %H:%M"), args=vars(a),
             command="bash bench/gpu_check.sh " + " ".join(sys.argv[1:]), sections={})
    for name in a.sections.split(","):
        t = time.perf_counter()
        try:
            r["sections"][name] = globals()[name](a, device)
        except Exception:
            r["sections"][name] = dict(error=traceback.format_exc())
        r["sections"][name]["seconds"] = time.perf_counter() - t
        print(f"{name}: {r['sections'][name]['seconds']:.1f} s" + (" FAILED" if "error" in r["sections"][name]
                                                                  else ""), flush=True)
        with open(os.path.join(a.out, "gpu_check.json"), "w") as f:  # after every section: a kill keeps the rest
            json.dump(r, f, indent=1)
        with open(os.path.join(a.out, "gpu_check.md"), "w") as f:
            f.write(markdown(r) + "\n")
    print(markdown(r))
    return 1 if any("error" in s for s in r["sections"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
