import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

import evaluate
from st_r1 import cli, predictions, runs

FWD = ["walk straight", "pass the red door", "turn left"]
REV = ["turn around", "turn right", "pass the red door", "walk straight"]


def write_jsonl(path, objs):
    with open(path, "w", encoding="utf-8") as f:
        for o in objs:
            f.write(json.dumps(o, ensure_ascii=False) + "\n")


def bench_rows():
    def mcq(task, reverse, gold):
        return {"problem": f"Which {task}? Options: A. a, B. b, C. c, D. d", "video": "v0.mp4", "task": task,
                "reverse": reverse, "solution": f"<think>t</think> <answer>{gold}</answer>", "original_question": "q",
                "original_answer": gold}
    route = {"problem": "Describe the route back to the start.", "video": "v0.mp4", "task": "route", "reverse": True,
             "events": {"forward": FWD, "reverse": REV}, "original_question": "q",
             "original_answer": "I " + ", then ".join(REV) + ".",
             "solution": "<think>t</think> <answer>I " + ", then ".join(REV) + ".</answer>"}
    return [mcq("direction", False, "A"), mcq("direction", True, "B"), mcq("landmark", False, "C"),
            mcq("action", True, "D"), route]


def run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_end_to_end_scores_and_table(tmp_path):
    write_jsonl(tmp_path / "bench.jsonl", bench_rows())
    preds = [{"index": 0, "prediction": "<think>x</think> <answer>A</answer>"},
             {"index": 1, "prediction": "<think>x</think> <answer>B or C</answer>"},   # several letters: wrong
             {"index": 3, "prediction": "<think>x</think> <answer>D. 向后转</answer>"},  # right, non-ASCII
             {"index": 4, "prediction": "<think>x</think> <answer>I " + ", then ".join(REV) + "</answer>"}]
    write_jsonl(tmp_path / "p.jsonl", preds)   # row 2 has no prediction: wrong
    res = run(["--bench", "bench.jsonl", "--predictions", "p.jsonl", "--out", "out/s.json"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "| **all** | 5.00 [" in res.stdout and "| direction | 50.0 [" in res.stdout and "route rubric" in res.stdout
    assert "1 of 5 bench rows have no prediction" in res.stdout
    s = json.loads((tmp_path / "out" / "s.json").read_text())
    assert s["overall"]["correct"] == 2 and s["overall"]["n"] == 4
    assert s["mcq"]["direction"]["correct"] == 1 and s["mcq"]["action/reverse"]["accuracy"] == 1.0
    assert s["mcq"]["landmark"]["correct"] == 0
    assert s["route"]["overall"]["score"] == pytest.approx(5.0)
    assert [r["line"] for r in s["rows"]] == [1, 2, 3, 4, 5]


def main(args):
    return evaluate.main(cli.parse(evaluate.Options, args))


def test_predictions_as_rows_with_a_prediction_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = bench_rows()
    write_jsonl(tmp_path / "bench.jsonl", rows)
    write_jsonl(tmp_path / "p.jsonl", [dict(r, prediction=r["solution"]) for r in rows])  # positional
    s = main(["--bench", "bench.jsonl", "--predictions", "p.jsonl", "--out", "s.json"])
    assert s["overall"]["accuracy"] == 1.0 and s["missing"] == 0
    assert json.loads((tmp_path / "s.json").read_text())["overall"] == s["overall"]


def test_bench_folder_means_its_test_split(tmp_path, monkeypatch):
    # train_sft.py / train_grpo.py take --bench as a folder; evaluate.py takes the same folder (its test.jsonl)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w").mkdir()
    rows = bench_rows()
    write_jsonl(tmp_path / "w" / "test.jsonl", rows)
    write_jsonl(tmp_path / "p.jsonl", [dict(r, prediction=r["solution"]) for r in rows[:2]])
    s = main(["--bench", "w", "--predictions", "p.jsonl", "--out", "s.json"])
    assert s["bench"] == os.path.join("w", "test.jsonl") and s["missing"] == 3


def test_missing_model_folder_is_named_not_downloaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "bench.jsonl", bench_rows())
    with pytest.raises(FileNotFoundError, match="no/such/ckpt: not a model folder"):
        main(["--bench", "bench.jsonl", "--model", "no/such/ckpt", "--out", "s.json"])


def test_bad_predictions_name_file_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "bench.jsonl", bench_rows())
    (tmp_path / "p.jsonl").write_text('{"index": 0, "prediction": "x"}\n{"index": 9, "prediction": "x"}\n')
    with pytest.raises(ValueError, match="p.jsonl:2: index 9 is not a bench position"):
        main(["--bench", "bench.jsonl", "--predictions", "p.jsonl"])
    (tmp_path / "p.jsonl").write_text('{"index": 0, "prediction": "x"}\n{"index": 1, "predic')
    with pytest.raises(ValueError, match="p.jsonl:2: "):
        main(["--bench", "bench.jsonl", "--predictions", "p.jsonl"])
    with pytest.raises(SystemExit, match="--predictions"):
        main(["--bench", "bench.jsonl"])


# A stand-in for our model, run inside evaluate.main in a subprocess: it answers row i with the gold letter and
# "crashes" (exit 3) after FAIL_AFTER predictions, leaving a half-written line as an interrupted writer would.
DRIVER = r'''
import json, os, sys
import evaluate
from st_r1 import cli
asked = []
def load_ours(opt):
    return None, None, None
def predict(model, tok, rows, enc, batch_size=8, max_new_tokens=256, on_prediction=None, progress=False, **kw):
    fail_after = int(os.environ.get("FAIL_AFTER", "-1"))
    for j, row in enumerate(rows):
        if j == fail_after:
            with open(sys.argv[-1], "a") as f:
                f.write('{"index": 99, "predi')
            os._exit(3)
        asked.append(row["original_answer"][:1])
        on_prediction(j, "<think>x</think> <answer>" + row["original_answer"][:1] + "</answer>")
evaluate.load_ours, evaluate.predict = load_ours, predict
evaluate.main(cli.parse(evaluate.Options, sys.argv[1:]))
print("ASKED", "".join(asked))
'''


def test_resume_after_interrupted_predictions(tmp_path):
    write_jsonl(tmp_path / "bench.jsonl", bench_rows())
    (tmp_path / "driver.py").write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    args = [sys.executable, "driver.py", "--bench", "bench.jsonl", "--model", "fake", "--out", "s.json",
            "--no-progress", "--predictions", "p.jsonl"]
    first = subprocess.run(args, cwd=tmp_path, env=dict(env, FAIL_AFTER="3"), capture_output=True, text=True)
    assert first.returncode == 3, first.stderr
    lines = (tmp_path / "p.jsonl").read_text().split("\n")
    assert len(lines) == 4 and lines[-1] == '{"index": 99, "predi'   # 3 made, one half-written
    second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "3 predictions already in p.jsonl, 2 to make" in second.stdout
    assert "ASKED DI" in second.stdout              # only rows 3 (gold D) and 4 (route: first letter "I")
    assert "p.jsonl:4: the last line does not parse (an interrupted write)" in second.stderr
    made = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [m["index"] for m in made] == [0, 1, 2, 3, 4]
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["overall"]["accuracy"] == 1.0 and s["missing"] == 0


def test_read_predictions_repairs_only_a_line_that_does_not_parse(tmp_path, capsys):
    p = tmp_path / "p.jsonl"
    # a whole last line without its newline is a prediction like any other, never dropped (issue 15, item 5)
    text = '{"index": 1, "prediction": "a"}\n{"index": 0, "prediction": "c"}'
    p.write_text(text)
    assert predictions.read_predictions(str(p), 3, repair_tail=True) == {0: "c", 1: "a"}
    assert p.read_text() == text
    p.write_text(text + '\n{"index": 2, "predic')  # a write cut short: removed, and said so
    assert predictions.read_predictions(str(p), 3, repair_tail=True) == {0: "c", 1: "a"}
    assert p.read_text() == text + "\n" and "p.jsonl:3: the last line does not parse" in capsys.readouterr().err


@pytest.mark.parametrize("lines, why", [
    (['{"index": 0, "prediction": "A"}', '{"index": 1, "prediction": "B"}', '{"index": 0, "prediction": "C"}'],
     "p.jsonl:3: index 0 already has a prediction \\(line 1\\)"),
    (['{"index": true, "prediction": "A"}'], "p.jsonl:1: index True is not a bench position"),
    (['{"index": 1, "prediction": "A"}', '{"prediction": "B"}'], 'p.jsonl:2: some lines have an "index"'),
])
def test_duplicate_or_ambiguous_indices_are_errors(tmp_path, lines, why):
    """Issue 15, item 6: the same file must not score 75% or 100% depending on its line order."""
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=why):
        predictions.read_predictions(str(tmp_path / "p.jsonl"), 5)


def test_limit_ignores_predictions_past_it(tmp_path, monkeypatch):
    """Issue 15, item 7: --limit N with the predictions of the whole bench scores the first N rows."""
    monkeypatch.chdir(tmp_path)
    rows = bench_rows()
    write_jsonl(tmp_path / "bench.jsonl", rows)
    write_jsonl(tmp_path / "p.jsonl", [{"index": i, "prediction": r["solution"]} for i, r in enumerate(rows)])
    s = main(["--bench", "bench.jsonl", "--predictions", "p.jsonl", "--limit", "2", "--out", "s.json"])
    assert s["overall"]["n"] == 2 and s["overall"]["accuracy"] == 1.0 and s["missing"] == 0


def fake_model(monkeypatch, answer=lambda row: row["original_answer"][:1], unreadable=()):
    """evaluate.main with a stand-in for our model: the gold letter for each row, an unreadable video for the rows
    whose gold letter is in `unreadable`. Returns the list of rows it was asked."""
    asked = []

    def predict(model, tok, rows, enc, batch_size=8, max_new_tokens=256, on_prediction=None, progress=False, **kw):
        for j, row in enumerate(rows):
            asked.append(row)
            if answer(row) in unreadable:
                on_prediction(j, None, error=f"{row['video']}: no such file")
            else:
                on_prediction(j, f"<think>x</think> <answer>{answer(row)}</answer>")
    monkeypatch.setattr(evaluate, "load_ours", lambda opt: (None, None, None))
    monkeypatch.setattr(evaluate, "predict", predict)
    return asked


def test_predictions_of_another_model_are_refused(tmp_path, monkeypatch):
    """Issue 15, item 4: --model B must not score model A's predictions left in the same --out."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "bench.jsonl", bench_rows())
    for m in ("A", "B"):
        (tmp_path / m).mkdir()
        (tmp_path / m / "model.safetensors").write_bytes(m.encode())
    fake_model(monkeypatch)
    main(["--bench", "bench.jsonl", "--model", "A", "--no-progress"])
    assert json.loads((tmp_path / "scores.predictions.jsonl.meta.json").read_text())["model"].endswith("A")
    with pytest.raises(cli.UserError, match=r"model: '\S+A' \(in the file\) vs '\S+B' \(now\).*--force-new"):
        main(["--bench", "bench.jsonl", "--model", "B", "--no-progress"])
    (tmp_path / "A" / "model.safetensors").write_bytes(b"A, trained further")  # same folder, other weights
    with pytest.raises(cli.UserError, match="weights_sha256"):
        main(["--bench", "bench.jsonl", "--model", "A", "--no-progress"])
    asked = fake_model(monkeypatch)
    s = main(["--bench", "bench.jsonl", "--model", "B", "--force-new", "--no-progress"])
    assert len(asked) == 5 and s["overall"]["accuracy"] == 1.0
    # a file of unknown origin (the user's own) is never added to by --model, and never changed
    write_jsonl(tmp_path / "mine.jsonl", [{"index": 0, "prediction": "A"}])
    with pytest.raises(cli.UserError, match="unknown origin"):
        main(["--bench", "bench.jsonl", "--model", "B", "--predictions", "mine.jsonl"])
    assert (tmp_path / "mine.jsonl").read_text() == '{"index": 0, "prediction": "A"}\n'


def test_unreadable_rows_are_counted_and_retried(tmp_path, monkeypatch, capsys):
    """Issue 15, item 8: a row whose video could not be read is stored as an error, not as an empty answer, and
    the next run (video restored) makes its prediction."""
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "bench.jsonl", bench_rows())
    fake_model(monkeypatch, unreadable=("C",))
    s = main(["--bench", "bench.jsonl", "--model", "m", "--no-progress"])
    assert s["unreadable"] == 1 and s["missing"] == 1 and s["rows"][2]["error"] == "v0.mp4: no such file"
    assert "(1 of them: video unreadable, e.g. row 2" in capsys.readouterr().out
    asked = fake_model(monkeypatch)
    s = main(["--bench", "bench.jsonl", "--model", "m", "--no-progress"])
    assert [r["original_answer"][:1] for r in asked] == ["C"]
    assert s["unreadable"] == 0 and s["missing"] == 0 and s["overall"]["accuracy"] == 1.0


MODULES = ("st_r1.model", "st_r1.generate", "st_r1.video", "st_r1.world")


def tiny_model(out, rows):
    """A random 2-layer Qwen2.5-VL with a byte-level BPE trained on the rows (the world's own tiny model may not
    exist yet; this one needs only transformers' config class and our VideoLM)."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from st_r1.model import VideoLM
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>",
               "<|image_pad|>"]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer, tk.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tk.train_from_iterator([r["problem"] + r["solution"] for r in rows],
                           trainers.BpeTrainer(vocab_size=400, special_tokens=special, show_progress=False))
    tf.PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(out)
    ids = {t: tk.token_to_id(t) for t in special}
    text = dict(vocab_size=tk.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, pad_token_id=ids["<|endoftext|>"], bos_token_id=None,
                eos_token_id=ids["<|im_end|>"],
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    cfg = tf.Qwen2_5_VLConfig(text_config=text, vision_config=dict(
        depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, window_size=56,
        fullatt_block_indexes=[1]), image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(0)
    VideoLM.from_config(cfg.to_dict()).save_pretrained(out)


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in MODULES),
                    reason="the --model path needs st_r1.model, generate, video and world (videos)")
def test_model_path_end_to_end(tmp_path):
    from st_r1 import world
    paths = world.make_bench(str(tmp_path / "w"), seed=0, n_videos=1, split="test", size=56, frames=16, workers=1,
                             progress=False)
    with open(paths["test"]) as f:
        rows = [json.loads(line) for line in f]
    tiny_model(str(tmp_path / "m"), rows)
    args = ["--bench", paths["test"], "--model", str(tmp_path / "m"), "--batch-size", "3",
            "--max-new-tokens", "6", "--out", str(tmp_path / "s.json"), "--limit", "5"]
    res = run(args, tmp_path)
    assert res.returncode == 0, res.stderr
    assert "0 predictions already" in res.stdout and "predict: 100%" in res.stderr   # progress bar
    made = [json.loads(line) for line in (tmp_path / "s.predictions.jsonl").read_text().splitlines()]
    assert [m["index"] for m in made] == [0, 1, 2, 3, 4] and all(isinstance(m["prediction"], str) for m in made)
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["missing"] == 0 and s["overall"]["n"] + s["route"].get("overall", {"n": 0})["n"] == 5
    # greedy decoding is deterministic: after dropping two predictions a resumed run makes the same ones again
    (tmp_path / "s.predictions.jsonl").write_text("\n".join(json.dumps(m) for m in made[:3]) + "\n")
    res = run(args, tmp_path)
    assert res.returncode == 0 and "3 predictions already" in res.stdout, res.stderr
    again = [json.loads(line) for line in (tmp_path / "s.predictions.jsonl").read_text().splitlines()]
    assert again == made


def test_max_new_tokens_default_is_the_papers_512_and_256_for_tiny_models(tmp_path):
    assert evaluate.default_max_new_tokens(os.path.join(ROOT, "models", "tiny-base")) == 256
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "text_config": {"vocab_size": 151936}}))
    assert evaluate.default_max_new_tokens(str(tmp_path)) == 512
    assert evaluate.default_max_new_tokens(str(tmp_path / "none")) == 512


def test_main_job_scores_a_checkpoint_again_once_training_went_past_it(tmp_path):
    """bench/main_job.py --grpo-steps 40 after a 20-step run: the 20-step scores are moved aside (not lost) and the
    arm is scored again, instead of the old number standing in the table under the new flags."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import main_job
    old, new = str(tmp_path / "arm" / "ckpt-00000020" / "model"), str(tmp_path / "arm" / "ckpt-00000040" / "model")
    out, preds = str(tmp_path / "arm.json"), str(tmp_path / "arm.predictions.jsonl")
    for path, text in ((out, json.dumps({"predictions": preds})), (preds, "{}\n"),
                       (preds + ".meta.json", json.dumps({"model": old}))):
        with open(path, "w") as f:
            f.write(text)
    assert main_job.set_aside_stale(old, out) == [] and os.path.exists(out)  # the same model: kept as it is
    os.makedirs(new)
    with open(os.path.join(new, "model.safetensors"), "wb") as f:
        f.write(b"weights")
    with open(preds + ".meta.json", "w") as f:  # the same weights elsewhere (a moved runs folder): kept
        json.dump({"model": old, "weights_sha256": runs.files_sha256([os.path.join(new, "model.safetensors")])}, f)
    assert main_job.set_aside_stale(new, out) == []
    with open(preds + ".meta.json", "w") as f:
        json.dump({"model": old, "weights_sha256": "0" * 64}, f)
    assert main_job.set_aside_stale(new, out) == [out, preds, preds + ".meta.json"]
    assert not os.path.exists(out) and not os.path.exists(preds)
    for path in (out, preds, preds + ".meta.json"):
        assert os.path.exists(path + ".ckpt-00000020")
