"""Re-make models/tiny-base from random init: the two stages of bench/pretrain_base.py below, each resumable (rerun
the same command after a stop), then the export with each stage's log and curves.

    python bench/make_base.py --out runs/make_base                             # ~80 min on 2 CPU cores
    python bench/make_base.py --out runs/make_base --export models/tiny-base   # then write the shipped base

What the base needs (found by the six stages of the base shipped before 2026-12-05; bench/RESULTS.md "The base
model's pretraining" has them, commit 094b7ec the script that replayed them): narration of walks under many
requests, the close-ups and on-the-spot turns as a curriculum, and the verdict lines of the bench's chains of
thought on word lists. The letter lookup and the list skills did not carry to the bench and are left out.
1. everything above for 4,000 steps: it narrates, sees and compares as well as the old base or better, but picks
   its reply from the request's words: under the bench's route question ("... naming every turn you take ...",
   then a sentence on tags) it answers "I turn right." to most walks (14% of them with both turns right);
2. 500 steps with requests that fit every video kind for 70% of the video rows (the video, not a word, says whether
   to narrate, name a landmark or a turn) and a sentence on the reply's form after half the requests: 97%.
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

# (name, flags): each stage starts from the previous one's last checkpoint; the video pools are rendered once, in 1
BOTH = ["--prompts", "many", "--lookup-vocab", "words+world", "--lookup-share", "0", "--compare-share", "0.75",
        "--easy-floor", "0.4"]
STAGES = [("1-all", ["--steps", "4000", "--text-batch", "64"] + BOTH),
          ("2-neutral", ["--lr", "5e-4", "--warmup", "20", "--steps", "500", "--curriculum", "1",
                         "--neutral-share", "0.7", "--format-share", "0.5", "--eval-every", "125"] + BOTH)]


@dataclass
class MakeBase:
    """Run the base's pretraining stages in order, then optionally export the last."""
    out: str = "runs/make_base"
    export: str = ""             # write the last stage's model here (e.g. models/tiny-base), with every stage's log
    threads: int = 2


def main(cfg):
    prev = None
    for name, flags in STAGES:
        out = os.path.join(cfg.out, name)
        steps = int(flags[flags.index("--steps") + 1])
        ckpt = checkpoint.latest_checkpoint(out)
        if not (ckpt and int(os.path.basename(ckpt).split("-")[1]) >= steps):
            os.makedirs(out, exist_ok=True)
            for pool in ("walks", "closeups", "turns"):  # rendered once by stage 1, shared by the next
                src = os.path.join(cfg.out, STAGES[0][0], pool + ".npz")
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
        for name, _ in STAGES[:-1]:
            log = os.path.join(cfg.export, f"pretrain_log_{name}.jsonl")
            shutil.copyfile(os.path.join(cfg.out, name, "log.jsonl"), log)
            subprocess.run([sys.executable, "bench/pretrain_base.py", "--plot", log, "--plot-to",
                            os.path.join(cfg.export, f"pretrain_curves_{name}.png")], cwd=ROOT, check=True)


if __name__ == "__main__":
    main(cli.parse(MakeBase))
