"""Pretrain the tiny model into a base that sees: the stand-in for the pretrained, instruction-tuned Qwen-VL that
ST-R1 starts from. Run once (resumable); the result is committed as models/tiny-base and loaded by default.

    python bench/pretrain_base.py                      # one stage; rerun the same command to resume
    python bench/pretrain_base.py --export models/tiny-base   # write the latest checkpoint as the shipped base
    python bench/make_base.py                          # the shipped base: its two stages in order (~80 min)

What it learns, with dense per-token targets (never the bench's questions, options or answers, and never its walks:
the videos come from world seed 1000, the bench uses seed 0):
- to narrate a walk forward ("I walk straight, then pass the red door, then turn left, ..."), on fresh walks;
- a curriculum of easy renders first (as bench/probes/see.py found necessary): close-ups of one landmark ("I see the red
  door.") and one turn seen from the spot ("I turn left."), their share falling from 60% to --easy-floor over
  --curriculum steps;
- generic list skills with words that are not about walks, as an instruction-tuned model arrives with: which of
  four lettered lists equals a given list (the four differ in one or two places), which option holds a word (the
  lookup), and reversing a list; and (stage 6, --compare-share) the verdict lines that end the bench's chains of
  thought, on random word lists (compare_item). --batch 0 trains these alone.
Every --eval-every steps it reports, on held-out walks (world seed 1000's test split), the route rubric of its
narrations with the true video and with another video's frames (the rubric's floor), both turns and all landmark
colours right, close-up colour accuracy, and held-out matching and lookup accuracy; log.jsonl keeps them,
curves.png plots them.
"""
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from st_r1 import chat, checkpoint, cli, rubric, runs, tiny, training, video, world  # noqa: E402

FRAMES = 16  # rendered per walk, as the main job writes its bench; 8 are sampled, as the readers sample them


@dataclass
class Pretrain:
    """Pretrain the tiny Qwen2.5-VL on world descriptions and generic list skills."""
    out: str = "runs/base"
    steps: int = 4000
    batch: int = 16              # video rows per step
    text_batch: int = 64         # generic text rows per step (short: cheap next to the video rows)
    lr: float = 1e-3
    warmup: int = 100
    curriculum: int = 2000       # steps over which easy renders go from 60% to --easy-floor of the video rows
    easy_floor: float = 0.4
    hidden: int = 128
    layers: int = 4
    vision_hidden: int = 96
    vision_depth: int = 2
    pool: int = 6000             # walks rendered once and reused (fresh walks cost as much as a training step)
    easy_pool: int = 3000        # close-ups and turns, each
    world_seed: int = 1000       # the bench's world uses seed 0: no walk of its splits is ever seen here
    eval_every: int = 250
    eval_n: int = 64
    save_every: int = 250
    seed: int = 0
    threads: int = 2
    stop: int = 0                # stop after this step (0: --steps); the schedule still runs over --steps
    lookup_vocab: str = "words"  # lookup words: "words" (tiny.WORDS), "words+colours", "words+world" (tiny.WORDS with
    #                              the world's colours, objects, left and right), "world" (those 13 alone) or
    #                              "tokens" (hundreds of the tokenizer's); bench/RESULTS.md says what each learnt
    lookup_share: float = 0.5    # of the text rows
    compare_share: float = 0.0   # of the text rows: the verdict lines of the bench's chains of thought on random
    #                              word lists (stage 6; compare_item)
    prompts: str = "one"         # "one": each video kind has its one request (tiny.NARRATE, LOOK, TURN); "many":
    #                              paraphrases, unrelated text around them and varied reply lead-ins (stage 4)
    neutral_share: float = 0.0   # of the video rows under --prompts many: a request that fits every kind (NEUTRAL),
    #                              so that the video, not a word of the request, says whether to narrate or not
    format_share: float = 0.0    # of the video rows under --prompts many: a sentence on the reply's form after the
    #                              request (FORMATS), as the bench's rows end with one
    init: str = ""               # start from this model folder (e.g. models/tiny-base, to go on) instead of a random one
    export: str = ""             # write the latest checkpoint's model (a Hugging Face folder) here, then stop
    plot: str = ""               # draw the curves of this log.jsonl into --plot-to, then stop (bench/make_base.py)
    plot_to: str = "curves.png"


# ----------------------------------------------------------------------------- data

def sampled_frames(w):
    """The 8 frames a reader samples from the walk's 16-frame video, rendered directly (no mp4 round trip)."""
    cams = world.poses(w, FRAMES)[world.sample_positions(FRAMES)]
    return np.stack([world.render(w, p)[0] for p in cams])


def walk_item(seed, split, i):
    w = world.world_for(seed, split, i, frames=FRAMES)
    events = world.route_events(w)
    return sampled_frames(w), "I " + ", then ".join(events) + ".", events


def closeup_item(seed, i):
    """One landmark filling the screen: the camera in its cell, facing its wall, drifting a little."""
    rng = np.random.default_rng([seed, 5, i])
    w = world.world_for(seed, "train", 100000 + i, frames=FRAMES)
    L = w.landmarks[rng.integers(len(w.landmarks))]
    (x, y), d = L["cell"], L["side"]
    th0 = d * math.pi / 2 + rng.uniform(-0.35, 0.35)
    back = rng.uniform(0.0, 0.3, 2)
    poses = [(x + 0.5 - math.cos(th0) * b, y + 0.5 - math.sin(th0) * b, th0 + rng.uniform(-0.1, 0.1))
             for b in np.linspace(back[0], back[1], 8)]
    frames = np.stack([world.render(w, p)[0] for p in poses])
    return frames, f"I see the {L['colour']} {L['object']}.", None


def turn_item(seed, i):
    """A quarter turn on the spot in a corridor, seen over the 8 frames."""
    rng = np.random.default_rng([seed, 6, i])
    w = world.world_for(seed, "train", 200000 + i, frames=FRAMES)
    k = int(rng.integers(len(w.path) - 1))
    (x, y), h = w.path[k], w.headings()[k]
    side = ("left", "right")[rng.integers(2)]
    th = h * math.pi / 2
    t = np.linspace(0, 1, 8)
    t = t * t * (3 - 2 * t)
    frames = np.stack([world.render(w, (x + 0.5, y + 0.5, th + (-1 if side == "left" else 1) * math.pi / 2 * s))[0]
                       for s in t])
    return frames, f"I turn {side}.", None


def make_pool(path, n, fn, workers=2):
    """Render n items once into path.npz (frames uint8, targets); reused on resume."""
    if os.path.exists(path):
        z = np.load(path, allow_pickle=False)
        return z["frames"], list(z["targets"])
    from multiprocessing import get_context
    from tqdm import tqdm
    if workers > 1:
        with get_context("spawn").Pool(workers) as p:
            items = list(tqdm(p.imap(fn, range(n), chunksize=16), total=n, desc=os.path.basename(path)))
    else:
        items = [fn(i) for i in tqdm(range(n), desc=os.path.basename(path))]
    frames = np.stack([f for f, _, _ in items])
    targets = np.array([t for _, t, _ in items])
    np.savez(path + ".tmp.npz", frames=frames, targets=targets)
    os.replace(path + ".tmp.npz", path)
    return frames, list(targets)


# pool workers must be importable functions (spawn): bind the world seed through the module
_SEED = [1000]
def _walk(i): return walk_item(_SEED[0], "train", i)  # noqa: E704
def _closeup(i): return closeup_item(_SEED[0], i)  # noqa: E704
def _turn(i): return turn_item(_SEED[0], i)  # noqa: E704


# Stage 4 (--prompts many): the base saw each video kind under one fixed request, and its perception stayed tied
# to it (with a question put before the request it got 0% of the turns right). An instruction-tuned VLM sees the
# same skill asked in many ways; so do we. None of this is the bench's wording (its questions start "Please take a
# egocentric view ... Based on this video," and ask about destinations and starting points).
REQUESTS = {
    "narrate": ["Narrate the walk in this video.", "Describe the walk in this video, in order.",
                "Tell me, step by step, where you walk in this clip.", "What do you do in this video? Say it in order.",
                "Watch the clip and recount the walk from its first frame to its last.",
                "List everything you do while walking, from beginning to end.",
                "In order, what turns do you make and what do you walk past?", "Narrate it."],
    "look": ["What do you see in front of you?", "What is right in front of the camera?", "Name what you see.",
             "Which thing is in view, and what colour is it?", "What are you looking at?"],
    "turn": ["Which way do you turn?", "Do you turn left or right?", "Which direction does the camera turn?",
             "Say which way you turn.", "Left or right: where do you turn?"],
}
# Requests that fit a walk, a close-up and a turn alike (--neutral-share). Without them the one-stage base learnt to
# pick its reply from the request's words: under the bench's route question ("... naming every turn you take ...")
# it answered "I turn right." to 86% of walks (RESULTS: the one-stage recipe).
NEUTRAL = ["What happens in this video?", "Tell me what the camera shows.", "Describe this clip.",
           "What does this first-person clip show? Name each turn and each thing you see.",
           "Say what you do and what you see here.", "Watch this and tell me about it, in order."]
# Sentences on the reply's form (--format-share), none of them the bench's: the bench's rows end with an
# instruction about tags, and after one the one-stage base answered 59% of walks with "I turn right." (RESULTS).
FORMATS = ["Put your reply between <reply> and </reply>.", "Write it in plain words, with no tags.",
           "Output only the reply, in <out> </out>.", "Keep it short: say it, then stop.",
           "Give one sentence (what happens, or what you see) and nothing else.",
           "Wrap the reply in <say> </say> tags, and do not explain it."]
PREAMBLES = ["You are a careful observer.", "Answer briefly and precisely.", "Look at the video first.",
             "This clip is filmed from your own eyes.", "Here is a short first-person video.",
             "Think about what the camera shows.", "Some words to ignore: {}.",
             "Read this list and then the request: {}.",
             "A note that has nothing to do with the video: {}.", "Question {} of a long survey follows."]
# The world's own words, looked up in lists that are never routes (--lookup-vocab words+world / world)
WORLD_WORDS = [*world.COLOURS, *world.OBJECTS, "left", "right"]
LEADS = ["", "", "In this video ", "From the first frame to the last, ", "Here is what happens: ", "Sure. "]


def request(kind, rng, many, neutral=0.0, form=0.0):
    """The prompt of a pretraining row: the kind's fixed request, or (many) one of its paraphrases, or with
    probability `neutral` one that fits every kind, with unrelated text before and/or after it and, with
    probability `form`, a sentence on the reply's form at the end."""
    if not many:
        return {"narrate": tiny.NARRATE, "look": tiny.LOOK, "turn": tiny.TURN}[kind]
    pool = NEUTRAL if neutral and rng.random() < neutral else REQUESTS[kind]
    parts = [pool[rng.integers(len(pool))]]
    for _ in range(int(rng.integers(0, 3))):  # 0-2 unrelated sentences, before or after the request
        words = ", ".join(tiny.WORDS[k] for k in rng.choice(len(tiny.WORDS), int(rng.integers(2, 9)), replace=False))
        pre = PREAMBLES[rng.integers(len(PREAMBLES))].format(words)  # (a no-op for those without "{}")
        parts.insert(int(rng.integers(len(parts) + 1)), pre)
    if form and rng.random() < form:
        parts.append(FORMATS[rng.integers(len(FORMATS))])
    return " ".join(parts)


def reply(target, rng, many):
    """The target, after a varied lead-in under --prompts many ("I walk ..." -> "In this video I walk ...")."""
    return LEADS[rng.integers(len(LEADS))] + target if many else target


def lookup_vocab(tok):
    """The words the lookup draws from: every whole lower-case word of the tokenizer (one token, with its leading
    space) that is not a word of the world's routes or of the bench's wording. With 24 words the model learnt one
    circuit per word (100% on them, chance on unseen words such as colours); hundreds force the general skill:
    find the word among the options, then the letter in front of it."""
    banned = set(re.findall(r"[a-z]+", " ".join([world.PREFIX, world.MCQ_INSTR, world.ROUTE_INSTR, tiny.NARRATE,
                                                  tiny.LOOK, tiny.TURN, *world.QUESTIONS.values(),
                                                  *world.COMPARE.values()]).lower()))
    banned |= {*world.COLOURS, *world.OBJECTS, *world.MATERIALS, "walk", "turn", "pass", "left", "right", "around",
               "straight", "see", "walls", "change", "route", "landmark", "landmarks", "option", "options"}
    return sorted(w for w in (t[1:] for t in tok.get_vocab() if t.startswith("\u0120"))
                  if len(w) >= 3 and w.isalpha() and w.islower() and w not in banned)


def list_item(rng, vocab=tiny.WORDS, lookup=0.5):
    """A generic list skill, text only: (prompt, target). Matching uses the world's option designs (one slot with
    four values, or two slots with two), so the skill is the one the bench needs, on words that are not routes."""
    def put(ws, i, v): return ws[:i] + [v] + ws[i + 1:]  # noqa: E306, E704
    if rng.random() < lookup:  # lookup: which option holds each word (four queries per row: dense letter targets)
        n = 8 if len(vocab) < 100 else int(rng.integers(8, 13))  # (8 a row in the first recipe, on tiny.WORDS)
        ws = [vocab[k] for k in rng.choice(len(vocab), n, replace=False)]
        cut = np.sort(rng.choice(np.arange(1, n), 3, replace=False))
        opts = np.split(np.array(ws), cut)
        shown = ", ".join(f"{L}. {', '.join(o)}" for L, o in zip("ABCD", opts))
        asks = [(str(o[rng.integers(len(o))]), L) for L, o in zip("ABCD", opts)]
        rng.shuffle(asks)
        # targets start with a space, so that every word is the same token as in the prompt (" piano", not "piano")
        return tiny.LOOKUP.format(shown), "".join(f" {w}: {L}." for w, L in asks)
    if rng.random() < 0.4:  # the easy case first learnt: short lists, and the one word that differs is unique
        words = [tiny.WORDS[k] for k in rng.choice(len(tiny.WORDS), int(rng.integers(1, 4)), replace=False)]
        i = int(rng.integers(len(words)))
        others = [v for v in tiny.WORDS if v not in words]
        opts = [words] + [put(words, i, others[k]) for k in rng.choice(len(others), 3, replace=False)]
        return _lettered(words, opts, rng)
    n = int(rng.integers(3, 8))
    words = [tiny.WORDS[k] for k in rng.integers(len(tiny.WORDS), size=n)]
    if rng.random() < 0.25:
        return tiny.REVERSE.format(", ".join(words)), " " + ", ".join(reversed(words)) + "."
    if rng.random() < 0.5:
        i = int(rng.integers(n))
        others = [v for v in tiny.WORDS if v != words[i]]
        opts = [words] + [put(words, i, others[k]) for k in rng.choice(len(others), 3, replace=False)]
    else:
        i, j = rng.choice(n, 2, replace=False)
        a, b = (rng.choice([v for v in tiny.WORDS if v != words[k]]) for k in (i, j))
        opts = [words, put(words, i, a), put(words, j, b), put(put(words, i, a), j, b)]
    return _lettered(words, opts, rng)


COMPARE_ASK = "Check the options one by one against this list: {}. Options: {}."


def compare_item(rng):
    """Stage 6's skill, text only: world.verdicts (the last step of the bench's chains of thought) on lists of random
    words that hold 2-4 colours and sides. The options differ as the bench's do (one colour x 4, or two colours or
    sides x 2), the reply compares each option's colours and sides with the list's, pair by pair, then names the
    option. bench/RESULTS.md: matching a list to its option in one step stays at chance; this is learnt."""
    items = [[tiny.WORDS[k] for k in rng.choice(len(tiny.WORDS), int(rng.integers(1, 3)), replace=False)]
             for _ in range(int(rng.integers(2, 6)))]
    for _ in range(int(rng.integers(2, 5))):  # put a colour or a side into an item
        i = int(rng.integers(len(items)))
        items[i].insert(int(rng.integers(len(items[i]) + 1)), str(rng.choice(world.KEYS)))
    slots = [(i, j) for i, it in enumerate(items) for j, w in enumerate(it) if w in world.KEYS]

    def put(its, slot, w):  # noqa: E306
        return [[w if (i, j) == slot else x for j, x in enumerate(it)] for i, it in enumerate(its)]

    unused = [c for c in world.COLOURS if all(c not in it for it in items)]  # at least 2: 4 keys at most

    def other(w): return {"left": "right", "right": "left"}.get(w) or str(rng.choice(unused))  # noqa: E306, E704
    colour = [sl for sl in slots if items[sl[0]][sl[1]] in world.COLOURS]
    if colour and len(unused) >= 3 and rng.random() < 0.5:  # one colour x 4
        sl = colour[rng.integers(len(colour))]
        opts = [items] + [put(items, sl, str(c)) for c in rng.choice(unused, 3, replace=False)]
    else:  # two slots x 2
        a, b = (slots[k] for k in rng.choice(len(slots), 2, replace=False))
        wa, wb = other(items[a[0]][a[1]]), other(items[b[0]][b[1]])
        opts = [items, put(items, a, wa), put(items, b, wb), put(put(items, a, wa), b, wb)]
    order = rng.permutation(4)
    shown = [[" ".join(it) for it in opts[k]] for k in order]
    letter = "ABCD"[int(np.argmax(order == 0))]
    listed = [" ".join(it) for it in items]
    prompt = COMPARE_ASK.format(", ".join(listed), ", ".join(f"{L}. {', '.join(o)}" for L, o in zip("ABCD", shown)))
    return prompt, " " + world.verdicts(zip("ABCD", shown), listed) + f" So option {letter}."


def _lettered(words, opts, rng):
    """The matching prompt with the four options (the true one first in `opts`) in a random order, and its target."""
    order = rng.permutation(4)
    letter = "ABCD"[int(np.argmax(order == 0))]
    # lower case (the bench capitalises an option's first word): the same word is then the same token in list and option
    shown = ", ".join(f"{L}. {', '.join(opts[k])}" for L, k in zip("ABCD", order))
    return tiny.MATCH.format(", ".join(words), shown), f" {', '.join(words)}, which is option {letter}."


def encode(tok, prompt, target, frames=None, instruction=""):
    """Chat-format ids and labels (-100 on the prompt), plus the video's patches when there are frames. Pretraining
    rows have no instruction; the bench's rows carry chat.THINK_INSTRUCTION (used here only to evaluate)."""
    ex = {}
    n = 0
    if frames is not None:
        pv, grid = video.preprocess(frames, 56 * 56, 128 * 28 * 28)
        # seconds per temporal patch as load_video computes it for the bench's videos: 8 of 16 frames at 8 fps
        ex = dict(pixel_values_videos=pv, video_grid_thw=grid, second_per_grid_ts=2 / (8 / (FRAMES / 8)))
        n = chat.num_video_tokens(grid)
    ids = tok.encode(chat.prompt_text(prompt, n, instruction=instruction), add_special_tokens=False)
    if target is None:
        return dict(ex, input_ids=ids)
    ans = chat.answer_ids(tok, target)
    return dict(ex, input_ids=ids + ans, labels=[-100] * len(ids) + ans)


def collate(examples, pad):
    """Left-padded ids, mask, labels; the videos stacked when the rows have them."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, width - n:] = torch.tensor(e["input_ids"])
        mask[i, width - n:] = 1
        if "labels" in e:
            labels[i, width - n:] = torch.tensor(e["labels"])
    out = dict(input_ids=ids, attention_mask=mask)
    if "pixel_values_videos" in examples[0]:
        out.update(pixel_values_videos=torch.cat([e["pixel_values_videos"] for e in examples]),
                   video_grid_thw=torch.cat([e["video_grid_thw"] for e in examples]),
                   second_per_grid_ts=torch.tensor([e["second_per_grid_ts"] for e in examples]))
    return out, labels


def lm_loss(model, batch, labels, upweight=(), factor=5.0):
    """Mean cross-entropy over the target tokens; tokens in `upweight` (the option letters: one decision in a
    target that is otherwise mostly copied) count `factor` times."""
    logits = model(**batch).float()
    y = labels[:, 1:].flatten()
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), y, ignore_index=-100, reduction="none")
    w = (y != -100).float() * (1 + (factor - 1) * torch.isin(y, torch.tensor(list(upweight), dtype=y.dtype)))
    return (ce * w).sum() / w.sum()


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def greedy(model, tok, examples, max_new=64):
    from st_r1.generate import generate
    batch, _ = collate(examples, tok.pad_token_id)
    g = generate(model, max_new_tokens=max_new, eos_token_ids=chat.end_of_turn_ids(tok), pad_token_id=tok.pad_token_id,
                 **batch)
    return [tok.decode(t[m], skip_special_tokens=True).strip() for t, m in zip(g.tokens, g.mask)]


def describe_score(texts, events):
    """Mean route rubric (0-5) of narrations against the true forward route."""
    return float(np.mean([rubric.rubric(t, ", then ".join(ev), True)["score"] for t, ev in zip(texts, events)]))


def turns_colours_right(texts, events):
    """Share of narrations whose turns (in order) are all right, and whose passed landmarks are all right."""
    turns = np.mean([[e for e in ev if e.startswith("turn")] ==
                     [f"turn {w.strip('.,')}" for w, p in zip(t.split()[1:], t.split()) if p == "turn"]
                     for t, ev in zip(texts, events)])
    colours = np.mean([re.findall(r"pass the (\w+ \w+)", t) == [e[len("pass the "):] for e in ev
                                                                   if e.startswith("pass the ")]
                       for t, ev in zip(texts, events)])
    return float(turns), float(colours)


def evaluate(model, tok, held, n, vocab=tiny.WORDS):
    """Held-out: narration rubric (true video / another video's frames), close-up colour, generic matching."""
    model.eval()
    frames, _, events = held["walks"]
    rows = [encode(tok, tiny.NARRATE, None, f) for f in frames[:n]]
    other = [encode(tok, tiny.NARRATE, None, frames[(i + 1) % n]) for i in range(n)]
    out = {}
    for name, ex in (("describe_other_video", other), ("describe", rows)):
        texts = sum((greedy(model, tok, ex[i:i + 32]) for i in range(0, n, 32)), [])
        out[name] = describe_score(texts, events[:n])
    out["describe_example"] = texts[0]
    out["turns_right"], out["colours_right"] = turns_colours_right(texts, events[:n])
    # the same walks asked with the bench's own route question and instruction (never trained on: this measures
    # whether the perception carries to the prompts SFT will use)
    q = world.PREFIX + world.QUESTIONS["route", False] + world.ROUTE_INSTR
    ex = [encode(tok, q, None, f, chat.THINK_INSTRUCTION) for f in frames[:n]]
    texts = sum((greedy(model, tok, ex[i:i + 32], 96) for i in range(0, n, 32)), [])
    out["bench_prompt_describe"] = describe_score(texts, events[:n])
    out["bench_prompt_turns_right"], out["bench_prompt_colours_right"] = turns_colours_right(texts, events[:n])
    out["bench_prompt_example"] = texts[0]
    cf, ct = held["closeups"]
    said = sum((greedy(model, tok, [encode(tok, tiny.LOOK, None, f) for f in cf[i:i + 32]], 8)
                for i in range(0, n, 32)), [])
    # the colour after "see the" (a stage-4 base may lead in: "Sure. I see the red door.")
    out["closeup_colour"] = float(np.mean([re.findall(r"see the (\w+)", s)[:1] == t.split()[3:4]
                                           for s, t in zip(said, ct[:n])]))
    rng = np.random.default_rng(12345)
    items = [list_item(rng) for _ in range(4 * n)]
    items = [(p, t) for p, t in items if "which is option" in t][:n]
    said = sum((greedy(model, tok, [encode(tok, p, None) for p, _ in items[i:i + 32]], 48)
                for i in range(0, len(items), 32)), [])
    out["match"] = float(np.mean([s.endswith(t[-2:]) for s, (_, t) in zip(said, items)]))
    items = [compare_item(rng) for _ in range(n)]
    said = sum((greedy(model, tok, [encode(tok, p, None) for p, _ in items[i:i + 32]], 128)
                for i in range(0, n, 32)), [])
    out["compare"] = float(np.mean([re.findall(r"option ([ABCD])", s)[-1:] == [t[-2]]
                                    for s, (_, t) in zip(said, items)]))
    out["compare_example"] = said[0]
    # lookup on the trained words, and on the bench's words (its colours and turns), never looked up by default
    for key, words in (("lookup", vocab), ("lookup_bench_words", [*world.COLOURS, "left", "right"])):
        items = [list_item(rng, words, lookup=1.0) for _ in range(n)]
        said = sum((greedy(model, tok, [encode(tok, p, None) for p, _ in items[i:i + 32]], 32)
                    for i in range(0, len(items), 32)), [])
        # of the four "word: X" a reply should say (any word of each option may be asked), those where option X
        # holds the word
        right = []
        for s, (p, _) in zip(said, items):
            opts = dict(re.findall(r"([ABCD])\. (.*?)(?=, [ABCD]\. |\. Which)", p))
            pairs = re.findall(r"(\w+): ([ABCD])", s)[:4]
            right.append(sum(w in opts[L].split(", ") for w, L in pairs) / 4)
        out[key] = float(np.mean(right))
    model.train()
    return out


# ----------------------------------------------------------------------------- main

def plot(log, path):
    """Losses and held-out scores over the steps (matplotlib is a bench-only extra: skipped if missing)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -r bench/requirements.txt): no plot")
        return
    with open(log) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    ev = [r for r in recs if "describe" in r]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
    for key in ("loss_video", "loss_text"):
        y = np.convolve([r[key] for r in recs], np.ones(50) / 50, mode="valid")
        ax[0].plot([r["step"] for r in recs][49:], y, label=key.replace("_", " "))
    ax[0].set_title("training loss (mean of 50 steps)")
    ax[1].plot([r["step"] for r in ev], [r["describe"] for r in ev], "o-", label="own video")
    ax[1].plot([r["step"] for r in ev], [r["describe_other_video"] for r in ev], "o-", label="another video")
    ax[1].set_title("narration of held-out walks: route rubric (0-5)")
    for key, name in (("closeup_colour", "close-up colour (chance 1/6)"), ("turns_right", "both turns right (1/4)"),
                      ("bench_prompt_turns_right", "the same, bench's route question"),
                      ("compare", "verdict lines: option (1/4)"), ("match", "list -> option letter (1/4)")):
        if all(key in r for r in ev):  # (logs older than a key have none)
            ax[2].plot([r["step"] for r in ev], [r[key] for r in ev], "o-", label=name)
    ax[2].set_title("held-out accuracy")
    for a in ax:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"plot written to {path}")


def export(cfg):
    from st_r1.model import VideoLM
    src = checkpoint.latest_model(cfg.out)
    if src is None:
        raise SystemExit(f"{cfg.out}: no checkpoint to export")
    model = VideoLM.from_pretrained(src, dtype=torch.float32)  # fp32: every stage trains it (5 MB)
    model.save_pretrained(cfg.export)
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(src, local_files_only=True).save_pretrained(cfg.export)
    with open(os.path.join(src, "config.json")) as f:  # a checkpoint's model folder has no generation_config.json
        c = json.load(f)
    with open(os.path.join(cfg.export, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": c["bos_token_id"], "pad_token_id": c["pad_token_id"],
                   "eos_token_id": [c["eos_token_id"], c["pad_token_id"]]}, f, indent=2)
    step = int(os.path.basename(os.path.dirname(src)).split("-")[1])
    with open(os.path.join(cfg.out, "log.jsonl")) as f, open(os.path.join(cfg.export, "pretrain_log.jsonl"), "w") as g:
        g.writelines(line for line in f if line.strip() and json.loads(line)["step"] <= step)  # up to the exported step
    plot(os.path.join(cfg.export, "pretrain_log.jsonl"), os.path.join(cfg.export, "pretrain_curves.png"))
    print(f"exported {src} -> {cfg.export} (with its pretraining log and curves)")


def main(cfg):
    if cfg.export:
        return export(cfg)
    if cfg.plot:
        return plot(cfg.plot, cfg.plot_to)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    _SEED[0] = cfg.world_seed
    from st_r1.model import VideoLM
    init = os.path.join(cfg.out, "init")
    if not os.path.exists(os.path.join(init, "model.safetensors")):
        if cfg.init:  # a fresh optimizer on given weights (the tokenizer and shape come with them)
            import shutil
            shutil.copytree(cfg.init, init)
        else:
            tiny.write_tiny_model(init, seed=cfg.seed, hidden=cfg.hidden, layers=cfg.layers,
                                  vision_hidden=cfg.vision_hidden, vision_depth=cfg.vision_depth)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(init, local_files_only=True)
    model = VideoLM.from_pretrained(init)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = training.cosine_schedule(opt, cfg.warmup, cfg.steps, 0.1)
    state = checkpoint.load_checkpoint(cfg.out, model, opt, sched)
    step = state["step"] if state else 0
    log = os.path.join(cfg.out, "log.jsonl")
    runs.trim_log(cfg.out, step)  # records past the checkpoint we resume from are redone: drop them
    with open(os.path.join(cfg.out, "config.json"), "w") as f:
        json.dump(asdict(cfg), f, indent=1)

    t0 = time.time()
    if cfg.batch:
        walks = make_pool(os.path.join(cfg.out, "walks.npz"), cfg.pool, _walk, cfg.threads)
        closeups = make_pool(os.path.join(cfg.out, "closeups.npz"), cfg.easy_pool, _closeup, cfg.threads)
        turns = make_pool(os.path.join(cfg.out, "turns.npz"), cfg.easy_pool, _turn, cfg.threads)
    else:  # --batch 0: the text skills alone (no video rows, no pools)
        walks = closeups = turns = (np.zeros((0, 8, 112, 112, 3), np.uint8), [])
    held_walks = [walk_item(cfg.world_seed, "test", i) for i in range(cfg.eval_n)]
    held = {"walks": (np.stack([f for f, _, _ in held_walks]), [t for _, t, _ in held_walks],
                      [e for _, _, e in held_walks]),
            "closeups": tuple(zip(*[closeup_item(cfg.world_seed + 1, i)[:2] for i in range(cfg.eval_n)]))}
    print(f"data ready in {time.time() - t0:.0f} s: {len(walks[1])} walks, {len(closeups[1])} close-ups, "
          f"{len(turns[1])} turns; from step {step}", flush=True)

    letters = [tok.encode(" " + L, add_special_tokens=False)[0] for L in "ABCD"]
    vocab = {"tokens": lookup_vocab(tok), "words": list(tiny.WORDS),
             "words+colours": list(tiny.WORDS) + list(world.COLOURS),
             "words+world": list(tiny.WORDS) + WORLD_WORDS, "world": WORLD_WORDS,
             }[cfg.lookup_vocab]
    from tqdm import tqdm
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", dynamic_ncols=True)
    model.train()
    while step < (cfg.stop or cfg.steps):
        t1 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, step])  # the data of a step depends on the step only (resume)
        easy = 0.6 - (0.6 - cfg.easy_floor) * min(1.0, step / max(1, cfg.curriculum))
        ex = []
        for _ in range(cfg.batch):
            src = walks if rng.random() >= easy else (closeups if rng.random() < 0.5 else turns)
            k = int(rng.integers(len(src[1])))
            kind = {id(walks): "narrate", id(closeups): "look", id(turns): "turn"}[id(src)]
            many = cfg.prompts == "many"
            prompt = request(kind, rng, many, cfg.neutral_share, cfg.format_share)
            ex.append(encode(tok, prompt, reply(str(src[1][k]), rng, many), src[0][k]))
        loss_v = lm_loss(model, *collate(ex, tok.pad_token_id)) if ex else torch.zeros(())
        batch, labels = collate([encode(tok, *(compare_item(rng) if rng.random() < cfg.compare_share else
                                               list_item(rng, vocab, cfg.lookup_share)))
                                 for _ in range(cfg.text_batch)], tok.pad_token_id)
        loss_t = lm_loss(model, batch, labels, letters)
        opt.zero_grad(set_to_none=True)
        (loss_v + loss_t).backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not torch.isfinite(gn):
            raise FloatingPointError(f"non-finite gradient at step {step}; the last checkpoint in {cfg.out} is intact")
        opt.step()
        sched.step()
        step += 1
        rec = dict(step=step, loss_video=loss_v.item(), loss_text=loss_t.item(), lr=sched.get_last_lr()[0],
                   easy=easy, step_s=time.perf_counter() - t1)
        if step % cfg.eval_every == 0 or step in (cfg.steps, cfg.stop):
            rec.update(evaluate(model, tok, held, cfg.eval_n, vocab))
            tqdm.write(json.dumps(rec))
        with open(log, "a") as f:
            f.write(json.dumps(rec) + "\n")
        bar.set_postfix(video=f"{loss_v.item():.3f}", text=f"{loss_t.item():.3f}")
        bar.update(1)
        if step % cfg.save_every == 0 or step in (cfg.steps, cfg.stop):
            checkpoint.save_checkpoint(cfg.out, step, model, opt, sched, dict(step=step), tokenizer=tok)
    bar.close()
    print(f"done: {checkpoint.latest_model(cfg.out)}; export with --export models/tiny-base")


if __name__ == "__main__":
    main(cli.parse(Pretrain))
