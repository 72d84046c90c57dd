"""The main job: synthetic bench -> SFT the tiny base model -> GRPO -> evaluate, for the arms of the paper's ablation
(the base model, answer-only SFT, reverse-thinking CoT SFT, + GRPO with the accuracy reward, + GRPO with the
reverse-thinking reward), an equal-compute control (CoT SFT trained on for GRPO's wall time, on GRPO's walks) and the
paper's weak-start case (GRPO from CoT SFT stopped halfway), over several seeds, ending in one per-task table
(forward vs reverse, 95% CIs) and the paired differences that judge GRPO. Every trained arm is also evaluated with
each question given another video's frames: the column that shows whether the answers come from the video (chance)
or from the text of the question and its options (above chance).

    python bench/main_job.py                      # ~53-65 min on 2 CPU cores; rerun the same command to resume

Every stage is one of the three top-level scripts run as a subprocess with the flags printed above it, so the job
reads as the recipe a user would type. A stage whose result exists is skipped; a stopped training stage continues
from its last checkpoint (--resume) and a stopped evaluation from its predictions file.
"""
import json
import math
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from st_r1 import answers, checkpoint, cli, rewards, scoring  # noqa: E402
from st_r1.runs import files_sha256  # noqa: E402

ARMS = ("untrained", "sft_answer", "sft_cot", "grpo_accuracy", "grpo_reverse", "sft_more", "sft_weak", "grpo_weak")
TITLES = {"untrained": "base model (no SFT)", "sft_answer": "answer-only SFT", "sft_cot": "reverse-thinking CoT SFT",
          "grpo_accuracy": "CoT SFT + GRPO, accuracy reward", "grpo_reverse": "CoT SFT + GRPO, reverse-thinking reward",
          "sft_more": "CoT SFT + more CoT SFT (control: GRPO's walks, its wall time)",
          "sft_weak": "weak start: CoT SFT stopped at step {weak} of {steps}",
          "grpo_weak": "weak start + GRPO, accuracy reward"}
SHORT = {"sft_cot": "CoT SFT", "grpo_accuracy": "GRPO (accuracy)", "grpo_reverse": "GRPO (reverse thinking)",
         "sft_more": "more CoT SFT", "sft_weak": "weak start", "grpo_weak": "weak start + GRPO"}
# the paired difference each arm is judged by: (arm, against) on the same questions and seeds
PAIRS = (("grpo_accuracy", "sft_cot"), ("grpo_reverse", "grpo_accuracy"), ("sft_more", "sft_cot"),
         ("grpo_accuracy", "sft_more"), ("grpo_weak", "sft_weak"))
GRPO_WEIGHTS = {"grpo_accuracy": "format=0.5,accuracy=1", "grpo_weak": "format=0.5,accuracy=1",
                "grpo_reverse": "format=0.5,accuracy=1,reverse_thinking=0.5"}


@dataclass
class Job:
    """The ST-R1 ablation on the synthetic world, end to end, resumable."""
    out: str = "runs/main"
    base: str = "models/tiny-base"  # the pretrained tiny model (bench/pretrain_base.py); every arm starts from it
    seeds: str = "0,1"
    n_videos: int = 500           # training videos (8 questions each); 125 at 600 steps: 63% (RESULTS)
    n_test: int = 50              # held-out videos (8 questions each: 4 tasks x forward / reverse)
    rl_videos: int = 500          # fresh training walks (world seed 1) for GRPO and for its control, never SFT'd on
    sft_steps: int = 600          # 300 gave 37-41% (125-1,000 videos), 600 with 500 videos 81%
    sft_batch: int = 16
    sft_micro: int = 2            # rows per forward/backward: 10% faster a step than 8, the same gradient (RESULTS)
    sft_lr: float = 5e-4          # a pretrained base: lower than from scratch, so SFT does not wash out what it sees
    weak_steps: int = 300         # sft_cot's checkpoint kept as the weak start (the paper's "ST-CoT below base" case)
    grpo_steps: int = 30          # 20 gave +3.0 over CoT SFT, 30 +5.7 (+4.7 on another CPU), 40 +5.7 (RESULTS)
    grpo_prompts: int = 16        # prompts per GRPO step, each with grpo_group samples (4: +0.1 in 20 steps)
    grpo_group: int = 8
    grpo_lr: float = 2e-5         # 4e-5 gave the same, 1e-4 lost 2-8 points (RESULTS: the GRPO sweep)
    grpo_temperature: float = 0.7  # at 1.0 the tiny model's sampled chains of thought were right 6-25% of the time
    grpo_beta: float = 0.04
    grpo_micro: int = 8           # completions per update pass (one G = 8 group): 17-22% faster than 32 (RESULTS)
    grpo_oversample: int = 2      # DAPO's dynamic sampling: draw 2x the prompts, train the groups with reward spread
    grpo_entropy_frac: float = 0.2  # the policy gradient on the top 20% of tokens by entropy (RESULTS: forking tokens)
    weak_prompts: int = 32        # the weak start's GRPO: 32 prompts x G = 4, no oversampling (few of its groups are
    weak_group: int = 4           # all-equal, ~10%): +8.3 vs +6.3 for 16 x 8 x 2 on seed 0, 15 s a step vs 19 (RESULTS)
    more_sft_steps: int = 280     # the control: GRPO (accuracy)'s wall time in CoT SFT steps (at 217db40 its 30 steps
                                  # took 418-476 s, a control step 1.54 s; 4c0f83e made GRPO ~18% faster, SFT ~15%)
    more_sft_lr: float = 5e-5     # constant: sft_cot's final lr
    max_new_tokens: int = 256     # the longest reference CoT on the world is ~230 tokens
    eval_batch: int = 64          # 8% faster than 32 on 1 thread (28.0 s vs 30.6 s for 400 CoT replies)
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


def set_aside_stale(model, out):
    """When the scores at out are of another model than model (a rerun with more steps trains past the checkpoint
    that was scored), move them and their predictions aside (suffix: the old checkpoint's name) so they are scored
    again, instead of the old number standing in the table. Returns the paths moved."""
    if not os.path.exists(out):
        return []
    with open(out) as f:
        preds = json.load(f).get("predictions", "")
    meta = preds + ".meta.json"
    if not os.path.exists(meta):
        return []
    with open(meta) as f:
        m = json.load(f)
    scored = m.get("model", "")
    if os.path.realpath(scored) == os.path.realpath(model):
        return []
    weights = sorted(f for f in os.listdir(model) if f.endswith(".safetensors")) if os.path.isdir(model) else []
    if weights and m.get("weights_sha256") == files_sha256([os.path.join(model, f) for f in weights]):
        return []  # the same weights, moved (another clone, a renamed runs folder)
    tag = os.path.basename(os.path.dirname(os.path.normpath(scored))) or "old"
    moved = [p for p in (out, preds, meta) if os.path.exists(p)]
    for p in moved:
        os.replace(p, f"{p}.{tag}")
    print(f"[stale] {out} scored {scored}, not {model}: moved aside as *.{tag}")
    return moved


def evaluate(model, bench, out, job, env):
    set_aside_stale(model, out)
    if os.path.exists(out):
        print(f"[done] {out}")
    else:
        run(["evaluate.py", "--model", model, "--bench", bench, "--out", out, "--batch-size", str(job.eval_batch),
             "--max-new-tokens", str(job.max_new_tokens)], env)
    with open(out) as f:
        return json.load(f)


def one_seed(job, seed, world, env):
    """Every arm for one seed; returns {arm: scores} and {arm: scores with another video's frames}."""
    d, test, other = os.path.join(job.out, f"seed{seed}"), os.path.join(world, "test.jsonl"), other_walks(world, seed)
    rl = os.path.join(world, "rl")
    base = job.base if os.path.isabs(job.base) else os.path.join(ROOT, job.base)
    if not os.path.exists(os.path.join(base, "config.json")):
        raise SystemExit(f"{base}: no base model; make it with python bench/pretrain_base.py (see its docstring)")
    sft = ["--model", base, "--bench", world, "--seed", str(seed), "--batch-size", str(job.sft_batch),
           "--micro-batch", str(job.sft_micro), "--lr", str(job.sft_lr), "--eval-every", "0"]
    # GRPO reads only questions and answers: its prompts come from fresh walks (the CoT of a walk SFT saw is known)
    grpo = ["--bench", world, "--train-file", os.path.join(rl, "train_mcq.jsonl"), "--seed", str(seed),
            "--lr", str(job.grpo_lr), "--beta", str(job.grpo_beta), "--max-new-tokens", str(job.max_new_tokens),
            "--save-every", "10", "--temperature", str(job.grpo_temperature), "--micro-batch", str(job.grpo_micro),
            "--entropy-frac", str(job.grpo_entropy_frac)]
    batches = {arm: ["--prompts-per-step", str(job.grpo_prompts), "--group-size", str(job.grpo_group),
                     "--oversample", str(job.grpo_oversample)] for arm in ("grpo_accuracy", "grpo_reverse")}
    batches["grpo_weak"] = ["--prompts-per-step", str(job.weak_prompts), "--group-size", str(job.weak_group),
                            "--oversample", "1"]
    arms = set(job.arms.split(","))
    models = {"untrained": base}
    if "sft_answer" in arms:
        models["sft_answer"] = train("train_sft.py", os.path.join(d, "sft_answer"), job.sft_steps,
                                     sft + ["--answer-only", "--save-every", "50"], env)
    if arms & set(ARMS[2:]):
        every = math.gcd(50, job.weak_steps)  # a checkpoint at weak_steps, kept when later ones are pruned
        models["sft_cot"] = train("train_sft.py", os.path.join(d, "sft_cot"), job.sft_steps,
                                  sft + ["--save-every", str(every), "--keep-every", str(job.weak_steps)], env)
        if arms & {"sft_weak", "grpo_weak"}:
            models["sft_weak"] = os.path.join(d, "sft_cot", f"ckpt-{job.weak_steps:08d}", "model")
            if not os.path.isdir(models["sft_weak"]):
                raise SystemExit(f"{models['sft_weak']} is missing (sft_cot was trained before it was kept): "
                                 f"remove {os.path.join(d, 'sft_cot')} to retrain it, or leave out the weak arms")
    # the authors' released code rewards format + accuracy; ST-R1 (paper Sec. 3.3) adds the reverse-thinking reward
    for arm, start in (("grpo_accuracy", "sft_cot"), ("grpo_reverse", "sft_cot"), ("grpo_weak", "sft_weak")):
        if arm in arms:
            models[arm] = train("train_grpo.py", os.path.join(d, arm), job.grpo_steps,
                                grpo + batches[arm] + ["--model", models[start], "--reward-weights",
                                                       GRPO_WEIGHTS[arm]], env)
    if "sft_more" in arms:  # the equal-compute control: the same fresh walks, with the world's CoT written out
        models["sft_more"] = train("train_sft.py", os.path.join(d, "sft_more"), job.more_sft_steps,
                                   ["--model", models["sft_cot"], "--bench", world, "--train-file",
                                    os.path.join(rl, "train.jsonl"), "--seed", str(seed), "--batch-size",
                                    str(job.sft_batch), "--micro-batch", str(job.sft_micro), "--lr",
                                    str(job.more_sft_lr), "--warmup", "0", "--min-lr-ratio", "1", "--eval-every", "0",
                                    "--save-every", "50"], env)
    models = {arm: m for arm, m in models.items() if arm == "untrained" or arm in arms}
    scores = {arm: evaluate(m, test, os.path.join(d, arm + ".json"), job, env) for arm, m in models.items()}
    blind = {arm: evaluate(m, other, os.path.join(d, arm + ".other_walk.json"), job, env)
             for arm, m in models.items() if arm != "untrained"}
    return scores, blind


def other_walks(world, seed):
    """The test split with each question shown another walk's frames (same question, options and answer), a walk
    drawn for that question alone (seeded): when all the questions of a walk shared one other walk, as before
    2026-12-05, their answers went together, and the score moved with the pairing (21-33% for one model over three
    pairings) far more than its interval over answers said."""
    other = os.path.join(world, f"test_other_walk_s{seed}.jsonl")
    if not os.path.exists(other):
        with open(os.path.join(world, "test.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        videos = list(dict.fromkeys(r["video"] for r in rows))
        place = {v: i for i, v in enumerate(videos)}
        rng = random.Random(seed)
        with open(other + ".tmp", "w") as g:
            for r in rows:
                k = (place[r["video"]] + rng.randrange(1, len(videos))) % len(videos)  # never its own
                g.write(json.dumps(dict(r, video=videos[k])) + "\n")
        os.replace(other + ".tmp", other)
    return other


def shown_walk_reader(test_rows, world, seed):
    """% of the multiple-choice questions of the another-walk file a reader of the SHOWN walk gets right: it picks
    the option whose turns and colours agree with that walk's place by place, ties split (its expected score).
    The column's chance on this very pairing: a model that answers from the video it is given scores it."""
    from st_r1 import world as W
    events = {r["video"]: r["events"] for r in test_rows}
    with open(other_walks(world, seed)) as f:
        rows = [r for r in map(json.loads, f) if r["task"] != "route"]
    got = 0.0
    for r in rows:
        shown = W.key_words(W.project(events[r["video"]]["reverse" if r["reverse"] else "forward"], r["task"]))
        agree = {L: sum(a == b for a, b in zip(W.key_words(W.parse_option(t)), shown)) for L, t in r["options"].items()}
        best = [L for L, n in agree.items() if n == max(agree.values())]
        got += (r["original_answer"] in best) / len(best)
    return 100 * got / len(rows)


def make_world(job, world):
    """The synthetic bench and a second set of training walks for GRPO and its control (world/rl)."""
    if not os.path.exists(os.path.join(world, "test.jsonl")):
        from st_r1.world import make_bench
        # 16 rendered frames: the model samples 8, and the world centres every event on one of them
        make_bench(world, n_videos=job.n_videos, n_test=job.n_test, seed=0, split="both", frames=16,
                   route_len=job.route_len or None, landmarks=job.landmarks or None)
    rl = os.path.join(world, "rl")
    if not os.path.exists(os.path.join(rl, "train.jsonl")):
        from st_r1.world import make_bench
        # another world seed: other maps and walks than the SFT rows and the test split
        make_bench(rl, n_videos=job.rl_videos, seed=1, split="train", frames=16,
                   route_len=job.route_len or None, landmarks=job.landmarks or None)
    mcq = os.path.join(rl, "train_mcq.jsonl")
    if not os.path.exists(mcq):  # GRPO's rows: the route task has no letter to reward
        with open(os.path.join(rl, "train.jsonl")) as f, open(mcq + ".tmp", "w") as g:
            g.writelines(line for line in f if json.loads(line)["task"] != "route")
        os.replace(mcq + ".tmp", mcq)


def stages_done(job, seeds):
    n = 0
    for seed in seeds:
        d = os.path.join(job.out, f"seed{seed}")
        n += sum(os.path.exists(os.path.join(d, arm + ".json")) for arm in ARMS)
        n += sum(os.path.exists(os.path.join(d, arm + ".other_walk.json")) for arm in ARMS[1:])
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


def flags(per_seed, arm):
    """The arm's right / wrong flag per multiple-choice question, seed after seed (aligned across arms)."""
    return [r["correct"] for scores in per_seed for r in sorted(scores[arm]["rows"], key=lambda r: r["index"])
            if "correct" in r]


def conclusions(job, seeds, arm, rows):
    """Of the arm's multiple-choice replies (all seeds; rows: the test split): % whose chain of thought concludes with
    the right letter, and % whose <answer> letter is the one its chain concluded ("-" for an arm without chains)."""
    right = same = found = n = 0
    for seed in seeds:
        path = os.path.join(job.out, f"seed{seed}", arm + ".predictions.jsonl")
        with open(path) as f:
            for line in f:
                p = json.loads(line)
                row = rows[p["index"]]
                if row["task"] == "route":
                    continue
                said = rewards.concluded_letter(p["prediction"])
                n += 1
                found += bool(said)
                right += bool(said) and said == row["original_answer"]
                same += bool(said) and answers.answer_letter(p["prediction"]) == said
    return f"{100 * right / n:.1f} / {100 * same / n:.1f}" if found else "-"


def train_minutes(job, seeds, arm):
    """Mean over seeds of the arm's training steps' wall time (its log.jsonl), in minutes."""
    total = []
    for seed in seeds:
        log = os.path.join(job.out, f"seed{seed}", arm, "log.jsonl")
        if os.path.exists(log):
            with open(log) as f:
                total.append(sum(json.loads(line).get("step_s", 0.0) for line in f if line.strip()) / 60)
    return f"{sum(total) / len(total):.1f}" if total else "-"


def table(job, per_seed, seeds, blind, world):
    cols = [(t, d) for t in scoring.TASKS for d in ("forward", "reverse")]
    with open(os.path.join(world, "test.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    head = ("| model | " + " | ".join(f"{t} {d[:3]}" for t, d in cols) +
            " | MC all [95% CI] | MC all per seed | MC all, another video's frames [95% CI] | chain concludes right / "
            "answer is its conclusion, % | train min |")
    lines = [head, "|" + "---|" * (len(cols) + 6)]
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
        title = TITLES[arm].format(weak=job.weak_steps, steps=job.sft_steps)
        lines.append(f"| {title} | " + " | ".join(cells) +
                     f" | **{100 * o['accuracy']:.1f}** [{100 * o['ci_low']:.1f}, {100 * o['ci_high']:.1f}] | "
                     f"{seeds_acc} | {other} | {conclusions(job, seeds, arm, rows)} | "
                     f"{train_minutes(job, seeds, arm)} |")
    n_cell = pooled(per_seed, "untrained")[0].get("direction/forward", {}).get("n", 0)
    notes = (f"\nSeeds {seeds}; multiple-choice cells: accuracy % over {n_cell} answers (the test questions x seeds; "
             "chance is 25% for a model that answers in the format, 0% for one that does not); route cells: the "
             "deterministic rubric score (0-5, mean of direction / landmark / semantic). 95% Wilson interval on the "
             "pooled answers; per-cell intervals are in each seed's scores JSON. Another video's frames: the same "
             "model and questions, each question shown the frames of another test walk drawn for it alone "
             "(chance if the answers come from the video; a reader of the shown walk, which picks the option that "
             "agrees with that walk's turns and colours place by place, scores "
             + " / ".join(f"{shown_walk_reader(rows, world, s):.1f}" for s in seeds) + "% on these pairings, by seed). "
             "Chain: the letter of the last \"correct answer is\" in the chain of thought "
             "(rewards.concluded_letter), against the truth and against the reply's <answer>. Train min: the arm's "
             "own training steps, mean over seeds (GRPO and the control start from CoT SFT's model).")
    pairs = ["", "| A - B, multiple choice, all seeds | difference, points | paired 95% CI | questions only A / "
             "only B got right |", "|---|---|---|---|"]
    for arm, ref in PAIRS:
        if pooled(per_seed, arm)[0] and pooled(per_seed, ref)[0]:
            p = scoring.paired_diff(flags(per_seed, arm), flags(per_seed, ref))
            pairs.append(f"| {SHORT[arm]} - {SHORT[ref]} | **{100 * p['diff']:+.1f}** | "
                         f"[{100 * p['ci_low']:+.1f}, {100 * p['ci_high']:+.1f}] | {p['only_a']} / {p['only_b']} |")
    pairs.append("\nPaired: the same questions and seeds for A and B (Newcombe's interval for paired proportions, "
                 "scoring.paired_diff); only the questions one got right and the other wrong move it.")
    return "\n".join(lines) + "\n" + notes + ("\n" + "\n".join(pairs) if len(pairs) > 4 else "")  # a pair row is there


def _smooth(xs, k=5):
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def plot(job, seeds, path):
    """Curves of the GRPO runs (matplotlib is a bench-only extra: skipped if missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -r bench/requirements.txt): no plot")
        return
    panels = (("reward", "mean reward (its own weights)"), ("accuracy", "sampled answer accuracy"),
              ("frac_zero_std", "groups with no reward spread"), ("entropy", "per-token entropy (nats)"))
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for arm, color in (("grpo_accuracy", "tab:blue"), ("grpo_reverse", "tab:red"), ("grpo_weak", "tab:green")):
        for k, seed in enumerate(seeds):
            log = os.path.join(job.out, f"seed{seed}", arm, "log.jsonl")
            if not os.path.exists(log):
                continue
            with open(log) as f:
                recs = [json.loads(line) for line in f if line.strip()]
            steps = [r["step"] for r in recs]
            label = TITLES[arm].replace("CoT SFT + GRPO, ", "") if k == 0 else None
            for ax, (key, _) in zip(axes, panels):  # faint: each step; bold: mean of the last 5 steps
                ys = [r[key] for r in recs]
                ax.plot(steps, ys, color=color, alpha=0.25, ls="-:"[k % 2])
                ax.plot(steps, _smooth(ys), color=color, alpha=0.9, ls="-:"[k % 2], label=label)
    for ax, (_, name) in zip(axes, panels):
        ax.set_xlabel("GRPO step")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"GRPO on the synthetic world (seeds {', '.join(map(str, seeds))}: solid / dotted; bold: mean of "
                 "5 steps)", fontsize=10)
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
            arms = set(job.arms.split(",")) - {"untrained"}  # each: trained, evaluated, evaluated blind
            per_seed = 1 + 3 * len(arms) - ("sft_weak" in arms)  # sft_weak is a checkpoint of sft_cot
            with tqdm(total=len(seeds) * per_seed, desc="main job (stages)") as bar:
                while not all(f.ready() for f in futures):  # progress: the stage results written so far
                    time.sleep(5)
                    bar.update(stages_done(job, seeds) - bar.n)
            results = [f.get() for f in futures]  # re-raises a seed's error with its traceback
    per_seed, blind = [r[0] for r in results], [r[1] for r in results]
    text = (f"## Main job: the ST-R1 ablation on the synthetic world\n\nCommand: `python bench/main_job.py"
            f"{''.join(' ' + a for a in sys.argv[1:])}`".replace(".py `", ".py`") + f" ({(time.time() - t0) / 60:.1f} min of this invocation)\n\n"
            + table(job, per_seed, seeds, blind, world) + "\n")
    print("\n" + text)
    with open(os.path.join(job.out, "results.md"), "w") as f:
        f.write(text)
    plot(job, seeds, os.path.join(job.out, "grpo_curves.png"))


if __name__ == "__main__":
    main(cli.parse(Job))
