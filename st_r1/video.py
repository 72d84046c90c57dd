"""Video in: uniform frame sampling with PyAV, then Qwen-VL preprocessing (resize, normalise, patchify).

sample_frames decodes only what the sampled frames need: one demux pass reads every packet's
timestamp (no decoding), then for each wanted frame we seek to the key frame before it and decode
forward. Frame i is the i-th frame in presentation order, exactly as decode-everything-then-index
would number it, so it stays right for variable frame rate, B-frames and headers without a
duration or frame count.

preprocess reproduces transformers' Qwen2-VL processors (smart_resize, PIL bicubic, CLIP mean/std,
temporal-2 x 14 x 14 patches in 2 x 2 merge order) and its Qwen3-VL video processor (a pixel budget over all
frames, torch's uint8 bicubic as torchvision uses it on a CPU, mean/std 0.5, 16 x 16 patches) with torch only: no
pillow, no torchvision. Qwen3-VL prompts also carry each temporal patch's time (`patch_timestamps`).
"""

import bisect
import math
import os
from typing import NamedTuple

import av
import numpy as np
import torch
import torch.nn.functional as F

from st_r1.cli import UserError

PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # 28: height and width must be multiples of this
# defaults of transformers' Qwen2VLVideoProcessor / Qwen2VLImageProcessor
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
IMAGE_MIN_PIXELS = 56 * 56
IMAGE_MAX_PIXELS = 28 * 28 * 1280
# OpenAI CLIP statistics (Qwen-VL reuses them)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FALLBACK_FPS = 25.0  # what FFmpeg assumes for a raw stream that carries no rate at all
QWEN3_PATCH_SIZE = 16
QWEN3_MEAN = QWEN3_STD = (0.5, 0.5, 0.5)  # transformers' IMAGENET_STANDARD_MEAN / _STD


class VideoError(UserError):
    """A file that cannot give frames: missing, not a video, undecodable, zero-size, an extreme aspect ratio."""


# ----------------------------------------------------------------------------- decoding

def _open(path):
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such file")
    try:
        container = av.open(path)
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise VideoError(f"{path}: not a readable video ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: has no video stream")
    stream = container.streams.video[0]
    if not stream.codec_context.width or not stream.codec_context.height:
        container.close()
        raise VideoError(f"{path}: video stream has zero size "
                         f"({stream.codec_context.width}x{stream.codec_context.height})")
    return container, stream


def _index(container, stream):
    """One demux pass (no decoding): presentation timestamps of all frames, and those of key frames.
    Returns (None, None) when any packet lacks a timestamp (e.g. a raw .h264 stream)."""
    pts, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet at end of stream
            continue
        if packet.pts is None:
            return None, None
        pts.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    # packets come in decode order; with B-frames that differs from presentation order
    return sorted(set(pts)), sorted(set(keys))


def uniform_indices(total, num_frames):
    """Indices of num_frames frames spread evenly over [0, total-1], as qwen-vl-utils picks them
    (linspace, rounded). With fewer frames than asked, every frame once."""
    if total <= num_frames:
        return list(range(total))
    return np.linspace(0, total - 1, num_frames).round().astype(np.int64).tolist()


def fps_indices(total, video_fps, fps, num_frames):
    """The Ego-ST authors' sampler: frames at `fps` first, by qwen-vl-utils' rule (an even count, 4 to 768, at
    most every frame), then num_frames of those spread evenly (their torch.linspace(...).long(): truncated)."""
    n = min(max(total / video_fps * fps, 4), min(768, total) // 2 * 2, total)
    n = max(int(n) // 2 * 2, 1)
    first = np.linspace(0, total - 1, n).round().astype(np.int64)
    if n <= num_frames:
        return first.tolist()
    return first[np.linspace(0, n - 1, num_frames).astype(np.int64)].tolist()


def _rgb(frame):
    return frame.to_ndarray(format="rgb24")


def _decode_seeking(container, stream, targets, keys):
    """Decode the frames whose pts are in `targets` (sorted, unique) by seeking to the key frame
    before each one and decoding forward; targets inside the GOP we are already in reuse the
    decoder position instead of seeking again."""
    out = {}
    frames, last = None, None  # decoder generator and the last frame it gave
    for t in targets:
        if last is not None and last.pts == t:
            out[t] = _rgb(last)
            continue
        k = max(bisect.bisect_right(keys, t) - 1, 0)
        # seek when we are not yet in t's GOP (or already past t); otherwise decode on
        if frames is None or last is None or last.pts < keys[k] or last.pts > t:
            while True:
                container.seek(keys[k] if keys else t, stream=stream, backward=True)
                frames = container.decode(stream)
                last = next(frames, None)
                # a container that seeks past t (rare index quirks): step one key frame back
                if last is None or last.pts is None or last.pts <= t or k == 0:
                    break
                k -= 1
        while last is not None and last.pts is not None and last.pts < t:
            nxt = next(frames, None)
            if nxt is None:  # stream ends early (truncated file): keep the last decodable frame
                break
            last = nxt
        if last is None:
            break
        out[t] = _rgb(last)
    return out


def _decode_sequential(path, num_frames):
    """Fallback for streams without timestamps (raw .h264 and the like): their packets do not map
    one-to-one to frames, so count frames by decoding once, then decode again keeping only the
    wanted ones. Twice the decode time, but memory stays at num_frames frames."""
    container, stream = _open(path)
    with container:
        total = sum(1 for _ in container.decode(stream))
    if total == 0:
        raise VideoError(f"{path}: no decodable frames")
    wanted = uniform_indices(total, num_frames)
    keep = {}
    container, stream = _open(path)
    with container:
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                keep[i] = _rgb(frame)
            if i >= wanted[-1]:
                break
        rate = float(stream.average_rate or stream.guessed_rate or FALLBACK_FPS)
    return [keep[i] for i in wanted], total / rate, [i / rate for i in wanted]


def _pad_time(frames):
    # T must be a multiple of the temporal patch size: repeat the last frame, as Qwen's processor does
    while len(frames) % TEMPORAL_PATCH_SIZE:
        frames.append(frames[-1])
    return frames


def _sample(path, num_frames, fps=0.0):
    """frames (T, H, W, 3) uint8, the video's duration in seconds and each frame's time (seconds after the first
    frame, from its presentation timestamp). fps > 0: the authors' sampler (fps_indices) instead of num_frames
    spread over every frame; streams without timestamps ignore it."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    path = os.fspath(path)
    container, stream = _open(path)
    try:
        # slice threads, not frame threads: frame threading must refill its pipeline after every
        # seek (measured 0.81 s vs 0.56 s for 16 frames of a 2-minute 720p video)
        stream.thread_type = "SLICE"
        try:
            pts, keys = _index(container, stream)
            if pts is None:
                frames, duration, times = _decode_sequential(path, num_frames)
            else:
                if not pts:
                    raise VideoError(f"{path}: video stream has no frames")
                keys = keys or pts[:1]  # no key-frame flags: always decode from the start
                rate = float(stream.average_rate or stream.guessed_rate or FALLBACK_FPS)
                pick = fps_indices(len(pts), rate, fps, num_frames) if fps > 0 else uniform_indices(len(pts), num_frames)
                targets = [pts[i] for i in pick]
                decoded = _decode_seeking(container, stream, sorted(set(targets)), keys)
                if not decoded:
                    raise VideoError(f"{path}: no decodable frames")
                # a target the decoder never reached (truncated tail) takes the nearest earlier frame
                have = sorted(decoded)
                frames = [decoded[have[max(bisect.bisect_right(have, t) - 1, 0)]] for t in targets]
                times = [float((t - pts[0]) * stream.time_base) for t in targets]  # exact: time_base is a Fraction
                step = np.median(np.diff(pts)) if len(pts) > 1 else 0
                duration = float((pts[-1] - pts[0] + step) * stream.time_base) if step else 0.0
                if duration <= 0:
                    duration = len(pts) / float(stream.average_rate or stream.guessed_rate or FALLBACK_FPS)
        except av.error.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed ({e})") from e
    finally:
        container.close()
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoError(f"{path}: frame size changes inside the video {sorted(shapes)}")
    return np.stack(_pad_time(frames)), duration, _pad_time(times)


def sample_frames(path, num_frames):
    """num_frames frames spread uniformly over the whole video -> uint8 (T, H, W, 3).
    T = num_frames (or every frame if the video is shorter) rounded up to a multiple of 2."""
    return _sample(path, num_frames)[0]


def patch_timestamps(times):
    """Qwen3-VL's time of each temporal patch: the mean of its first and last frame's times (seconds), as
    transformers' Qwen3VLProcessor computes them (an odd frame count repeats the last frame)."""
    times = _pad_time(list(times))
    k = TEMPORAL_PATCH_SIZE
    return [(times[i] + times[i + k - 1]) / 2 for i in range(0, len(times), k)]


# ----------------------------------------------------------------------------- preprocessing

def smart_resize(height, width, factor=FACTOR, min_pixels=IMAGE_MIN_PIXELS, max_pixels=IMAGE_MAX_PIXELS):
    """Qwen-VL target size: both sides multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as the rounding allows."""
    if min(height, width) <= 0:
        raise ValueError(f"image has zero size {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} is over 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:  # shrink both sides by the same beta, round down
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:  # grow both sides by the same beta, round up
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def smart_resize_video(num_frames, height, width, factor=QWEN3_PATCH_SIZE * MERGE_SIZE, min_pixels=VIDEO_MIN_PIXELS,
                       max_pixels=VIDEO_MAX_PIXELS):
    """Qwen3-VL's video target size: as smart_resize, but the budget bounds the pixels of all the frames together
    (num_frames rounded to the temporal patch), and a side shorter than `factor` is first scaled up to it."""
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} is over 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    t = round(num_frames / TEMPORAL_PATCH_SIZE) * TEMPORAL_PATCH_SIZE
    if t * h * w > max_pixels:
        beta = math.sqrt(num_frames * height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif t * h * w < min_pixels:
        beta = math.sqrt(min_pixels / (num_frames * height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def resize_bicubic(x, height, width):
    """PIL-style bicubic resize of uint8-valued images (N, C, H, W) -> float64, integer-valued.

    PIL resamples separably with the a=-0.5 cubic, widening the kernel by the scale when shrinking
    (antialias), and rounds + clips to uint8 after EACH pass. torch's antialiased bicubic uses the
    same kernel; doing the passes one at a time with rounding in between reproduces PIL's clipping
    of overshoot (one joint 2-D pass differs by up to ~20 levels on sharp edges). float64 keeps our
    sums close to PIL's 22-bit fixed point. Measured against Qwen2VLImageProcessorPil (Pillow 13):
    smooth/natural frames differ by <= 2 uint8 levels (0.030 after normalisation) on < 2% of
    values; random noise by 1 level, except where Pillow (>= 12.3) chooses the vertical pass first
    (seen when one side shrinks and the other grows), where clipped overshoot of noise moves by up
    to ~16 levels. torch's plain bicubic (antialias=False, a=-0.75) differs by up to 165 levels.
    """
    x = x.to(torch.float64)
    if x.shape[-1] != width:  # horizontal pass first, as PIL's ImagingResampleInner
        x = F.interpolate(x, size=(x.shape[-2], width), mode="bicubic", antialias=True)
        x = x.round_().clamp_(0, 255)
    if x.shape[-2] != height:
        x = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True)
        x = x.round_().clamp_(0, 255)
    return x


def patchify(x, p=PATCH_SIZE):
    """(T, C, H, W) normalised frames, T even -> (T/2 * H/p * W/p, C*2*p*p) rows in Qwen-VL order (p = 14, or 16
    for Qwen3-VL): rows run over (t, h-block, w-block, 2x2 merge window row, col) so every 4 consecutive rows are
    the patches the merger fuses into one token; a row is laid out (C, t, p, p)."""
    T, C, H, W = x.shape
    gt, gh, gw, m = T // TEMPORAL_PATCH_SIZE, H // p, W // p, MERGE_SIZE
    x = x.reshape(gt, TEMPORAL_PATCH_SIZE, C, gh // m, m, p, gw // m, m, p)
    # axes: 0 gt, 1 tp, 2 C, 3 bh, 4 mh, 5 ph, 6 bw, 7 mw, 8 pw
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    rows = x.reshape(gt * gh * gw, C * TEMPORAL_PATCH_SIZE * p * p)
    return rows, torch.tensor([[gt, gh, gw]], dtype=torch.long)


def preprocess(frames, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS, family="qwen2_5_vl", image=False):
    """uint8 frames (T, H, W, 3) -> (pixel_values_videos (N, 3*2*P*P) float32, video_grid_thw (1, 3)).

    The pixel budget is per frame for every family. Qwen3-VL's video processor bounds all frames together: this
    equals its `size={"shortest_edge": min_pixels * T, "longest_edge": max_pixels * T}`."""
    frames = torch.as_tensor(np.asarray(frames))
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != torch.uint8 or frames.shape[0] == 0:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
    qwen3 = family == "qwen3_vl"
    T, H, W, _ = frames.shape
    if qwen3 and not image:
        h, w = smart_resize_video(T, H, W, QWEN3_PATCH_SIZE * MERGE_SIZE, min_pixels * T, max_pixels * T)
    else:
        h, w = smart_resize(H, W, (QWEN3_PATCH_SIZE if qwen3 else PATCH_SIZE) * MERGE_SIZE, min_pixels, max_pixels)
    if T % TEMPORAL_PATCH_SIZE:
        frames = torch.cat([frames, frames[-1:]])
        T += 1
    mean = torch.tensor(QWEN3_MEAN if qwen3 else CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(QWEN3_STD if qwen3 else CLIP_STD).view(3, 1, 1)
    out = torch.empty(T, 3, h, w)
    for i in range(T):  # one frame at a time: float64 copies of all frames would be large
        x = frames[i].permute(2, 0, 1)[None]
        if (h, w) == (H, W):
            x = x[0].float()
        elif qwen3:  # torchvision's resize of a uint8 tensor on a CPU: torch's own uint8 bicubic kernel
            x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True)[0].float()
        else:
            x = resize_bicubic(x, h, w)[0].float()
        out[i] = (x * (1 / 255) - mean) / std
    return patchify(out, QWEN3_PATCH_SIZE if qwen3 else PATCH_SIZE)


def preprocess_image(image, min_pixels=IMAGE_MIN_PIXELS, max_pixels=IMAGE_MAX_PIXELS, family="qwen2_5_vl"):
    """uint8 image (H, W, 3) -> (pixel_values, image_grid_thw): an image is a 2-frame video of itself."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"expected a uint8 image (H, W, 3), got shape {image.shape}")
    return preprocess(image[None], min_pixels, max_pixels, family, image=True)


# ----------------------------------------------------------------------------- loading

class Clip(NamedTuple):
    pixel_values: torch.Tensor  # (N, 3*2*P*P) float32
    grid: torch.Tensor          # video_grid_thw (1, 3)
    second_per_grid: float      # seconds one temporal patch spans = 2 / sampled fps (Qwen2.5-VL's M-RoPE)
    timestamps: list            # seconds of each temporal patch (Qwen3-VL's prompt text)


def load_video(path, num_frames=8, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS, fps=0.0,
               family="qwen2_5_vl"):
    """-> Clip(pixel_values_videos, video_grid_thw, second_per_grid, timestamps), preprocessed for `family`."""
    frames, duration, times = _sample(path, num_frames, fps)
    try:
        pixel_values, grid = preprocess(frames, min_pixels, max_pixels, family)
    except ValueError as e:  # e.g. an aspect ratio over 200: a bad video like any other, not the end of a run
        raise VideoError(f"{path}: {e}") from e
    fps = len(frames) / duration if duration > 0 else FALLBACK_FPS
    return Clip(pixel_values, grid, TEMPORAL_PATCH_SIZE / fps, patch_timestamps(times))


def load_videos(paths, num_frames=8, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEO_MAX_PIXELS, skip_bad=False):
    """load_video over many paths -> (results, errors). results[i] is load_video's tuple, or None
    for a bad video when skip_bad; errors lists (i, path, message) of those. Without skip_bad the
    first bad video raises its VideoError."""
    results, errors = [], []
    for i, path in enumerate(paths):
        try:
            results.append(load_video(path, num_frames, min_pixels, max_pixels))
        except VideoError as e:
            if not skip_bad:
                raise
            results.append(None)
            errors.append((i, os.fspath(path), str(e)))
    return results, errors
