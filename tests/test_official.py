"""The official Ego-ST Bench layout (tests/fixtures/official, written by hand): reading, selecting, gold fields,
predictions in the authors' output layout or our JSONL by id, and scoring end to end under both protocols."""
import json
import os
import shutil

import pytest
from conftest import FIXTURES

import evaluate
from st_r1 import cli, data, official

OFFICIAL = os.path.join(FIXTURES, "official")
# the gold letters, read by hand from the fixture files (None: the file has no gold field; "skip": no options)
GOLD = {"Part1_forward_mcq.json": {"0": "D", "1": "A", "2": "B"},
        "Part1_reverse_mcq.json": {"0": "C", "1": "A"},
        "Part1_forward_mcq_landmark.json": {"0": "C", "1": "A"},
        "Part1_reverse_mcq_landmark.json": {"0": None, "1": None},
        "Part4_forward_mcq.json": {"0": "A", "1": "skip"},
        "Part4_forward_mcq_action.json": {"0": "B", "1": "A"},
        "Part4_reverse_mcq_action.json": {"0": "A", "1": "A", "2": "C"}}
ROUTES = {"Part1_forward_qa.json": 2, "Part1_reverse_qa.json": 2, "Part4_forward_qa.json": 1,
          "Part4_reverse_qa.json": 1}


def load(**kw):
    notes = []
    rows, files = official.load_official(OFFICIAL, log=notes.append, **kw)
    return rows, files, notes


def test_rows_of_the_release():
    rows, files, notes = load()
    assert [os.path.basename(f) for f in files] == sorted(list(GOLD) + list(ROUTES))
    assert len(rows) == sum(map(len, GOLD.values())) + sum(ROUTES.values()) == 22
    by_id = {r["id"]: r for r in rows}
    for name, golds in GOLD.items():
        for key, gold in golds.items():
            row = by_id[f"{name}:{key}"]
            assert row.get("original_answer") == (gold if gold not in (None, "skip") else None), row["id"]
            assert (row.get("skip") == "no options") == (gold == "skip")
    # task and direction come from the file name, whatever the wording says
    forward_start = by_id["Part1_forward_mcq.json:0"]   # "starting from the starting point ... your destination"
    assert forward_start["task"] == "direction" and forward_start["reverse"] is False
    last_act = by_id["Part4_reverse_mcq_action.json:2"]  # "what did you do last ...": no task word at all
    assert last_act["task"] == "action" and last_act["reverse"] is True and last_act["part"] == 4
    assert by_id["Part1_forward_qa.json:0"]["task"] == "route"  # a route question that mentions "directions"
    # options as a list of 4, 3 or 2; lettered ones kept, bare ones lettered; the authors' prompt
    three = by_id["Part1_reverse_mcq.json:1"]
    assert three["options"] == {"A": "Turn around, turn right at the stairs", "B": "Turn around, turn left at the door",
                                "C": "Walk straight"}
    assert three["problem"] == (three["question"] + "Options:A. Turn around, turn right at the stairs\n"
                                "B. Turn around, turn left at the door\nC. Walk straight" + official.INSTRUCTION)
    assert len(by_id["Part1_forward_mcq_landmark.json:1"]["options"]) == 2
    route = by_id["Part4_reverse_qa.json:0"]
    assert route["problem"] == route["question"] and route["original_answer"].startswith("Go down the stairs")
    # the video path joined with its part's folder (part4's is part4_clip), nested folders kept
    assert by_id["Part4_forward_mcq_action.json:1"]["video"] == os.path.join("part4_clip", "seq07", "clip_002.mp4")
    root = os.path.join(OFFICIAL, "videos")
    assert all(os.path.isfile(data.resolve_video(r, root)) for r in rows)
    # which field held the gold letter is said, and so is a file without one
    assert 'Part1_forward_mcq_landmark.json: gold letters from "correct_answer" (2) of 2 samples' in notes
    assert 'Part1_reverse_mcq.json: gold letters from "reverse_mcq.gt" (2) of 2 samples' in notes
    assert any(n.startswith("Part1_reverse_mcq_landmark.json: no gold letter in its 2 samples") and "--gold-field" in n
               for n in notes)
    assert "Part4_forward_mcq.json: 1 samples with no options: skipped (as the authors' scripts do)" in notes


def test_parts_kinds_and_gold_field_select():
    rows, files, _ = load(parts="4", kinds="qa,action")
    assert sorted(os.path.basename(f) for f in files) == ["Part4_forward_mcq_action.json", "Part4_forward_qa.json",
                                                         "Part4_reverse_mcq_action.json", "Part4_reverse_qa.json"]
    rows, _, notes = load(parts="1,4", kinds="mcq", gold_field="label")
    assert {r["id"].split(":")[0] for r in rows} == {"Part1_forward_mcq.json", "Part1_reverse_mcq.json",
                                                     "Part4_forward_mcq.json"}
    assert [r["id"] for r in rows if r.get("original_answer")] == ["Part4_forward_mcq.json:0"]
    assert any(n.startswith("Part1_forward_mcq.json: no gold letter") and "looked for label" in n for n in notes)
    with pytest.raises(cli.UserError, match="--parts takes 1-4"):
        load(parts="5")
    with pytest.raises(cli.UserError, match="keep none of"):
        load(parts="2")


@pytest.mark.parametrize("name, text, why", [
    ("Part1_forward_mcq.json", '{\n  "0": {"video": "a.mp4",\n  }\n}', r"Part1_forward_mcq.json:3: not valid JSON"),
    ("Part1_forward_mcq.json", '[1, 2]', "expected one JSON object keyed by sample id, got a list"),
    ("Part1_forward_mcq.json", '{"7": {"forward_mcq": {"question": "q", "options": ["a"]}}}',
     'sample "7": missing or empty string field "video"'),
    ("Part1_forward_mcq.json", '{"7": {"video": "v", "reverse_mcq": {"question": "q", "options": ["a"]}}}',
     'sample "7": the file name says forward, but the sample holds "reverse_mcq"'),
    ("Part1_forward_mcq.json", '{"7": {"video": "v", "forward_mcq": {"question": "q", "options": "A. x"}}}',
     'sample "7": "options" must be a list'),
    ("Part1_forward_mcq.json", '{"7": {"video": "v", "forward_mcq": {"question": "q", "options": ["A. a", "C. c"]}}}',
     "option 2 is lettered C, expected B"),
    ("Part1_forward_mcq.json", '{"7": {"video": "v", "forward_mcq": {"question": "q", "options": ["a","b","c","d","e"]'
                               '}}}',
     "5 options; the answer rules read the letters A-D only"),
    ("Part1_forward_mcq.json", '{"7": {"video": "v", "forward_mcq": {"question": "q", "options": ["a", "b"]}, "gt": 1'
                               '}}',
     'gold field "gt" holds 1, neither an option letter \\(A, B\\) nor an option\'s text'),
    ("Part1_reverse_qa.json", '{"7": {"video": "v", "question": "q", "forward_answer": "x"}}',
     'the file name says reverse, but the sample holds "forward_answer"'),
    ("Part1_forward.json", '{}', "must keep its release name"),
])
def test_malformed_release_files_name_file_and_line_or_sample(tmp_path, name, text, why):
    (tmp_path / name).write_text(text)
    with pytest.raises(data.DataError, match=why) as e:
        official.load_official(str(tmp_path / name), log=lambda _: None)
    assert str(tmp_path / name) in str(e.value)


# ----------------------------------------------------------------------------- scored end to end


def reply(answer):
    return f"<think>t</think> <answer>{answer}</answer>"


def authors_output(path, predict):
    """What the authors' inference scripts write: every sample of the files given, "predict" added, all in one
    object keyed f"{file number}_{key}"."""
    out = {}
    for n, name in enumerate(sorted(n for n in os.listdir(OFFICIAL) if n.endswith(".json")), 1):
        with open(os.path.join(OFFICIAL, name)) as f:
            for key, sample in json.load(f).items():
                out[f"{n}_{key}"] = dict(sample, predict=predict(name, key, sample))
    with open(path, "w") as f:
        json.dump(out, f, indent=4)


def gold_copy(name, key, sample):
    if name.endswith("_qa.json"):
        return reply(sample.get("forward_answer", sample.get("reverse_answer")))
    return reply(GOLD[name][key] or "A") if GOLD[name][key] != "skip" else "Skipped due to empty options."


def main(args):
    return evaluate.main(cli.parse(evaluate.Options, args))


@pytest.mark.parametrize("protocol", ["strict", "paper"])
def test_gold_copy_scores_100_in_every_cell(tmp_path, monkeypatch, capsys, protocol):
    monkeypatch.chdir(tmp_path)
    authors_output("pred.json", gold_copy)
    s = main(["--bench", OFFICIAL, "--predictions", "pred.json", "--protocol", protocol, "--out", "s.json"])
    cells = [g for g in s["mcq"] if g.startswith("part") and g.count("/") == 2]
    assert sorted(cells) == ["part1/direction/forward", "part1/direction/reverse", "part1/landmark/forward",
                             "part4/action/forward", "part4/action/reverse", "part4/direction/forward"]
    assert all(st["accuracy"] == 1.0 for st in s["mcq"].values()) and s["overall"]["n"] == 13
    routes = [g for g in s["route"] if g.startswith("part") and g.count("/") == 2]
    assert len(routes) == 4 and all(st["score"] == pytest.approx(5.0) for st in s["route"].values())
    assert s["route"]["overall"]["n"] == 5 and s["missing"] == 0
    assert s["no_gold"]["part1/landmark/reverse"] == 2 and s["skipped"][protocol]["overall"] == 2
    assert s["rows"][0]["id"] == "Part1_forward_mcq.json:0"  # the files in name order, samples in file order
    out = capsys.readouterr().out
    assert "| Part1 | 5.00 [5.00, 5.00] (n=2) | 5.00 [" in out and "| Part4 |" in out
    assert "| **all** | 13 | 2 | 5 | 2 | 0 |" in out  # scored, no gold, route scored, skipped, no prediction
    assert "| **all** | 5.00 [5.00, 5.00] (n=3) |" in out and "| no gold (2) |" in out


def test_a_fixed_letter_scores_its_share(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    authors_output("pred.json", lambda name, key, sample: "A")  # as the authors' MCQ output stores it: the letter
    s = main(["--bench", OFFICIAL, "--predictions", "pred.json", "--kinds", "direction,landmark,action",
              "--protocol", "paper", "--out", "s.json"])
    share = {g: (st["correct"], st["n"]) for g, st in s["mcq"].items()}
    assert share["part1/direction/forward"] == (1, 3) and share["part1/direction/reverse"] == (1, 2)
    assert share["part1/landmark/forward"] == (1, 2) and share["part4/direction/forward"] == (1, 1)
    assert share["part4/action/forward"] == (1, 2) and share["part4/action/reverse"] == (2, 3)
    assert share["direction/forward"] == (2, 4) and share["overall"] == (7, 13)
    assert s["by_protocol"]["strict"]["overall"]["correct"] == 0  # no <answer> tags: strict reads nothing


def test_predictions_by_id_and_per_file_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = [{"id": f"{name}:{key}", "prediction": reply(g)} for name, golds in GOLD.items()
             for key, g in golds.items() if g not in (None, "skip")]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[::-1]))  # any order
    s = main(["--bench", OFFICIAL, "--parts", "1", "--predictions", "p.jsonl", "--out", "s.json"])
    assert s["overall"]["n"] == 7 and s["overall"]["accuracy"] == 1.0  # part 4's ids are named, not counted
    (tmp_path / "p.jsonl").write_text('{"id": "Part1_forward_mcq.json:0", "prediction": "x"}\n'
                                      '{"id": "Part9_forward_mcq.json:0", "prediction": "x"}\n')
    with pytest.raises(data.DataError, match="p.jsonl:2: id 'Part9_forward_mcq.json:0' is not a sample of the bench"):
        main(["--bench", OFFICIAL, "--predictions", "p.jsonl", "--out", "s.json"])
    (tmp_path / "p.jsonl").write_text('{"id": "Part1_forward_mcq.json:0", "prediction": "x"}\n'
                                      '{"index": 1, "prediction": "x"}\n')
    with pytest.raises(data.DataError, match='p.jsonl:2: some lines have an "id" and this one has an "index"'):
        main(["--bench", OFFICIAL, "--predictions", "p.jsonl", "--out", "s.json"])
    # one output file per bench file, named like it: matched by key
    (tmp_path / "out").mkdir()
    with open(os.path.join(OFFICIAL, "Part1_reverse_mcq.json")) as f:
        samples = json.load(f)
    (tmp_path / "out" / "Part1_reverse_mcq.json").write_text(json.dumps(
        {k: dict(v, predict="C") for k, v in samples.items()}))
    s = main(["--bench", OFFICIAL, "--kinds", "mcq", "--parts", "1", "--predictions", "out", "--protocol", "paper"])
    assert s["mcq"]["direction/reverse"]["correct"] == 1 and s["mcq"]["direction/forward"]["n"] == 3
    assert s["missing"] == 3
    (tmp_path / "out" / "Part1_reverse_mcq.json").write_text(json.dumps({"0": {"video": "walk_01.mp4"}}))
    with pytest.raises(data.DataError, match='Part1_reverse_mcq.json: sample "0": expected the bench sample with a '
                                             'string "predict"'):
        main(["--bench", OFFICIAL, "--predictions", "out"])


def test_our_model_on_the_release_writes_ids_and_skips_no_option_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(OFFICIAL, "bench")
    (tmp_path / "m").mkdir()
    asked = []

    def predict(model, tok, rows, enc, batch_size=8, max_new_tokens=256, on_prediction=None, progress=False, **kw):
        for j, row in enumerate(rows):
            asked.append(row)
            on_prediction(j, reply(row.get("original_answer", "A")))
    monkeypatch.setattr(evaluate, "load_ours", lambda opt: (None, None, None))
    monkeypatch.setattr(evaluate, "predict", predict)
    s = main(["--bench", "bench", "--parts", "4", "--model", "m", "--no-progress", "--out", "s.json"])
    assert len(asked) == 8 and not any(r.get("skip") for r in asked)
    made = [json.loads(x) for x in (tmp_path / "s.predictions.jsonl").read_text().splitlines()]
    assert made[0] == {"id": "Part4_forward_mcq.json:0", "prediction": reply("A")} and len(made) == 8
    meta = json.loads((tmp_path / "s.predictions.jsonl.meta.json").read_text())
    assert meta["max_new_tokens"] == 512 and meta["video_root"] == os.path.abspath("bench")
    assert s["overall"]["accuracy"] == 1.0 and s["skipped"]["strict"]["overall"] == 1
    with pytest.raises(cli.UserError, match="--model appends JSONL predictions"):
        main(["--bench", "bench", "--model", "m", "--predictions", "out.json"])
    # --parts 1,4 later: part 4's predictions are found by id, only part 1 is asked
    asked.clear()
    s = main(["--bench", "bench", "--model", "m", "--no-progress", "--out", "s.json"])
    assert len(asked) == 13 and {r["part"] for r in asked} == {1}


def test_release_flags_refused_on_our_jsonl(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(os.path.join(FIXTURES, "ego_st_r1_mcq_126.jsonl"), "b.jsonl")
    with pytest.raises(cli.UserError, match="--parts, --kinds and --gold-field read the official release"):
        main(["--bench", "b.jsonl", "--parts", "1", "--predictions", "p.jsonl"])
    with pytest.raises(cli.UserError, match="--protocol must be one of strict, paper"):
        main(["--bench", "b.jsonl", "--protocol", "lenient", "--predictions", "p.jsonl"])
