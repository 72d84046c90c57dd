"""st_r1.video: frame sampling on videos written here with PyAV, preprocessing against transformers."""

import math
import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from st_r1 import video as V

# ----------------------------------------------------------------------------- video writers

BITS = 8  # a frame shows its own index as 8 black/white blocks, readable after lossy coding


def index_frame(i, h=64, w=96, seed=0):
    """A frame whose index survives compression: bits as 2 rows x 4 blocks, plus mild texture."""
    rng = np.random.default_rng(seed + i)
    img = rng.integers(90, 110, (h, w, 3), dtype=np.uint8)
    bh, bw = h // 2, w // 4
    for b in range(BITS):
        if (i >> b) & 1:
            r, c = divmod(b, 4)
            img[r * bh + 4:(r + 1) * bh - 4, c * bw + 4:(c + 1) * bw - 4] = 240
        else:
            r, c = divmod(b, 4)
            img[r * bh + 4:(r + 1) * bh - 4, c * bw + 4:(c + 1) * bw - 4] = 15
    return img


def read_index(img):
    h, w = img.shape[:2]
    bh, bw = h // 2, w // 4
    i = 0
    for b in range(BITS):
        r, c = divmod(b, 4)
        if img[r * bh + bh // 4:(r + 1) * bh - bh // 4, c * bw + bw // 4:(c + 1) * bw - bw // 4].mean() > 128:
            i |= 1 << b
    return i


def write_video(path, n, fps=30, h=64, w=96, codec="libx264", fmt=None, pts=None, bframes=0, gop=8):
    """n index frames; pts (in 1/1000 s) gives a variable frame rate."""
    with av.open(str(path), "w", format=fmt) as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.gop_size = gop
        if codec == "libx264":
            s.options = {"bf": str(bframes), "crf": "18", "preset": "ultrafast" if not bframes else "fast"}
        if pts is not None:
            s.time_base = Fraction(1, 1000)
            s.codec_context.time_base = Fraction(1, 1000)
        for i in range(n):
            f = av.VideoFrame.from_ndarray(index_frame(i, h, w), format="rgb24")
            if pts is not None:
                f.pts, f.time_base = pts[i], Fraction(1, 1000)
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return str(path)


def decode_all(path):
    """The reference: decode every frame in order (what the authors' pipeline does)."""
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def expected_indices(n, k):
    return np.linspace(0, n - 1, k).round().astype(int).tolist() if n > k else list(range(n))


def check_against_full_decode(path, n, k):
    frames = V.sample_frames(path, k)
    full = decode_all(path)
    assert len(full) == n
    idx = expected_indices(n, k)
    idx += [idx[-1]] * (len(idx) % 2)
    assert frames.dtype == np.uint8 and frames.shape == (len(idx),) + full[0].shape
    assert [read_index(f) for f in frames] == idx
    for f, i in zip(frames, idx):  # bit-exact: the same decoded picture, not just the same index
        np.testing.assert_array_equal(f, full[i])
    return frames


# ----------------------------------------------------------------------------- sampling

def test_index_pattern_roundtrip():
    assert [read_index(index_frame(i)) for i in range(0, 256, 17)] == list(range(0, 256, 17))


@pytest.mark.parametrize("n,k,fps,h,w", [(60, 8, 30, 64, 96), (45, 16, 24, 48, 80), (20, 5, 10, 64, 64)])
def test_cfr_matches_full_decode(tmp_path, n, k, fps, h, w):
    path = write_video(tmp_path / "v.mp4", n, fps=fps, h=h, w=w)
    check_against_full_decode(path, n, k)


def test_bframes_match_full_decode(tmp_path):
    path = write_video(tmp_path / "b.mp4", 70, bframes=3, gop=12)
    with av.open(path) as c:
        types = {int(f.pict_type) for f in c.decode(video=0)}
    assert 3 in types, types  # AV_PICTURE_TYPE_B == 3: the file really has B-frames
    check_against_full_decode(path, 70, 8)
    check_against_full_decode(path, 70, 16)


def test_variable_frame_rate(tmp_path):
    # irregular gaps (10 to 100 ms): time-uniform sampling or fps * t indexing would pick other frames
    gaps = [10, 100, 40, 10, 10, 90, 30] * 6
    pts = np.cumsum([0] + gaps[:41]).tolist()
    path = write_video(tmp_path / "vfr.mkv", 42, pts=pts, gop=6)
    check_against_full_decode(path, 42, 8)


def test_no_duration_in_header(tmp_path):
    # a raw H.264 elementary stream: no container, no duration, no frame count, no timestamps
    path = write_video(tmp_path / "raw.h264", 33, fmt="h264")
    with av.open(path) as c:
        assert c.duration is None and not c.streams.video[0].frames
    check_against_full_decode(path, 33, 8)
    # an MPEG-TS stream: timestamps but no duration in any header
    path = write_video(tmp_path / "v.ts", 40, fmt="mpegts", codec="mpeg4")
    with av.open(path) as c:
        assert not c.streams.video[0].frames
    check_against_full_decode(path, 40, 6)


def test_fewer_frames_than_asked(tmp_path):
    path = write_video(tmp_path / "three.mp4", 3)
    frames = V.sample_frames(path, 8)
    assert [read_index(f) for f in frames] == [0, 1, 2, 2]  # T rounded up to 4 by repeating the last
    path = write_video(tmp_path / "one.mp4", 1)
    assert [read_index(f) for f in V.sample_frames(path, 8)] == [0, 0]


def test_odd_num_frames_padded(tmp_path):
    path = write_video(tmp_path / "v.mp4", 50)
    frames = check_against_full_decode(path, 50, 7)
    assert len(frames) == 8


def test_load_video_second_per_grid(tmp_path):
    path = write_video(tmp_path / "v.mp4", 60, fps=30, h=56, w=84)  # 2 s
    pv, grid, spg, _ = V.load_video(path, 8, min_pixels=28 * 28, max_pixels=64 * 28 * 28)
    assert grid.tolist() == [[4, 4, 6]] and pv.shape == (4 * 4 * 6, 3 * 2 * 14 * 14)
    assert spg == pytest.approx(2 * 2.0 / 8)  # 8 frames over 2 s = 4 fps; 2 frames per grid step


# ----------------------------------------------------------------------------- errors

def test_errors_name_the_path(tmp_path):
    good = write_video(tmp_path / "good.mp4", 30)
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])  # mdat cut, moov (the index, at the end) lost
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    audio = tmp_path / "tone.wav"
    with av.open(str(audio), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        f.rate = 8000
        for p in s.encode(f):
            out.mux(p)
        for p in s.encode():
            out.mux(p)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for bad, why in [(tmp_path / "missing.mp4", "no such file"), (truncated, ""), (text, ""),
                     (audio, "no video stream"), (empty, "")]:
        with pytest.raises(V.VideoError) as e:
            V.sample_frames(bad, 8)
        assert str(bad) in str(e.value) and why in str(e.value)


def test_truncated_stream_keeps_decodable_frames(tmp_path):
    # a raw stream cut in the middle still has frames; we sample what is there instead of dying
    good = write_video(tmp_path / "g.h264", 40, fmt="h264")
    data = open(good, "rb").read()
    cut = tmp_path / "cut.h264"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    frames = V.sample_frames(cut, 8)
    idx = [read_index(f) for f in frames]
    assert len(frames) == 8 and idx == sorted(idx) and idx[0] == 0 and idx[-1] < 40


def test_load_videos_skip_bad(tmp_path):
    good = write_video(tmp_path / "good.mp4", 12, h=56, w=56)
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    kw = dict(num_frames=4, min_pixels=28 * 28, max_pixels=4 * 28 * 28)
    with pytest.raises(V.VideoError, match="bad.mp4"):
        V.load_videos([good, str(bad)], **kw)
    results, errors = V.load_videos([good, str(bad), good], skip_bad=True, **kw)
    assert results[1] is None and results[0][1].tolist() == [[2, 4, 4]]
    assert torch.equal(results[0][0], results[2][0])
    assert [(i, p) for i, p, _ in errors] == [(1, str(bad))] and "bad.mp4" in errors[0][2]


# ----------------------------------------------------------------------------- preprocessing

def natural_image(h, w, seed=0):
    """Smooth gradients + edges, like rendered or filmed frames (noise is not what the model sees)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3))
    for c in range(3):
        a, b, p = rng.uniform(3, 30, 3)
        img[..., c] = 128 + 90 * np.sin(xx / a + p) * np.cos(yy / b)
    img[h // 3: h // 2, w // 4: w // 2] = (230, 40, 40)  # a sharp-edged block
    return img.clip(0, 255).astype(np.uint8)


def hf_processor(min_pixels, max_pixels):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def hf_image(img, min_pixels, max_pixels):
    out = hf_processor(min_pixels, max_pixels)(images=[img], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as ref
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = rng.integers(10, 2000, 2).tolist()
        lo, hi = sorted(rng.integers(28 * 28, 2000 * 28 * 28, 2).tolist())
        assert V.smart_resize(h, w, 28, lo, hi) == ref(h, w, 28, lo, hi)
    assert V.smart_resize(720, 1280, 28, V.VIDEO_MIN_PIXELS, V.VIDEO_MAX_PIXELS) == (560, 1008)


def test_two_equal_frames_patchify_exactly_as_one_image():
    # no resize needed (multiples of 28 inside the budget): only rescale/normalise/patchify differ
    img = natural_image(84, 140)
    ref, ref_grid = hf_image(img, 28 * 28, 100 * 28 * 28)
    pv, grid = V.preprocess(np.stack([img, img]), min_pixels=28 * 28, max_pixels=100 * 28 * 28)
    assert grid.tolist() == ref_grid.tolist() == [[1, 6, 10]]
    assert pv.shape == ref.shape and pv.dtype == torch.float32
    assert (pv - ref).abs().max() < 1e-5
    pvi, gridi = V.preprocess_image(img, 28 * 28, 100 * 28 * 28)
    assert torch.equal(pvi, pv) and torch.equal(gridi, grid)


# measured bound, see resize_bicubic: PIL and we agree to 1 uint8 level except at rounding ties;
# Pillow >= 12.3 sometimes does the vertical pass first, which moves clipped overshoot by ~2 levels
# on smooth content. 2 levels / 255 / min(std) = 0.0301
RESIZE_BOUND = 2 / 255 / min(V.CLIP_STD) + 1e-5


@pytest.mark.parametrize("h,w,lo,hi", [
    (100, 150, 28 * 28, 64 * 28 * 28),      # upscale both
    (360, 640, 28 * 28, 160 * 28 * 28),     # downscale both (the common video case)
    (37, 301, 28 * 28, 64 * 28 * 28),       # odd sizes, wide
    (480, 640, 28 * 28, 28 * 28 * 388),     # aspect nudged: one side shrinks, the other grows
])
def test_resized_image_matches_transformers_within_bound(h, w, lo, hi):
    img = natural_image(h, w, seed=h)
    ref, ref_grid = hf_image(img, lo, hi)
    pv, grid = V.preprocess_image(img, lo, hi)
    assert grid.tolist() == ref_grid.tolist()
    d = (pv - ref).abs()
    assert d.max() <= RESIZE_BOUND, d.max()
    assert d.mean() < 1e-3  # nearly all values identical


def test_temporal_order_inside_patch():
    # from first principles: row r = (t, bh, bw, mh, mw); value index = (c, tp, py, px);
    # pixel = frame[2t+tp] at y=(2bh+mh)*14+py, x=(2bw+mw)*14+px, normalised per channel
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (4, 56, 84, 3), dtype=np.uint8)  # 4 frames, no resize
    pv, grid = V.preprocess(frames, min_pixels=28 * 28, max_pixels=64 * 28 * 28)
    assert grid.tolist() == [[2, 4, 6]]
    mean, std = np.array(V.CLIP_MEAN), np.array(V.CLIP_STD)
    norm = (frames / 255.0 - mean) / std  # (T, H, W, C)
    pv = pv.numpy().reshape(-1, 3, 2, 14, 14)
    r = 0
    for t in range(2):
        for bh in range(2):
            for bw in range(3):
                for mh in range(2):
                    for mw in range(2):
                        y, x = (2 * bh + mh) * 14, (2 * bw + mw) * 14
                        for tp in range(2):
                            want = norm[2 * t + tp, y:y + 14, x:x + 14].transpose(2, 0, 1)
                            np.testing.assert_allclose(pv[r, :, tp], want, atol=1e-5)
                        r += 1
    assert r == pv.shape[0]


def test_preprocess_pads_odd_t_and_rejects_bad_input():
    f = natural_image(56, 56)
    pv3, g3 = V.preprocess(np.stack([f, f, f]), 28 * 28, 16 * 28 * 28)
    pv4, g4 = V.preprocess(np.stack([f, f, f, f]), 28 * 28, 16 * 28 * 28)
    assert torch.equal(pv3, pv4) and g3.tolist() == [[2, 4, 4]]
    with pytest.raises(ValueError):
        V.preprocess(np.zeros((2, 56, 56), np.uint8))
    with pytest.raises(ValueError):
        V.preprocess(np.zeros((2, 56, 56, 3), np.float32))


def test_runtime_imports_no_pillow_or_torchvision():
    import subprocess
    import sys
    code = ("import sys; import st_r1.video; "
            "bad = [m for m in ('PIL', 'torchvision') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_authors_fps_sampler_by_hand(tmp_path):
    """--fps: frames at 1 fps first (10 s at 30 fps -> 10 frames: linspace(0, 299, 10) rounded), then 8 of those
    at linspace(0, 9, 8) truncated -> positions 0,1,2,3,5,6,7,9. A 40-frame clip gives the rule's minimum, 4."""
    assert V.fps_indices(300, 30.0, 1.0, 8) == [0, 33, 66, 100, 166, 199, 233, 299]
    assert V.fps_indices(40, 30.0, 1.0, 8) == [0, 13, 26, 39]
    assert V.fps_indices(3, 30.0, 1.0, 8) == [0, 2]  # fewer frames than the minimum: an even count of them
    path = write_video(tmp_path / "v.mp4", 240, fps=24, gop=24)  # 10 s again (indices stay under 256: 8 bits)
    frames = V._sample(str(path), 8, fps=1.0)[0]
    assert [read_index(f) for f in frames] == [0, 27, 53, 80, 133, 159, 186, 239]
    assert [read_index(f) for f in V.sample_frames(str(path), 8)] == V.uniform_indices(240, 8)  # default unchanged
