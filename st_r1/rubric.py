"""The route rubrics: how close a route description is to the true route (direction, landmark, semantic, each 0-5).

Ours (rubric) is the paper's three-part rubric made deterministic and order-aware; paper_rubric is a deterministic
stand-in for the paper's judge, with its asymmetries. The route reward of GRPO (rewards.py) and the bench's route
scores (scoring.py) are both this one rubric.
"""
import re
from collections import Counter

from st_r1.answers import STOP_WORDS, extract_answer, reference_of, route_parts


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


def content_words(text):
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOP_WORDS]


def bag_f1(a, b):
    """F1 of the multiset overlap of two word lists (SQuAD's token F1); 1.0 when both are empty."""
    if not a and not b:
        return 1.0
    common = sum((Counter(a) & Counter(b)).values())
    if common == 0:
        return 0.0
    p, r = common / len(a), common / len(b)
    return 2 * p * r / (p + r)


def rubric(description, reference, vocabulary):
    """The paper's three-part rubric, made deterministic (each 0-5, score = their mean):
      direction = 5 * S(turns),  landmark = 5 * S(landmarks and scenery changes),
      semantic  = 5 * F1(content words of description vs reference),
    S = 1 - normalised Levenshtein distance on the ordered units (seq_similarity), units read by
    answers.route_parts (closed vocabulary on our rows, free words on the authors')."""
    d_turns, d_marks = route_parts(description, vocabulary)
    r_turns, r_marks = route_parts(reference, vocabulary)
    out = {"direction": 5 * seq_similarity(d_turns, r_turns),
           "landmark": 5 * seq_similarity(d_marks, r_marks),
           "semantic": 5 * bag_f1(content_words(description), content_words(reference))}
    out["score"] = (out["direction"] + out["landmark"] + out["semantic"]) / 3
    return out


def rubric_score(text, row):
    """rubric() of the reply's <answer> description against the row's reference; all 0 without one <answer>."""
    description = extract_answer(text)
    if not description:
        return {"direction": 0.0, "landmark": 0.0, "semantic": 0.0, "score": 0.0}
    reference, vocabulary = reference_of(row)
    return rubric(description, reference, vocabulary)


def paper_rubric(description, reference, vocabulary):
    """A deterministic stand-in for the paper's judge, with its asymmetries (each 0-5, score = their mean):
      direction = 5 * (1 - turns of the description absent from the reference / its turns): the judge lowers this
                  part for direction changes the reference does not have, so a description with no turn keeps 5;
      landmark  = 5 * (reference landmarks the description names / reference landmarks): missing ones cost,
                  extra ones do not;
      semantic  = 5 * F1(content words), as in rubric().
    Counted as multisets: the judge's description says nothing of order (ours, rubric(), is order-aware)."""
    d_turns, d_marks = route_parts(description, vocabulary)
    r_turns, r_marks = route_parts(reference, vocabulary)
    extra = sum((Counter(d_turns) - Counter(r_turns)).values())
    missing = sum((Counter(r_marks) - Counter(d_marks)).values())
    out = {"direction": 5 * (1 - extra / len(d_turns)) if d_turns else 5.0,
           "landmark": 5 * (1 - missing / len(r_marks)) if r_marks else 5.0,
           "semantic": 5 * bag_f1(content_words(description), content_words(reference))}
    out["score"] = (out["direction"] + out["landmark"] + out["semantic"]) / 3
    return out
