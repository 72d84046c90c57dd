"""The synthetic world: answers agree with the walk actually rendered, reverse = forward inverted, balanced and
unique options, disjoint splits, readable videos, visible turns/landmarks, and the tiny tokenizer/model folder."""
import collections
import json
import math
import re

import numpy as np
import pytest

from st_r1 import render as RD
from st_r1 import world as W

SEEDS = [(0, "train", i) for i in range(12)] + [(1, "test", i) for i in range(12)]


@pytest.fixture(scope="module")
def worlds():
    return [(s, sp, i, W.world_for(s, sp, i)) for s, sp, i in SEEDS]


def _beside(w, p, th):
    """Wall material right beside the camera (one ray cast to each side into the rendered world; a side with an
    opening is ignored), or None in an intersection."""
    for side in (-1, 1):
        hit = RD.cast(w, (p[0], p[1], th + side * math.pi / 2), 1)
        if hit["dist"][0] < 0.75:
            return RD.MATERIALS[w.mat[hit["oy"][0], hit["ox"][0]]]
    return None


def walked(w, cams):
    """Events read off the camera poses alone (world state, not the planner): rotations summed into turns, a
    landmark passed when its wall face goes from ahead of the camera to beside it, a scenery change where the
    wall beside the camera changes material (located by bisection, to order it against landmarks)."""
    ev, rot, moving, current = [], 0.0, False, None
    for (x0, y0, t0), (x1, y1, t1) in zip(cams, cams[1:]):
        if abs(t1 - t0) > 1e-9:
            rot += t1 - t0
            moving = False
            continue
        if abs(rot) > 1e-9:
            ev.append({-1: "turn left", 1: "turn right", 2: "turn around", -2: "turn around"}[round(rot / (math.pi / 2))])
            rot = 0.0
        p0, p1 = np.array([x0, y0]), np.array([x1, y1])
        if np.allclose(p0, p1):
            continue
        if not moving:
            ev.append("walk straight")
            moving = True
        h = np.array([math.cos(t0), math.sin(t0)])
        found = []
        for L in w.landmarks:
            face = np.array(L["cell"]) + 0.5 + 0.5 * np.array(W.STEPS[L["side"]])
            f0, f1 = (face - p0) @ h, (face - p1) @ h
            lateral = abs((face - p0) @ np.array([-h[1], h[0]]))
            if f0 > 1e-9 >= f1 and lateral < 0.6:
                found.append((f0 / (f0 - f1), "pass the {colour} {object}".format(**L)))
        current = current or _beside(w, p0, t0)
        m1 = _beside(w, p1, t0)
        if m1 and current and m1 != current:
            lo, hi = 0.0, 1.0
            for _ in range(30):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if _beside(w, p0 + (p1 - p0) * mid, t0) == m1 else (mid, hi)
            found.append((hi, f"see the walls change from {current} to {m1}"))
        current = m1 or current
        ev += [e for _, e in sorted(found)]
    if abs(rot) > 1e-9:
        ev.append("turn around")
    return ev


def skeleton(events):
    return [e for e in events if e != "walk straight"]


def test_invert_by_hand():
    fwd = ["walk straight", "pass the red door", "turn left", "walk straight",
           "see the walls change from brick to wood", "turn around", "walk straight"]
    assert W.invert(fwd) == ["turn around", "walk straight", "turn around", "see the walls change from wood to brick",
                             "walk straight", "turn right", "pass the red door", "walk straight"]


def test_timeline_centres_turns_on_sampled_frames():
    moves = [("walk", 2), ("turn", "left"), ("walk", 3), ("turn", "right"), ("walk", 2)]
    b = W.timeline(moves, 64)
    s = W.sample_positions(64)  # linspace(0, 63, 8) = multiples of 9
    assert list(s) == [0, 9, 18, 27, 36, 45, 54, 63]
    # 8 samples, 5 phases: the 3 spare samples go to the walks -> owned 2,1,2,1,2
    assert b == [0.0, 13.5, 22.5, 40.5, 49.5, 63.0]


def test_answers_agree_with_the_walk(worlds):
    for s, sp, i, w in worlds:
        cams = W.poses(w, 64)
        fwd = walked(w, cams)
        back = cams[::-1].copy()
        back[:, 2] += math.pi  # the walker going home faces the other way
        rev = ["turn around"] + walked(w, back)
        rows = W.make_rows(w, "v.mp4", s, sp, i)
        for r in rows:
            assert r["events"]["forward"] == fwd, w.map_id  # the planner's events = what the camera did
            assert skeleton(r["events"]["reverse"]) == skeleton(rev), w.map_id
            assert r["events"]["reverse"] == W.invert(r["events"]["forward"])
            asked = r["events"]["reverse" if r["reverse"] else "forward"]
            geo = rev if r["reverse"] else fwd
            if r["task"] == "route":
                assert r["original_answer"] == "I " + ", then ".join(asked) + "."
                continue
            right = W.parse_option(r["options"][r["original_answer"]])
            assert skeleton(right) == skeleton(W.project(geo, r["task"])), (w.map_id, r["task"], r["reverse"])
            assert right == W.project(asked, r["task"])


def test_options_unique_balanced_and_solution_template(worlds):
    letters = collections.Counter()
    for s, sp, i, w in worlds[:12]:  # one split, consecutive videos: exact balance per block of 4
        for r in W.make_rows(w, "v.mp4", s, sp, i):
            think = r["solution"]
            first, second = ("forward", "reverse") if r["reverse"] else ("reverse", "forward")
            lead = {"forward": "from the start to the destination I ", "reverse": "from the destination back to the start I "}
            assert think.startswith(f"<think>Let's start by thinking {first}: ")
            assert lead[first] + ", then ".join(r["events"][first]) + ". And then think" in think
            if r["task"] == "route":
                assert "options" not in r and think.endswith(f"</think> <answer>{r['original_answer']}</answer>")
                continue
            opts = [tuple(W.parse_option(t)) for t in r["options"].values()]
            truth = tuple(W.project(r["events"]["reverse" if r["reverse"] else "forward"], r["task"]))
            assert len(set(opts)) == 4 and opts.count(truth) == 1
            assert r["problem"] == r["original_question"]
            assert f" Options: A. {r['options']['A']}, B. " in r["problem"]
            assert think.endswith(f"Hence, the correct answer is {r['original_answer']}.</think> "
                                  f"<answer>{r['original_answer']}</answer>")
            # one verdict per option, "yes" for the answer only
            assert re.findall(r"([ABCD]): [a-z ,]+: (yes|no)\.", think) == [
                (L, "yes" if L == r["original_answer"] else "no") for L in "ABCD"]
            letters[r["original_answer"]] += 1
    assert sum(letters.values()) == 72 and set(letters.values()) == {18}


def test_options_give_nothing_away_without_the_video():
    """Every option set is a symmetric design (one event with four values, or two events with two values each, all
    four combinations), so the truth is not the set's centre: a text-only guess that picks the option most similar
    to the others (the near-miss distractors of before made that the truth every time) stays at chance."""
    from st_r1.rubric import seq_similarity
    hits = n = 0
    for i in range(60):
        w = W.world_for(5, "train", i, frames=16)
        for r in W.make_rows(w, "v.mp4", 5, "train", i):
            if r["task"] == "route":
                continue
            opts = [W.parse_option(t) for t in r["options"].values()]
            assert len({len(o) for o in opts}) == 1  # same events, same length: only values differ
            diff = [k for k in range(len(opts[0])) if len({o[k] for o in opts}) > 1]
            values = {tuple(o[k] for k in diff) for o in opts}
            assert (len(diff) == 1 and len(values) == 4) or \
                (len(diff) == 2 and all(len({v[j] for v in values}) == 2 for j in (0, 1)) and len(values) == 4), r
            centre = max("ABCD", key=lambda L: round(sum(seq_similarity(W.parse_option(r["options"][L]), o) for o in opts), 6))
            hits += centre == r["original_answer"]
            n += 1
    assert n == 360 and hits / n < 0.33, hits / n


def test_bench_turns_balanced_so_no_route_prior_is_in_the_options():
    """The bench's walks take each left/right turn pattern equally often (every block of 4 videos takes all four),
    so a text-only reader that bets on the likelier pattern stays at chance; left to itself the drawing keeps
    same-side pairs far more often, which such a reader would have used (the unbalanced draw stays: the base
    model's pretraining walks)."""
    def sides(w):
        return tuple(t for kind, t in w.moves if kind == "turn" and t != "around")
    bench = [sides(W.world_for(0, "test", i, frames=16, balanced=True)) for i in range(16)]
    assert collections.Counter(bench) == {p: 4 for p in [("left", "left"), ("left", "right"), ("right", "left"),
                                                         ("right", "right")]}
    free = [sides(W.world_for(0, "test", i, frames=16)) for i in range(40)]
    assert sum(a == b for a, b in free) / len(free) > 0.6  # the prior the balance removes
    hits = n = 0  # the text-only bet on a same-side pattern, on the bench's direction and action questions
    for i in range(32):
        for r in W.make_rows(W.world_for(0, "test", i, frames=16, balanced=True), "v.mp4", 0, "test", i):
            if r["task"] in ("direction", "action") and not r["reverse"]:
                same = [L for L, t in r["options"].items()
                        if len({w for w in t.lower().replace(",", "").split() if w in ("left", "right")}) == 1]
                hits += (r["original_answer"] in same) / max(1, len(same)) if same else 0.25
                n += 1
    assert n == 64 and abs(hits / n - 0.25) < 0.1, hits / n


def test_turns_and_landmarks_visible_in_sampled_frames(worlds):
    for _, _, _, w in worlds[:8]:
        cams = W.poses(w, 64)
        picked = W.sample_positions(64)
        seen = set()
        for f in picked:
            img, lm = RD.render(w, cams[f])
            assert img.shape == (112, 112, 3) and img.dtype == np.uint8
            # a landmark fills a quarter of the width of at least one sampled frame (not a few far-off pixels)
            seen |= {int(k) for k, n in collections.Counter(lm.tolist()).items() if k >= 0 and n >= 28}
            # and its colour is the only strong one: columns without a landmark are near grey
            spread = img.max(-1).astype(int) - img.min(-1)
            assert spread[:, lm < 0].max(initial=0) < 60, w.map_id
        assert seen == set(range(len(w.landmarks))), w.map_id
        # every turn is caught half done: a sampled frame strictly between its start and end heading
        th = cams[:, 2]
        for k, (kind, _) in enumerate(w.moves):
            if kind == "turn":
                b = W.timeline(w.moves, 64)
                inside = [f for f in picked if b[k] < f < b[k + 1]]
                assert inside and abs((th[inside[0]] - th[int(math.ceil(b[k]))]) / (th[int(b[k + 1])] - th[int(math.ceil(b[k]))]) - 0.5) < 0.35


def test_deterministic_and_disjoint_splits(tmp_path):
    a = W.make_bench(str(tmp_path / "a"), seed=3, n_videos=4, n_test=3, workers=1, progress=False, videos=False)
    b = W.make_bench(str(tmp_path / "b"), seed=3, n_videos=4, n_test=3, workers=1, progress=False, videos=False)
    for s in ("train", "test"):
        assert open(a[s]).read() == open(b[s]).read()
    rows = {s: [json.loads(l) for l in open(a[s])] for s in a}
    assert len(rows["train"]) == 32 and len(rows["test"]) == 24
    w1, w2 = W.world_for(3, "train", 1), W.world_for(3, "train", 1)
    assert np.array_equal(RD.render(w1, W.poses(w1, 64)[20])[0], RD.render(w2, W.poses(w2, 64)[20])[0])
    key = lambda w: (w.grid.tobytes(), tuple(w.path), w.mat.tobytes())
    train = {key(W.world_for(3, "train", i)) for i in range(20)}
    test = {key(W.world_for(3, "test", i)) for i in range(20)}
    assert not train & test and len(train) == 20
    assert not {r["map_id"] for r in rows["train"]} & {r["map_id"] for r in rows["test"]}
    # the test split alone: n_test is honoured, and its rows are those of the test split written with both
    c = W.make_bench(str(tmp_path / "c"), seed=3, n_videos=9, n_test=3, split="test", workers=1, progress=False,
                     videos=False)
    assert open(c["test"]).read() == open(a["test"]).read()


def test_mp4_readable_with_expected_frames(tmp_path):
    import av
    paths = W.make_bench(str(tmp_path), seed=0, n_videos=1, split="test", workers=1, progress=False)
    rows = [json.loads(l) for l in open(paths["test"])]
    assert len(rows) == 8 and len({r["video"] for r in rows}) == 1
    with av.open(str(tmp_path / rows[0]["video"])) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 64 and frames[0].shape == (112, 112, 3)
    w = W.world_for(0, "test", 0, balanced=True)
    ref = RD.render(w, W.poses(w, 64)[30])[0].astype(int)
    assert np.abs(frames[30].astype(int) - ref).mean() < 12  # H.264 at crf 18 keeps the picture


def test_the_same_world_writes_the_same_mp4_bytes(tmp_path):
    """A bench is reproducible from its seed: x264 threaded (as the generic "threads" option left it) encoded the
    same frames into different pixels from run to run, and the main job's predictions changed with them."""
    w = W.world_for(0, "train", 3, frames=16)
    frames = W.render_video(w, 16, 112)
    data = set()
    for k in range(8):
        RD.write_mp4(str(tmp_path / f"{k}.mp4"), frames)
        data.add((tmp_path / f"{k}.mp4").read_bytes())
    assert len(data) == 1


def test_bad_difficulty_is_a_clear_error():
    with pytest.raises(ValueError, match="route-len"):
        W.world_for(0, "train", 0, route_len=7)


def test_tokenizer_and_tiny_model(tmp_path):
    from transformers import AutoTokenizer, Qwen2_5_VLConfig
    from st_r1 import tiny
    tiny.write_tiny_model(str(tmp_path), weights=False, vocab_size=800)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    text = ("<|im_start|>user\n<|vision_start|><|video_pad|><|video_pad|><|vision_end|>Pass the red door, then turn "
            "left.<|im_end|>\n<|im_start|>assistant\n<think>I walk straight.</think> <answer>B</answer> é 中")
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    for t in tiny.SPECIAL + tiny.TAGS:
        assert tok.encode(t, add_special_tokens=False) == [tok.convert_tokens_to_ids(t)]
    assert ids.count(tok.convert_tokens_to_ids("<|video_pad|>")) == 2
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    cfg = json.load(open(tmp_path / "config.json"))
    hf = Qwen2_5_VLConfig.from_pretrained(str(tmp_path))
    assert hf.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>") == cfg["video_token_id"]
    assert hf.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert hf.text_config.hidden_size == 128 and hf.vision_config.out_hidden_size == 128
    assert sum(cfg["rope_scaling"]["mrope_section"]) == cfg["hidden_size"] // cfg["num_attention_heads"] // 2
    assert cfg["vocab_size"] >= len(tok)


def test_tiny_model_weights_load(tmp_path):
    import torch
    pytest.importorskip("st_r1.model")
    from st_r1 import tiny
    from st_r1.model import VideoLM
    tiny.write_tiny_model(str(tmp_path), vocab_size=800)
    m = VideoLM.from_pretrained(str(tmp_path))
    logits = m(torch.tensor([[1, 20, 30, 2]]))
    assert logits.shape == (1, 4, json.load(open(tmp_path / "config.json"))["vocab_size"])


def test_verdicts_compare_colours_and_sides_pair_by_pair():
    truth = ["walk straight", "pass the red box", "turn left", "walk straight", "turn right"]
    options = [("A", truth), ("B", ["walk straight", "pass the blue box", "turn left", "walk straight", "turn left"])]
    assert W.verdicts(options, truth) == ("A: red red ok, left left ok, right right ok: yes. "
                                          "B: blue red x, left left ok, left right x: no.")
    # a landmark question's options hold no sides; scenery changes and U-turns are no keys
    land = ["see the walls change from brick to stone", "pass the green door"]
    assert W.verdicts([("C", ["turn around"] + land)], ["turn around"] + land) == "C: green green ok: yes."
