"""train_sft.py / train_grpo.py end to end on a tiny bench: torchrun 2 ranks == 1 process; kill + resume."""
import json
import os
import socket
import sys

import pytest
import torch
from safetensors.torch import load_file
from conftest import run_bounded  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from st_r1.tiny import write_tiny_model
    from st_r1.world import make_bench
    root = tmp_path_factory.mktemp("tiny")
    make_bench(str(root / "bench"), seed=0, n_videos=2, n_test=1, size=56, frames=32, workers=1, progress=False)
    write_tiny_model(str(root / "model"), hidden=64, layers=1, vision_hidden=32, vision_depth=1)
    return root


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(script, args, nproc=1, env=None, timeout=300):
    cmd = [sys.executable] + (["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                               f"--master_port={_port()}"] if nproc > 1 else []) + [script]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return run_bounded(cmd + [str(a) for a in args], timeout, cwd=ROOT, env=env)


def common(tiny, out):
    return ["--model", tiny / "model", "--train-file", tiny / "bench" / "train.jsonl", "--eval-file", "",
            "--out", out, "--min-pixels", 56 * 56, "--max-pixels", 56 * 56, "--eval-every", 0]


def final(out):
    return load_file(os.path.join(out, open(os.path.join(out, "latest")).read().strip(), "model",
                                  "model.safetensors"))


def log(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


def assert_same(a, b, key, tol, keys=(), wtol=None):
    """The logs of a and b agree on key (and keys) within tol, their final weights within wtol (default tol)."""
    la, lb = log(a), log(b)
    for name in (key,) + tuple(keys):
        assert [r[name] for r in la] == pytest.approx([r[name] for r in lb], abs=tol), name
    wa, wb = final(a), final(b)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=tol if wtol is None else wtol), k


# GRPO at lr 1e-2: AdamW turns float noise in a gradient that is ~0 (the key biases', which the softmax cancels; a
# patch weight) into a step of up to lr, so 1- and 2-rank weights may differ by ~1e-4 though the gradients agree
# (the logged loss and gradient norm, to 1e-6 and 1e-4)
GRPO_WTOL = 1e-3


SFT = ["--steps", 3, "--batch-size", 4, "--micro-batch", 2, "--lr", 1e-3, "--warmup", 1]


def test_sft_two_ranks_equal_one_process(tiny, tmp_path):
    for n in (1, 2):
        p = run("train_sft.py", common(tiny, tmp_path / f"n{n}") + SFT, nproc=n)
        assert p.returncode == 0, p.stderr[-3000:]
    assert_same(tmp_path / "n1", tmp_path / "n2", "loss", 1e-4)
    assert log(tmp_path / "n1")[-1]["loss"] < log(tmp_path / "n1")[0]["loss"]  # and the loss falls


def test_sft_fsdp_two_ranks_equal_one_process(tiny, tmp_path):
    """FSDP2 (one shard unit per decoder and vision block) trains the real VideoLM like one process, and its
    gathered checkpoint is a complete Hugging Face folder."""
    p = run("train_sft.py", common(tiny, tmp_path / "one") + SFT)
    assert p.returncode == 0, p.stderr[-3000:]
    p = run("train_sft.py", common(tiny, tmp_path / "fsdp") + SFT + ["--parallel", "fsdp"], nproc=2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_same(tmp_path / "one", tmp_path / "fsdp", "loss", 1e-4)
    assert "eval_note" not in log(tmp_path / "fsdp")[-1]  # --eval-every 0: no eval was asked for


def test_sft_killed_and_resumed_equals_unbroken(tiny, tmp_path):
    args = SFT[:1] + [4] + SFT[2:] + ["--save-every", 2]
    assert run("train_sft.py", common(tiny, tmp_path / "a") + args).returncode == 0
    p = run("train_sft.py", common(tiny, tmp_path / "b") + args, env={"ST_R1_CKPT_CRASH": "step:4"})
    assert p.returncode == 17, p.stderr[-2000:]  # died after step 4, before its save; ckpt 2 is what remains
    assert open(tmp_path / "b" / "latest").read().strip() == "ckpt-00000002"
    assert [r["step"] for r in log(tmp_path / "b")] == [1, 2, 3]
    p = run("train_sft.py", common(tiny, tmp_path / "b") + args)  # without --resume: refused, nothing changed
    assert p.returncode == 2 and "holds an earlier run" in p.stderr and len(log(tmp_path / "b")) == 3
    p = run("train_sft.py", common(tiny, tmp_path / "b") + args + ["--resume"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert [r["step"] for r in log(tmp_path / "b")] == [1, 2, 3, 4]  # step 3 redone and logged once (item 15)
    wa, wb = final(tmp_path / "a"), final(tmp_path / "b")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_grpo_two_ranks_equal_one_process(tiny, tmp_path):
    args = ["--steps", 2, "--prompts-per-step", 2, "--group-size", 4, "--max-new-tokens", 12, "--micro-batch", 4,
            "--lr", 1e-2, "--beta", 0.04, "--reward-weights", "brevity=1,format=1"]  # brevity: signal on any text
    for n in (1, 2):
        p = run("train_grpo.py", common(tiny, tmp_path / f"n{n}") + args, nproc=n)
        assert p.returncode == 0, p.stderr[-3000:]
    assert_same(tmp_path / "n1", tmp_path / "n2", "reward", 1e-4, keys=("grad_norm", "kl"), wtol=GRPO_WTOL)
    assert [r["loss"] for r in log(tmp_path / "n1")] == pytest.approx([r["loss"] for r in log(tmp_path / "n2")],
                                                                       abs=1e-6)  # the ranks' parts, summed
    assert all(r["grad_norm"] > 0 and r["frac_zero_std"] < 1 for r in log(tmp_path / "n1"))  # it really learned
    assert log(tmp_path / "n1")[-1]["kl"] > 0  # the policy moved away from the reference


# ---------------------------------------------------------------- bad videos under 2 ranks (issue 15, items 1-3)

def with_bad_videos(tiny, path, bad_at, batch_size):
    """The tiny train rows with the video of the rows at (step, batch position) in bad_at replaced by a missing
    file. Returns the --train-file / --video-root flags."""
    from st_r1.training import batch_rows
    rows = [json.loads(line) for line in open(tiny / "bench" / "train.jsonl")]
    order = list(range(len(rows)))
    for step, pos in bad_at:
        rows[batch_rows(order, step, batch_size, 0)[pos]]["video"] = "videos/missing.mp4"
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return ["--train-file", path, "--video-root", tiny / "bench"]


# step 0: rank 1 (batch positions 1, 3) loses all its rows; step 1: rank 0 loses one row, rank 1 none
BAD = [(0, 1), (0, 3), (1, 0)]


def test_sft_two_ranks_with_bad_videos_equal_one_process(tiny, tmp_path):
    flags = with_bad_videos(tiny, tmp_path / "rows.jsonl", BAD, 4)
    # micro-batch 1: the ranks hold different numbers of passes
    args = ["--steps", 2, "--batch-size", 4, "--micro-batch", 1, "--lr", 1e-3, "--warmup", 1]
    for n in (1, 2):
        p = run("train_sft.py", common(tiny, tmp_path / f"n{n}") + args + flags, nproc=n)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "skipped 3 rows with unreadable videos" in p.stdout, p.stdout[-2000:]
    assert_same(tmp_path / "n1", tmp_path / "n2", "loss", 1e-4)
    assert [r["skipped"] for r in log(tmp_path / "n2")] == [2, 3]


def test_grpo_two_ranks_with_bad_videos_draw_the_next_readable_row(tiny, tmp_path):
    flags = with_bad_videos(tiny, tmp_path / "rows.jsonl", BAD, 4)
    args = ["--steps", 2, "--prompts-per-step", 4, "--group-size", 2, "--max-new-tokens", 6, "--micro-batch", 2,
            "--lr", 1e-2, "--beta", 0.04, "--reward-weights", "brevity=1,format=1"]
    for n in (1, 2):
        p = run("train_grpo.py", common(tiny, tmp_path / f"n{n}") + args + flags, nproc=n)
        assert p.returncode == 0, p.stderr[-3000:]
        assert "skipped 3 rows with unreadable videos" in p.stdout, p.stdout[-2000:]
    assert_same(tmp_path / "n1", tmp_path / "n2", "reward", 1e-4)
    assert [r["skipped"] for r in log(tmp_path / "n2")] == [2, 3]


def test_no_readable_row_is_a_failure_on_every_rank(tiny, tmp_path):
    flags = with_bad_videos(tiny, tmp_path / "rows.jsonl", [(0, i) for i in range(16)], 16)  # every row
    p = run("train_sft.py", common(tiny, tmp_path / "sft") + SFT + flags, nproc=2)
    assert p.returncode != 0 and "none of the 4 rows of the batch has a readable video" in p.stderr, p.stderr[-2000:]
    assert "4 rows skipped so far" in p.stderr  # (torchrun adds its own traceback of the failed child)
    assert not os.path.exists(tmp_path / "sft" / "latest")  # no "final model" of an untrained run
    p = run("train_grpo.py", common(tiny, tmp_path / "grpo") + ["--prompts-per-step", 2, "--group-size", 2] + flags,
            nproc=2)
    assert p.returncode != 0 and "no row has a readable video (all 16 tried)" in p.stderr, p.stderr[-2000:]


def test_kept_groups_are_the_first_with_spread_in_slot_order():
    """DAPO's dynamic sampling keeps, of the drawn prompts in slot order, the first prompts_per_step whose rewards
    differ; this rank gets back the indices of its own kept prompts."""
    import types

    import train_grpo
    cfg = types.SimpleNamespace(group_size=2, prompts_per_step=2)
    # this rank holds slots 4, 1, 2 (any order); slot 1 all-equal, 2 and 4 spread; slot 0 (another rank's) spread
    total = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.0, 1.0])
    keep, n = train_grpo.kept_groups(total, [4, 1, 2], cfg, 6)
    assert keep == [0, 2] and n == 2  # slots 2 and 4: the first two with spread among slots 1..5 this rank sees
    keep, n = train_grpo.kept_groups(torch.ones(6), [4, 1, 2], cfg, 6)
    assert keep == [] and n == 0


def test_grpo_dynamic_sampling_two_ranks_equal_one_process(tiny, tmp_path):
    """--oversample 2: 2 x 2 prompts drawn a step, 2 groups kept (the first with spread), the same on 1 and 2 ranks;
    the log says how many were drawn and kept."""
    args = ["--steps", 2, "--prompts-per-step", 2, "--oversample", 2, "--group-size", 4, "--max-new-tokens", 12,
            "--micro-batch", 4, "--lr", 1e-2, "--beta", 0.04, "--reward-weights", "brevity=1,format=1"]
    for n in (1, 2):
        p = run("train_grpo.py", common(tiny, tmp_path / f"n{n}") + args, nproc=n)
        assert p.returncode == 0, p.stderr[-3000:]
    assert_same(tmp_path / "n1", tmp_path / "n2", "reward", 1e-4, keys=("grad_norm", "loss"), wtol=GRPO_WTOL)
    recs = log(tmp_path / "n1")
    assert [(r["drawn"], r["kept"]) for r in recs] == [(4, 2), (4, 2)] and all(r["grad_norm"] > 0 for r in recs)
    # no group with spread (format alone: a random model never writes the tags): nothing to learn, no update
    p = run("train_grpo.py", common(tiny, tmp_path / "none") + args[:-1] + ["format=1"], nproc=2)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [(r["kept"], r["grad_norm"]) for r in log(tmp_path / "none")] == [(0, 0.0), (0, 0.0)]
