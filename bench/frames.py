"""Frame sampling: our seek-based sampler vs decode-every-frame-then-index, time and peak memory.

    python bench/frames.py [--cache /tmp] [--frames 16] [--lengths 30,120] [--gop 30] [--repeats 3]

Writes (once, cached under --cache) 720p H.264 test videos of the given lengths in seconds, then
runs each method in its own fresh subprocess (so peak RSS is that method's alone) and prints a
Markdown table. Methods:
  seek        st_r1.video.sample_frames: demux index, seek to key frame, decode forward.
  decode_all  decode every frame to RGB, keep them all, stack, index (the torchvision read_video
              path of qwen-vl-utils that the authors' pipeline uses). Skipped when it would need
              more than --max-gb of memory.
  decode_pass decode every frame to RGB but keep only the wanted ones: the time of any
              decode-everything method without its memory (a lower bound on its cost).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
H, W, FPS = 720, 1280, 30


def write_video(path, seconds, gop):
    """A moving textured scene (smooth gradients, edges, a moving block), H.264 yuv420p, B-frames."""
    import av
    yy, xx = np.mgrid[0:H, 0:2 * W].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(xx / (17 + 9 * c)) * np.cos(yy / (23 + 5 * c)) for c in range(3)], -1)
    base = base.clip(0, 255).astype(np.uint8)
    tmp = path + ".part"
    with av.open(tmp, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "23", "g": str(gop), "bf": "3"}
        for i in range(seconds * FPS):
            x0 = (4 * i) % W
            img = np.ascontiguousarray(base[:, x0:x0 + W])
            y, x = (7 * i) % (H - 120), (11 * i) % (W - 160)
            img[y:y + 120, x:x + 160] = (230, 40, 40)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    os.replace(tmp, path)


def decode_all(path, num_frames, keep_all):
    import av
    from st_r1.video import uniform_indices
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_type = "AUTO"
        if keep_all:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
            idx = uniform_indices(len(frames), num_frames)
            return np.stack(frames)[idx]
        # count first (header frame count), then keep only the wanted frames while decoding all
        idx = set(uniform_indices(s.frames, num_frames))
        return np.stack([f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(s)) if i in idx])


def run_one(method, path, num_frames):
    """In a fresh process: time one call, report peak RSS and its growth over the post-import baseline."""
    import av  # noqa: F401  (imports counted in the baseline, not in the method)
    from st_r1 import video
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if method == "seek":
        frames = video.sample_frames(path, num_frames)
    else:
        frames = decode_all(path, num_frames, keep_all=method == "decode_all")
    dt = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(dict(seconds=dt, peak_mb=peak / 1024, growth_mb=(peak - base) / 1024,
                          shape=list(frames.shape), checksum=int(frames.astype(np.int64).sum()))))


def measure(method, path, num_frames, repeats):
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, __file__, "--run", method, path, str(num_frames)],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode:
            raise RuntimeError(out.stderr)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    best["peak_mb"] = max(r["peak_mb"] for r in runs)
    best["growth_mb"] = max(r["growth_mb"] for r in runs)
    return best


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        return run_one(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="/tmp")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--lengths", default="30,120", help="video lengths in seconds")
    ap.add_argument("--gop", type=int, default=30, help="key frame interval of the test videos, in frames")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-gb", type=float, default=6.0, help="skip decode_all when it needs more")
    args = ap.parse_args()
    import av
    rows = []
    for seconds in [int(s) for s in args.lengths.split(",")]:
        path = os.path.join(args.cache, f"st_r1_bench_{H}p_{seconds}s_gop{args.gop}.mp4")
        if not os.path.exists(path):
            t = time.perf_counter()
            write_video(path, seconds, args.gop)
            print(f"wrote {path} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        res = {m: measure(m, path, args.frames, args.repeats) for m in ("seek", "decode_pass")}
        need_gb = seconds * FPS * H * W * 3 * 2 / 2**30  # the frame list plus the stacked copy
        res["decode_all"] = measure("decode_all", path, args.frames, 1) if need_gb <= args.max_gb else None
        assert res["seek"]["checksum"] == res["decode_pass"]["checksum"], "methods picked different frames"
        size_mb = os.path.getsize(path) / 2**20
        for m in ("seek", "decode_pass", "decode_all"):
            r = res[m]
            if r is None:
                rows.append(f"| {seconds} s ({size_mb:.0f} MB) | {m} | skipped: needs ~{need_gb:.1f} GB "
                            f"(> --max-gb {args.max_gb}) | | | |")
                continue
            ratio = r["seconds"] / res["seek"]["seconds"]
            rows.append(f"| {seconds} s ({size_mb:.0f} MB) | {m} | {r['seconds']:.3f} | {ratio:.1f}x | "
                        f"{r['peak_mb']:.0f} | {r['growth_mb']:.0f} |")
    print(f"{args.frames} frames from 720p H.264 ({FPS} fps, key frame every {args.gop} frames, B-frames), "
          f"PyAV {av.__version__}, {os.cpu_count()} CPUs, best of {args.repeats} fresh processes "
          f"(decode_all: 1)\n")
    print("| video | method | time (s) | time / seek | peak RSS (MB) | RSS growth (MB) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
