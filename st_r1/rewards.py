"""Rewards for ST-R1's GRPO stage (what GRPO optimises): pure functions of the reply text, each a float in [0, 1].

The reply and the row are read by answers.py, the route rubric is rubric.py's. Every parser is a linear scan
(str.find, or regexes without nested ambiguous quantifiers), so a 100k-character reply costs milliseconds, and a
reply that tries to game the format scores 0.
"""
import re

from st_r1.answers import (answer_letter, gold_letter, is_reverse, parse_options, route_parts, row_gold, tag_span,
                           task_of)
from st_r1.rubric import rubric_score, seq_similarity

# ----------------------------------------------------------------------------- format and accuracy


def format_reward(text):
    """1.0 iff the reply is `<think>T</think> <answer>A</answer>` with only whitespace around and between the
    blocks, each tag exactly once (so no nesting or repeats), T and A not blank; else 0.0."""
    s = text.strip()
    think, answer = tag_span(s, "think"), tag_span(s, "answer")
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


def accuracy_reward(text, solution):
    """1.0 iff answer_letter(text) equals the gold letter of `solution` (a letter or an authors' solution)."""
    return float(answer_letter(text) == gold_letter(solution))


_CONCLUSION_RE = re.compile(r"correct answer is \(?([ABCD])\b")


def concluded_letter(text):
    """The letter the <think> block concludes with: its last "... correct answer is X" (how both the authors'
    chains of thought and the world's end), or None."""
    span = tag_span(text, "think")
    found = _CONCLUSION_RE.findall(text[span[0]:span[1]]) if span else []
    return found[-1] if found else None


def consistency_reward(text, row):
    """1.0 iff the reply's <answer> letter is the one its own chain of thought concluded with; 0.0 for open-ended
    rows, no conclusion or no letter. Not a reward for being right (accuracy is): it pays for the last copy from
    the chain to the answer, the step a weakly trained model gets wrong most (bench/RESULTS.md), and alone it
    would pay a wrong chain copied faithfully, so it goes with the accuracy reward."""
    if row_gold(row) is None:
        return 0.0
    said = concluded_letter(text)
    return float(said is not None and answer_letter(text) == said)


# ----------------------------------------------------------------------------- reverse thinking

_RECALL_END = re.compile(r"and then think", re.I)
_RECALL_START = re.compile(r"let'?s start by thinking (?:forward|reverse)\s*:?", re.I)


def first_recall(text):
    """The first recall of the <think> block: from "Let's start by thinking forward|reverse" (after the
    authors' restated question, which ends in "?") up to "And then think". None without a think block."""
    span = tag_span(text, "think")
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


def recall_truth(row):
    """The truth phrases of the OTHER direction for a row: row["events"]["forward" if reverse else "reverse"]
    (our world), else row["recall_truth"] (set by attach_recall_truth for the authors' rows), else None."""
    if isinstance(row.get("events"), dict):
        return row["events"]["forward" if is_reverse(row) else "reverse"]
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


def reverse_truth_from_pairs(rows):
    """Truth for the authors' rows, aligned with rows: for each row, [gold option text] of the same task's
    question about the same video asked in the OTHER direction, or None when the video has none (the
    authors' bench pairs only some questions: 26 of the 126 fixture rows find a partner)."""
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
    """The deterministic rubric of rubric.py (mean of direction, landmark, semantic, each 0-5) on the <answer>
    description, divided by 5. 0.0 for rows with a gold letter (multiple choice) or no <answer> block."""
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
    "consistency": consistency_reward,
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
