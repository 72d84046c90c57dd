"""Reading a reply and a row: its tags, answer letter and gold letter, options, the route in a text, what a row asks.

What rewards.py (what GRPO optimises) and scoring.py (what the bench reports) both read, so that they read it the
same way. Every parser here is a linear scan (str.find, or regexes without nested ambiguous quantifiers), so a
100k-character reply costs milliseconds.
"""
import re

EVENT_TURNS = ("turn left", "turn right", "turn around")

# ----------------------------------------------------------------------------- tags and letters


def tag_span(text, tag):
    """(start, end) of the inner text of the ONE <tag>...</tag> in text, or None (missing, repeated, unclosed)."""
    op, cl = f"<{tag}>", f"</{tag}>"
    if text.count(op) != 1 or text.count(cl) != 1:
        return None
    i, j = text.find(op), text.find(cl)
    if j < i:
        return None
    return i + len(op), j


def extract_answer(text):
    """Stripped inner text of the single <answer>...</answer> block, or None when there is not exactly one."""
    span = tag_span(text, "answer")
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


# ----------------------------------------------------------------------------- the route in a text

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
STOP_WORDS = set("a an the to of and then i you we it its in on at by for from with into onto up down your my "
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
        elif word not in STOP_WORDS:
            words.append(word)
    return events, turns, words


def route_parts(text, vocabulary):
    """(turns, marks) of a route text. vocabulary=True: marks are the landmark / scenery events of the closed
    vocabulary and only vocabulary turns count (our world's rows); False: marks are the free content words
    other than motion words, turns include free direction words (the authors' free-text rows)."""
    events, turns, words = parse_route(text)
    if vocabulary:
        return [e for e in events if e in EVENT_TURNS], [e for e in events if e.startswith(("pass ", "see "))]
    motion = {"turn", "go", "walk", "straight", "continue", "move", "head", "proceed", "keep"}
    return turns, [w for w in words if w not in motion]


# ----------------------------------------------------------------------------- what a row asks


def question_of(row):
    """The row's question in lower case, without its options."""
    q = str(row.get("original_question") or row.get("problem") or "")
    i = q.find("Options:")
    return (q[:i] if i >= 0 else q).lower()


def task_of(row):
    """row["task"] (our rows, the official release's), else from the authors' wording. A row without a gold letter
    asks for a route, whatever words its question uses ("describe the route, with its directions"); a multiple-choice
    row asks what the first of "direction", "landmark", "action" in its question names; else "other"."""
    if row.get("task"):
        return row["task"]
    if row_gold(row) is None:
        return "route"
    q = question_of(row)
    named = sorted((q.find(word), word) for word in ("direction", "landmark", "action") if word in q)
    return named[0][1] if named else "other"


# where the asked walk goes: "to (the) starting point", "back to the start", "reach your destination", ...; a
# bare "start" counts only with an article ("you need to start walking" names no goal)
_GOAL_RE = re.compile(r"\b(?:to|reach|reaching)\s+(?:(the|your)\s+)?(starting\s+point|start(?:\s+point)?|destination"
                      r"|end\s*point|goal)\b")


def is_reverse(row):
    """row["reverse"] (our rows, the official release's), else True when the last goal the question names is the
    start ("get to starting point", "return to the starting point", "back to the start"), False when it is the
    destination: a forward question that mentions the start ("from the starting point to your destination") is
    forward."""
    if "reverse" in row:
        return bool(row["reverse"])
    goals = [m.group(2) for m in _GOAL_RE.finditer(question_of(row)) if m.group(1) or m.group(2) != "start"]
    return bool(goals) and goals[-1].startswith("start")


def reference_of(row):
    """(reference text, vocabulary?) of a route row: our events of the asked direction joined as the CoT
    joins them, else the authors' reference description in original_answer."""
    if isinstance(row.get("events"), dict):
        return ", then ".join(row["events"]["reverse" if is_reverse(row) else "forward"]), True
    return str(row.get("original_answer", "")), False
