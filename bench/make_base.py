"""Re-make models/tiny-base from nothing: the stages of bench/pretrain_base.py in the order the shipped base went
through them, each resumable (rerun the same command after a stop), then the export.

    python bench/make_base.py --out runs/make_base          # ~2.8 h on 2 CPU cores
    python bench/make_base.py --out runs/make_base --export models/tiny-base
    python bench/make_base.py --recipe clean --out runs/make_base_clean   # issue 28's two-stage recipe

Why stages: each fixed what the one before could not learn next to the rest (bench/RESULTS.md, "The base model's
pretraining"). 1. narration, close-ups, turns and list skills from random init; 2. the letter lookup alone (text
only: next to the video rows it was never learnt); 3. the video rows back (the narration, forgotten in 2, returns
in ~30 steps, and the turns get better than after 1: both right in 98% of held-out walks instead of 75%); 4. each
request asked in many ways, with unrelated text around it (the narration had been tied to its one prompt: 0% of
the turns right under the bench's route question), and the lookup over the world's words too; 5. more of that
lookup (85% of the text rows); 6. the verdict lines of the bench's chains of thought on random word lists (compare
each option's colours and sides with the list's, pair by pair, then name the option): the step from a recalled
route to its letter, which no lookup of stages 1-5 reached.
Stage 1 of the shipped base had its flags changed while it ran (RESULTS lists them); here it runs with its
final flags throughout, so the re-made base is the same recipe, not the same weights.
"""
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))
from st_r1 import checkpoint, cli  # noqa: E402

# (name, flags): --init is the previous stage's last checkpoint; video pools are rendered once, in stage 1
STAGES = [
    ("1-describe", ["--steps", "4000", "--stop", "3000", "--text-batch", "64", "--easy-floor", "0.4",
                    "--lookup-vocab", "words"]),
    ("2-lookup", ["--batch", "0", "--steps", "1500", "--stop", "400", "--warmup", "50", "--lookup-vocab", "words"]),
    ("3-video", ["--lr", "5e-4", "--warmup", "20", "--steps", "500", "--curriculum", "1", "--easy-floor", "0.4",
                 "--lookup-vocab", "words"]),
    ("4-prompts", ["--lr", "5e-4", "--warmup", "20", "--steps", "800", "--curriculum", "1", "--easy-floor", "0.4",
                   "--prompts", "many", "--lookup-vocab", "words+world", "--lookup-share", "0.7"]),
    ("5-lookup", ["--lr", "5e-4", "--warmup", "20", "--steps", "600", "--curriculum", "1", "--easy-floor", "0.4",
                  "--prompts", "many", "--lookup-vocab", "words+world", "--lookup-share", "0.85"]),
    ("6-compare", ["--lr", "1e-3", "--warmup", "20", "--steps", "500", "--curriculum", "1", "--easy-floor", "0.4",
                   "--prompts", "many", "--lookup-vocab", "words+world", "--lookup-share", "0.85",
                   "--compare-share", "0.75"]),
]

# issue 28's recipe: what stages 4-6 found the base needs (many prompts, the verdict lines), without the lookup,
# which did not carry to the bench (RESULTS), from random init. 1. everything for 4,000 steps: it narrates and
# compares better than the six stages, but picks its reply from the request's words (the bench's route question
# names "every turn", ends with a sentence on tags: "I turn right."); 2. requests that fit every video kind for 30%
# of the video rows, so the video decides what to say, and a sentence on the reply's form after half the requests.
ONE = ["--prompts", "many", "--lookup-vocab", "words+world", "--lookup-share", "0", "--compare-share", "0.75",
       "--easy-floor", "0.4"]
CLEAN = [("1-all", ["--steps", "4000", "--text-batch", "64"] + ONE),
         ("2-neutral", ["--lr", "5e-4", "--warmup", "20", "--steps", "500", "--curriculum", "1",
                        "--neutral-share", "0.7", "--format-share", "0.5", "--eval-every", "125"] + ONE)]
RECIPES = {"stages": STAGES, "clean": CLEAN}


@dataclass
class MakeBase:
    """Run every pretraining stage of the shipped base, then optionally export the last."""
    out: str = "runs/make_base"
    export: str = ""             # write the last stage's model here (e.g. models/tiny-base)
    recipe: str = "clean"        # clean: the shipped base's two stages (issue 28); stages: the six before it
    threads: int = 2


def main(cfg):
    cli.check(cfg.recipe in RECIPES, "recipe", f"must be one of {', '.join(RECIPES)}, got {cfg.recipe!r}")
    stages = RECIPES[cfg.recipe]
    prev = None
    for name, flags in stages:
        out = os.path.join(cfg.out, name)
        stop = int(flags[flags.index("--stop") + 1]) if "--stop" in flags else int(flags[flags.index("--steps") + 1])
        ckpt = checkpoint.latest_checkpoint(out)
        if not (ckpt and int(os.path.basename(ckpt).split("-")[1]) >= stop):
            os.makedirs(out, exist_ok=True)
            for pool in ("walks", "closeups", "turns"):  # rendered once by stage 1, shared by the others
                src = os.path.join(cfg.out, stages[0][0], pool + ".npz")
                if prev and os.path.exists(src) and not os.path.exists(os.path.join(out, pool + ".npz")):
                    os.symlink(os.path.abspath(src), os.path.join(out, pool + ".npz"))
            init = ["--init", prev] if prev else []
            cmd = [sys.executable, "bench/pretrain_base.py", "--out", out, "--threads", str(cfg.threads)] + init + flags
            print("\n$ " + " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, cwd=ROOT, check=True)
        prev = checkpoint.latest_model(out)
    if cfg.export:  # the last stage's model, its log and curves; each earlier stage's log and curves beside them
        subprocess.run([sys.executable, "bench/pretrain_base.py", "--out", os.path.dirname(os.path.dirname(prev)),
                        "--export", cfg.export], cwd=ROOT, check=True)
        from pretrain_base import plot
        for name, _ in stages[:-1]:
            log = os.path.join(cfg.export, f"pretrain_log_{name}.jsonl")
            shutil.copyfile(os.path.join(cfg.out, name, "log.jsonl"), log)
            plot(log, os.path.join(cfg.export, f"pretrain_curves_{name}.png"))


if __name__ == "__main__":
    main(cli.parse(MakeBase))
