import importlib.util
import json
import os
import time

import pytest
from conftest import FIXTURES

from st_r1 import answers as A
from st_r1 import rewards as R

FWD = ["walk straight", "pass the red door", "turn left", "see the walls change from brick to wood", "turn right",
       "pass the blue bench", "turn left"]
# the contract's inversion: reversed order, left <-> right, scenery a->b becomes b->a, "turn around" first
REV = ["turn around", "turn right", "pass the blue bench", "turn left", "see the walls change from wood to brick",
       "turn right", "pass the red door", "walk straight"]


def fixture_rows():
    with open(os.path.join(FIXTURES, "ego_st_r1_mcq_126.jsonl")) as f:
        return [json.loads(line) for line in f]


def world_reply(first, second, letter="B", reverse=True):
    """A reply in the contract's CoT template; `first` is the recall of the other direction."""
    if reverse:
        head = "Let's start by thinking forward: from the start to the destination I "
        mid = ". And then think in reverse: going back to the start I "
    else:
        head = "Let's start by thinking reverse: from the destination back to the start I "
        mid = ". And then think forward: from the start to the destination I "
    return (f"<think>{head}{', then '.join(first)}{mid}{', then '.join(second)}. Option {letter} lists these "
            f"events in this order. Hence, the correct answer is {letter}.</think> <answer>{letter}</answer>")


def mirror(events):
    swap = {"turn left": "turn right", "turn right": "turn left"}
    return [swap.get(e, e) for e in events]


ROW_REV = {"task": "direction", "reverse": True, "events": {"forward": FWD, "reverse": REV},
           "original_answer": "B", "problem": "q", "video": "v.mp4"}
ROW_FWD = dict(ROW_REV, reverse=False)


# ----------------------------------------------------------------------------- format


@pytest.mark.parametrize("text,want", [
    ("<think>go</think> <answer>B</answer>", 1.0),
    ("  \n<think>go\nleft</think>\n\n<answer>B. Turn left</answer>\n", 1.0),
    ("<answer>B</answer>", 0.0),                                            # no think
    ("<answer>B</answer> <think>go</think>", 0.0),                          # wrong order
    ("<think>go</think> so <answer>B</answer>", 0.0),                       # text between
    ("<think>go</think> <answer>B</answer> really", 0.0),                   # text after
    ("x <think>go</think> <answer>B</answer>", 0.0),                        # text before
    ("<think><think>go</think></think> <answer>B</answer>", 0.0),           # nested
    ("<think>go</think> <answer>A</answer><answer>B</answer>", 0.0),        # repeated answer
    ("<think>go</think><think>x</think> <answer>B</answer>", 0.0),          # repeated think
    ("<think>go <answer>A</answer></think> <answer>B</answer>", 0.0),       # answer tag inside think
    ("<think>go</think> <answer><think>B</answer>", 0.0),                   # unbalanced
    ("<think> </think> <answer>B</answer>", 0.0),                           # empty think
    ("<think>go</think> <answer> </answer>", 0.0),                          # empty answer
    ("<think>go</think> <answer>B", 0.0),                                   # unclosed
    ("", 0.0),
    ("<THINK>go</THINK> <ANSWER>B</ANSWER>", 0.0),
])
def test_format(text, want):
    assert R.format_reward(text) == want


# ----------------------------------------------------------------------------- answer letters


@pytest.mark.parametrize("text,want", [
    ("<think>t</think> <answer>B</answer>", "B"),
    ("<answer> B. </answer>", "B"),
    ("<answer>(B)</answer>", "B"),
    ("<answer>B)</answer>", "B"),
    ("<answer>B. Turn left approach the endpoint</answer>", "B"),
    ("<answer>(C) pass the red door</answer>", "C"),
    ("<answer>Option D</answer>", "D"),
    ("<answer>Answer: A</answer>", "A"),
    ("<answer>B. A red door, then turn left</answer>", "B"),     # "A" as an article is not a second letter
    ("<answer>A or B</answer>", None),
    ("<answer>A, B</answer>", None),
    ("<answer>AB</answer>", None),
    ("<answer>A/B</answer>", None),
    ("<answer>B. Turn left, or C</answer>", None),
    ("<answer>maybe B</answer>", None),
    ("<answer>B?</answer>", None),
    ("<answer>I think B</answer>", None),
    ("<answer>b</answer>", None),
    ("<answer>E</answer>", None),
    ("<answer></answer>", None),
    ("", None),
    ("B", None),                                                 # no tags
    ("The answer is B.", None),
    ("B <answer>maybe</answer>", None),                          # letter outside the tags
    ("<think>B</think> <answer>the red door</answer>", None),
    ("<answer>A</answer> <answer>B</answer>", None),             # repeated
    ("<answer><answer>B</answer></answer>", None),               # nested
    ("<answer>B. 向左转，然后经过红色的门</answer>", "B"),           # non-ASCII option text
    ("<answer>Б</answer>", None),                                # Cyrillic capital Be
    ("<answer>Ｂ</answer>", None),                                # full-width B
])
def test_answer_letter(text, want):
    assert A.answer_letter(text) == want


def test_accuracy_gold_letter_or_solution():
    sol = "<think>forward then reverse</think> <answer>C</answer>"
    assert R.accuracy_reward("<think>x</think> <answer>C</answer>", "C") == 1.0
    assert R.accuracy_reward("<think>x</think> <answer>C</answer>", sol) == 1.0
    assert R.accuracy_reward("<think>x</think> <answer>D</answer>", sol) == 0.0
    assert R.accuracy_reward("<think>C</think> <answer>A or C</answer>", "C") == 0.0
    assert R.accuracy_reward("C", "C") == 0.0
    with pytest.raises(ValueError, match="no gold option letter"):
        R.accuracy_reward("<answer>C</answer>", "<answer>the red door</answer>")


def test_every_fixture_solution_scores_one():
    rows = fixture_rows()
    assert len(rows) == 126
    for i, row in enumerate(rows):
        sol = row["solution"]
        assert R.format_reward(sol) == 1.0, i
        assert R.accuracy_reward(sol, row["original_answer"]) == 1.0, i
        assert R.accuracy_reward(sol, sol) == 1.0, i
        assert R.REWARDS["accuracy"](sol, row) == 1.0, i
        assert R.concluded_letter(sol) == row["original_answer"] and R.consistency_reward(sol, row) == 1.0, i
        wrong = "ABCD"[("ABCD".index(row["original_answer"]) + 1) % 4]
        assert R.accuracy_reward(f"<think>t</think> <answer>{wrong}</answer>", sol) == 0.0, i


def test_long_and_hostile_replies_are_fast():
    n = 100_000
    replies = [
        "<think>" + "é" * n + "</think> <answer>B</answer>",
        "<think>" + "<think>" * (n // 7) + "</think> <answer>B</answer>",
        "<answer>" + "B " * (n // 2) + "</answer>",
        "<answer>B." + " x" * (n // 2) + "</answer>",
        "<answer>" + "(" * n + "</answer>",
        "<think>Let's start by thinking forward: I " + "turn left, then " * (n // 16) + "</think> <answer>B</answer>",
        "<think>Let's start by thinking forward: I pass the " + "red " * (n // 4) + "</think> <answer>B</answer>",
        "<think>Let's start by thinking forward: " + "go back and " * (n // 12) + "</think> <answer>B</answer>",
        "<think>" + "right " * (n // 6) + "</think> <answer>" + "pass the red door, then " * (n // 24) + "</answer>",
    ]
    route_row = {"task": "route", "reverse": False, "events": {"forward": FWD, "reverse": REV},
                 "original_answer": "x"}
    authors_row = {"reverse": True, "recall_truth": ["Go straight turn right turn left"], "original_answer": "B"}
    for text in replies:
        assert len(text) >= n
        t = time.perf_counter()
        vals = [R.format_reward(text), R.accuracy_reward(text, "B"), R.consistency_reward(text, authors_row),
                R.reverse_thinking_reward(text, ROW_REV), R.reverse_thinking_reward(text, authors_row),
                R.route_reward(text, route_row)]
        dt = time.perf_counter() - t
        assert dt < 1.0, (text[:60], dt)
        assert all(0.0 <= v <= 1.0 for v in vals)


@pytest.mark.parametrize("text, want", [
    ("<think>... Hence, the correct answer is B.</think> <answer>B</answer>", 1.0),
    ("<think>... Hence, the correct answer is B.</think> <answer>C</answer>", 0.0),    # the copy failed
    ("<think>the correct answer is A. No: the correct answer is C</think> <answer>C</answer>", 1.0),  # the last
    ("<think>the correct answer is C. No: the correct answer is A</think> <answer>C</answer>", 0.0),
    ("<think>no conclusion</think> <answer>B</answer>", 0.0),
    ("<think>x</think> <answer>B</answer> the correct answer is B", 0.0),                # outside <think>
    ("<answer>B</answer>", 0.0),
    ("<think>Hence, the correct answer is B.</think> <answer>B or C</answer>", 0.0),
])
def test_consistency_pays_the_copy_from_chain_to_answer(text, want):
    row = {"task": "direction", "original_answer": "D", "options": {L: L for L in "ABCD"}}  # gold D: not asked
    assert R.consistency_reward(text, row) == want
    assert R.consistency_reward(text, {"task": "route", "original_answer": "I walk."}) == 0.0


# ----------------------------------------------------------------------------- reverse thinking


def test_recall_parser_reads_the_first_recall_only():
    text = world_reply(FWD, REV)
    events, turns, _ = A.parse_route(R.first_recall(text))
    assert events == FWD
    assert turns == ["turn left", "turn right", "turn left"]


def test_reverse_thinking_correct_mirrored_reordered():
    good = R.reverse_thinking_reward(world_reply(FWD, REV), ROW_REV)
    mirrored = R.reverse_thinking_reward(world_reply(mirror(FWD), mirror(REV)), ROW_REV)
    swapped = FWD[:1] + [FWD[5]] + FWD[2:5] + [FWD[1]] + FWD[6:]  # red door and blue bench exchanged
    reordered = R.reverse_thinking_reward(world_reply(swapped, REV), ROW_REV)
    same_direction = R.reverse_thinking_reward(world_reply(REV, FWD), ROW_REV)  # recalled the asked direction
    assert good == 1.0
    # turns L,R,L -> R,L,R: Levenshtein 2 (insert R in front, drop the last L) of 3 -> S = 1/3; marks intact
    assert mirrored == pytest.approx(1 / 3)
    # marks (door, walls, bench) -> (bench, walls, door): 2 edits of 3 -> S = 1/3, turns intact
    assert reordered == pytest.approx(1 / 3)
    assert same_direction < 0.2
    # a forward question scores its first recall against the reverse route
    assert R.reverse_thinking_reward(world_reply(REV, FWD, reverse=False), ROW_FWD) == 1.0
    assert R.reverse_thinking_reward(world_reply(FWD, REV, reverse=False), ROW_FWD) < 0.2


def test_reverse_thinking_partial_and_edge_cases():
    missing_one = [e for e in FWD if e != "pass the blue bench"]
    # marks 2 of 3 -> S = 1 - 1/3
    assert R.reverse_thinking_reward(world_reply(missing_one, REV), ROW_REV) == pytest.approx(2 / 3)
    assert R.reverse_thinking_reward("<answer>B</answer>", ROW_REV) == 0.0               # no think
    assert R.reverse_thinking_reward(world_reply(FWD, REV), {"reverse": True}) == 0.0    # no truth known
    wrong = world_reply(FWD, REV, letter="C")
    assert R.reverse_thinking_reward(wrong, ROW_REV) == 1.0
    assert R.reverse_thinking_reward(wrong, ROW_REV, gate_on_correct=True) == 0.0
    assert R.reverse_thinking_reward(world_reply(FWD, REV), ROW_REV, gate_on_correct=True) == 1.0


def test_reverse_truth_from_authors_pairs():
    rows = fixture_rows()
    truths = R.reverse_truth_from_pairs(rows)
    assert len(truths) == len(rows)
    # sun3d_5.mp4: line 14 asks the directions back to the start (gold C), line 68 to the destination (gold B)
    assert truths[13] == ["Go straight turn right turn left"]
    assert truths[67] == ["Turn back go straight turn right go straight turn left"]
    assert R.attach_recall_truth(rows) == sum(t is not None for t in truths) == 26
    assert R.reverse_thinking_reward(rows[13]["solution"], rows[13]) == 1.0
    assert R.reverse_thinking_reward(rows[67]["solution"], rows[67]) == 1.0
    flipped = rows[67]["solution"].replace("right", "LEFT").replace("left", "right").replace("LEFT", "left")
    assert R.reverse_thinking_reward(flipped, rows[67]) == pytest.approx(1 / 3)  # around,R,L -> around,L,R
    scores = [R.reverse_thinking_reward(r["solution"], r) for r in rows if "recall_truth" in r]
    assert sum(s == 1.0 for s in scores) >= 20   # the rest: the authors' own labels disagree (see README)
    assert R.reverse_thinking_reward(rows[0]["solution"], rows[0]) == 0.0           # unpaired video


def test_parse_options_of_authors_problem():
    rows = fixture_rows()
    opts = A.parse_options(rows[0]["problem"])
    assert opts == {"A": "Turn right continue down the road circle back around.",
                    "B": "Turn left approach the endpoint eventually turn around",
                    "C": "Turn right continue on the new path arrive at the goal",
                    "D": "Walk straight return to the starting point"}
    assert sorted(A.parse_options(rows[4]["problem"])) == ["A", "B", "C"]


# ----------------------------------------------------------------------------- route, table, weights


def test_route_reward():
    row = {"task": "route", "reverse": True, "events": {"forward": FWD, "reverse": REV},
           "original_answer": "I turn around, then ..."}
    exact = "<think>recall</think> <answer>I " + ", then ".join(REV) + ".</answer>"
    mirrored = "<think>recall</think> <answer>I " + ", then ".join(mirror(REV)) + ".</answer>"
    assert R.route_reward(exact, row) == pytest.approx(1.0)
    # direction 5 * (1 - 2/4) (around,R,L,R -> around,L,R,L), landmark 5, semantic 5 * bag-F1 (< 5: one more left)
    got = R.route_reward(mirrored, row)
    assert 0.8 < got < (2.5 + 5 + 5) / 15
    assert R.route_reward("I " + ", then ".join(REV), row) == 0.0      # no <answer>
    assert R.route_reward(exact, ROW_REV) == 0.0                         # multiple choice row
    assert R.REWARDS["accuracy"](exact, row) == 0.0                      # open-ended: no letter


def test_rewards_table_and_weights():
    assert set(R.REWARDS) == {"format", "accuracy", "consistency", "reverse_thinking", "route", "brevity"}
    assert R.REWARDS["brevity"]("", None) == 1.0 and R.REWARDS["brevity"]("x" * 100, None) == 0.5
    text = world_reply(FWD, REV)
    for name, fn in R.REWARDS.items():
        v = fn(text, ROW_REV)
        assert isinstance(v, float) and 0.0 <= v <= 1.0, name
    assert R.REWARDS["format"](text, ROW_REV) == 1.0 and R.REWARDS["accuracy"](text, ROW_REV) == 1.0
    assert R.parse_weights("format=0.5,accuracy=1") == {"format": 0.5, "accuracy": 1.0}
    assert R.parse_weights(" reverse_thinking = 0.25 , ") == {"reverse_thinking": 0.25}
    assert R.parse_weights("accuracy=1,temporal=0.5") == {"accuracy": 1.0, "temporal": 0.5}
    with pytest.raises(ValueError, match="bad reward weight 'fromat=1'"):
        R.parse_weights("fromat=1")
    with pytest.raises(ValueError, match="not a number"):
        R.parse_weights("format=x")


@pytest.mark.skipif(importlib.util.find_spec("st_r1.world") is None, reason="st_r1.world not written yet")
def test_every_world_solution_scores_one(tmp_path):
    """Our world's rows (contract CoT template): each solution is right on every reward that applies."""
    from st_r1 import world
    paths = world.make_bench(str(tmp_path), seed=0, n_videos=6, split="test", videos=False, progress=False,
                             workers=1)
    with open(paths["test"]) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 48
    for row in rows:
        sol = row["solution"]
        assert R.format_reward(sol) == 1.0
        assert R.reverse_thinking_reward(sol, row, gate_on_correct=True) == 1.0, sol
        if row["task"] == "route":
            assert R.route_reward(sol, row) == pytest.approx(1.0)
        else:
            assert R.REWARDS["accuracy"](sol, row) == 1.0 and R.REWARDS["consistency"](sol, row) == 1.0
            flipped = sol.replace("left", "LEFT").replace("right", "left").replace("LEFT", "right")
            if "turn left" in sol or "turn right" in sol:
                assert R.reverse_thinking_reward(flipped, row) < 1.0


@pytest.mark.parametrize("answer", ["B. or A is possible", "B. Ｃ", "B, maybe", "B. Turn left?", "B. probably"])
def test_hedges_after_the_letter_score_zero(answer):
    """Issue 15, item 19: the README says hedges score 0; a full-width letter is a second letter."""
    assert A.answer_letter(f"<answer>{answer}</answer>") is None
    assert R.accuracy_reward(f"<think>t</think> <answer>{answer}</answer>", "<answer>B</answer>") == 0.0


def test_invisible_think_is_no_think():
    for blank in ("\u200b", " \u200b\u200d ", "\ufeff"):
        assert R.format_reward(f"<think>{blank}</think> <answer>B</answer>") == 0.0
        assert R.format_reward(f"<think>t</think> <answer>{blank}</answer>") == 0.0
    assert R.format_reward("<think>t\u200b</think> <answer>B</answer>") == 1.0
