"""The synthetic egocentric world: corridor maps, a walker's route and its events, and Ego-ST questions about it.

    python -m st_r1.world --out data/world --seed 0 --n 125          # 125 train + 31 test videos, 8 questions each

A map is a grid of open cells (corridors) carved along the walker's route, plus a few dead-end side openings so
that turns are choices. Landmarks are coloured objects painted on the wall beside a corridor cell; scenery changes
switch the wall material of every cell after a point of the route. The video's timeline centres each turn on one of
the 8 uniformly sampled frames (Qwen's linspace(0, T-1, 8)) and every landmark fills a quarter of the screen width in
one of them: the frames the model sees contain the route. The same route yields the `events` ground truth and all
eight questions, forward (start -> destination) and reverse (destination -> start). render.py films the walk.
"""
import argparse
import contextlib
import json
import os
import time

import numpy as np

from st_r1.render import (COLOURS, MATERIALS, OBJECTS, cast, contact_sheet, render, seen_materials, write_mp4,
                          write_png)

TASKS = ("route", "direction", "landmark", "action")
SPLITS = {"train": 0, "test": 1}  # part of every map's seed: the two splits never draw the same map
STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # heading 0..3 = east, south, west, north; y grows downwards
GRID = 15  # map size in cells
LANDMARK_MIN = 0.25  # a landmark fills at least this fraction of the screen width in one sampled frame

PREFIX = "Please take a egocentric view to understand the following questions. Based on this video, "
MCQ_INSTR = ("\n\nInstructions: Please select the most appropriate answer from the options above and return only "
             "the option number (e.g. A, B, C or D).")
ROUTE_INSTR = ("\n\nInstructions: Please describe the route in order, naming every turn you take and every landmark "
               "(objects or scenery changes) you pass.")
# The authors' wording (fixtures), typos included, so that a model trained here meets the same prompts there.
QUESTIONS = {
    ("direction", False): "what directions do you need to go through to get to your destination?",
    ("direction", True): "what directions do you need to go through to get to starting point ?",
    ("landmark", False): "which landmarks (objects or scenery changes) did you pass by to reach your destination?",
    ("landmark", True): "which landmarks (objects or scenery changes) did you pass by to return to the starting point?",
    ("action", False): "which actions did you perform to reach your destination?",
    ("action", True): "which actions did you perform to return to the starting point?",
    ("route", False): "how did you get from the starting point to your destination? Describe the route.",
    ("route", True): "how do you get from your destination back to the starting point? Describe the route.",
}
COMPARE = {"direction": "For the directions only walking and turning count",
           "landmark": "For the landmarks only the objects I pass and the scenery changes count",
           "action": "For the actions every step counts"}


# ----------------------------------------------------------------------------- events

def invert(events):
    """The contract's reverse route: turn around, then the forward events backwards with left <-> right and
    every scenery change "from a to b" read "from b to a"."""
    out = ["turn around"]
    for e in reversed(events):
        if e.startswith("see the walls change from "):
            a, b = e[len("see the walls change from "):].split(" to ")
            e = f"see the walls change from {b} to {a}"
        out.append(MIRROR.get(e, e))
    return out


def project(events, task):
    """The part of the route a question asks about: moves (direction), what was passed (landmark), all."""
    if task == "direction":
        return [e for e in events if e == "walk straight" or e.startswith("turn ")]
    if task == "landmark":
        return [e for e in events if e.startswith(("pass ", "see "))]
    return list(events)


def option_text(events):
    return (s := ", ".join(events))[:1].upper() + s[1:]


def parse_option(text):
    """Inverse of option_text (used by tests and readers that want events back)."""
    return [e.strip() for e in (text[:1].lower() + text[1:]).split(", ")]


# ----------------------------------------------------------------------------- maps and routes

class World:
    """One map and the walk through it. grid[y, x]: True = open floor. mat[y, x]: material of the walls seen
    from open cell (x, y). lm[y, x, d]: index into `landmarks` of the object painted on the wall on side d of
    open cell (x, y), else -1. path: cells in walking order; moves: [("walk", n) | ("turn", side), ...]."""

    def __init__(self, map_id):
        self.map_id = map_id
        self.grid = np.zeros((GRID, GRID), bool)
        self.mat = np.zeros((GRID, GRID), np.int64)
        self.lm = np.full((GRID, GRID, 4), -1, np.int64)
        self.landmarks, self.path, self.moves, self.change = [], [], [], None

    def headings(self):
        """Heading index of each step path[i] -> path[i+1]."""
        return [STEPS.index((b[0] - a[0], b[1] - a[1])) for a, b in zip(self.path, self.path[1:])]


def _free(grid, cell, came_from):
    """A new corridor cell must stay inside the border and touch no open cell except the one it comes from,
    so corridors never merge by accident (every opening on screen is one we made)."""
    x, y = cell
    if not (1 <= x < GRID - 1 and 1 <= y < GRID - 1) or grid[y, x]:
        return False
    return all(not grid[y + dy, x + dx] or (x + dx, y + dy) == came_from for dx, dy in STEPS)


def _route(rng, n_segments, around=0.0):
    """Random walk of straight segments, turning around with probability `around` at a turn; None when it runs
    into itself (the caller retries)."""
    w = World("")
    x = y = GRID // 2
    h = int(rng.integers(4))
    w.grid[y, x] = True
    w.path = [(x, y)]
    prev_len, prev_turn = 0, None
    for k in range(n_segments):
        back = False
        if k:
            # turning around is rare and never twice in a row; afterwards the walker retraces part of the
            # corridor it came along and then leaves it by a new side corridor
            turn = "around" if prev_turn != "around" and rng.random() < around else ("left", "right")[rng.integers(2)]
            h = (h + {"left": -1, "right": 1, "around": 2}[turn]) % 4
            w.moves.append(("turn", turn))
            prev_turn, back = turn, turn == "around"
        n = int(rng.integers(1, prev_len)) if back else int(rng.integers(2, 5))
        for _ in range(n):
            nxt = (x + STEPS[h][0], y + STEPS[h][1])
            if not back and not _free(w.grid, nxt, (x, y)):
                return None
            x, y = nxt
            w.grid[y, x] = True
            w.path.append((x, y))
        w.moves.append(("walk", n))
        prev_len = n
    # the corridor must be able to go on past the destination (_extend opens it), or the last frame is a wall
    return w if _free(w.grid, (x + STEPS[h][0], y + STEPS[h][1]), (x, y)) else None


def _through(w):
    """Cells the walker always walks straight through (never turns, starts or stops at): landmark hosts."""
    bad = {w.path[0], w.path[-1]}
    for i in range(1, len(w.path) - 1):
        a, b, c = w.path[i - 1], w.path[i], w.path[i + 1]
        if (b[0] - a[0], b[1] - a[1]) != (c[0] - b[0], c[1] - b[1]):
            bad.add(b)
    return [c for c in dict.fromkeys(w.path) if c not in bad]


def sample_positions(n_frames, n_samples=8):
    """The frame indices a reader samples: round(linspace(0, T-1, n)), as Qwen-VL's video loader does."""
    return np.round(np.linspace(0, n_frames - 1, n_samples)).astype(int)


def timeline(moves, n_frames, n_samples=8):
    """Phase boundaries b_0=0 < ... < b_P=T-1 (in frames). Each phase (walk or turn) owns >= 1 sampled frame and
    a turn owns exactly one, at its centre, so the sampled frames catch every turn half done."""
    s = sample_positions(n_frames, n_samples)
    if len(moves) > n_samples:
        raise ValueError(f"a route of {len(moves)} moves cannot show each in {n_samples} sampled frames")
    walks = [k for k, m in enumerate(moves) if m[0] == "walk"]
    owned = [1] * len(moves)
    for j in range(n_samples - len(moves)):  # spare samples go to the walks, first ones first
        owned[walks[j % len(walks)]] += 1
    bounds, j = [0.0], 0
    for k in owned[:-1]:
        j += k
        bounds.append((s[j - 1] + s[j]) / 2)
    return bounds + [float(n_frames - 1)]


def poses(w, n_frames):
    """Camera (x, y, theta) for every frame: straight walks at constant speed, turns as smooth rotations
    (smoothstep) on the spot. theta = heading * pi/2; left turns decrease theta (y points down)."""
    bounds = timeline(w.moves, n_frames)
    out, i, th = [], 0, w.headings()[0] * np.pi / 2
    plan = []  # per phase: (start xy, end xy, start theta, end theta)
    for kind, arg in w.moves:
        p = np.array(w.path[i]) + 0.5
        if kind == "walk":
            i += arg
            plan.append((p, np.array(w.path[i]) + 0.5, th, th))
        else:
            dth = {"left": -np.pi / 2, "right": np.pi / 2, "around": np.pi}[arg]
            plan.append((p, p, th, th + dth))
            th += dth
    for f in range(n_frames):
        k = min(np.searchsorted(bounds, f, side="right") - 1, len(plan) - 1)
        t = (f - bounds[k]) / (bounds[k + 1] - bounds[k])
        p0, p1, a0, a1 = plan[k]
        if a0 != a1:
            t = t * t * (3 - 2 * t)
        p = p0 + (p1 - p0) * t
        out.append((p[0], p[1], a0 + (a1 - a0) * t))
    return np.array(out)


def make_world(rng, map_id, n_segments=None, n_landmarks=None, n_frames=64, size=112, around=0.0, turns=None):
    """Draw a map, route, landmarks and scenery for one video. Rejects draws where a landmark or the scenery
    change would not be on screen in the sampled frames, routes with fewer than two left/right turns (the
    direction question's options mirror two of them) and routes whose left/right turns are not `turns`, if given."""
    K, M = int(n_segments or 3), int(n_landmarks or rng.integers(1, 3))
    if not 3 <= K <= 4 or not 1 <= M <= 3 or not 0 <= around < 1:
        raise ValueError(f"route-len must be 3..4 (got {K}), landmarks 1..3 (got {M}), around in [0, 1) ({around})")
    for _ in range(500 if turns is None else 4000):
        w = _route(rng, K, around)
        sides = tuple(t for kind, t in w.moves if kind == "turn" and t != "around") if w else ()
        if w is None or len(sides) < 2 or (turns and sides[:len(turns)] != tuple(turns)[:len(sides)]):
            continue
        w.map_id = map_id
        hosts = _through(w)
        # scenery: cells first visited after step s get the second material; s lies inside a straight run and
        # no cell before it is walked again after it, so the change is seen once.
        a, b = rng.choice(len(MATERIALS), 2, replace=False)
        w.mat[:] = a
        cuts = [s for s in range(1, len(w.path) - 2)
                if w.path[s] in hosts and w.path[s + 1] in hosts and not set(w.path[:s + 1]) & set(w.path[s + 1:])]
        if cuts and rng.random() < 0.6:
            s = int(rng.choice(cuts))
            first = {c: i for i, c in reversed(list(enumerate(w.path)))}  # the first visit of each cell
            for c, i in first.items():
                w.mat[c[1], c[0]] = b if i > s else a
            w.change = (s, MATERIALS[a], MATERIALS[b])
        # landmarks: on wall faces beside host cells that the sampled frames really show
        cam = poses(w, n_frames)[sample_positions(n_frames)]
        seen = {}  # per wall face: the most screen columns it fills in any one sampled frame
        for pose in cam:
            hit = cast(w, pose, size)
            keys, counts = np.unique(np.stack([hit["ox"], hit["oy"], hit["d"]], 1), axis=0, return_counts=True)
            for key, n in zip(map(tuple, keys.tolist()), counts.tolist()):
                seen[key] = max(seen.get(key, 0), n)
        faces = [(x, y, d) for (x, y) in hosts for d in range(4)
                 if not w.grid[y + STEPS[d][1], x + STEPS[d][0]] and seen.get((x, y, d), 0) >= LANDMARK_MIN * size]
        if w.change and not set(seen_materials(w, cam, size)) >= {a, b}:
            continue
        rng.shuffle(faces)
        used_cells, colours = set(), list(rng.permutation(len(COLOURS)))
        for x, y, d in faces:
            if len(w.landmarks) == M:
                break
            if (x, y) not in used_cells:
                used_cells.add((x, y))
                w.lm[y, x, d] = len(w.landmarks)
                w.landmarks.append({"cell": (x, y), "side": d, "colour": list(COLOURS)[colours.pop()],
                                    "object": OBJECTS[rng.integers(len(OBJECTS))]})
        if len(w.landmarks) < M:
            continue
        _extend(w)
        _side_openings(w, rng, [c for c in hosts if c not in used_cells])
        return w
    raise RuntimeError(f"{map_id}: could not draw a route of {K} segments with {M} visible landmarks")


def _extend(w):
    """Open one cell straight ahead of every left/right turn and of the destination, so that turns are taken
    at intersections (going on was possible) and no sampled frame is a wall at arm's length."""
    hs = w.headings()
    ends = [i + 1 for i in range(len(hs) - 1) if (hs[i + 1] - hs[i]) % 4 in (1, 3)] + [len(w.path) - 1]
    for i in ends:
        (x, y), h = w.path[i], hs[i - 1]
        nxt = (x + STEPS[h][0], y + STEPS[h][1])
        if _free(w.grid, nxt, (x, y)):
            w.grid[nxt[1], nxt[0]] = True
            w.mat[nxt[1], nxt[0]] = w.mat[y, x]


def _side_openings(w, rng, cells):
    """Dead-end side corridors (1-2 cells) off straight cells: intersections the walker does not take.
    Opening cells can only reveal more, so every landmark stays visible."""
    for _ in range(int(rng.integers(1, 4))):
        if not cells:
            return
        x, y = cells[rng.integers(len(cells))]
        d = int(rng.integers(4))
        prev = (x, y)
        for _ in range(int(rng.integers(1, 3))):
            nxt = (prev[0] + STEPS[d][0], prev[1] + STEPS[d][1])
            if not _free(w.grid, nxt, prev):
                break
            w.grid[nxt[1], nxt[0]] = True
            w.mat[nxt[1], nxt[0]] = w.mat[y, x]
            prev = nxt


def route_events(w):
    """Forward events from the plan: per straight segment "walk straight" then what it passes (a scenery change
    at the boundary between two cells, a landmark when the walker reaches the cell beside it)."""
    ev, i = [], 0
    for kind, arg in w.moves:
        if kind == "turn":
            ev.append(f"turn {arg}")
            continue
        ev.append("walk straight")
        for _ in range(arg):
            a, b = w.path[i], w.path[i + 1]
            i += 1
            if w.mat[a[1], a[0]] != w.mat[b[1], b[0]]:
                ev.append(f"see the walls change from {MATERIALS[w.mat[a[1], a[0]]]} to {MATERIALS[w.mat[b[1], b[0]]]}")
            for k in w.lm[b[1], b[0]]:
                if k >= 0:
                    ev.append("pass the {colour} {object}".format(**w.landmarks[k]))
    return ev


# ----------------------------------------------------------------------------- questions

MIRROR = {"turn left": "turn right", "turn right": "turn left"}
KEYS = (*COLOURS, "left", "right")  # what variants change


def key_words(events): return [w for e in events for w in e.split() if w in KEYS]  # noqa: E704


def _recolour(events, i, colour):
    obj = events[i][len("pass the "):].split(" ", 1)[1]
    return events[:i] + [f"pass the {colour} {obj}"] + events[i + 1:]


def _mirror(events, i):
    return events[:i] + [MIRROR[events[i]]] + events[i + 1:]


def variants(fwd, task, rng):
    """Four versions of the forward route, the true one first, that differ only in what the video shows: a
    landmark's colour (4 values: landmark questions), both turns mirrored or not (2 x 2: direction), one turn x one
    colour (2 x 2: action). Each is as likely to be the truth given the set (colours are uniform, replacements ones
    the route does not use, the bench's turns balanced by turn_pattern), so no option gives the answer away without
    the video; near misses (one edit of the truth each, as before) made the truth the set's centre."""
    turns = [i for i, e in enumerate(fwd) if e in MIRROR]
    marks = [i for i, e in enumerate(fwd) if e.startswith("pass the ")]
    unused = [c for c in COLOURS if not any(e.startswith(f"pass the {c} ") for e in fwd)]
    if task == "landmark":
        i = marks[rng.integers(len(marks))]
        return [fwd] + [_recolour(fwd, i, c) for c in rng.choice(unused, 3, replace=False)]
    if task == "direction":
        i, j = rng.choice(turns, 2, replace=False)
        return [fwd, _mirror(fwd, i), _mirror(fwd, j), _mirror(_mirror(fwd, i), j)]
    i, j, c = turns[rng.integers(len(turns))], marks[rng.integers(len(marks))], unused[rng.integers(len(unused))]
    return [fwd, _mirror(fwd, i), _recolour(fwd, j, c), _recolour(_mirror(fwd, i), j, c)]


def _cot(fwd, rev, reverse, tail):
    """The contract's chain of thought: recall the OTHER direction first, then the asked one."""
    first = f"from the start to the destination I {', then '.join(fwd)}"
    second = f"going back to the start I {', then '.join(rev)}"
    if reverse:
        return f"Let's start by thinking forward: {first}. And then think in reverse: {second}. {tail}"
    first = f"from the destination back to the start I {', then '.join(rev)}"
    second = f"from the start to the destination I {', then '.join(fwd)}"
    return f"Let's start by thinking reverse: {first}. And then think forward: {second}. {tail}"


def verdicts(options, truth):
    """Each option's colours and sides beside the asked route's, pair by pair, then a verdict ("A: red red ok, left
    right x: no."): a small model cannot match a list to its option in one step, but learns these (RESULTS.md)."""
    mine = key_words(truth)
    return " ".join(f"{L}: " + ", ".join(f"{a} {b} {'ok' if a == b else 'x'}" for a, b in zip(key_words(o), mine))
                    + f": {'yes' if o == truth else 'no'}." for L, o in options)


def answer_letter(seed, split, g):
    """Letter of MCQ row number g of a split: each block of 4 rows is a random permutation of ABCD, so the
    letters are balanced exactly in every 4 rows, whatever order videos are made in."""
    perm = np.random.default_rng([seed, SPLITS[split], 7, g // 4]).permutation(4)
    return "ABCD"[perm[g % 4]]


def make_rows(w, video, seed, split, index):
    """The eight Ego-ST rows (4 tasks x forward/reverse) of one world."""
    fwd = route_events(w)
    rev = invert(fwd)
    rng = np.random.default_rng([seed, SPLITS[split], 3, index])
    K = sum(m[0] == "walk" for m in w.moves)
    around = any(m == ("turn", "around") for m in w.moves)
    score = (K - 2) + (len(w.landmarks) - 1) + 2 * around  # 0..6
    level = "easy" if score <= 1 else "medium" if score <= 3 else "hard"
    meta = {"map_id": w.map_id, "split": split,
            "difficulty": {"level": level, "segments": K, "landmarks": len(w.landmarks), "turn_around": around,
                           "scenery_change": w.change is not None}}
    rows, g = [], index * 6
    for task in TASKS:
        for reverse in (False, True):
            asked = rev if reverse else fwd
            q = PREFIX + QUESTIONS[task, reverse]
            row = {"task": task, "reverse": reverse}
            if task == "route":
                ans = f"I {', then '.join(asked)}."
                problem = q + ROUTE_INSTR
                think = _cot(fwd, rev, reverse, "Describing the route in that order gives the answer. "
                                                f"Hence, the correct answer is {ans}")
                solution = f"<think>{think}</think> <answer>{ans}</answer>"
            else:
                vs = [project(invert(v) if reverse else v, task) for v in variants(fwd, task, rng)]
                truth, opts = vs[0], vs[1:]
                ans = answer_letter(seed, split, g)
                g += 1
                opts.insert("ABCD".index(ans), truth)
                options = {L: option_text(o) for L, o in zip("ABCD", opts)}
                problem = q + " Options: " + ", ".join(f"{L}. {t}" for L, t in options.items()) + MCQ_INSTR
                tail = f"{COMPARE[task]}. {verdicts(zip(options, opts), truth)} Hence, the correct answer is {ans}."
                solution = f"<think>{_cot(fwd, rev, reverse, tail)}</think> <answer>{ans}</answer>"
                row["options"] = options
            row.update(problem=problem, solution=solution, video=video, original_question=problem,
                       original_answer=ans, events={"forward": fwd, "reverse": rev}, **meta)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- benches

def turn_pattern(seed, split, index, n_turns):
    """The left/right turns of video `index` of a bench split: each block of 2^n_turns videos takes every pattern
    once. The free draw keeps same-side pairs 78% of the time, a prior the options gave away (bench/RESULTS.md)."""
    n = 2 ** n_turns
    k = int(np.random.default_rng([seed, SPLITS[split], 11, index // n]).permutation(n)[index % n])
    return tuple("right" if k >> b & 1 else "left" for b in range(n_turns))


def world_for(seed, split, index, route_len=None, landmarks=None, frames=64, size=112, around=0.0, balanced=False):
    """The world of video `index` of a split, from its own random stream keyed by (seed, split, index). balanced:
    turn_pattern's turns (the bench's walks); the free draw makes the base model's pretraining walks."""
    turns = turn_pattern(seed, split, index, int(route_len or 3) - 1) if balanced else None
    return make_world(np.random.default_rng([seed, SPLITS[split], index]), f"{split}-s{seed}-{index:05d}", route_len,
                      landmarks, frames, size, around, turns)


def render_video(w, frames=64, size=112):
    return np.stack([render(w, p, size)[0] for p in poses(w, frames)])


def _job(args):
    out_dir, seed, split, index, route_len, landmarks, frames, size, fps, video, around = args
    w = world_for(seed, split, index, route_len, landmarks, frames, size, around, balanced=True)
    rel = f"videos/{w.map_id}.mp4"
    if video:
        write_mp4(os.path.join(out_dir, rel), render_video(w, frames, size), fps)
    return split, make_rows(w, rel, seed, split, index)


def make_bench(out_dir, seed=0, n_videos=125, split="both", n_test=None, route_len=None, landmarks=None,
               size=112, frames=64, fps=8, workers=None, progress=True, videos=True, around=0.0):
    """Write out_dir/{train,test}.jsonl and out_dir/videos/*.mp4 (8 questions per video); returns the JSONL
    paths by split. The train split gets n_videos; the test split n_test (default: n_videos // 4, at least 1, or
    n_videos when it is the only split written)."""
    from tqdm import tqdm
    splits = ["train", "test"] if split == "both" else [split]
    if any(s not in SPLITS for s in splits):
        raise ValueError(f"split must be train, test or both, not {split!r}")
    counts = {"train": n_videos, "test": n_test or (max(1, n_videos // 4) if split == "both" else n_videos)}
    os.makedirs(os.path.join(out_dir, "videos"), exist_ok=True)
    jobs = [(out_dir, seed, s, i, route_len, landmarks, frames, size, fps, videos, around)
            for s in splits for i in range(counts[s])]
    rows = {s: [] for s in splits}
    workers = workers or min(2, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="world videos", unit="video", disable=not progress)
    import multiprocessing as mp
    with mp.get_context("spawn").Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        for s, r in (pool.imap(_job, jobs, chunksize=2) if pool else map(_job, jobs)):
            rows[s].extend(r)
            bar.update()
    bar.close()
    paths = {s: os.path.join(out_dir, f"{s}.jsonl") for s in splits}
    for s, path in paths.items():
        with open(path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[s])
        os.replace(path + ".tmp", path)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write a synthetic Ego-ST bench: videos/*.mp4, train.jsonl, test.jsonl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=125, help="training videos (8 questions each)")
    ap.add_argument("--n-test", type=int, default=None, help="test videos (default n/4; n with --split test)")
    ap.add_argument("--split", default="both", choices=["train", "test", "both"])
    ap.add_argument("--route-len", type=int, default=None, help="straight segments, 3-4 (default 3)")
    ap.add_argument("--landmarks", type=int, default=None, help="landmarks, 1-3 (default random 1-2)")
    ap.add_argument("--around", type=float, default=0.0, help="probability that a turn is a U-turn (default 0)")
    for flag, default in (("--size", 112), ("--frames", 64), ("--fps", 8), ("--workers", None)):
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--contact-sheet", default=None, help="also write a PNG of one video's 8 sampled frames")
    ap.add_argument("--contact-index", type=int, default=0, help="which video of the first split the sheet shows")
    a = ap.parse_args(argv)
    t0 = time.time()
    paths = make_bench(a.out, a.seed, a.n, a.split, a.n_test, a.route_len, a.landmarks, a.size, a.frames, a.fps,
                       a.workers, around=a.around)
    print(f"wrote {sum(1 for p in paths.values() for _ in open(p))} questions to {', '.join(paths.values())} in "
          f"{time.time() - t0:.1f} s")
    if a.contact_sheet:
        s = "train" if "train" in paths else "test"
        w = world_for(a.seed, s, a.contact_index, a.route_len, a.landmarks, a.frames, a.size, a.around, balanced=True)
        write_png(a.contact_sheet, contact_sheet(render_video(w, a.frames, a.size)[sample_positions(a.frames)]))
        print(f"contact sheet of {w.map_id} ({', '.join(route_events(w))}) -> {a.contact_sheet}")


if __name__ == "__main__":
    main()
