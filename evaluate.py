"""Score a model on an Ego-ST-format bench: accuracy per task, forward vs reverse (95% Wilson CI), and the route rubric.

    python evaluate.py --bench B.jsonl --predictions P.jsonl            # predictions of any model
    python evaluate.py --bench B.jsonl --model DIR [--predictions P.jsonl]  # ours makes them first (greedy)
    python evaluate.py                                                  # tiny model on the synthetic world

Predictions JSONL, one object a line: {"index": i, "prediction": "<think>...</think> <answer>B</answer>"} with i the
0-based position of the row in the bench (blank lines not counted), or bench rows carrying a "prediction" key (then
the line's position is its index). A bench row with no prediction counts as wrong. With --model, each prediction is
appended and flushed as soon as it is made, so a run that is stopped resumes where it stopped (indices already in the
file are skipped; a half-written last line is dropped).
"""
import json
import os
import sys
from dataclasses import asdict, dataclass

from st_r1 import cli, scoring


@dataclass
class Options:
    """Score (and with --model, first make) predictions on an Ego-ST-format bench."""
    bench: str = ""               # Ego-ST JSONL, or a folder (its test.jsonl); empty: the synthetic world's test split
    world: str = "data/world"     # synthetic bench folder used when no --bench is given
    predictions: str = ""         # JSONL of predictions; default with --model: {out without .json}.predictions.jsonl
    out: str = "scores.json"      # all scores as JSON (groups and per-row results)
    model: str = ""               # HF folder of a Qwen2-VL / Qwen2.5-VL model: make predictions with ours first
    video_root: str = ""          # relative video paths resolve here; default: the bench file's folder
    batch_size: int = 8
    max_new_tokens: int = 256
    num_frames: int = 8
    limit: int = 0                # > 0: only the first N bench rows
    judge_url: str = ""           # OpenAI-compatible endpoint: also ask it the route rubric
    judge_model: str = "judge"
    judge_timeout: float = 60.0   # seconds per judge request; its API key, if any, is read from $JUDGE_API_KEY
    progress: bool = True


def read_predictions(path, n_rows, repair_tail=False):
    """{index: text} from a predictions JSONL. A bad line is an error naming path:line, except a broken LAST line
    when repair_tail (an interrupted writer): it is cut off the file so appending can resume."""
    out = {}
    if not os.path.exists(path):
        return out
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    pos, position = 0, 0
    for lineno, raw in enumerate(lines, 1):
        last = lineno == len(lines)
        if raw.strip():
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict) or not isinstance(obj.get("prediction"), str):
                    raise ValueError('expected an object with a string "prediction"')
                i = obj.get("index", position)
                if not isinstance(i, int) or not 0 <= i < n_rows:
                    raise ValueError(f"index {i!r} is not a bench position (bench has {n_rows} rows)")
                if last and not data.endswith(b"\n") and repair_tail:
                    raise ValueError("unterminated last line")  # written in part: redo it
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                if last and repair_tail:
                    print(f"{path}:{lineno}: dropping the half-written last line", file=sys.stderr)
                    with open(path, "r+b") as f:
                        f.truncate(pos)
                    break
                raise ValueError(f"{path}:{lineno}: {e}") from None
            out[i] = obj["prediction"]
            position += 1
        pos += len(raw) + 1
    return out


def predict(model, tok, rows, enc, batch_size=8, max_new_tokens=256, on_prediction=None, progress=False):
    """Greedy replies of our model for rows (list of str, aligned). on_prediction(i, text) is called for each as
    soon as its batch is decoded. A row whose video cannot be read gets "" (wrong) and a message."""
    import torch
    from tqdm import tqdm

    from st_r1 import chat, data
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
            except VideoError as e:
                print(f"row {i}: {e}; counted as wrong", file=sys.stderr)
                out[i] = ""
                if on_prediction:
                    on_prediction(i, "")
        if encoded:
            batch = {k: v.to(device) for k, v in data.collate_prompts(encoded, pad).items()}
            with torch.no_grad():
                gen = generate(model, **batch, max_new_tokens=max_new_tokens, eos_token_ids=eos, pad_token_id=pad)
            for i, toks, keep in zip(idx, gen.tokens.tolist(), gen.mask.tolist()):
                # keep special tags like <think>: they may be special tokens of the tokenizer
                ids = [t for t, k in zip(toks, keep) if k and t not in eos]
                out[i] = tok.decode(ids, skip_special_tokens=False)
                if on_prediction:
                    on_prediction(i, out[i])
        bar.update(min(start + batch_size, len(rows)) - start)
    bar.close()
    return out


def load_ours(opt):
    """(model, tokenizer, prompt encoder) of our VideoLM from the --model folder."""
    from st_r1 import data
    from st_r1.model import VideoLM

    tok = data.load_tokenizer(opt.model)
    model = VideoLM.from_pretrained(opt.model).eval()
    enc = data.PromptEncoder(tok, video_root=opt.video_root or os.path.dirname(os.path.abspath(opt.bench)),
                             num_frames=opt.num_frames)
    return model, tok, enc


def make_predictions(opt, rows, path):
    """Run our model on the rows not yet in `path`, appending each prediction to it (flushed)."""
    done = read_predictions(path, len(rows), repair_tail=True)
    todo = [i for i in range(len(rows)) if i not in done]
    print(f"{len(done)} predictions already in {path}, {len(todo)} to make with {opt.model}")
    if not todo:
        return
    model, tok, enc = load_ours(opt)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        def write(j, text):
            f.write(json.dumps({"index": todo[j], "prediction": text}, ensure_ascii=False) + "\n")
            f.flush()
        predict(model, tok, [rows[i] for i in todo], enc, opt.batch_size, opt.max_new_tokens, write, opt.progress)


def default_bench(opt):
    """The embedded default: the synthetic world's test split and the tiny random model (made if missing)."""
    from st_r1 import data
    bench = os.path.join(opt.world, "test.jsonl")
    if not os.path.exists(bench):
        from st_r1.world import make_bench
        print(f"no --bench given: generating the synthetic bench in {opt.world}")
        make_bench(opt.world, seed=0, split="both")
    if not opt.model and not opt.predictions:
        opt.model = data.DEFAULT_MODEL
        if not os.path.exists(os.path.join(opt.model, "config.json")):
            from st_r1.tiny import write_tiny_model
            print(f"no --model given: writing the tiny random Qwen2.5-VL to {opt.model}")
            write_tiny_model(opt.model)
    return bench


def main(opt):
    from st_r1 import data
    if not opt.bench:
        opt.bench = default_bench(opt)
    elif os.path.isdir(opt.bench):  # a bench folder, as train_sft.py / train_grpo.py take it: score its test split
        opt.bench = os.path.join(opt.bench, "test.jsonl")
    if not opt.model and not opt.predictions:
        sys.exit("evaluate.py: give --predictions P.jsonl (any model's replies) or --model DIR (ours)")
    rows = data.load_rows(opt.bench)
    if opt.limit > 0:
        rows = rows[:opt.limit]
    path = opt.predictions or os.path.splitext(opt.out)[0] + ".predictions.jsonl"
    if opt.model:
        make_predictions(opt, rows, path)
    preds = read_predictions(path, len(rows))
    if not preds and not os.path.exists(path):
        sys.exit(f"evaluate.py: {path} does not exist")
    predictions = [preds.get(i) for i in range(len(rows))]
    scores = scoring.score_rows(rows, predictions, judge_url=opt.judge_url or None, judge_model=opt.judge_model,
                                judge_timeout=opt.judge_timeout, judge_key=os.environ.get("JUDGE_API_KEY"))
    scores["options"] = asdict(opt)
    scores["bench"], scores["predictions"] = opt.bench, path
    if scores["missing"]:
        print(f"warning: {scores['missing']} of {len(rows)} bench rows have no prediction in {path}; counted wrong")
    print(scoring.markdown_table(scores))
    os.makedirs(os.path.dirname(os.path.abspath(opt.out)), exist_ok=True)
    tmp = opt.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(scores, f, indent=1, ensure_ascii=False)
    os.replace(tmp, opt.out)
    print(f"scores written to {opt.out}")
    return scores


if __name__ == "__main__":
    main(cli.parse(Options))
