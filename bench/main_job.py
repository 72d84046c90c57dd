"""The main job: synthetic bench -> SFT the tiny base model -> GRPO -> evaluate, for the five arms of the paper's
ablation (the base model, answer-only SFT, reverse-thinking CoT SFT, + GRPO with the accuracy reward, + GRPO with the
reverse-thinking reward), over several seeds, ending in one per-task table (forward vs reverse, 95% CIs). Every
trained arm is also evaluated with each question given another video's frames: the column that shows whether the
answers come from the video (chance) or from the text of the question and its options (above chance).

    python bench/main_job.py                      # ~35 min on 2 CPU cores; rerun the same command to resume

Every stage is one of the three top-level scripts run as a subprocess with the flags printed above it, so the job
reads as the recipe a user would type. A stage whose result exists is skipped; a stopped training stage continues
from its last checkpoint (--resume) and a stopped evaluation from its predictions file.
"""
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from st_r1 import checkpoint, cli, scoring  # noqa: E402

ARMS = ("untrained", "sft_answer", "sft_cot", "grpo_accuracy", "grpo_reverse")
TITLES = {"untrained": "base model (no SFT)", "sft_answer": "answer-only SFT", "sft_cot": "reverse-thinking CoT SFT",
          "grpo_accuracy": "CoT SFT + GRPO, accuracy reward", "grpo_reverse": "CoT SFT + GRPO, reverse-thinking reward"}


@dataclass
class Job:
    """The ST-R1 ablation on the synthetic world, end to end, resumable."""
    out: str = "runs/main"
    base: str = "models/tiny-base"  # the pretrained tiny model (bench/pretrain_base.py); every arm starts from it
    seeds: str = "0,1"
    n_videos: int = 500           # training videos (8 questions each); 125 at 600 steps: 63% (RESULTS)
    n_test: int = 50              # held-out videos (8 questions each: 4 tasks x forward / reverse)
    sft_steps: int = 600          # 300 gave 37-41% (125-1,000 videos), 600 with 500 videos 81%
    sft_batch: int = 16
    sft_lr: float = 5e-4          # a pretrained base: lower than from scratch, so SFT does not wash out what it sees
    grpo_steps: int = 20
    grpo_prompts: int = 4         # prompts per GRPO step, each with grpo_group samples
    grpo_group: int = 8
    grpo_lr: float = 1e-5         # larger lost CoT SFT's accuracy within the 20 steps (RESULTS: the GRPO sweep)
    grpo_temperature: float = 0.7  # at 1.0 the tiny model's sampled chains of thought were right 6-25% of the time
    grpo_beta: float = 0.04
    max_new_tokens: int = 256     # the longest reference CoT on the world is ~230 tokens
    eval_batch: int = 32
    route_len: int = 0            # the world's difficulty dial (0: the default world, 3 straight segments and 1-2
    landmarks: int = 0            # landmarks per walk); --route-len 3..4, --landmarks 1..3 (bench/RESULTS.md ladder)
    arms: str = ",".join(ARMS)    # a subset, e.g. "sft_cot" for the ladder (the base model is always evaluated)
    jobs: int = 2                 # seeds trained side by side, one process each (tiny models use 1 core best)
    threads: int = 2              # CPU threads in all, split over the jobs


def run(cmd, env):
    print("\n$ " + " ".join(cmd), flush=True)
    subprocess.run([sys.executable] + cmd, cwd=ROOT, env=env, check=True, stdout=sys.stdout, stderr=sys.stderr)


def train(script, out, steps, flags, env):
    """A training stage: skipped when its last checkpoint is the final step, else (re)started with --resume."""
    ckpt = checkpoint.latest_checkpoint(out)
    if ckpt and int(os.path.basename(ckpt).split("-")[1]) >= steps:
        print(f"[done] {out}")
    else:
        run([script, "--out", out, "--steps", str(steps), "--resume"] + flags, env)
    return checkpoint.latest_model(out)


def evaluate(model, bench, out, job, env):
    if os.path.exists(out):
        print(f"[done] {out}")
    else:
        run(["evaluate.py", "--model", model, "--bench", bench, "--out", out, "--batch-size", str(job.eval_batch),
             "--max-new-tokens", str(job.max_new_tokens)], env)
    with open(out) as f:
        return json.load(f)


def one_seed(job, seed, world, env):
    """All five arms for one seed; returns {arm: scores} and {arm: scores with another video's frames}."""
    d, test, other = os.path.join(job.out, f"seed{seed}"), os.path.join(world, "test.jsonl"), \
        os.path.join(world, "test_other_video.jsonl")
    base = job.base if os.path.isabs(job.base) else os.path.join(ROOT, job.base)
    if not os.path.exists(os.path.join(base, "config.json")):
        raise SystemExit(f"{base}: no base model; make it with python bench/pretrain_base.py (see its docstring)")
    sft = ["--model", base, "--bench", world, "--seed", str(seed), "--batch-size", str(job.sft_batch),
           "--lr", str(job.sft_lr), "--eval-every", "0", "--save-every", "50"]
    grpo = ["--bench", world, "--train-file", os.path.join(world, "train_mcq.jsonl"), "--seed", str(seed),
            "--prompts-per-step", str(job.grpo_prompts), "--group-size", str(job.grpo_group), "--lr", str(job.grpo_lr),
            "--beta", str(job.grpo_beta), "--max-new-tokens", str(job.max_new_tokens), "--save-every", "10",
            "--temperature", str(job.grpo_temperature),
            "--micro-batch", str(job.grpo_prompts * job.grpo_group)]
    arms = set(job.arms.split(","))
    models = {"untrained": base}
    if "sft_answer" in arms:
        models["sft_answer"] = train("train_sft.py", os.path.join(d, "sft_answer"), job.sft_steps,
                                     sft + ["--answer-only"], env)
    if any(a in arms for a in ARMS[2:]):
        models["sft_cot"] = train("train_sft.py", os.path.join(d, "sft_cot"), job.sft_steps, sft, env)
    # the authors' released code rewards format + accuracy; ST-R1 (paper Sec. 3.3) adds the reverse-thinking reward
    for arm, weights in (("grpo_accuracy", "format=0.5,accuracy=1"),
                         ("grpo_reverse", "format=0.5,accuracy=1,reverse_thinking=0.5")):
        if arm in arms:
            models[arm] = train("train_grpo.py", os.path.join(d, arm), job.grpo_steps,
                                grpo + ["--model", models["sft_cot"], "--reward-weights", weights], env)
    scores = {arm: evaluate(m, test, os.path.join(d, arm + ".json"), job, env) for arm, m in models.items()}
    blind = {arm: evaluate(m, other, os.path.join(d, arm + ".other_video.json"), job, env)
             for arm, m in models.items() if arm != "untrained"}
    return scores, blind


def make_world(job, world):
    """The synthetic bench, its multiple-choice training rows for GRPO (routes have no letter to reward), and the
    test split with every question given the next video's frames (same questions, options and answers)."""
    if not os.path.exists(os.path.join(world, "test.jsonl")):
        from st_r1.world import make_bench
        # 16 rendered frames: the model samples 8, and the world centres every event on one of them
        make_bench(world, n_videos=job.n_videos, n_test=job.n_test, seed=0, split="both", frames=16,
                   route_len=job.route_len or None, landmarks=job.landmarks or None)
    mcq = os.path.join(world, "train_mcq.jsonl")
    if not os.path.exists(mcq):
        with open(os.path.join(world, "train.jsonl")) as f, open(mcq + ".tmp", "w") as g:
            g.writelines(line for line in f if json.loads(line)["task"] != "route")
        os.replace(mcq + ".tmp", mcq)
    other = os.path.join(world, "test_other_video.jsonl")
    if not os.path.exists(other):
        with open(os.path.join(world, "test.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        videos = list(dict.fromkeys(r["video"] for r in rows))
        nxt = {v: videos[(i + 1) % len(videos)] for i, v in enumerate(videos)}
        with open(other + ".tmp", "w") as g:
            g.writelines(json.dumps(dict(r, video=nxt[r["video"]])) + "\n" for r in rows)
        os.replace(other + ".tmp", other)


def stages_done(job, seeds):
    n = 0
    for seed in seeds:
        d = os.path.join(job.out, f"seed{seed}")
        n += sum(os.path.exists(os.path.join(d, arm + ".json")) for arm in ARMS)
        n += sum(os.path.exists(os.path.join(d, arm + ".other_video.json")) for arm in ARMS[1:])
        n += sum(checkpoint.latest_checkpoint(os.path.join(d, arm)) is not None for arm in ARMS[1:])
    return n


# ----------------------------------------------------------------------------- the table


def pooled(per_seed, arm):
    """Per-row results of an arm pooled over seeds, regrouped like scoring.score_rows (seed x question = one trial)."""
    mcq, route = {}, {}
    for scores in per_seed:
        if arm not in scores:
            return {}, {}
        for r in scores[arm]["rows"]:
            direction = "reverse" if r["reverse"] else "forward"
            for g in ("overall", direction, r["task"], f"{r['task']}/{direction}"):
                if "correct" in r:
                    mcq.setdefault(g, []).append(r["correct"])
                else:
                    route.setdefault(g, []).append(r["rubric"])
    return ({g: scoring.acc_stat(v) for g, v in mcq.items()}, {g: scoring.mean_stat(v) for g, v in route.items()})


def table(per_seed, seeds, blind):
    cols = [(t, d) for t in scoring.TASKS for d in ("forward", "reverse")]
    head = ("| model | " + " | ".join(f"{t} {d[:3]}" for t, d in cols) +
            " | MC all [95% CI] | MC all per seed | MC all, another video's frames [95% CI] |")
    lines = [head, "|" + "---|" * (len(cols) + 4)]
    for arm in ARMS:
        mcq, route = pooled(per_seed, arm)
        if not mcq:  # an arm left out with --arms
            continue
        b = pooled(blind, arm)[0].get("overall")
        other = f"{100 * b['accuracy']:.1f} [{100 * b['ci_low']:.1f}, {100 * b['ci_high']:.1f}]" if b else "-"
        cells = []
        for t, d in cols:
            s = (route if t == "route" else mcq).get(f"{t}/{d}")
            cells.append("-" if not s else f"{s['score']:.2f}" if t == "route" else f"{100 * s['accuracy']:.0f}")
        o = mcq["overall"]
        seeds_acc = " / ".join(f"{100 * s[arm]['overall']['accuracy']:.1f}" for s in per_seed)
        lines.append(f"| {TITLES[arm]} | " + " | ".join(cells) +
                     f" | **{100 * o['accuracy']:.1f}** [{100 * o['ci_low']:.1f}, {100 * o['ci_high']:.1f}] | "
                     f"{seeds_acc} | {other} |")
    n_cell = pooled(per_seed, "untrained")[0].get("direction/forward", {}).get("n", 0)
    notes = (f"\nSeeds {seeds}; multiple-choice cells: accuracy % over {n_cell} answers (the test questions x seeds; "
             "chance is 25% for a model that answers in the format, 0% for one that does not); route cells: the "
             "deterministic rubric score (0-5, mean of direction / landmark / semantic). 95% Wilson interval on the "
             "pooled answers; per-cell intervals are in each seed's scores JSON. Last column: the same model and "
             "questions, each question shown the next test video's frames (chance if the answers come from the video).")
    return "\n".join(lines) + "\n" + notes


def plot(job, seeds, path):
    """Reward and accuracy curves of the GRPO runs (matplotlib is a bench-only extra: skipped if missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -r bench/requirements.txt): no plot")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for arm, color in (("grpo_accuracy", "tab:blue"), ("grpo_reverse", "tab:red")):
        for k, seed in enumerate(seeds):
            log = os.path.join(job.out, f"seed{seed}", arm, "log.jsonl")
            if not os.path.exists(log):
                continue
            with open(log) as f:
                recs = [json.loads(line) for line in f if line.strip()]
            steps = [r["step"] for r in recs]
            label = TITLES[arm].replace("CoT SFT + GRPO, ", "") if k == 0 else None
            axes[0].plot(steps, [r["reward"] for r in recs], color=color, alpha=0.8, ls="-:"[k % 2], label=label)
            axes[1].plot(steps, [r["accuracy"] for r in recs], color=color, alpha=0.8, ls="-:"[k % 2], label=label)
    for ax, name in zip(axes, ("mean reward (its own weights)", "sampled answer accuracy")):
        ax.set_xlabel("GRPO step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"GRPO on the synthetic world (seeds {', '.join(map(str, seeds))}: solid / dotted)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def seed_worker(job, seed, world, env):
    """One seed in its own process, its stages' output (progress bars included) in OUT/seedS/job.log."""
    os.makedirs(os.path.join(job.out, f"seed{seed}"), exist_ok=True)
    sys.stdout = sys.stderr = open(os.path.join(job.out, f"seed{seed}", "job.log"), "a", buffering=1)
    return one_seed(job, seed, world, env)


def main(job):
    t0 = time.time()
    seeds = [int(s) for s in job.seeds.split(",")]
    jobs = max(1, min(job.jobs, len(seeds)))
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, job.threads // jobs)), PYTHONUNBUFFERED="1")
    world = os.path.join(job.out, "world")
    make_world(job, world)
    if jobs == 1:
        results = [one_seed(job, seed, world, env) for seed in seeds]
    else:
        import multiprocessing as mp
        from tqdm import tqdm
        print(f"{len(seeds)} seeds, {jobs} at a time; each seed's stages log to {job.out}/seed*/job.log")
        with mp.get_context("spawn").Pool(jobs) as pool:
            futures = [pool.apply_async(seed_worker, (job, seed, world, env)) for seed in seeds]
            trained = set(job.arms.split(",")) - {"untrained"}  # each: trained, evaluated, evaluated blind
            with tqdm(total=len(seeds) * (1 + 3 * len(trained)), desc="main job (stages)") as bar:
                while not all(f.ready() for f in futures):  # progress: the stage results written so far
                    time.sleep(5)
                    bar.update(stages_done(job, seeds) - bar.n)
            results = [f.get() for f in futures]  # re-raises a seed's error with its traceback
    per_seed, blind = [r[0] for r in results], [r[1] for r in results]
    text = (f"## Main job: the ST-R1 ablation on the synthetic world\n\nCommand: `python bench/main_job.py"
            f"{''.join(' ' + a for a in sys.argv[1:])}`".replace(".py `", ".py`") + f" ({(time.time() - t0) / 60:.1f} min of this invocation)\n\n"
            + table(per_seed, seeds, blind) + "\n")
    print("\n" + text)
    with open(os.path.join(job.out, "results.md"), "w") as f:
        f.write(text)
    plot(job, seeds, os.path.join(job.out, "grpo_curves.png"))


if __name__ == "__main__":
    main(cli.parse(Job))
