"""Bad rows, bad videos, bad flags, bad run folders and corrupt checkpoints (issue 15, items 9-18, 20): each gets a
named error or is skipped and counted; nothing crashes later, mixes two runs, or trains on a flipped byte."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import evaluate
import train_grpo
import train_sft
from st_r1 import checkpoint as C
from st_r1 import cli, data, predictions, runs, scoring
from st_r1 import dist as D

sys.path.insert(0, os.path.join(ROOT, "tests"))
import dist_worker as W  # noqa: E402

MC = {"problem": "Which way? Options: A. left, B. right", "video": "v.mp4", "task": "direction",
      "solution": "<think>t</think> <answer>B</answer>", "original_answer": "B"}


def write_rows(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return str(path)


# ---------------------------------------------------------------- rows (items 9-13)

class FakeTok:
    """One token per character: enough to count a prompt's length."""
    eos_token_id, pad_token_id = 0, 0

    def encode(self, text, add_special_tokens=False):
        return [1] * len(text)

    def convert_tokens_to_ids(self, token):
        return 0


def blank_encoder(max_len):
    enc = data.PromptEncoder(FakeTok(), max_len=max_len)
    enc.video = lambda row: (torch.zeros(4, 3 * 2 * 14 * 14), torch.tensor([[1, 2, 2]]), 1.0, [0.5])  # 1 video token
    return enc


def test_rows_too_long_for_the_model_are_skipped_or_wrong(capsys):
    """Item 9: a 10 MB question took the process down at 23 GB; now it is skipped (training) or wrong (evaluation)
    with its path:line."""
    short, huge = dict(MC, _line=1), dict(MC, problem="x" * 100_000, _line=2)
    enc = blank_encoder(max_len=1000)
    good, bad = data.encode_rows(enc, [short, huge], "encode_sft", log=lambda m: None)
    assert [r["_line"] for r, _ in good] == [1]
    assert bad[0][0] == 2 and "over the limit of 1000" in bad[0][1]
    made = []
    out = predictions.predict(torch.nn.Linear(1, 1), FakeTok(), [huge], enc, on_prediction=lambda i, t, error=None:
                           made.append((i, t, error)), source="bench.jsonl")
    assert out == [None] and made[0][1] is None and "over the limit" in made[0][2]
    assert "bench.jsonl:2: " in capsys.readouterr().err


def test_extreme_aspect_ratio_is_a_bad_video(tmp_path):
    """Item 10: the resize's ValueError ended the run; it is a VideoError like any unreadable video."""
    from test_video import write_video

    from st_r1.video import VideoError, load_video
    write_video(tmp_path / "thin.mp4", 4, h=2, w=440)
    with pytest.raises(VideoError, match="thin.mp4: aspect ratio 220.0 is over 200"):
        load_video(str(tmp_path / "thin.mp4"), 2)


def test_rows_are_validated_at_load_with_path_and_line(tmp_path):
    """Items 11, 12: what a script needs is checked when the file is read, naming path:line."""
    no_solution = {k: v for k, v in MC.items() if k != "solution"}
    path = write_rows(tmp_path / "a.jsonl", [MC, no_solution])
    assert len(data.load_rows(path)) == 2  # the authors' evaluation rows may carry only original_answer
    with pytest.raises(data.DataError, match=r"a.jsonl:2: missing or empty string field 'solution'"):
        data.load_rows(path, need=("solution",))
    (tmp_path / "b.jsonl").write_bytes(json.dumps(MC).encode() + b"\n" + b'{"problem": "caf\xe9"}\n')
    with pytest.raises(data.DataError, match=r"b.jsonl:2: not UTF-8 \(byte 0xe9 at column 17\)"):
        data.load_rows(str(tmp_path / "b.jsonl"))
    # a multiple-choice row whose gold letter cannot be read would be scored (and rewarded) as a route row
    untasked = {k: v for k, v in MC.items() if k != "task"}
    for bad in (dict(MC, original_answer="the red door", solution="<answer>the red door</answer>"),
                dict(untasked, options=["a", "b"], original_answer="?", solution="<answer>B or A</answer>")):
        with pytest.raises(data.DataError, match="c.jsonl:1: a multiple-choice row"):
            data.load_rows(write_rows(tmp_path / "c.jsonl", [bad]))
    route = dict(MC, task="route", original_answer="I turn left.", solution="<answer>I turn left.</answer>")
    assert len(data.load_rows(write_rows(tmp_path / "d.jsonl", [route]))) == 1


def test_rows_are_read_before_the_model_is_loaded(tmp_path, monkeypatch):
    """Item 13: a typo in the data must cost seconds, not the minutes of loading a 7B checkpoint."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # loading it would fail, and late
    path = write_rows(tmp_path / "rows.jsonl", [MC])
    with open(path, "a") as f:
        f.write('{"problem": "p", "video": "v.mp4",\n')
    for script in (train_sft, train_grpo):
        cfg = cli.parse(script.Config, ["--model", str(tmp_path / "model"), "--train-file", path,
                                        "--out", str(tmp_path / "out"), "--eval-file", path])
        with pytest.raises(data.DataError, match="rows.jsonl:2: not valid JSON"):
            script.main(cfg)


# ---------------------------------------------------------------- runs and checkpoints (items 14-17)

def test_a_fresh_run_never_mixes_with_an_earlier_one(tmp_path):
    """Item 14: refused before anything is loaded, naming --resume and a fresh --out."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "log.jsonl").write_text('{"step": 1}\n')
    for script in (train_sft, train_grpo):
        cfg = cli.parse(script.Config, ["--model", "nowhere", "--out", str(tmp_path / "out")])
        with pytest.raises(cli.UserError, match=r"holds an earlier run \(log.jsonl\): continue it with --resume, "
                                                r"or give a fresh --out"):
            script.main(cfg)
    runs.refuse_mixing(str(tmp_path / "out"), resume=True)
    runs.refuse_mixing(str(tmp_path / "new"), resume=False)


def test_resume_drops_the_log_records_it_redoes(tmp_path):
    """Item 15 (end to end in test_train.py::test_sft_killed_and_resumed_equals_unbroken)."""
    (tmp_path / "log.jsonl").write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3)) + '{"ste')
    assert runs.trim_log(str(tmp_path), 2) == 2
    assert (tmp_path / "log.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_resume_names_each_flag_changed_since_the_run_began(tmp_path):
    """A resume that forgets --reward-weights trains on another reward: say so, flag by flag."""
    cfg = train_grpo.Config(out=str(tmp_path), reward_weights="format=0.5,accuracy=1", lr=2e-5)
    (tmp_path / "config.json").write_text(json.dumps(dict(dataclasses.asdict(cfg), model="m")))
    assert runs.resume_changes(str(tmp_path), cfg) == []  # the same flags (model resolved from the default)
    cfg.reward_weights, cfg.steps, cfg.resume = train_grpo.Config.reward_weights, 500, True
    assert runs.resume_changes(str(tmp_path), cfg) == [
        f"--reward-weights: 'format=0.5,accuracy=1' -> {train_grpo.Config.reward_weights!r}"]
    assert runs.resume_changes(str(tmp_path / "none"), cfg) == []


def toy_run(run_dir):
    D.setup()
    model = W.ToyLM.from_config(dict(vocab=32, dim=16, n_blocks=2))
    opt = torch.optim.AdamW(model.parameters())
    for step in (2, 4):
        C.save_checkpoint(str(run_dir), step, model, opt, extra={"step": step})
    return model, opt


def test_pruning_keeps_the_newest_two_and_the_multiples_of_keep_every(tmp_path):
    """The main job's weak start is sft_cot's step-300 model: pruning must not take it."""
    D.setup()
    model = W.ToyLM.from_config(dict(vocab=32, dim=16, n_blocks=2))
    opt = torch.optim.AdamW(model.parameters())
    for step in (1, 2, 3, 4, 5):
        C.save_checkpoint(str(tmp_path / "a"), step, model, opt)
        C.save_checkpoint(str(tmp_path / "b"), step, model, opt, keep_every=2)
    names = lambda d: sorted(os.path.basename(p) for p in C.list_checkpoints(str(tmp_path / d)))  # noqa: E731
    assert names("a") == ["ckpt-00000004", "ckpt-00000005"]
    assert names("b") == ["ckpt-00000002", "ckpt-00000004", "ckpt-00000005"]


@pytest.mark.parametrize("where", ["tensor data", "header", "optimizer"])
def test_a_corrupt_checkpoint_is_named_and_the_previous_one_offered(tmp_path, where):
    """Item 16: a flipped byte in the tensor data loaded silently (and surfaced later as a NaN loss); a broken
    header gave a SafetensorError naming no file."""
    model, opt = toy_run(tmp_path)
    name = "optimizer.safetensors" if where == "optimizer" else os.path.join("model", "model.safetensors")
    path = tmp_path / "ckpt-00000004" / name
    raw = bytearray(path.read_bytes())
    raw[-3 if where != "header" else 5] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(runs.CheckpointError, match=f"ckpt-00000004/{name}: corrupt .*"
                                                   f"--resume-from {tmp_path}/ckpt-00000002"):
        C.load_checkpoint(str(tmp_path), model, opt)
    assert C.load_checkpoint(str(tmp_path), model, opt, path=str(tmp_path / "ckpt-00000002"))["step"] == 2


def test_bad_flags_are_refused_at_start_by_name():
    """Item 17: each of these ran into a crash steps later, or trained nothing with exit status 0."""
    for script, argv, flag in [(train_sft, ["--save-every", "0"], "--save-every"),
                               (train_sft, ["--batch-size", "0"], "--batch-size"),
                               (train_sft, ["--steps", "-1"], "--steps"),
                               (train_sft, ["--micro-batch", "0"], "--micro-batch"),
                               (train_grpo, ["--group-size", "1"], "--group-size"),
                               (train_grpo, ["--prompts-per-step", "1"], "--prompts-per-step"),
                               (train_grpo, ["--reward-weights", "acuracy=1"], "--reward-weights")]:
        with pytest.raises(cli.UserError, match=flag):
            script.validate(cli.parse(script.Config, argv), world_size=2)
    with pytest.raises(cli.UserError, match="--batch-size"):
        evaluate.validate(cli.parse(evaluate.Options, ["--batch-size", "0"]))


def test_user_errors_print_one_line_and_exit_2(tmp_path):
    """Item 18: the message alone, exit status 2; a real bug still shows its traceback."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, os.path.join(ROOT, "train_sft.py"), "--steps", "0"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.splitlines()[-1] == "error: --steps must be >= 1, got 0", p.stderr
    assert "Traceback" not in p.stderr


# ---------------------------------------------------------------- the route rubric's floor (item 20)

def test_route_table_states_the_rubric_floor():
    rows = [{"task": "route", "reverse": False, "problem": "p", "video": "v", "original_answer": "I turn left."}]
    table = scoring.markdown_table(scoring.score_rows(rows, ["<answer>I walk straight.</answer>"]))
    assert "floor" in table and "1.9" in table
