"""train_sft.py / train_grpo.py end to end on a tiny bench: torchrun 2 ranks == 1 process; kill + resume."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

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


def run(script, args, nproc=1, env=None):
    cmd = [sys.executable] + (["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                               f"--master_port={_port()}"] if nproc > 1 else []) + [script]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(cmd + [str(a) for a in args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def common(tiny, out):
    return ["--model", tiny / "model", "--train-file", tiny / "bench" / "train.jsonl", "--eval-file", "",
            "--out", out, "--min-pixels", 56 * 56, "--max-pixels", 56 * 56, "--eval-every", 0]


def final(out):
    return load_file(os.path.join(out, open(os.path.join(out, "latest")).read().strip(), "model",
                                  "model.safetensors"))


def log(out):
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


def assert_same(a, b, key, tol):
    la, lb = log(a), log(b)
    assert [r[key] for r in la] == pytest.approx([r[key] for r in lb], abs=tol)
    wa, wb = final(a), final(b)
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=tol), k


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
    p = run("train_sft.py", common(tiny, tmp_path / "b") + args, env={"ST_R1_CKPT_CRASH": "step:3"})
    assert p.returncode == 17, p.stderr[-2000:]  # died after step 3; the step-2 checkpoint is what remains
    assert open(tmp_path / "b" / "latest").read().strip() == "ckpt-00000002"
    p = run("train_sft.py", common(tiny, tmp_path / "b") + args + ["--resume"])
    assert p.returncode == 0, p.stderr[-3000:]
    wa, wb = final(tmp_path / "a"), final(tmp_path / "b")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def test_grpo_two_ranks_equal_one_process(tiny, tmp_path):
    args = ["--steps", 2, "--prompts-per-step", 2, "--group-size", 4, "--max-new-tokens", 12, "--micro-batch", 4,
            "--lr", 1e-2, "--beta", 0.04, "--reward-weights", "brevity=1,format=1"]  # brevity: signal on any text
    for n in (1, 2):
        p = run("train_grpo.py", common(tiny, tmp_path / f"n{n}") + args, nproc=n)
        assert p.returncode == 0, p.stderr[-3000:]
    assert_same(tmp_path / "n1", tmp_path / "n2", "reward", 1e-4)
    assert all(r["grad_norm"] > 0 and r["frac_zero_std"] < 1 for r in log(tmp_path / "n1"))  # it really learned
    assert log(tmp_path / "n1")[-1]["kl"] > 0  # the policy moved away from the reference
