"""The official Ego-ST Bench read into our rows, and the authors' prediction files read back.

The release: Hugging Face openinterx/Ego-ST-bench, videos in openinterx/Ego-ST-video. The layout, as the authors' inference scripts read it: one file per part, direction and kind,
PartK_{forward,reverse}_{mcq,mcq_landmark,mcq_action,qa}.json, each ONE JSON object keyed by sample id.
  multiple choice: {"video": "x.mp4", "forward_mcq": {"question": "...", "options": ["A. ...", "B. ...", ...]}}
  route (open):    {"video": "x.mp4", "question": "...", "forward_answer": "reference description"}
(reverse_mcq / reverse_answer in the reverse files). A video lives in its part's folder (VIDEO_FOLDER). The task and
the direction are read from the file name, never guessed from the wording. No released script reads an MCQ sample's
gold letter, so its field is looked for (GOLD_FIELDS, or --gold-field) and a file without one is "no gold".
"""
import json
import os
import re
from collections import Counter

from st_r1.cli import UserError
from st_r1.data import DataError

NAME_RE = re.compile(r"Part([1-4])_(forward|reverse)_(mcq|mcq_landmark|mcq_action|qa)\.json")
KIND_TASK = {"mcq": "direction", "mcq_landmark": "landmark", "mcq_action": "action", "qa": "route"}
VIDEO_FOLDER = {1: "part1", 2: "part2", 3: "part3_clip", 4: "part4_clip"}
GOLD_FIELDS = ("answer", "gt", "gt_answer", "correct_answer", "label")
# the authors' instruction after the options (their inference scripts and the 630 training rows, typo included)
INSTRUCTION = ("\n\nInstructions: Please select the most appropriate answer from the options above and return only "
               "the option number (e.g. A, B, C or D).")
_LETTERED = re.compile(r"\s*\(?([A-Z])\s*[.):]\s*")  # "A. x", "A) x", "(A) x", "A: x"; not "A red door"


def is_official(path):
    """A --bench in the release's layout: a .json file, or a folder (without our test.jsonl)."""
    return path.endswith(".json") or (os.path.isdir(path) and not os.path.exists(os.path.join(path, "test.jsonl")))


def bench_files(path, parts="", kinds=""):
    """The release's files that --bench names (a file, or every PartK_... file of a folder), kept by --parts "1,2" and
    --kinds "mcq,qa" (a kind or its task: direction, landmark, action, route)."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if NAME_RE.fullmatch(n))
        if not files:
            raise DataError(f"{path}: no test.jsonl and no PartK_{{forward,reverse}}_{{mcq,mcq_landmark,mcq_action,qa}}"
                            f".json files (the official Ego-ST Bench layout)")
    elif not NAME_RE.fullmatch(os.path.basename(path)):
        raise DataError(f"{path}: a .json bench must keep its release name PartK_{{forward,reverse}}_{{mcq,"
                        f"mcq_landmark,mcq_action,qa}}.json (the name gives the task and direction); ours is JSONL")
    else:
        files = [path]
    want_parts = {p.strip() for p in parts.split(",") if p.strip()}
    want_kinds = {k.strip() for k in kinds.split(",") if k.strip()}
    bad = [k for k in want_kinds if k not in KIND_TASK and k not in KIND_TASK.values()]
    if bad or not want_parts <= {"1", "2", "3", "4"}:
        raise UserError(f"--parts takes 1-4 and --kinds {', '.join(KIND_TASK)} (or direction, landmark, action, "
                        f"route); got --parts {parts!r} --kinds {kinds!r}")
    keep = []
    for f in files:
        part, _, kind = NAME_RE.fullmatch(os.path.basename(f)).groups()
        if (not want_parts or part in want_parts) and (not want_kinds or {kind, KIND_TASK[kind]} & want_kinds):
            keep.append(f)
    if not keep:
        raise UserError(f"--parts {parts!r} --kinds {kinds!r} keep none of {[os.path.basename(f) for f in files]}")
    return keep


def read_json(path):
    """One JSON object from a file; a bad file is a DataError naming path:line."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 (byte {raw[e.start]:#04x})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected one JSON object keyed by sample id, got a {type(obj).__name__}")
    return obj


def signature(sample):
    """What identifies a sample whatever key or file it is stored under: video, direction, question, options. The
    authors' inference scripts write every sample back with "predict" added, keyed f"{file number}_{key}"."""
    for d in ("forward", "reverse"):
        mcq = sample.get(f"{d}_mcq")
        if isinstance(mcq, dict):
            return json.dumps([sample.get("video"), d, mcq.get("question", sample.get("question")), mcq.get("options")])
        if f"{d}_answer" in sample:
            return json.dumps([sample.get("video"), d, sample.get("question"), None])
    return None


def _text(where, obj, key):
    if not isinstance(obj.get(key), str) or not obj[key].strip():
        raise DataError(f'{where}: missing or empty string field "{key}"')
    return obj[key]


def _options(where, options):
    """{letter: text} and the prompt's option lines (as given when lettered A, B, ... in order; else lettered here)."""
    if not isinstance(options, list) or not all(isinstance(o, str) and o.strip() for o in options):
        raise DataError(f'{where}: "options" must be a list of non-empty strings')
    if len(options) > 4:  # both answer rules read the letters A-D only
        raise DataError(f"{where}: {len(options)} options; the answer rules read the letters A-D only")
    marks = [_LETTERED.match(o) for o in options]
    if all(marks):
        for i, (m, letter) in enumerate(zip(marks, "ABCD")):
            if m.group(1) != letter:
                raise DataError(f"{where}: option {i + 1} is lettered {m.group(1)}, expected {letter}")
        return {L: o[m.end():].strip() for L, o, m in zip("ABCD", options, marks)}, options
    texts = {L: o.strip() for L, o in zip("ABCD", options)}
    return texts, [f"{L}. {t}" for L, t in texts.items()]


def _letter(where, field, value, options):
    """A gold value as an option letter: "B", "B.", "(B)", "B. text", or an option's text."""
    if isinstance(value, str):
        v = value.strip()
        m = re.fullmatch(r"\(?([A-D])\)?(?:[.:)]\s*.*)?", v, re.S)
        if m and m.group(1) in options:
            return m.group(1)
        for letter, text in options.items():
            if v.lower() in (text.lower(), f"{letter}. {text}".lower()):
                return letter
    raise DataError(f'{where}: gold field "{field}" holds {value!r}, neither an option letter '
                    f'({", ".join(options)}) nor an option\'s text')


def _mcq_row(where, sample, d, fields):
    """(fields of a multiple-choice row, gold field used or None, skip reason or None)."""
    other = "reverse" if d == "forward" else "forward"
    mcq = sample.get(f"{d}_mcq")
    if not isinstance(mcq, dict):
        held = f'holds "{other}_mcq"' if f"{other}_mcq" in sample else f'has no "{d}_mcq" object'
        raise DataError(f"{where}: the file name says {d}, but the sample {held}")
    question = _text(where, mcq if "question" in mcq else sample, "question")
    if not mcq.get("options"):  # the authors' scripts skip these too ("Skipped due to empty options.")
        return {"question": question, "problem": question, "skip": "no options"}, None, "no options"
    options, lines = _options(where, mcq["options"])
    # exactly as the authors' inference concatenates it: the paper's numbers were measured with this prompt
    row = {"question": question, "options": options, "problem": question + "Options:" + "\n".join(lines) + INSTRUCTION}
    for field in fields:  # top level first, then inside the forward_mcq / reverse_mcq object
        for holder, name in ((sample, field), (mcq, f"{d}_mcq.{field}")):
            if holder.get(field) not in (None, ""):
                row["original_answer"] = _letter(where, name, holder[field], options)
                return row, name, None
    return row, None, None


def _route_row(where, sample, d):
    other = "reverse" if d == "forward" else "forward"
    if f"{d}_answer" not in sample and f"{other}_answer" in sample:
        raise DataError(f'{where}: the file name says {d}, but the sample holds "{other}_answer"')
    reference = sample.get(f"{d}_answer", "")
    if not isinstance(reference, str):
        raise DataError(f'{where}: "{d}_answer" must be a string, got {type(reference).__name__}')
    question = _text(where, sample, "question")  # the authors' route prompt is the question alone
    return {"question": question, "problem": question, "original_answer": reference}


def _gold_note(name, used, fields, d):
    n, none = sum(used.values()), used.pop(None, 0)
    if not used:
        return (f"{name}: no gold letter in its {n} samples (looked for {', '.join(fields)}, also inside {d}_mcq): "
                f"reported as no gold, never scored; name the field with --gold-field")
    found = ", ".join(f'"{k}" ({v})' for k, v in used.items())
    return f"{name}: gold letters from {found} of {n} samples" + (f"; {none} have none: no gold, not scored"
                                                                   if none else "")


def load_official(path, parts="", kinds="", gold_field="", log=print):
    """(rows, files) of the release at `path` (a file or a folder), kept by --parts / --kinds. Says, per MCQ file,
    which field held the gold letter, or that none did (those rows are "no gold": reported, never scored)."""
    files = bench_files(path, parts, kinds)
    fields = (gold_field,) if gold_field else GOLD_FIELDS
    rows = []
    for f in files:
        name = os.path.basename(f)
        part, d, kind = NAME_RE.fullmatch(name).groups()
        used, skipped = Counter(), 0
        for key, sample in read_json(f).items():
            where = f'{f}: sample "{key}"'
            if not isinstance(sample, dict):
                raise DataError(f"{where}: expected an object, got {type(sample).__name__}")
            video = _text(where, sample, "video")
            row = {"id": f"{name}:{key}", "key": key, "part": int(part), "kind": kind, "task": KIND_TASK[kind],
                   "reverse": d == "reverse", "video": os.path.join(VIDEO_FOLDER[int(part)], video),
                   "sig": signature(sample)}
            if kind == "qa":
                row.update(_route_row(where, sample, d))
            else:
                mcq, field, skip = _mcq_row(where, sample, d, fields)
                row.update(mcq, gold_field=field)
                if skip:
                    skipped += 1
                else:
                    used[field] += 1
            row["original_question"] = row["problem"]
            rows.append(row)
        if used:
            log(_gold_note(name, used, fields, d))
        if skipped:
            log(f"{name}: {skipped} samples with no options: skipped (as the authors' scripts do)")
    if not rows:
        raise DataError(f"{path}: no samples")
    return rows, files


def read_authors_predictions(path, rows):
    """({row index: reply}, samples matching no row) from the authors' output layout: a JSON file (or a folder of
    them) of samples, each the bench sample with "predict" added. A file named like a bench file is matched by key;
    a combined file (keys f"{n}_{key}", as the authors' scripts write it) by the sample's content, its key deciding
    between samples that look alike."""
    files = [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.endswith(".json")] \
        if os.path.isdir(path) else [path]
    by_id = {row["id"]: i for i, row in enumerate(rows)}
    by_sig = {}
    for i, row in enumerate(rows):
        by_sig.setdefault(row.get("sig"), []).append(i)
    out, seen, unmatched = {}, {}, 0
    for f in files:
        for key, sample in read_json(f).items():
            where = f'{f}: sample "{key}"'
            if not isinstance(sample, dict) or not isinstance(sample.get("predict"), str):
                raise DataError(f'{where}: expected the bench sample with a string "predict" (the authors\' layout)')
            i = by_id.get(f"{os.path.basename(f)}:{key}")
            if i is None:
                cands = by_sig.get(signature(sample), [])
                if len(cands) > 1:
                    cands = [j for j in cands if key == rows[j]["key"] or key.endswith("_" + rows[j]["key"])]
                if len(cands) > 1:
                    raise DataError(f"{where}: matches {len(cands)} bench samples ({rows[cands[0]]['id']}, "
                                    f"{rows[cands[1]]['id']}, ...); give one predictions file per bench file, named "
                                    f"like it")
                i = cands[0] if cands else None
            if i is None:
                unmatched += 1
                continue
            if i in out:
                raise DataError(f"{where}: a second prediction for {rows[i]['id']} (the first: {seen[i]})")
            out[i], seen[i] = sample["predict"], where
    return out, unmatched
