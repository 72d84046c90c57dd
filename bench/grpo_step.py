"""One GRPO step, ours (train_grpo.py's step) vs TRL's GRPOTrainer, on the same tiny Qwen2.5-VL checkpoint, the
same prompts, batch (prompts x G), completion length and thread count. Each method runs in a fresh subprocess, so
its peak RSS is its own.

    /work/main/.venv-bench/bin/python bench/grpo_step.py [--prompts 2] [--group 8] [--new 64] [--steps 4] [--rounds 2]

TEXT PROMPTS ONLY: TRL 1.16's GRPOTrainer feeds images to a VLM (through a processor) but has no video path, so
both sides get the text of the synthetic world's questions (chat format, no video tokens).
A step = tokenise + sample G per prompt + reward + group advantages + policy and frozen-reference forward
(KL, beta 0.04) + backward + AdamW. Every completion runs the full --new tokens in both: our sampler gets an EOS
id that is never sampled, TRL's generate gets min_new_tokens = max_new_tokens (its EOS ids are masked).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def toy_reward(text):
    """A cheap reward that varies within a group (so advantages are not all 0); its value does not matter."""
    return (sum(map(ord, text)) % 7) / 7.0


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ----------------------------------------------------------------------------------------------- ours

def run_ours(a, prompts):
    import torch
    from transformers import AutoTokenizer
    from st_r1 import grpo
    from st_r1.model import VideoLM
    from st_r1.predictions import completion_texts
    base = rss_mb()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = VideoLM.from_pretrained(a.model)
    ref = VideoLM.from_pretrained(a.model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.0, betas=(0.9, 0.99))
    # micro_batch = the whole batch: one forward/backward, as TRL does with per_device_train_batch_size = P*G
    cfg = grpo.GRPOConfig(group_size=a.group, temperature=1.0, max_new_tokens=a.new, beta=0.04, num_iterations=1,
                          micro_batch=a.prompts * a.group)
    no_eos = [len(tok) + 100]  # never sampled: every completion is exactly a.new tokens
    fns, weights = {"toy": lambda t, r: toy_reward(t)}, {"toy": 1.0}
    times, gen_times, widths = [], [], []
    for step in range(a.steps + 1):
        t0 = time.perf_counter()
        texts_in = prompts[step * a.prompts:(step + 1) * a.prompts]
        batch = left_pad([tok.encode(t, add_special_tokens=False) for t in texts_in], tok.pad_token_id)
        widths.append(batch["input_ids"].shape[1])
        model.eval()
        gens = [torch.Generator().manual_seed(step * 1009 + i) for i in range(a.prompts)]
        t1 = time.perf_counter()
        gen = grpo.rollout(model, batch, cfg, no_eos, tok.pad_token_id, gens)
        gen_times.append(time.perf_counter() - t1)
        texts = completion_texts(tok, gen, no_eos)
        _, total = grpo.score(texts, [{}] * len(texts), fns, weights)
        adv, _ = grpo.group_advantages(total, a.group)
        grpo.update(model, ref, opt, batch, gen, adv, cfg, grpo.Timer(), step)
        times.append(time.perf_counter() - t0)
        assert gen.mask.all() and gen.tokens.shape[1] == a.new, "a completion stopped early"
    return dict(times=times, gen_times=gen_times, base_mb=base, peak_mb=rss_mb(),
                prompt_len=f"{min(widths)}-{max(widths)}")


def left_pad(rows, pad_id):
    import torch
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return dict(input_ids=ids, attention_mask=mask)


# ----------------------------------------------------------------------------------------------- TRL

def run_trl(a, prompts):
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    base = rss_mb()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(a.model)  # a tokenizer, not a processor: TRL's text-only path
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32)

    class StepClock(TrainerCallback):
        def __init__(self):
            self.marks = []

        def on_train_begin(self, *args, **kw):
            self.marks.append(time.perf_counter())

        def on_step_end(self, *args, **kw):
            self.marks.append(time.perf_counter())

    gen_times, generate = [], model.generate

    def timed_generate(*args, **kw):  # instrumentation only: TRL calls the policy's generate once per step
        t = time.perf_counter()
        out = generate(*args, **kw)
        gen_times.append(time.perf_counter() - t)
        new = out[:, kw["input_ids"].shape[1]:]
        assert new.shape[1] == a.new and not torch.isin(new, torch.tensor(eos)).any(), "a completion stopped early"
        return out

    model.generate = timed_generate
    eos = [tok.eos_token_id, tok.pad_token_id] + list(model.generation_config.eos_token_id or [])

    def toy(prompts, completions, **kw):
        return [toy_reward(c) for c in completions]

    args = GRPOConfig(
        output_dir=os.path.join(a.tmp, "trl"), report_to="none", save_strategy="no", logging_strategy="no",
        eval_strategy="no", use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=a.prompts * a.group, gradient_accumulation_steps=1, num_generations=a.group,
        max_completion_length=a.new, temperature=1.0, top_p=1.0, top_k=0, beta=0.04, num_iterations=1,
        loss_type="grpo", scale_rewards="group", learning_rate=1e-6, lr_scheduler_type="constant",
        weight_decay=0.0, adam_beta2=0.99, max_grad_norm=1.0, max_steps=a.steps + 1, shuffle_dataset=False,
        generation_kwargs={"min_new_tokens": a.new}, use_vllm=False, dataloader_num_workers=0, seed=0,
        disable_tqdm=True)
    clock = StepClock()
    trainer = GRPOTrainer(model=model, reward_funcs=toy, args=args, processing_class=tok,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]), callbacks=[clock])
    trainer.train()
    times = [b - t for t, b in zip(clock.marks, clock.marks[1:])]
    return dict(times=times, gen_times=gen_times, base_mb=base, peak_mb=rss_mb(), prompt_len=None)


# ----------------------------------------------------------------------------------------------- driver

def child(a):
    import torch
    torch.set_num_threads(a.threads)
    with open(a.prompts_file) as f:
        prompts = json.load(f)
    out = (run_ours if a.run == "ours" else run_trl)(a, prompts)
    out["growth_mb"] = out["peak_mb"] - out["base_mb"]
    print("RESULT " + json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prompts", type=int, default=2, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="G completions per prompt")
    p.add_argument("--new", type=int, default=64, help="completion length (every completion runs all of it)")
    p.add_argument("--steps", type=int, default=4, help="timed steps after one warm-up step")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2, help="alternating fresh runs per method; the best is kept")
    p.add_argument("--run", choices=["ours", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--prompts-file", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run:
        return child(a)

    from st_r1 import chat, data
    from st_r1.tiny import write_tiny_model
    from st_r1.world import make_bench
    tmp = tempfile.mkdtemp()
    model_dir = write_tiny_model(f"{tmp}/model", hidden=a.hidden, layers=a.layers)
    n = a.prompts * (a.steps + 1)
    make_bench(f"{tmp}/bench", n_videos=max(1, -(-n // 8)), n_test=1, progress=False, workers=1)
    rows = data.load_rows(f"{tmp}/bench/train.jsonl")
    prompts = [chat.prompt_text(rows[i % len(rows)]["problem"]) for i in range(n)]  # the text, no video tokens
    with open(f"{tmp}/prompts.json", "w") as f:
        json.dump(prompts, f)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "TOKENIZERS_PARALLELISM": "false"}
    res = {}
    # rounds alternate the methods (ours, TRL, ours, TRL, ...); each keeps its round with the lowest median step,
    # so a burst of load from another job on the shared machine does not decide the ratio
    for rnd in range(a.rounds):
        for name in ("ours", "trl"):
            r = run_child(name, a, model_dir, tmp, env)
            if name not in res or statistics.median(r["timed"]) < statistics.median(res[name]["timed"]):
                res[name] = r
            print(f"round {rnd + 1}, {name}: step times " + ", ".join(f"{t:.2f}" for t in r["times"]),
                  file=sys.stderr)

    import torch
    import transformers
    import trl
    from safetensors import safe_open
    with safe_open(f"{model_dir}/model.safetensors", "pt") as f:
        n_params = sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())
    print(f"\nmodel: tiny Qwen2.5-VL, {n_params / 1e6:.1f}M params, hidden {a.hidden}, {a.layers} layers; "
          f"TEXT prompts only (TRL {trl.__version__} has no video input), {a.prompts} prompts x G={a.group}, "
          f"prompts padded to {res['ours']['prompt_len']} tokens per step, {a.new} new tokens (all rows full "
          f"length), beta 0.04, num_iterations 1, one optimiser step per generation; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {a.threads} threads; {a.steps} timed steps after 1 warm-up step, "
          f"each method in a fresh process, best of {a.rounds} alternating rounds\n")
    print("| method | median step (s) | best step (s) | speed-up (median) | of which generation (s) | "
          "rest of the step (s) | peak RSS (MB) | RSS growth (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    base = statistics.median(res["trl"]["timed"])
    for name, label in (("ours", "st-r1 (train_grpo step)"), ("trl", "TRL GRPOTrainer")):
        r = res[name]
        med = statistics.median(r["timed"])
        gen = statistics.median(r["gen_times"][1:])
        rest = statistics.median([t - g for t, g in zip(r["timed"], r["gen_times"][1:])])
        print(f"| {label} | {med:.2f} | {min(r['timed']):.2f} | {base / med:.2f}x | {gen:.2f} | {rest:.2f} | "
              f"{r['peak_mb']:.0f} | {r['growth_mb']:.0f} |")
    print("\nstep times of the kept rounds (s): " + "; ".join(
        f"{k}: " + ", ".join(f"{t:.2f}" for t in r["times"]) for k, r in res.items()) + " (first = warm-up)")


def run_child(name, a, model_dir, tmp, env):
    cmd = [sys.executable, os.path.abspath(__file__), "--run", name, "--model", model_dir, "--tmp", tmp,
           "--prompts-file", f"{tmp}/prompts.json"] + sys.argv[1:]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode or not lines:
        raise RuntimeError(f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    r = json.loads(lines[-1][7:])
    r["timed"] = r["times"][1:]  # the first step is the warm-up
    if len(r["timed"]) != a.steps or len(r["gen_times"]) != a.steps + 1:
        raise RuntimeError(f"{name}: expected {a.steps + 1} steps and generations, got {r['times']}, {r['gen_times']}")
    return r


def _prod(shape):
    out = 1
    for s in shape:
        out *= s
    return out


if __name__ == "__main__":
    main()
