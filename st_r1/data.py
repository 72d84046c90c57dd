"""Ego-ST rows (JSONL) -> model inputs: validated loading, video encoding with a small cache, batching."""
import json
import os
import random
from collections import OrderedDict

import torch

from st_r1 import chat
from st_r1.answers import row_gold
from st_r1.cli import UserError

REQUIRED = ("problem", "video")


class DataError(UserError, ValueError):
    """A malformed row; the message starts with `path:line:` so an editor can jump to it."""


class TooLong(DataError):
    """A row whose tokens do not fit the model's context: skipped and counted in training, wrong in evaluation."""


MC_TASKS = ("direction", "landmark", "action")


def is_multiple_choice(row):
    """A row that says it asks for an option letter: it lists options, or its task is one of the MC tasks."""
    return bool(row.get("options")) or row.get("task") in MC_TASKS


def load_rows(path, need=()):
    """Read Ego-ST JSONL as it is released. Every key is kept; blank lines are skipped; anything else is an error
    naming path:line, found here and not steps into a run: bytes that are not UTF-8, a field the script `need`s
    (e.g. "solution", SFT's target) missing, a multiple-choice row whose gold letter cannot be read (it would be
    scored, and rewarded, as an open-ended route row)."""
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
                                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in REQUIRED + tuple(need):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise DataError(f"{path}:{lineno}: missing or empty string field {key!r}")
            if not isinstance(row.get("solution"), str) and not isinstance(row.get("original_answer"), str):
                raise DataError(f"{path}:{lineno}: needs 'solution' or 'original_answer'")
            if is_multiple_choice(row) and row_gold(row) is None:
                raise DataError(f"{path}:{lineno}: a multiple-choice row (task {row.get('task')!r}"
                                f"{', options' if row.get('options') else ''}) whose gold letter cannot be read from "
                                f"'original_answer' or the <answer> of 'solution'")
            row["_line"] = lineno
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def context_limit(model_dir, max_seq_len=0):
    """Most tokens a row may take: --max-seq-len, else the model's max_position_embeddings (0: no limit)."""
    if max_seq_len:
        return max_seq_len
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    return (cfg.get("text_config") or cfg).get("max_position_embeddings") or cfg.get("max_position_embeddings") or 0


def load_tokenizer(model_dir):
    """The tokenizer of a local model folder, never downloaded: a missing folder is named, not looked up on the Hub."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"{model_dir}: not a model folder (no config.json); give --model a local folder "
                                f"of a Hugging Face checkpoint")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)


def resolve_video(row, video_root=None):
    path = row["video"]
    return path if os.path.isabs(path) or video_root is None else os.path.join(video_root, path)


def shuffle_temporal(pixel_values_videos, video_grid_thw, rng):
    """Shuffle the temporal groups of one video's patches (rows are t-major), for the T-GRPO baseline."""
    t = int(video_grid_thw[0, 0])
    perm = list(range(t))
    while t > 1 and perm == sorted(perm):
        rng.shuffle(perm)
    return pixel_values_videos.reshape(t, -1, pixel_values_videos.shape[-1])[perm].reshape(pixel_values_videos.shape)


class PromptEncoder:
    """Row -> prompt ids and video patches. Each video is decoded once and kept (8 questions share one video)."""

    def __init__(self, tokenizer, video_root=None, num_frames=8, min_pixels=56 * 56, max_pixels=128 * 28 * 28,
                 merge_size=2, cache_size=512, max_len=0, fps=0.0, family="qwen2_5_vl"):
        self.tok, self.video_root, self.num_frames, self.max_len = tokenizer, video_root, num_frames, max_len
        self.fps = fps  # > 0: the authors' sampler (video.fps_indices)
        self.family = family  # the model_type: patch size, normalisation and (Qwen3-VL) timestamps in the prompt
        self.min_pixels, self.max_pixels, self.merge_size = min_pixels, max_pixels, merge_size
        self.cache, self.cache_size = OrderedDict(), cache_size
        self.bad = {}  # path -> its VideoError: a bad video shared by many rows is tried once

    def video(self, row):
        from st_r1.video import VideoError, load_video  # PyAV only when a video is really read
        path = resolve_video(row, self.video_root)
        if path in self.bad:
            raise VideoError(self.bad[path])
        if path not in self.cache:
            try:
                self.cache[path] = load_video(path, self.num_frames, self.min_pixels, self.max_pixels, self.fps,
                                              self.family)
            except VideoError as e:
                self.bad[path] = str(e)
                raise
            if len(self.cache) > self.cache_size:
                self.cache.popitem(last=False)
        self.cache.move_to_end(path)
        return self.cache[path]

    def encode(self, row, shuffle_seed=None):
        pixels, grid, second_per_grid, timestamps = self.video(row)
        if shuffle_seed is not None:
            pixels = shuffle_temporal(pixels, grid, random.Random(shuffle_seed))
        ids = chat.prompt_ids(self.tok, row["problem"], grid, self.merge_size, timestamps=self.timestamps(timestamps))
        self.check_length(row, len(ids))
        return dict(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=grid,
                    second_per_grid_ts=float(second_per_grid))

    def timestamps(self, times):
        """Qwen3-VL's prompt tells each temporal patch's time; the other families' do not."""
        return times if self.family == "qwen3_vl" else None

    def check_length(self, row, n):
        # a 10 MB question would otherwise take the process down (tens of GB) with no word of which row
        if self.max_len and n > self.max_len:
            raise TooLong(f"{n} tokens with the video, over the limit of {self.max_len} "
                          f"(--max-seq-len, else the model's max_position_embeddings)")

    def blank_sft(self):
        """A two-frame black video, an empty question and no answer token: the input of a zero-weight pass, which
        a rank left with no readable row makes so that every rank runs the same forwards and backwards."""
        from st_r1.video import preprocess
        side = max(56, int(self.min_pixels ** 0.5) + 28)
        pixels, grid = preprocess(torch.zeros(2, side, side, 3, dtype=torch.uint8), self.min_pixels, self.max_pixels,
                                  self.family)
        ids = chat.prompt_ids(self.tok, "", grid, self.merge_size, timestamps=self.timestamps([0.0]))
        return dict(input_ids=ids, labels=[-100] * len(ids), pixel_values_videos=pixels, video_grid_thw=grid,
                    second_per_grid_ts=1.0)

    def encode_sft(self, row):
        """Prompt + answer ids and the labels: -100 on prompt and video tokens, so only the answer is learned."""
        ex = self.encode(row)
        answer = chat.answer_ids(self.tok, row["solution"])
        self.check_length(row, len(ex["input_ids"]) + len(answer))
        ex["labels"] = [-100] * len(ex["input_ids"]) + answer
        ex["input_ids"] = ex["input_ids"] + answer
        return ex


def collate_prompts(examples, pad_token_id):
    """Left-pad ids (so every row's next token sits in the last column) and stack the videos of the batch."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long) if "labels" in examples[0] else None
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, width - n:] = torch.tensor(e["input_ids"])
        mask[i, width - n:] = 1
        if labels is not None:
            labels[i, width - n:] = torch.tensor(e["labels"])
    batch = dict(input_ids=ids, attention_mask=mask,
                 pixel_values_videos=torch.cat([e["pixel_values_videos"] for e in examples]),
                 video_grid_thw=torch.cat([e["video_grid_thw"].reshape(1, 3) for e in examples]),
                 second_per_grid_ts=torch.tensor([e["second_per_grid_ts"] for e in examples]))
    if labels is not None:
        batch["labels"] = labels
    return batch


def encode_rows(encoder, rows, fn="encode", skip_bad=True, log=print):
    """Encode rows, skipping (and counting, never silently) those whose video is missing or unreadable, or that
    are too long for the model."""
    from st_r1.video import VideoError
    good, bad = [], []
    for row in rows:
        try:
            good.append((row, getattr(encoder, fn)(row)))
        except (VideoError, TooLong) as e:
            if not skip_bad:
                raise
            bad.append((row.get("_line"), str(e)))
    if bad:
        log(f"skipped {len(bad)} of {len(rows)} rows with unreadable videos; first: line {bad[0][0]}: {bad[0][1]}")
    return good, bad


# The embedded default model: the tiny base shipped with the project (made by bench/pretrain_base.py), the stand-in
# for a pretrained Qwen-VL; without it (a partial checkout), a random model of the same family is written here.
BASE_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "tiny-base")
RANDOM_MODEL = "runs/tiny-model"


def default_model():
    return BASE_MODEL if os.path.isfile(os.path.join(BASE_MODEL, "config.json")) else RANDOM_MODEL


def resolve_defaults(cfg, is_main=True):
    """The embedded default: with no --model / --train-file, use the shipped tiny base model (or make a random one)
    and the synthetic world's bench, so that `python train_sft.py` works on a fresh machine with no download.
    Rank 0 makes them; the other ranks wait at a barrier."""
    import torch.distributed as tdist
    model_dir = cfg.model or default_model()
    train_file = cfg.train_file or os.path.join(cfg.bench, "train.jsonl")
    eval_file = cfg.eval_file or os.path.join(cfg.bench, "test.jsonl")
    if is_main:
        if not cfg.model and not os.path.exists(os.path.join(model_dir, "config.json")):
            from st_r1.tiny import write_tiny_model
            print(f"no --model given: writing the tiny random Qwen2.5-VL to {model_dir}")
            write_tiny_model(model_dir)
        if not cfg.train_file and not os.path.exists(train_file):
            from st_r1.world import make_bench
            print(f"no --train-file given: generating the synthetic bench in {cfg.bench}")
            make_bench(cfg.bench, seed=0, split="both")
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()
    for path in (model_dir, train_file):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist")
    return model_dir, train_file, (eval_file if os.path.exists(eval_file) else "")
