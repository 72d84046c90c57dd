"""Text oracle: can the tiny model answer when it is *told* the route? Separates option matching from perception.

Writes a copy of a synthetic bench whose every question starts with the true forward route in words
("You walked: I walk straight, then pass the red door, ..."); the videos are shared (a symlink). A model that
reads its prompt can then answer every question without seeing anything: accuracy at chance on this copy means
the bottleneck is not (only) the video. Train and score on it with the usual scripts (bench/RESULTS.md):

    python bench/probes/oracle.py --bench runs/main/world --out runs/oracle/world
    python train_sft.py --model runs/main/seed0/init --bench runs/oracle/world --steps 150 --out runs/oracle/sft
    python evaluate.py --model runs/oracle/sft/ckpt-00000150/model --bench runs/oracle/world --out runs/oracle/sft.json
    python bench/probes/oracle.py --out runs/oracle/world --check runs/oracle/sft.predictions.jsonl

--check reads chain-of-thought replies ("...count: <list>, which is option X") and says how often the recalled list
is the right option's text, and, when it is the text of some option, how often X is that option's letter.
--per-option rewrites the multiple-choice reference CoTs to end with a verdict per option ("A. <text>: no. B.
<text>: yes. ...") instead of "<list>, which is option B": the letter then sits beside its option's text.
"""
import json
import os
import re
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from st_r1 import cli, data  # noqa: E402


@dataclass
class Oracle:
    """Copy a synthetic bench with the true forward route written at the start of every question."""
    bench: str = "runs/main/world"  # a folder written by st_r1.world (train.jsonl, test.jsonl, videos/)
    out: str = "runs/oracle/world"
    check: str = ""                 # predictions JSONL on {out}/test.jsonl: check the recalled list and the letter
    per_option: bool = False        # reference CoTs end by judging the options one by one (an experiment)


def per_option(row):
    """The reference CoT's last sentence ("...: <list>, which is option X.") replaced by a verdict per option, so
    that the letter is written next to the option text it belongs to instead of being looked up afterwards."""
    if not row.get("options"):
        return row
    head, _, _ = row["solution"].rpartition(", which is option ")
    gold = row["original_answer"]
    verdicts = " ".join(f"{k}. {t}: {'yes' if k == gold else 'no'}." for k, t in row["options"].items())
    return dict(row, solution=f"{head}. {verdicts} Hence, the correct answer is {gold}.</think> <answer>{gold}</answer>")


def tell(row, path):
    """The row with its route told: needs the world's `events` ground truth (the authors' rows have none)."""
    if "events" not in row:
        raise data.DataError(f"{path}:{row['_line']}: no 'events' (not a synthetic-world row): the route is unknown")
    row = {k: v for k, v in row.items() if k != "_line"}
    row["problem"] = "You walked: I " + ", then ".join(row["events"]["forward"]) + ". " + row["problem"]
    return row


def check(bench, predictions):
    from st_r1.predictions import read_predictions  # the scorer's reader: same formats, same errors
    rows = data.load_rows(bench)
    if not os.path.isfile(predictions):
        raise FileNotFoundError(f"{predictions}: no such file")
    replies = read_predictions(predictions, len(rows))
    n = right_list = some_list = right_letter = copied = 0
    for i, row in enumerate(rows):
        if not row.get("options"):
            continue
        n += 1
        copied += sum(f"{k}. {t}:" in (replies.get(i) or "") for k, t in row["options"].items())  # --per-option
        m = re.search(r"count: (.*?), which is option ([ABCD])", replies.get(i) or "")
        if not m:
            continue
        said = m.group(1).strip().lower()
        right_list += said == row["options"][row["original_answer"]].lower()
        same = [letter for letter, text in row["options"].items() if text.lower() == said]
        some_list += bool(same)
        right_letter += bool(same) and m.group(2) == same[0]
    print(f"{n} multiple-choice rows; recalled list = the right option's text: {right_list} ({right_list / n:.0%}); "
          f"= some option's text: {some_list}, of which the letter named is that option's: {right_letter} "
          f"({right_letter / max(some_list, 1):.0%}; chance 25%); per-option verdicts with the option copied exactly: "
          f"{copied} of {4 * n}")


def main(o):
    if o.check:
        return check(os.path.join(o.out, "test.jsonl"), o.check)
    os.makedirs(o.out, exist_ok=True)
    videos = os.path.join(o.out, "videos")
    if not os.path.exists(videos):
        os.symlink(os.path.abspath(os.path.join(o.bench, "videos")), videos)
    for name in sorted(os.listdir(o.bench)):
        if name.endswith(".jsonl"):
            path = os.path.join(o.bench, name)
            rows = [tell(r, path) for r in data.load_rows(path)]
            rows = [per_option(r) for r in rows] if o.per_option else rows
            tmp = os.path.join(o.out, name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            os.replace(tmp, os.path.join(o.out, name))
            print(f"{len(rows)} rows -> {os.path.join(o.out, name)}")


if __name__ == "__main__":
    main(cli.parse(Oracle))
