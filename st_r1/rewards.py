"""Rewards for ST-R1's GRPO stage: pure functions of the reply text, each a float in [0, 1].

Every parser here is a linear scan (str.find, or regexes without nested ambiguous quantifiers), so a
100k-character reply costs milliseconds, and a reply that tries to game the format scores 0.
"""
import re

EVENT_TURNS = ("turn left", "turn right", "turn around")

# ----------------------------------------------------------------------------- tags and letters


def _tag_span(text, tag):
    """(start, end) of the inner text of the ONE <tag>...</tag> in text, or None (missing, repeated, unclosed)."""
    op, cl = f"<{tag}>", f"</{tag}>"
    if text.count(op) != 1 or text.count(cl) != 1:
        return None
    i, j = text.find(op), text.find(cl)
    if j < i:
        return None
    return i + len(op), j


def format_reward(text):
    """1.0 iff the reply is `<think>T</think> <answer>A</answer>` with only whitespace around and between the
    blocks, each tag exactly once (so no nesting or repeats), T and A not blank; else 0.0."""
    s = text.strip()
    think, answer = _tag_span(s, "think"), _tag_span(s, "answer")
    if think is None or answer is None or not s.startswith("<think>") or not s.endswith("</answer>"):
        return 0.0
    between = s[think[1] + len("</think>"):answer[0] - len("<answer>")]
    inner_t, inner_a = s[think[0]:think[1]], s[answer[0]:answer[1]]
    if between.strip() or _blank(inner_t) or _blank(inner_a):
        return 0.0
    # the answer block must not hide a think tag and vice versa (tags counted once each above)
    if "<answer>" in inner_t or "</answer>" in inner_t or "<think>" in inner_a or "</think>" in inner_a:
        return 0.0
    return 1.0


# whitespace and the invisible format characters (soft hyphen, zero-width space / joiners, marks, word joiner, BOM)
_INVISIBLE_RE = re.compile(r"[\s\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]*")


def _blank(text):
    """Nothing visible: a think block of zero-width spaces is no thinking."""
    return _INVISIBLE_RE.fullmatch(text) is not None


def extract_answer(text):
    """Stripped inner text of the single <answer>...</answer> block, or None when there is not exactly one."""
    span = _tag_span(text, "answer")
    return None if span is None else text[span[0]:span[1]].strip()


# "B", "B.", "B)", "(B)", "B. option text", "Option B", "Answer: B". Upper-case letters only: a lower-case
# "a" is an article, and the bench asks for the option letter.
_LETTER_RE = re.compile(r"(?:[Oo]ption\s*|[Aa]nswer\s*:?\s*)?(?:\(([A-D])\)|([A-D])([.:)]?))(.*)", re.S)
# another option letter standing alone in the rest ("A. x or B"); a capital "A " before a lower-case
# word is the English article, which option texts may contain ("A red door").
_OTHER_LETTER_RE = re.compile(r"\b(?:[B-D]|A(?! [a-z]))\b|[Ａ-Ｄ]")  # full-width letters too: "B. Ｃ" names two
# a hedge after the letter ("B. or A is possible", "B, maybe"): not one answer. (Option texts that say "or" lose.)
_HEDGE_RE = re.compile(r"\b(?:or|maybe|perhaps|possibly|possible|probably|either|unsure|not sure)\b")


def _hedged(rest):
    return "?" in rest or _HEDGE_RE.search(rest.lower()) is not None  # lower() + a plain regex: 4x faster than re.I


def answer_letter(text):
    """The one option letter A-D named in the single <answer> block, or None.

    Rejects several letters ("A or B", "A, B", "AB"), hedges ("maybe B", "B?"), no tags, and letters
    that only occur outside the tags (the authors' "first character of the answer" rule accepts those)."""
    inner = extract_answer(text)
    if not inner:
        return None
    m = _LETTER_RE.fullmatch(inner)
    if m is None:
        return None
    letter = m.group(1) or m.group(2)
    rest = m.group(4)
    if rest.strip():
        # option text may follow only after a separator: "B. Turn left", "(B) Turn left"
        separated = m.group(1) is not None or m.group(3)
        if not separated or not rest[:1].isspace() or _OTHER_LETTER_RE.search(rest) or _hedged(rest):
            return None
    return letter


def gold_letter(solution):
    """The gold letter of a solution that is either a bare letter ("B") or an authors' solution string."""
    s = solution.strip()
    if len(s) == 1 and s in "ABCD":
        return s
    letter = answer_letter(s)
    if letter is None:
        raise ValueError(f"no gold option letter in solution {s[:80]!r}")
    return letter


def accuracy_reward(text, solution):
    """1.0 iff answer_letter(text) equals the gold letter of `solution` (a letter or an authors' solution)."""
    return float(answer_letter(text) == gold_letter(solution))


def row_gold(row):
    """Gold letter of an Ego-ST row (original_answer, else the solution's answer), None for open-ended rows."""
    oa = str(row.get("original_answer", "")).strip()
    if len(oa) == 1 and oa in "ABCD":
        return oa
    if row.get("task") == "route":
        return None
    try:
        return gold_letter(str(row.get("solution", "")))
    except ValueError:
        return None


# ----------------------------------------------------------------------------- route events

# The closed vocabulary of the contract. Landmark objects may be several words; a match stops at a
# comma or full stop (the CoT joins events with ", then ") and is cut at " then " / " and " below.
_EVENT_RE = re.compile(
    r"(walk straight|turn left|turn right|turn around"
    r"|pass the [a-z]+(?: [a-z]+)*"
    r"|see the walls change from [a-z]+ to [a-z]+)"
    r"|([a-z0-9]+(?:-[a-z0-9]+)*)")
# free-text direction words (the authors' rows), canonicalised to the three turns
_DIR_WORDS = {"left": "turn left", "right": "turn right", "around": "turn around", "back": "turn around",
              "backward": "turn around", "backwards": "turn around", "u-turn": "turn around"}
_STOP = set("a an the to of and then i you we it its in on at by for from with into onto up down your my "
            "is are was were be do did this that there here s".split())


def parse_route(text):
    """Read a route text into (events, turns, words).

    events: closed-vocabulary phrases in order (the contract's "walk straight", "pass the red door", ...);
    turns: "turn left/right/around" in order, from events and from free direction words ("go back",
    "to the right"; the authors' free-text rows); words: other content words in order (stop words dropped)."""
    events, turns, words = [], [], []
    for m in _EVENT_RE.finditer(text.lower()):
        ev, word = m.group(1), m.group(2)
        if ev:
            for cut in (" then ", " and "):  # "pass the red door then turn left" without a comma
                if ev.startswith("pass the") and cut in ev:
                    ev = ev[:ev.find(cut)]
            events.append(ev)
            if ev in EVENT_TURNS:
                turns.append(ev)
        elif word in _DIR_WORDS:
            turns.append(_DIR_WORDS[word])
        elif word not in _STOP:
            words.append(word)
    return events, turns, words


def seq_similarity(a, b):
    """1 - Levenshtein(a, b) / max(|a|, |b|) on sequences of units: 1 iff equal, order-aware (a swap costs 2
    edits, a mirrored turn 1). 1.0 when both are empty. A recall more than 3x+3 longer than the truth
    scores 0 (it can reach at most ~1/3 anyway; the cap keeps the O(|a||b|) table small on 100k replies)."""
    if not a and not b:
        return 1.0
    if len(a) > 3 * len(b) + 3 or len(b) > 3 * len(a) + 3:
        return 0.0
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return 1.0 - prev[-1] / max(len(a), len(b))


def route_parts(text, vocabulary):
    """(turns, marks) of a route text. vocabulary=True: marks are the landmark / scenery events of the closed
    vocabulary and only vocabulary turns count (our world's rows); False: marks are the free content words
    other than motion words, turns include free direction words (the authors' free-text rows)."""
    events, turns, words = parse_route(text)
    if vocabulary:
        return [e for e in events if e in EVENT_TURNS], [e for e in events if e.startswith(("pass ", "see "))]
    motion = {"turn", "go", "walk", "straight", "continue", "move", "head", "proceed", "keep"}
    return turns, [w for w in words if w not in motion]


# ----------------------------------------------------------------------------- reverse thinking

_RECALL_END = re.compile(r"and then think", re.I)
_RECALL_START = re.compile(r"let'?s start by thinking (?:forward|reverse)\s*:?", re.I)


def first_recall(text):
    """The first recall of the <think> block: from "Let's start by thinking forward|reverse" (after the
    authors' restated question, which ends in "?") up to "And then think". None without a think block."""
    span = _tag_span(text, "think")
    if span is None:
        return None
    think = text[span[0]:span[1]]
    end = _RECALL_END.search(think)
    recall = think[:end.start()] if end else think
    start = _RECALL_START.search(recall)
    if start:
        recall = recall[start.end():]
        q = recall.find("?")  # the authors' CoT restates the question first; ours starts "from the ..."
        if q >= 0 and not recall.lstrip().lower().startswith("from"):
            recall = recall[q + 1:]
    return recall


def row_is_reverse(row):
    """True for a destination -> start question (row["reverse"], else from the question's wording)."""
    from st_r1.scoring import is_reverse  # scoring imports this module; lazy to avoid a cycle
    return is_reverse(row)


def recall_truth(row):
    """The truth phrases of the OTHER direction for a row: row["events"]["forward" if reverse else "reverse"]
    (our world), else row["recall_truth"] (set by attach_recall_truth for the authors' rows), else None."""
    if isinstance(row.get("events"), dict):
        return row["events"]["forward" if row_is_reverse(row) else "reverse"]
    return row.get("recall_truth")


def reverse_thinking_reward(text, row, gate_on_correct=False):
    """How well the first recall of <think> (the other direction) matches the true route.

        R = S(turns_recalled, turns_true) * S(marks_recalled, marks_true)

    with S = seq_similarity (1 - normalised Levenshtein distance, order-aware). Turns are the ordered
    left / right / around turns, marks the ordered landmarks and scenery changes (closed vocabulary on our
    rows; content words on the authors' free-text rows). The product is 1 only for a correct recall; a
    mirrored recall (left <-> right) loses every turn, a reordered one pays 2 edits per swap, and a recall
    that drops the landmarks scores 0. "walk straight" is not scored: mirroring keeps it.
    Returns 0.0 when no truth is known for the row (no events, no paired question) or no think block;
    with gate_on_correct, 0.0 also when the row has a gold letter and the answer is wrong."""
    truth = recall_truth(row)
    if not truth:
        return 0.0
    if gate_on_correct:
        gold = row_gold(row)
        if gold is not None and answer_letter(text) != gold:
            return 0.0
    recall = first_recall(text)
    if recall is None:
        return 0.0
    truth_text = ", then ".join(truth)
    vocabulary = isinstance(row.get("events"), dict)  # our rows: closed vocabulary; authors': free text
    t_turns, t_marks = route_parts(truth_text, vocabulary)
    r_turns, r_marks = route_parts(recall, vocabulary)
    return seq_similarity(r_turns, t_turns) * seq_similarity(r_marks, t_marks)


def parse_options(problem):
    """{"A": text, ...} from an authors' problem: "... Options: A. x, B. y, C. z\\n\\nInstructions: ..."."""
    i = problem.find("Options:")
    if i < 0:
        return {}
    body = problem[i + len("Options:"):]
    k = body.find("\n\nInstructions")
    body = body[:k] if k >= 0 else body
    starts = [(body.find("A. "), "A")]
    for letter in "BCD":
        p = body.find(f", {letter}. ", starts[-1][0] + 1)
        if p < 0:
            break
        starts.append((p + 2, letter))
    if starts[0][0] < 0:
        return {}
    ends = [p - 2 for p, _ in starts[1:]] + [len(body)]
    return {letter: body[p + 3:e].strip() for (p, letter), e in zip(starts, ends)}


def reverse_truth_from_pairs(rows):
    """Truth for the authors' rows, aligned with rows: for each row, [gold option text] of the same task's
    question about the same video asked in the OTHER direction, or None when the video has none (the
    authors' bench pairs only some questions: 26 of the 126 fixture rows find a partner)."""
    from st_r1.scoring import is_reverse, task_of
    out = []
    for row in rows:
        cands = [r for r in rows if r is not row and r.get("video") == row.get("video")
                 and is_reverse(r) != is_reverse(row) and row_gold(r) is not None]
        same = [r for r in cands if task_of(r) == task_of(row)]
        pick = same[0] if same else None
        text = None
        if pick is not None:
            opts = pick.get("options") or parse_options(pick.get("problem", ""))
            text = opts.get(row_gold(pick))
        out.append([text] if text else None)
    return out


def attach_recall_truth(rows):
    """Set row["recall_truth"] from reverse_truth_from_pairs on rows without `events`; returns how many got one."""
    n = 0
    for row, truth in zip(rows, reverse_truth_from_pairs(rows)):
        if truth and not isinstance(row.get("events"), dict):
            row["recall_truth"] = truth
            n += 1
    return n


# ----------------------------------------------------------------------------- route and the table


def route_reward(text, row):
    """The deterministic rubric of scoring.py (mean of direction, landmark, semantic, each 0-5) on the <answer>
    description, divided by 5. 0.0 for rows with a gold letter (multiple choice) or no <answer> block."""
    from st_r1.scoring import rubric_score
    if row_gold(row) is not None:
        return 0.0
    return rubric_score(text, row)["score"] / 5.0


def _accuracy_row(text, row):
    gold = row_gold(row)  # open-ended rows have no letter: 0.0, their reward is `route`
    return 0.0 if gold is None else float(answer_letter(text) == gold)


def brevity_reward(text, row=None):
    """1 / (1 + characters / 100): shorter is better. Not part of ST-R1's recipe; a reward with signal on any text,
    even an untrained model's, so the loop's plumbing can be tested end to end."""
    return 1.0 / (1.0 + len(text) / 100)


REWARDS = {
    "brevity": brevity_reward,
    "format": lambda text, row: format_reward(text),
    "accuracy": _accuracy_row,
    "reverse_thinking": reverse_thinking_reward,
    "route": route_reward,
}


def parse_weights(spec):
    """"format=0.5,accuracy=1" -> {"format": 0.5, "accuracy": 1.0}. Names: keys of REWARDS, or "temporal"
    (T-GRPO's bonus, which needs rollouts on shuffled frames: grpo.py computes it)."""
    out = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in (*REWARDS, "temporal"):
            raise ValueError(f"bad reward weight {part!r}: expected name=float with name in "
                             f"{sorted(REWARDS) + ['temporal']}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"bad reward weight {part!r}: {value!r} is not a number") from None
    return out
