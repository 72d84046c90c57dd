"""Score a model on Ego-ST Bench: accuracy per task, forward vs reverse (95% Wilson CI), and the route rubric.

    python evaluate.py --bench B.jsonl --predictions P.jsonl            # predictions of any model
    python evaluate.py --bench B.jsonl --model DIR [--predictions P.jsonl]  # ours makes them first (greedy)
    python evaluate.py --bench Ego-ST-bench/ --video-root Ego-ST-video/ --predictions OUT.json --protocol paper
    python evaluate.py                                                  # tiny model on the synthetic world

--bench is our JSONL (or a folder holding test.jsonl), or the official release: a PartK_{forward,reverse}_{kind}.json
file or a folder of them (st_r1/official.py; --parts, --kinds, --gold-field select and read it).

Predictions JSONL, one object a line: {"index": i, "prediction": "<think>...</think> <answer>B</answer>"} with i the
0-based position of the row in the bench (blank lines not counted), or {"id": "Part1_forward_mcq.json:12",
"prediction": ...} (the official release: file name and sample key), or bench rows carrying a "prediction" key (then
the line's position is its index; "index" or "id" on every line or on none). For the official release, the authors'
output layout is read too: a .json file (or a folder of them) of the bench's samples with "predict" added. A bench
row with no prediction counts as wrong; two predictions for one row are an error. With --model, each prediction is
appended and flushed as soon as it is made, so a run that is stopped resumes where it stopped (rows already in the
file are skipped; a last line that does not parse, a write cut short, is removed, and said so). A row whose video
cannot be read is written as {"index": i, "error": why}: wrong now, retried by the next run. PATH.meta.json records
what made the file (model and weights hash, bench hash, frames, pixels, max new tokens, prompt); --model refuses to
add to a file made otherwise.

--protocol strict (ours, default) or paper (the authors' answer parsing and route rubric): the report shows both
accuracies for the same predictions either way; scoring.py says what each rule is.
"""
import json
import os
import sys
from dataclasses import asdict, dataclass

from st_r1 import cli, scoring
from st_r1.predictions import predict, read_predictions
from st_r1.runs import files_sha256


@dataclass
class Options:
    """Score (and with --model, first make) predictions on an Ego-ST-format bench."""
    bench: str = ""               # Ego-ST JSONL, a folder (its test.jsonl), or the official release (a PartK_*.json
    #                               file or a folder of them); empty: the synthetic world's test split
    parts: str = ""               # official release: only these parts, e.g. "1,2"
    kinds: str = ""               # official release: only these kinds (mcq, mcq_landmark, mcq_action, qa) or tasks
    gold_field: str = ""          # official release: the MCQ field holding the gold letter; default: the usual names
    protocol: str = "strict"      # strict (ours) or paper (the authors' answer rule and route rubric); both shown
    world: str = "data/world"     # synthetic bench folder used when no --bench is given
    predictions: str = ""         # JSONL of predictions, or the authors' .json output; default with --model:
    #                               {out without .json}.predictions.jsonl
    out: str = "scores.json"      # all scores as JSON (groups and per-row results)
    model: str = ""               # HF folder of a Qwen2-VL / 2.5-VL / 3-VL model: make predictions with ours first
    video_root: str = ""          # relative video paths resolve here; default: the bench file's folder (or the folder)
    batch_size: int = 8
    max_new_tokens: int = 0       # 0: 512, the paper's inference; 256 for the tiny models (their CoTs are shorter)
    num_frames: int = 8
    fps: float = 0.0              # > 0: the authors' sampler: frames at this rate first, then --num-frames of them
    min_pixels: int = 56 * 56     # per frame, as train_sft.py / train_grpo.py; the authors evaluate at max 151200
    max_pixels: int = 128 * 28 * 28
    limit: int = 0                # > 0: only the first N bench rows
    judge_url: str = ""           # OpenAI-compatible endpoint: also ask it the route rubric
    judge_model: str = "judge"
    judge_timeout: float = 60.0   # seconds per judge request; its API key, if any, is read from $JUDGE_API_KEY
    progress: bool = True
    max_seq_len: int = 0          # most tokens of a prompt (video included); 0: the model's max_position_embeddings
    force_new: bool = False       # with --model: discard the predictions file (made by another set-up) and start over
    precision: str = ""           # fp32 | bf16-mixed | bf16 (st_r1/precision.py); empty: bf16-mixed on CUDA, else fp32


def load_ours(opt):
    """(model, tokenizer, prompt encoder) of our VideoLM from the --model folder."""
    import torch

    from st_r1 import data, precision
    from st_r1.model import VideoLM

    tok = data.load_tokenizer(opt.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prec = precision.policy(opt.precision, device)
    model = precision.apply(VideoLM.from_pretrained(opt.model, dtype=prec.param_dtype, device=device).eval(), prec)
    enc = data.PromptEncoder(tok, video_root=video_root(opt), num_frames=opt.num_frames, min_pixels=opt.min_pixels,
                             max_pixels=opt.max_pixels, max_len=data.context_limit(opt.model, opt.max_seq_len),
                             fps=opt.fps, merge_size=model.spatial_merge_size, family=model.model_type)
    return model, tok, enc


def video_root(opt):
    if opt.video_root:
        return opt.video_root
    return opt.bench if os.path.isdir(opt.bench) else os.path.dirname(os.path.abspath(opt.bench))


def provenance(opt, files):
    """What made a predictions file: another model, bench, video set-up or decoding makes other predictions."""
    from st_r1 import chat
    weights = sorted(f for f in os.listdir(opt.model) if f.endswith(".safetensors")) if os.path.isdir(opt.model) else []
    return dict(model=os.path.abspath(opt.model),
                weights_sha256=files_sha256([os.path.join(opt.model, f) for f in weights]),
                bench=os.path.abspath(opt.bench), bench_sha256=files_sha256(files),
                video_root=os.path.abspath(video_root(opt)), num_frames=opt.num_frames, fps=opt.fps,
                min_pixels=opt.min_pixels, max_pixels=opt.max_pixels, max_new_tokens=opt.max_new_tokens,
                max_seq_len=opt.max_seq_len,
                protocol="greedy; prompt " + file_hash_text(chat.prompt_text("{question}", 1)))


def file_hash_text(text):
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_provenance(opt, path, files):
    """A predictions file that --model appends to must have been made by the same set-up (its sidecar
    PATH.meta.json says by what); anything else is refused, so scores never mix two models' predictions."""
    meta_path, now = path + ".meta.json", provenance(opt, files)
    has_lines = os.path.exists(path) and os.path.getsize(path) > 0
    if opt.force_new and os.path.exists(path):
        print(f"--force-new: starting over, removing {path} ({os.path.getsize(path)} bytes)")
        os.remove(path)
        has_lines = False
    if has_lines:
        if not os.path.exists(meta_path):
            raise cli.UserError(f"{path} holds predictions of unknown origin (no {meta_path}): --model will not add "
                                f"to them. Score it alone (--predictions, no --model), give another --predictions "
                                f"or --out, or start over with --force-new")
        with open(meta_path, encoding="utf-8") as f:
            then = json.load(f)
        diff = [f"{k}: {then.get(k)!r} (in the file) vs {v!r} (now)" for k, v in now.items() if then.get(k) != v]
        if diff:
            raise cli.UserError(f"{path} was made by another set-up: " + "; ".join(diff) + ". Give another "
                                f"--predictions or --out, or start over with --force-new")
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(now, f, indent=1)


def make_predictions(opt, rows, path, n_bench, files, ids=None):
    """Run our model on the rows not yet in `path`, appending each prediction to it (flushed). Rows whose video
    could not be read are written as {"index", "error"} lines and retried by the next run. Official rows are named
    by "id" instead of "index"; a row with no options (skipped) is never asked."""
    check_provenance(opt, path, files)
    done = read_predictions(path, n_bench, repair_tail=True, limit=len(rows), ids=ids)
    todo = [i for i in range(len(rows)) if i not in done and not rows[i].get("skip")]
    print(f"{len(done)} predictions already in {path}, {len(todo)} to make with {opt.model}")
    if not todo:
        return
    model, tok, enc = load_ours(opt)
    if os.path.exists(path) and os.path.getsize(path):
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            unterminated = f.read(1) != b"\n"
        if unterminated:  # a whole last line without its newline: end it before appending
            print(f"{path}: added the missing newline at the end before appending", file=sys.stderr)
            with open(path, "ab") as f:
                f.write(b"\n")
    with open(path, "a", encoding="utf-8") as f:
        def write(j, text, error=None):
            rec = {"id": ids[todo[j]]} if ids else {"index": todo[j]}
            rec.update({"prediction": text} if error is None else {"error": error})
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
        predict(model, tok, [rows[i] for i in todo], enc, opt.batch_size, opt.max_new_tokens, write, opt.progress,
                source=opt.bench)


def default_bench(opt):
    """The embedded default: the synthetic world's test split and the tiny random model (made if missing)."""
    from st_r1 import data
    bench = os.path.join(opt.world, "test.jsonl")
    if not os.path.exists(bench):
        from st_r1.world import make_bench
        print(f"no --bench given: generating the synthetic bench in {opt.world}")
        make_bench(opt.world, seed=0, split="both")
    if not opt.model and not opt.predictions:
        opt.model = data.default_model()
        if not os.path.exists(os.path.join(opt.model, "config.json")):
            from st_r1.tiny import write_tiny_model
            print(f"no --model given: writing the tiny random Qwen2.5-VL to {opt.model}")
            write_tiny_model(opt.model)
    return bench


def validate(opt):
    """Refuse flag values that would crash later, naming the flag."""
    cli.check(opt.batch_size >= 1, "batch_size", f"must be >= 1, got {opt.batch_size}")
    cli.check(opt.max_new_tokens >= 0, "max_new_tokens", f"must be >= 1 (or 0: the default), got {opt.max_new_tokens}")
    cli.check(0 < opt.min_pixels <= opt.max_pixels, "min_pixels", "must be > 0 and <= --max-pixels")
    cli.check(opt.protocol in scoring.PROTOCOLS, "protocol", f"must be one of {', '.join(scoring.PROTOCOLS)}, "
              f"got {opt.protocol!r}")
    cli.check(opt.num_frames >= 1, "num_frames", f"must be >= 1, got {opt.num_frames}")
    cli.check(opt.fps >= 0, "fps", f"must be >= 0 (0: --num-frames over the whole video), got {opt.fps}")
    cli.check(opt.limit >= 0 and opt.max_seq_len >= 0, "limit", "and --max-seq-len must be >= 0")
    cli.check(opt.judge_timeout > 0, "judge_timeout", f"must be > 0, got {opt.judge_timeout}")
    cli.check(opt.precision in ("", "fp32", "bf16-mixed", "bf16"), "precision", f"must be fp32, bf16-mixed or bf16, "
              f"got {opt.precision!r}")


def default_max_new_tokens(model_dir):
    """512, the paper's inference; 256 for a model of st_r1.tiny's family (its vocabulary, trained on the synthetic
    world's text, has under 10,000 tokens; Qwen-VL's 151,000), whose chains of thought are ~230 tokens."""
    try:
        with open(os.path.join(model_dir, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return 512
    vocab = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size") or 10 ** 9
    return 256 if vocab < 10_000 else 512


def load_bench(opt):
    """(rows, files read) of --bench: the official release (st_r1/official.py), else our JSONL."""
    from st_r1 import data, official
    if not opt.bench:
        opt.bench = default_bench(opt)
    elif os.path.isfile(os.path.join(opt.bench, "test.jsonl")):  # a bench folder, as the training scripts take it
        opt.bench = os.path.join(opt.bench, "test.jsonl")
    if official.is_official(opt.bench):
        return official.load_official(opt.bench, opt.parts, opt.kinds, opt.gold_field)
    if opt.parts or opt.kinds or opt.gold_field:
        raise cli.UserError(f"--parts, --kinds and --gold-field read the official release (PartK_*.json files); "
                            f"{opt.bench} is JSONL")
    return data.load_rows(opt.bench), [opt.bench]


def load_predictions(opt, path, bench_rows, limit, errors):
    """{row index < limit: reply}: the authors' .json output layout (a file or a folder) for the official release,
    else our JSONL (rows named by "id" for the official release)."""
    from st_r1 import official
    ids = [r["id"] for r in bench_rows] if "id" in bench_rows[0] else None
    if os.path.isdir(path) or path.endswith(".json"):
        if not ids:
            raise cli.UserError(f"{path}: the authors' .json output layout is read for the official release only; "
                                f"give JSONL predictions for {opt.bench}")
        preds, unmatched = official.read_authors_predictions(path, bench_rows)
        if unmatched:
            print(f"{path}: {unmatched} predicted samples are not in the bench read (--parts / --kinds?): ignored")
        return {i: p for i, p in preds.items() if i < limit}
    return read_predictions(path, len(bench_rows), limit=limit, errors=errors, ids=ids)


def main(opt):
    from st_r1 import official
    validate(opt)
    bench_rows, files = load_bench(opt)
    if not opt.model and not opt.predictions:
        sys.exit("evaluate.py: give --predictions P.jsonl (any model's replies) or --model DIR (ours)")
    if not opt.max_new_tokens:
        opt.max_new_tokens = default_max_new_tokens(opt.model)
    ids = [r["id"] for r in bench_rows] if "id" in bench_rows[0] else None
    rows = bench_rows[:opt.limit] if opt.limit > 0 else bench_rows
    path = opt.predictions or os.path.splitext(opt.out)[0] + ".predictions.jsonl"
    if opt.model and (os.path.isdir(path) or path.endswith(".json")):
        raise cli.UserError(f"--model appends JSONL predictions; {path} is the authors' .json layout: give "
                            f"--predictions P.jsonl (or score {path} alone, without --model)")
    if opt.model:
        # the whole release's files: predictions (by id) stay valid whatever --parts / --kinds select
        whole = official.bench_files(opt.bench) if ids else files
        make_predictions(opt, rows, path, len(bench_rows), whole, ids)
    errors = {}
    if not os.path.exists(path):
        sys.exit(f"evaluate.py: {path} does not exist")
    preds = load_predictions(opt, path, bench_rows, len(rows), errors)
    predictions = [preds.get(i) for i in range(len(rows))]
    scores = scoring.score_rows(rows, predictions, protocol=opt.protocol, judge_url=opt.judge_url or None,
                                judge_model=opt.judge_model, judge_timeout=opt.judge_timeout,
                                judge_key=os.environ.get("JUDGE_API_KEY"))
    scores["options"] = asdict(opt)
    scores["bench"], scores["bench_files"], scores["predictions"] = opt.bench, files, path
    scores["unreadable"] = len(errors)  # rows whose video our model could not read: wrong, retried by a rerun
    for i, why in errors.items():
        scores["rows"][i]["error"] = why
    if scores["missing"]:
        print(f"warning: {scores['missing']} of {len(rows)} bench rows have no prediction in {path}; counted wrong"
              f" (a route row under --protocol paper: skipped)"
              + (f" ({len(errors)} of them: video unreadable, e.g. row {min(errors)}: {errors[min(errors)]}; "
                 f"a rerun with --model retries them)" if errors else ""))
    untagged = sum(p is not None and "<answer>" not in p for p in predictions)
    if untagged:  # the authors' MCQ output stores the extracted letter alone: strict cannot read it
        print(f"note: {untagged} of {len(rows)} predictions have no <answer> tags: strict scores them wrong (or 0), "
              f"paper reads the whole reply; both are shown below")
    print(scoring.markdown_table(scores))
    os.makedirs(os.path.dirname(os.path.abspath(opt.out)), exist_ok=True)
    tmp = opt.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(scores, f, indent=1, ensure_ascii=False)
    os.replace(tmp, opt.out)
    print(f"scores written to {opt.out}")
    return scores


if __name__ == "__main__":
    cli.run(main, Options)
