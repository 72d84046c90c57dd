"""Replies to bench rows: generated tokens decoded, our model's greedy predictions, predictions files read back."""
import json
import os
import sys

from st_r1 import chat, data
from st_r1.data import DataError
from st_r1.official import NAME_RE


def completion_texts(tok, gen, eos_ids):
    """Decoded completions without the end-of-turn token; special tags like <think> are kept."""
    out = []
    for row, m in zip(gen.tokens.tolist(), gen.mask.tolist()):
        ids = [t for t, keep in zip(row, m) if keep and t not in eos_ids]
        out.append(tok.decode(ids, skip_special_tokens=False))
    return out


def predict(model, tok, rows, enc, batch_size=8, max_new_tokens=256, on_prediction=None, progress=False, source="row"):
    """Greedy replies of our model for rows (list of str, aligned). on_prediction(i, text, error=None) is called for
    each as soon as its batch is decoded. A row whose video cannot be read gets None (wrong), a message, and
    on_prediction(i, None, error=why), so that a rerun retries it."""
    import torch
    from tqdm import tqdm

    from st_r1.generate import generate
    from st_r1.video import VideoError

    eos = chat.end_of_turn_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    device = next(model.parameters()).device
    out = [None] * len(rows)
    bar = tqdm(total=len(rows), desc="predict", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(rows), batch_size):
        idx, encoded = [], []
        for i in range(start, min(start + batch_size, len(rows))):
            try:
                encoded.append(enc.encode(rows[i]))
                idx.append(i)
            except (VideoError, data.TooLong) as e:
                where = rows[i].get("id") or f"{source}:{rows[i].get('_line', i + 1)}"
                print(f"{where}: {e}; counted as wrong", file=sys.stderr)
                if on_prediction:
                    on_prediction(i, None, error=str(e))
        if encoded:
            batch = {k: v.to(device) for k, v in data.collate_prompts(encoded, pad).items()}
            with torch.no_grad():
                gen = generate(model, **batch, max_new_tokens=max_new_tokens, eos_token_ids=eos, pad_token_id=pad)
            for i, text in zip(idx, completion_texts(tok, gen, eos)):
                out[i] = text
                if on_prediction:
                    on_prediction(i, out[i])
        bar.update(min(start + batch_size, len(rows)) - start)
    bar.close()
    return out


KEYING = {"index": 'an "index"', "id": 'an "id"', "position": 'neither "index" nor "id"'}


def read_predictions(path, n_rows, repair_tail=False, limit=None, errors=None, ids=None):
    """{index: text} from a predictions JSONL; indices >= limit (--limit) are ignored. A line names its row by
    "index", by "id" (one of `ids`, the official release's "<file name>:<sample key>", which stays right whatever
    --parts / --kinds keep), or by its position. Lines {"index": i, "error": why} (a row our model could not read)
    are not predictions: they go to `errors` and a rerun retries them. A bad line is a DataError naming path:line.
    Only a LAST line that does not parse, with repair_tail, is taken for an interrupted write of ours: it is cut off
    the file, and the cut is reported."""
    out, seen, index_of = {}, {}, {x: i for i, x in enumerate(ids or ())}
    read = {x.partition(":")[0] for x in index_of}
    if not os.path.exists(path):
        return out
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    pos, position, keyed = 0, 0, None
    for lineno, raw in enumerate(lines, 1):
        last = lineno == len(lines)
        if raw.strip():
            try:
                obj = json.loads(raw)
            except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                if last and repair_tail:
                    print(f"{path}:{lineno}: the last line does not parse (an interrupted write): removed it from "
                          f"the file to redo that prediction", file=sys.stderr)
                    with open(path, "r+b") as f:
                        f.truncate(pos)
                    break
                raise DataError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(obj, dict) or not (isinstance(obj.get("prediction"), str)
                                                 or isinstance(obj.get("error"), str)):
                raise DataError(f'{path}:{lineno}: expected an object with a string "prediction" (or "error")')
            mode = "id" if "id" in obj else "index" if "index" in obj else "position"
            keyed = keyed or mode
            if keyed != mode:  # a positional line and a keyed one could name the same row
                raise DataError(f"{path}:{lineno}: some lines have {KEYING[keyed]} and this one has {KEYING[mode]}; "
                                f"name rows the same way on every line")
            if mode == "id":
                if obj["id"] not in index_of:
                    file = str(obj["id"]).partition(":")[0]
                    if ids and NAME_RE.fullmatch(file) and file not in read:  # a file --parts / --kinds left out
                        position += 1
                        continue
                    raise DataError(f"{path}:{lineno}: id {obj['id']!r} is not a sample of the bench" + (
                        f" (its ids look like {ids[0]!r})" if ids else '; this bench has no ids: use "index"'))
                i, name = index_of[obj["id"]], f"id {obj['id']!r}"
            else:
                i = obj.get("index", position)
                name = f"index {i!r}"
                if type(i) is not int or not 0 <= i < n_rows:  # type(): True is not row 1
                    raise DataError(f"{path}:{lineno}: {name} is not a bench position (bench has {n_rows} rows)")
            position += 1
            if "prediction" in obj and isinstance(obj["prediction"], str):
                if i in out:
                    raise DataError(f"{path}:{lineno}: {name} already has a prediction (line {seen[i]})")
                if limit is None or i < limit:
                    out[i], seen[i] = obj["prediction"], lineno
                    if errors is not None:
                        errors.pop(i, None)
            elif errors is not None and i not in out and (limit is None or i < limit):
                errors[i] = obj["error"]
        pos += len(raw) + 1
    return out
