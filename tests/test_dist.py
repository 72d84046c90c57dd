"""st_r1.dist: DDP / FSDP2 equal one process, checkpoints resume exactly, killed saves leave the old one.

Multi-process runs go through `python -m torch.distributed.run --nproc_per_node=2 tests/dist_worker.py`
(gloo, CPU); single-process references run in this process through the same train() function."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from st_r1 import checkpoint as C
from st_r1 import dist as D
from st_r1 import training
from conftest import run_bounded  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import dist_worker as W  # noqa: E402
WORKER = os.path.join(ROOT, "tests", "dist_worker.py")
BASE = ["--steps", "4", "--accum", "2", "--save-every", "2"]


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, nproc=2, env=None, timeout=120):
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={_port()}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return run_bounded(cmd + [WORKER] + [str(a) for a in args], timeout, cwd=ROOT, env=env)


def _run(args, nproc=2):
    p = _launch(args, nproc)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _in_process(argv):
    """One-process training here (no process group); returns (losses, full state dict)."""
    d = D.setup()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched workers (OMP_NUM_THREADS=1): bit-exact comparisons need it
    try:
        model, losses, _ = W.train(W.parse([str(a) for a in argv]), d)
    finally:
        torch.set_num_threads(threads)
    return losses, {k: v.clone() for k, v in C.full_state_dict(model).items()}


def _assert_same(out_dir, losses, sd, tol=1e-5):
    with open(os.path.join(out_dir, "losses.json")) as f:
        got = json.load(f)
    assert len(got) == len(losses)
    assert max(abs(a - b) for a, b in zip(got, losses)) < tol, (got, losses)
    final = load_file(os.path.join(out_dir, "final.safetensors"))
    assert final.keys() == sd.keys()
    for k in sd:
        assert torch.allclose(final[k], sd[k], atol=tol, rtol=0), k


def _keep_only_step2(run_dir):
    """Pretend the run died after step 2's save: drop ckpt 4 and the latest pointer (load falls back to scan)."""
    shutil.rmtree(os.path.join(run_dir, "ckpt-00000004"))
    os.remove(os.path.join(run_dir, "latest"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ref")
    losses, sd = _in_process(BASE + ["--run-dir", run_dir])
    return run_dir, losses, sd


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one(tmp_path, reference, mode):
    _, losses, sd = reference
    run_dir = tmp_path / "run"
    p = _run(BASE + ["--mode", mode, "--out", tmp_path / "out", "--run-dir", run_dir])
    assert "returned from distributed()" not in p.stdout  # shutdown() ended each rank (st_r1/dist.shutdown)
    _assert_same(tmp_path / "out", losses, sd)
    # The 2-process checkpoint at step 2, resumed by ONE process, ends where the unbroken run ends:
    # the on-disk format does not depend on the wrapping (FSDP2 optimizer state gathered to full).
    _keep_only_step2(run_dir)
    got_losses, got = _in_process(BASE + ["--run-dir", run_dir, "--resume"])
    assert max(abs(a - b) for a, b in zip(got_losses, losses)) < 1e-5
    for k in sd:
        assert torch.allclose(got[k], sd[k], atol=1e-5, rtol=0), k
    if mode == "fsdp":  # and FSDP2 re-shards a full checkpoint (model and optimizer) on load
        _run(BASE + ["--mode", "fsdp", "--out", tmp_path / "out2", "--run-dir", run_dir, "--resume"])
        _assert_same(tmp_path / "out2", losses, sd)


def test_error_on_one_rank_does_not_hang():
    p = _launch(["--mode", "ddp", "--steps", "4", "--fail-rank", "1", "--fail-step", "1"], timeout=90)
    assert p.returncode != 0
    assert "injected failure on rank 1" in p.stdout + p.stderr


def test_resume_after_kill_equals_unbroken_run(tmp_path):
    # dropout and data drawn from the global RNG: only an exact RNG restore gives the same weights
    args = ["--steps", "6", "--data", "rng", "--dropout", "0.2", "--save-every", "2"]
    losses, sd = _in_process(args + ["--run-dir", tmp_path / "a"])
    p = _launch(args + ["--run-dir", tmp_path / "b", "--die-at", "3"], nproc=1)
    assert p.returncode == 3, p.stderr[-2000:]
    assert [os.path.basename(c) for c in C.list_checkpoints(tmp_path / "b")] == ["ckpt-00000002"]
    got_losses, got = _in_process(args + ["--run-dir", tmp_path / "b", "--resume"])
    assert got_losses == losses
    for k in sd:
        assert torch.equal(got[k], sd[k]), k


@pytest.mark.parametrize("where", ["model", "rename"])
def test_killed_save_leaves_previous_checkpoint(tmp_path, where):
    run_dir = tmp_path / "run"
    p = _launch(BASE + ["--run-dir", run_dir], nproc=1, env={"ST_R1_CKPT_CRASH": f"{where}:4"})
    assert p.returncode == 17, p.stderr[-2000:]
    assert C.latest_checkpoint(run_dir).endswith("ckpt-00000002")
    model = W.ToyLM.from_config(dict(vocab=32, dim=16, n_blocks=2))
    opt = torch.optim.AdamW(model.parameters())
    extra = C.load_checkpoint(run_dir, model, opt)
    assert extra["step"] == 2 and len(extra["losses"]) == 2
    saved = W.ToyLM.from_pretrained(os.path.join(run_dir, "ckpt-00000002", "model")).state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert len(opt.state) == len(list(model.parameters()))
    # the next save cleans the half-written directory and replaces a complete one of the same step
    C.save_checkpoint(run_dir, 4, model, opt, extra={"step": 4})
    assert sorted(os.listdir(run_dir)) == ["ckpt-00000002", "ckpt-00000004", "latest"]


def test_checkpoint_is_safetensors_and_json_only(reference):
    run_dir, _, sd = reference
    assert [os.path.basename(c) for c in C.list_checkpoints(run_dir)] == ["ckpt-00000002", "ckpt-00000004"]
    ckpt = C.latest_checkpoint(run_dir)
    files = [os.path.join(r, f) for r, _, fs in os.walk(ckpt) for f in fs]
    assert len(files) >= 9
    for f in files:
        with open(f, "rb") as fh:
            head = fh.read(2)
        assert head[:1] != b"\x80" and head != b"PK", f"{f} looks like a pickle / torch.save zip"
        if f.endswith(".json"):
            with open(f) as fh:
                json.load(fh)
        else:
            assert f.endswith(".safetensors"), f
            load_file(f)
    src = open(os.path.join(ROOT, "st_r1", "checkpoint.py")).read()
    assert "torch.save(" not in src and "torch.load(" not in src and "import pickle" not in src
    # the model folder is what from_pretrained reads (on-disk names "model.layers.*")
    assert any(k.startswith("model.layers.") for k in load_file(os.path.join(ckpt, "model", "model.safetensors")))
    got = W.ToyLM.from_pretrained(os.path.join(ckpt, "model")).state_dict()
    for k in sd:
        assert torch.equal(got[k], sd[k]), k


def test_lora_checkpoint_merges_and_resumes(tmp_path):
    args = ["--steps", "4", "--save-every", "2", "--lora", "--run-dir", tmp_path / "a"]
    losses, sd = _in_process(args)
    ckpt = os.path.join(tmp_path / "a", "ckpt-00000004")
    # model/ holds merged plain weights: the adapted model's outputs, from a model without adapters
    merged = W.ToyLM.from_pretrained(os.path.join(ckpt, "model"))
    assert not any("lora" in k for k in merged.state_dict())
    adapted = W.ToyLM.from_config(dict(vocab=32, dim=16, n_blocks=2))
    W.apply_lora(adapted, r=4, alpha=8, targets=("q_proj", "v_proj"))
    adapted.load_state_dict(sd)
    ids = torch.randint(0, 32, (2, 5))
    assert torch.allclose(merged(ids), adapted(ids), atol=1e-5)
    assert not torch.allclose(merged.blocks[0].q_proj.weight, adapted.blocks[0].q_proj.weight)
    # resume from step 2 restores the unmerged base weights and the adapters exactly
    _keep_only_step2(tmp_path / "a")
    got_losses, got = _in_process(args + ["--resume"])
    assert got_losses == losses
    for k in sd:
        assert torch.equal(got[k], sd[k]), k


def test_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = training.cosine_schedule(opt, warmup_steps=2, total_steps=10, min_ratio=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert lrs[10:] == pytest.approx([0.1, 0.1])
    state = json.loads(json.dumps(sched.state_dict()))
    sched2 = training.cosine_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 2, 10)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_all_reduce_and_wrap_single_process():
    D.setup()
    assert D.all_reduce_mean(2.5) == 2.5
    m = torch.nn.Linear(2, 2)
    assert D.wrap_model(m, "fsdp", ("Linear",)) is m  # one process: nothing to shard
    with pytest.raises(ValueError, match="mode"):
        D.wrap_model(m, "zero3")


def test_a_timed_out_launch_leaves_no_process_behind(tmp_path):
    """The launcher's children die with it: subprocess.run(timeout=...) kills torchrun alone and its ranks kept
    running (and holding the cores) through the rest of the suite."""
    import time
    marker = tmp_path / "child-still-alive"
    child = f"import pathlib, time; time.sleep(3); pathlib.Path({str(marker)!r}).write_text('x')"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    with pytest.raises(subprocess.TimeoutExpired):
        run_bounded([sys.executable, "-c", parent], timeout=1)
    time.sleep(4)
    assert not marker.exists()


def test_resume_when_some_parameters_never_had_a_gradient(tmp_path):
    """A text-only stage never touches the vision tower, so AdamW has no state for it; resuming such a run raised
    "Missing optimizer state for parameter ..." (bench/pretrain_base.py --batch 0, found in its stage 6)."""
    torch.manual_seed(0)
    model = W.ToyLM.from_config(dict(vocab=32, dim=16, n_blocks=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    frozen = set(list(dict(model.named_parameters()))[-2:])  # these get no gradient (as if unused by the data)
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    model(torch.randint(0, 32, (2, 8))).float().pow(2).mean().backward()
    for name, p in model.named_parameters():
        p.requires_grad_(True)
    opt.step()
    assert 0 < len(opt.state) < len(list(model.parameters()))
    C.save_checkpoint(tmp_path, 1, model, opt, extra={"step": 1})
    again = W.ToyLM.from_config(dict(vocab=32, dim=16, n_blocks=2))
    opt2 = torch.optim.AdamW(again.parameters(), lr=1e-2)
    assert C.load_checkpoint(tmp_path, again, opt2)["step"] == 1
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
        if p in opt.state:  # the saved moments come back
            assert torch.equal(opt.state[p]["exp_avg"], opt2.state[q]["exp_avg"])
        else:  # the others have no state, as they had none before the stop (AdamW makes it at their first step)
            assert q not in opt2.state
