"""The shipped base model (models/tiny-base, made by bench/pretrain_base.py): it loads, narrates held-out walks better
than a random model of the same shape by the route rubric, and its pretraining data never holds the bench."""
import json
import os
import re

import numpy as np
import torch

from bench import pretrain_base as P
from st_r1 import data, render, tiny, world
from st_r1.model import VideoLM

BASE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "tiny-base")


def narration_score(model, tok, walks):
    texts = P.greedy(model, tok, [P.encode(tok, tiny.NARRATE, None, f) for f, _, _ in walks])
    return P.describe_score(texts, [e for _, _, e in walks]), texts


def test_shipped_base_narrates_held_out_walks_better_than_a_random_model():
    torch.manual_seed(0)
    tok = data.load_tokenizer(BASE)
    base = VideoLM.from_pretrained(BASE, dtype=torch.float32).eval()
    with open(os.path.join(BASE, "config.json")) as f:
        cfg = json.load(f)
    rand = VideoLM.from_config(cfg).eval()
    walks = [P.walk_item(1000, "test", i) for i in range(8)]  # the pretraining's held-out walks (never trained on)
    s_base, texts = narration_score(base, tok, walks)
    s_rand, _ = narration_score(rand, tok, walks)
    assert s_base > s_rand + 1.5, (s_base, s_rand, texts[:2])
    assert all(t.startswith("I walk straight") for t in texts), texts


def test_pretraining_data_never_holds_the_bench():
    rng = np.random.default_rng(0)
    route_words = {"walk", "turn", "pass", "left", "right", "route", "landmark", *render.COLOURS, *render.OBJECTS}
    vocab = P.lookup_vocab(data.load_tokenizer(BASE))
    assert len(vocab) > 300  # hundreds of words: the lookup cannot be learnt one word at a time
    for _ in range(300):
        prompt, target = P.list_item(rng, vocab)
        words = set((prompt + " " + target).lower().replace(",", " ").replace(".", " ").replace(":", " ").split())
        assert not words & route_words, (prompt, target)
    # the walks come from the pretraining seed's maps: none is a map of the bench's splits (seed 0)
    def key(w):
        return w.grid.tobytes(), tuple(w.path), w.mat.tobytes(), json.dumps(w.landmarks)
    bench = {key(world.world_for(0, s, i, frames=P.FRAMES, balanced=True)) for s in ("train", "test") for i in range(30)}
    seen = {key(world.world_for(1000, "train", i, frames=P.FRAMES)) for i in range(30)}
    assert len(seen) == 30 and not bench & seen


def test_pretraining_resumes(tmp_path):
    """Two steps, killed, one more: the log holds each step once and the run continues from its checkpoint."""
    flags = ["--out", str(tmp_path), "--pool", "4", "--easy-pool", "4", "--batch", "2", "--text-batch", "2",
             "--eval-every", "100", "--save-every", "2", "--threads", "1", "--hidden", "32", "--layers", "1",
             "--vision-hidden", "32", "--vision-depth", "1"]
    from st_r1 import cli
    P.main(cli.parse(P.Pretrain, flags + ["--steps", "2"]))
    with open(tmp_path / "log.jsonl", "a") as f:  # a step done after the checkpoint, then the run was killed
        f.write(json.dumps({"step": 3}) + "\n")
    P.main(cli.parse(P.Pretrain, flags + ["--steps", "3"]))
    steps = [json.loads(line)["step"] for line in open(tmp_path / "log.jsonl")]
    assert steps == [1, 2, 3]
    assert open(tmp_path / "latest").read().strip() == "ckpt-00000003"


def test_list_items_by_hand():
    """Matching: the named letter is the option equal to the list, and only it; lookup: each word's letter is the
    option holding it; reversing reverses. Targets start with a space (the words are then the prompt's tokens)."""
    rng = np.random.default_rng(1)
    kinds = set()
    for _ in range(300):
        prompt, target = P.list_item(rng)
        assert target.startswith(" ")
        if prompt.startswith("Reverse the list: "):
            assert target[1:-1].split(", ") == prompt[len("Reverse the list: "):-1].split(", ")[::-1]
            kinds.add("reverse")
            continue
        part = prompt.split("Options: ")[1]
        opts = dict(re.findall(r"([ABCD])\. (.*?)(?=, [ABCD]\. |\. Which|$)", part))
        assert list(opts) == list("ABCD")
        if prompt.startswith("Options: "):
            asks = re.findall(r" (\w+): ([ABCD])\.", target)
            assert len(asks) == 4 and {L for _, L in asks} == set("ABCD")
            assert all(w in opts[L].split(", ") for w, L in asks)
            kinds.add("lookup")
            continue
        listed = prompt[len("Which option is the list: "):prompt.index("? Options: ")].split(", ")
        equal = [L for L, o in opts.items() if o.split(", ") == listed]
        assert equal == [target[-2]] and target == f" {', '.join(listed)}, which is option {target[-2]}."
        kinds.add("match")
    assert kinds == {"match", "reverse", "lookup"}


def test_text_only_phase_from_a_model_folder(tmp_path):
    """--batch 0 trains the list skills alone (no pools rendered), starting from --init's weights."""
    from st_r1 import cli
    init = tmp_path / "init-model"
    tiny.write_tiny_model(str(init), hidden=32, layers=1, vision_hidden=32, vision_depth=1)
    P.main(cli.parse(P.Pretrain, ["--out", str(tmp_path / "run"), "--init", str(init), "--batch", "0",
                                  "--text-batch", "2", "--steps", "1", "--eval-n", "2", "--threads", "1"]))
    assert not list((tmp_path / "run").glob("*.npz"))
    rec = json.loads(open(tmp_path / "run" / "log.jsonl").read().splitlines()[0])
    assert rec["loss_video"] == 0.0 and rec["loss_text"] > 0 and "match" in rec  # evaluated at the last step


def test_make_base_stages_are_valid_pretraining_flags():
    """bench/make_base.py re-makes the base: every stage's flags must parse (the run would otherwise fail an hour
    in), and the stages are the recipe the README gives: video rows in both, many prompts, the verdict lines, no
    lookup, the neutral requests and form sentences in the last."""
    from bench import make_base
    from st_r1 import cli
    assert [n for n, _ in make_base.STAGES] == ["1-all", "2-neutral"]
    one, two = (cli.parse(P.Pretrain, ["--out", "x"] + f) for _, f in make_base.STAGES)
    for c in (one, two):
        assert not c.init and not c.stop
        assert (c.prompts, c.lookup_share, c.compare_share, c.batch > 0) == ("many", 0.0, 0.75, True)
    assert (one.steps, two.steps, one.neutral_share, two.neutral_share) == (4000, 500, 0.0, 0.7)
    assert (one.format_share, two.format_share) == (0.0, 0.5)


def test_pretraining_rows_never_hold_the_bench_wording():
    """The recipe asks for each video kind in many ways (its own requests, the neutral ones, form sentences): no
    request, preamble, form sentence or lead-in shares four words in a row with the bench's questions and
    instructions; no lookup or verdict row holds a route event ("pass the ...", "turn left", "walk straight"): the
    lists hold colour and object words, never a walk."""
    from st_r1 import chat

    def grams(text, n=4):
        ws = re.findall(r"[a-z]+", text.lower())
        return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}
    bench = set().union(*(grams(t) for t in [world.PREFIX, world.MCQ_INSTR, world.ROUTE_INSTR, chat.THINK_INSTRUCTION,
                                             *world.QUESTIONS.values(), *world.COMPARE.values()]))
    rng = np.random.default_rng(0)
    for _ in range(500):
        kind = ("narrate", "look", "turn")[rng.integers(3)]
        text = P.request(kind, rng, True, 0.5, 0.5) + " " + P.reply("I walk straight.", rng, True)
        assert not grams(text) & bench, text
    vocab = list(tiny.WORDS) + P.WORLD_WORDS
    for _ in range(300):
        prompt, target = P.list_item(rng, vocab, lookup=1.0)
        assert not re.search(r"pass the|turn (left|right)|walk straight", prompt + target), (prompt, target)
    assert P.request("narrate", rng, False) == tiny.NARRATE and P.reply("I walk.", rng, False) == "I walk."
    for kind, own in P.REQUESTS.items():  # --neutral-share 1: a request that fits every kind, never the kind's own
        for text in (P.request(kind, rng, True, 1.0) for _ in range(20)):
            assert any(n in text for n in P.NEUTRAL) and not any(r in text for r in own), text

    for _ in range(300):  # stage 6's verdict rows: random words around colours and sides, never a walk
        prompt, target = P.compare_item(rng)
        assert not re.search(r"pass the|turn (left|right)|walk straight", prompt + target), (prompt, target)
        assert not grams(prompt + target) & bench, (prompt, target)


def test_compare_rows_name_the_one_option_that_equals_the_list():
    rng = np.random.default_rng(1)
    for _ in range(500):
        prompt, target = P.compare_item(rng)
        listed = prompt.split("list: ")[1].split(". Options: ")[0]
        opts = dict(re.findall(r"([ABCD])\. (.*?)(?=, [ABCD]\. |\.$)", prompt))
        assert sorted(opts) == list("ABCD") and len(set(opts.values())) == 4, prompt
        same = [L for L, o in opts.items() if o == listed]
        assert len(same) == 1 and target.endswith(f" So option {same[0]}.")
        assert re.findall(r"([ABCD]): [a-z ,]+: (yes|no)\.", target) == [(L, "yes" if L == same[0] else "no")
                                                                          for L in "ABCD"]


def test_shipped_base_sees_under_the_bench_route_question():
    """Stage 4's point: asked the bench's own route question (which it never trained on), the base still narrates
    the walk it sees, well above a random model, with the turns right (stage 3's base: rubric 0.06, 0 turns)."""
    from st_r1 import chat
    tok = data.load_tokenizer(BASE)
    base = VideoLM.from_pretrained(BASE, dtype=torch.float32).eval()
    walks = [P.walk_item(1000, "test", i) for i in range(8)]
    q = world.PREFIX + world.QUESTIONS["route", False] + world.ROUTE_INSTR
    texts = P.greedy(base, tok, [P.encode(tok, q, None, f, chat.THINK_INSTRUCTION) for f, _, _ in walks], 96)
    score = P.describe_score(texts, [e for _, _, e in walks])
    turns, _ = P.turns_colours_right(texts, [e for _, _, e in walks])
    assert score > 3.0 and turns >= 6 / 8, (score, turns, texts[:2])


def test_shipped_base_compares_options_pair_by_pair():
    """Stage 6's point: on held-out verdict rows (random words around colours and sides) the base names the option
    equal to the list (stage 5's base: 9 of 32; chance 25%)."""
    tok = data.load_tokenizer(BASE)
    base = VideoLM.from_pretrained(BASE, dtype=torch.float32).eval()
    rng = np.random.default_rng(777)
    items = [P.compare_item(rng) for _ in range(32)]
    said = P.greedy(base, tok, [P.encode(tok, p, None) for p, _ in items], 128)
    right = sum(re.findall(r"option ([ABCD])", s)[-1:] == [t[-2]] for s, (_, t) in zip(said, items))
    assert right >= 24, (right, said[:2])
