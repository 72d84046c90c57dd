import json
import os
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import FIXTURES

from st_r1 import answers as A
from st_r1 import rubric as RB
from st_r1 import scoring as S

FWD = ["walk straight", "pass the red door", "turn left", "see the walls change from brick to wood", "turn right"]
REV = ["turn around", "turn left", "see the walls change from wood to brick", "turn right", "pass the red door",
       "walk straight"]


def fixture_rows():
    with open(os.path.join(FIXTURES, "ego_st_r1_mcq_126.jsonl")) as f:
        return [json.loads(line) for line in f]


def reply(answer):
    return f"<think>t</think> <answer>{answer}</answer>"


def test_wilson_hand_computed():
    # 8/10: p=.8, z^2/n=.38416; centre (.8+.19208)/1.38416=.716738; half 1.96*sqrt(.016+.009604)/1.38416=.226581
    lo, hi = S.wilson(8, 10)
    assert lo == pytest.approx(0.490157, abs=1e-5) and hi == pytest.approx(0.943319, abs=1e-5)
    lo, hi = S.wilson(0, 10)  # centre = half = .19208/1.38416
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.277533, abs=1e-5)
    assert S.wilson(10, 10)[1] == pytest.approx(1.0) and S.wilson(10, 10)[0] == pytest.approx(0.722467, abs=1e-5)
    assert S.wilson(0, 0) == (0.0, 1.0)


def test_task_and_direction_of_authors_rows():
    rows = fixture_rows()
    kinds = Counter((A.task_of(r), A.is_reverse(r)) for r in rows)
    # the five kinds of the fixture README, counted by hand from the question wording
    assert kinds == {("direction", False): 28, ("direction", True): 25, ("landmark", False): 34,
                     ("landmark", True): 19, ("action", True): 20}
    ours = {"task": "route", "reverse": True, "problem": "to your destination"}
    assert A.task_of(ours) == "route" and A.is_reverse(ours) is True


def test_score_rows_hand_counted():
    rows = [{"task": "direction", "reverse": False, "original_answer": "A"},
            {"task": "direction", "reverse": False, "original_answer": "B"},
            {"task": "landmark", "reverse": True, "original_answer": "C"},
            {"task": "landmark", "reverse": True, "original_answer": "D"},
            {"task": "direction", "reverse": True, "original_answer": "A"}]
    preds = [reply("A"), reply("A or B"), reply("C"), reply("D. the red door"), None]
    s = S.score_rows(rows, preds)
    assert s["overall"]["correct"] == 3 and s["overall"]["n"] == 5
    assert s["mcq"]["direction/forward"]["correct"] == 1 and s["mcq"]["direction/forward"]["n"] == 2
    assert s["mcq"]["landmark/reverse"]["accuracy"] == 1.0
    assert s["mcq"]["reverse"]["correct"] == 2 and s["mcq"]["reverse"]["n"] == 3
    assert s["mcq"]["forward"]["ci_low"] == pytest.approx(S.wilson(1, 2)[0])
    assert s["missing"] == 1 and s["rows"][4]["missing"] and s["rows"][1]["letter"] is None
    table = S.markdown_table(s).splitlines()
    # the paper's layout: a column per task and direction present, then all multiple-choice rows
    assert "| part | direction forward | direction reverse | landmark reverse | MC all |" in table
    row = next(line for line in table if line.startswith("| **all** | 50.0 ["))
    assert row.split(" | ")[1:] == ["50.0 [9.5, 90.5] (n=2)", "0.0 [0.0, 79.3] (n=1)", "100.0 [34.2, 100.0] (n=2)",
                                    "60.0 [23.1, 88.2] (n=5) |"]
    assert "| **all** | 5 | 0 | 0 | 0 | 1 |" in table  # scored, no gold, route scored, skipped, no prediction
    with pytest.raises(ValueError, match="5 rows but 4 predictions"):
        S.score_rows(rows, preds[:4])


def test_fixture_solutions_score_100_percent():
    rows = fixture_rows()
    s = S.score_rows(rows, [r["solution"] for r in rows])
    assert s["overall"]["accuracy"] == 1.0 and s["overall"]["n"] == 126
    assert s["mcq"]["action/reverse"]["n"] == 20 and "action/forward" not in s["mcq"]


def test_rubric_deterministic():
    row = {"task": "route", "reverse": True, "events": {"forward": FWD, "reverse": REV}, "original_answer": "x"}
    exact = reply("I " + ", then ".join(REV) + ".")
    r = RB.rubric_score(exact, row)
    assert r == {"direction": 5.0, "landmark": 5.0, "semantic": 5.0, "score": 5.0}
    # forward route given to a reverse question: turns around,L,R vs L,R -> 1 edit of 3; marks reversed order
    # (door, walls b->w) vs (walls w->b, door) -> 2 edits of 2
    r = RB.rubric_score(reply("I " + ", then ".join(FWD)), row)
    assert r["direction"] == pytest.approx(5 * 2 / 3) and r["landmark"] == 0.0
    assert RB.rubric_score("no tags at all", row)["score"] == 0.0
    # the authors' free-text references: direction words and content words
    authors = {"original_answer": "Turn back, go straight, turn right at the red door", "reverse": True}
    assert A.task_of(authors) == "route"
    r = RB.rubric_score(reply("turn back, go straight, turn right at the red door"), authors)
    assert r["score"] == pytest.approx(5.0)
    r = RB.rubric_score(reply("turn back, go straight, turn left at the red door"), authors)
    assert r["direction"] == pytest.approx(5 * (1 - 1 / 2)) and r["landmark"] == 5.0


def test_bag_f1():
    assert RB.bag_f1(["a", "b", "b"], ["b", "c"]) == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert RB.bag_f1([], []) == 1.0 and RB.bag_f1(["a"], []) == 0.0


# ----------------------------------------------------------------------------- LLM judge on a local server


class Judge(BaseHTTPRequestHandler):
    requests = []
    content = '{"direction": 4, "landmark": 3, "semantic": 5}'
    delay = 0.0
    raw = None

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Judge.requests.append((self.path, body, self.headers.get("Authorization")))
        time.sleep(Judge.delay)
        out = Judge.raw if Judge.raw is not None else json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": "Scores: " + Judge.content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Judge.requests, Judge.delay, Judge.raw = [], 0.0, None
    Judge.content = '{"direction": 4, "landmark": 3, "semantic": 5}'
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_judge_rubric(judge_url):
    out = S.judge_rubric("I turn around, then turn left", "I turn around, then turn right", judge_url,
                         model="m", timeout=5, api_key="k")
    assert out == {"direction": 4.0, "landmark": 3.0, "semantic": 5.0, "score": 4.0}
    path, body, auth = Judge.requests[-1]
    assert path == "/v1/chat/completions" and body["model"] == "m" and body["temperature"] == 0 and auth == "Bearer k"
    assert "I turn around, then turn right" in body["messages"][-1]["content"]
    Judge.content = '{"direction": 9, "landmark": -1, "semantic": 2.5}'  # clamped to 0-5
    assert S.judge_rubric("a", "b", judge_url + "/v1") == {"direction": 5.0, "landmark": 0.0, "semantic": 2.5,
                                                            "score": 2.5}


def test_judge_errors(judge_url):
    Judge.content = "I would give it a four."
    with pytest.raises(S.JudgeError, match="expected a JSON object with direction, landmark, semantic"):
        S.judge_rubric("a", "b", judge_url)
    Judge.raw = b"<html>oops</html>"
    with pytest.raises(S.JudgeError, match=r"127\.0\.0\.1.*reply is not JSON"):
        S.judge_rubric("a", "b", judge_url)
    Judge.raw = b'{"error": "no model"}'
    with pytest.raises(S.JudgeError, match="no choices"):
        S.judge_rubric("a", "b", judge_url)
    Judge.raw, Judge.delay = None, 1.0
    t = time.perf_counter()
    with pytest.raises(S.JudgeError, match="timed out"):
        S.judge_rubric("a", "b", judge_url, timeout=0.2)
    assert time.perf_counter() - t < 0.9
    with pytest.raises(S.JudgeError, match="judge http://127.0.0.1:9/"):
        S.judge_rubric("a", "b", "http://127.0.0.1:9", timeout=2)  # nothing listens on the discard port


def test_score_rows_with_judge(judge_url):
    rows = [{"task": "route", "reverse": False, "events": {"forward": FWD, "reverse": REV}, "original_answer": "x"},
            {"task": "direction", "reverse": False, "original_answer": "A"}]
    s = S.score_rows(rows, [reply(", then ".join(FWD)), reply("A")], judge_url=judge_url)
    assert s["judge"]["overall"]["score"] == 4.0 and s["route"]["overall"]["score"] == pytest.approx(5.0)
    assert len(Judge.requests) == 1   # only the open-ended row is sent
    assert "| judge rubric" in S.markdown_table(s) and "| route rubric" in S.markdown_table(s)


# ----------------------------------------------------------------------------- wording, for rows without labels


def test_wording_of_real_questions_without_labels():
    # a forward question that mentions the start is forward; the goal it names last decides
    fwd = {"problem": "Based on this video, starting from the starting point, what directions do you need to go "
                      "through to get to your destination? Options: A. x, B. y", "original_answer": "A"}
    assert A.is_reverse(fwd) is False and A.task_of(fwd) == "direction"
    back = {"problem": "Starting at your destination, how do you get back to the starting point?"}
    assert A.is_reverse(back) is True
    assert A.is_reverse({"problem": "What do you need to start doing to reach the goal?"}) is False
    # a route question (no gold letter) that mentions directions asks for a route
    route = {"problem": "Based on this video, describe the route from the starting point to your destination, with "
                        "the directions you take.", "original_answer": "Turn left at the door."}
    assert A.task_of(route) == "route" and A.is_reverse(route) is False
    # a multiple-choice question is read by the first task word it names
    mixed = {"problem": "Which landmarks did you pass, whatever direction you took? Options: A. x",
             "original_answer": "A"}
    assert A.task_of(mixed) == "landmark"


def test_630_authors_rows_keep_their_labels_and_score_100_under_both_protocols():
    with open(os.path.join(FIXTURES, "ego_st_r1_mcq_630.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    kinds = Counter((A.task_of(r), A.is_reverse(r)) for r in rows)
    # the five question kinds of the fixture README, counted from the wording
    assert kinds == {("direction", False): 143, ("direction", True): 143, ("landmark", False): 172,
                     ("landmark", True): 92, ("action", True): 80}
    for protocol in S.PROTOCOLS:
        s = S.score_rows(rows, [r["solution"] for r in rows], protocol=protocol)
        assert s["overall"]["n"] == 630 and s["overall"]["accuracy"] == 1.0
        assert s["by_protocol"]["strict"]["overall"] == s["by_protocol"]["paper"]["overall"]


# ----------------------------------------------------------------------------- the paper's protocol


def test_untagged_letter_is_right_under_paper_wrong_under_strict():
    rows = [{"task": "direction", "reverse": False, "original_answer": "B"}] * 4
    preds = ["B", "The answer is B.", reply("B"), "<answer>C</answer> B"]
    s = S.score_rows(rows, preds)
    assert [r["correct_strict"] for r in s["rows"]] == [False, False, True, False]
    # the paper's rule: the first capital A-D of the first <answer> block, else of the whole reply
    assert [r["correct_paper"] for r in s["rows"]] == [True, True, True, False]
    assert s["protocol"] == "strict" and s["overall"]["correct"] == 1
    assert S.score_rows(rows, preds, protocol="paper")["overall"]["correct"] == 3
    assert S.paper_letter("Based on the video, C") == "B"  # the authors' rule, as it is
    assert S.paper_letter("no letter here") is None and A.answer_letter("B") is None


def test_extra_landmark_costs_nothing_under_paper_missing_one_does():
    reference = "walk straight, pass the red door, turn left, pass the blue sofa"
    extra = reference + ", pass the green plant"
    strict, paper = RB.rubric(extra, reference, True), RB.paper_rubric(extra, reference, True)
    assert paper["landmark"] == 5.0 and strict["landmark"] == pytest.approx(5 * 2 / 3)
    missing = "walk straight, pass the red door, turn left"
    assert RB.paper_rubric(missing, reference, True)["landmark"] == pytest.approx(2.5)
    # a direction change the reference lacks costs; order does not (the judge's description says nothing of it)
    assert RB.paper_rubric(reference + ", turn right", reference, True)["direction"] == pytest.approx(2.5)
    swapped = "walk straight, pass the blue sofa, turn left, pass the red door"
    assert RB.paper_rubric(swapped, reference, True)["landmark"] == 5.0 and RB.rubric(swapped, reference, True)[
        "landmark"] == 0.0


def test_empty_reference_is_skipped_and_empty_reply_skipped_under_paper():
    rows = [{"task": "route", "reverse": False, "original_answer": ""},
            {"task": "route", "reverse": False, "original_answer": "Turn left at the red door."},
            {"task": "route", "reverse": False, "original_answer": "Turn left at the red door."}]
    preds = [reply("turn left"), None, "Turn left at the red door."]  # the last: no tags, the whole reply
    strict, paper = S.score_rows(rows, preds), S.score_rows(rows, preds, protocol="paper")
    assert strict["rows"][0]["skipped"] == "empty reference" and "rubric" not in strict["rows"][0]
    assert strict["route"]["overall"]["n"] == 2 and strict["route"]["overall"]["score"] == 0.0  # missing, untagged
    assert paper["rows"][1]["skipped"] == "empty reply" and paper["route"]["overall"]["n"] == 1
    assert paper["route"]["overall"]["score"] == pytest.approx(5.0)
    assert strict["skipped"]["strict"]["overall"] == 1 and paper["skipped"]["paper"]["overall"] == 2
    assert "| **all** | 0 | 0 | 1 | 2 | 1 |" in S.markdown_table(paper)


def test_no_gold_is_counted_never_scored():
    rows = [{"task": "landmark", "reverse": True, "options": {"A": "x", "B": "y"}, "part": 1},
            {"task": "landmark", "reverse": True, "options": {"A": "x", "B": "y"}, "original_answer": "B", "part": 1}]
    s = S.score_rows(rows, [reply("A"), reply("B")])
    assert s["rows"][0]["no_gold"] and "correct" not in s["rows"][0]
    assert s["overall"]["n"] == 1 and s["overall"]["accuracy"] == 1.0
    assert s["no_gold"]["part1/landmark/reverse"] == 1
    assert "| Part1 | 1 | 1 | 0 | 0 | 0 |" in S.markdown_table(s)


def test_paper_judge_sees_the_question_and_the_whole_untagged_reply(judge_url):
    rows = [{"task": "route", "reverse": False, "question": "Describe the route to your destination.",
             "original_answer": "Turn left at the red door."}]
    s = S.score_rows(rows, ["Turn left, then pass a red door"], protocol="paper", judge_url=judge_url)
    assert s["judge"]["overall"]["score"] == 4.0
    _, body, _ = Judge.requests[-1]
    prompt = body["messages"][-1]["content"]
    assert "QUESTION: Describe the route to your destination." in prompt
    assert "PREDICTED: Turn left, then pass a red door" in prompt and "do NOT" in prompt
    S.score_rows(rows, ["Turn left, then pass a red door"], judge_url=judge_url)  # strict: our template
    assert len(Judge.requests) == 2 and "QUESTION" not in Judge.requests[-1][1]["messages"][-1]["content"]


def test_paired_diff_hand_computed_and_against_a_paired_bootstrap():
    from st_r1.scoring import paired_diff
    # one question of each kind (both right, only A, only B, neither): phi = (1*1 - 1*1) / 4 = 0, p1 = p2 = 1/2;
    # Wilson(2, 4): centre 1/2, half-width 1.96 * sqrt(1/16 + 1.96^2/64) / (1 + 1.96^2/4) = 0.349965, so each side
    # of the interval is sqrt(2) * 0.349965 = 0.494925
    d = paired_diff([1, 1, 0, 0], [1, 0, 1, 0])
    assert d["diff"] == 0 and d["only_a"] == d["only_b"] == 1
    assert d["ci_low"] == pytest.approx(-0.494925, abs=1e-6) and d["ci_high"] == pytest.approx(0.494925, abs=1e-6)
    # swapping A and B mirrors the interval
    rng = __import__("random").Random(0)
    a = [rng.random() < 0.85 for _ in range(800)]
    b = [x if rng.random() < 0.9 else not x for x in a]
    ab, ba = paired_diff(a, b), paired_diff(b, a)
    assert ab["diff"] == pytest.approx(-ba["diff"]) and ab["ci_low"] == pytest.approx(-ba["ci_high"])
    # at n = 800 it agrees with a percentile bootstrap of the paired differences to within a point
    import numpy as np
    diffs = np.array(a, float) - np.array(b, float)
    boot = np.random.default_rng(0).choice(diffs, (4000, len(diffs))).mean(1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    assert abs(ab["ci_low"] - lo) < 0.01 and abs(ab["ci_high"] - hi) < 0.01, (ab, lo, hi)
    assert ab["ci_low"] < ab["diff"] < ab["ci_high"]
    with pytest.raises(ValueError):
        paired_diff([1, 0], [1])
