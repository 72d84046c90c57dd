"""The renderer: wall and landmark textures, a numpy raycaster, first-person frames, mp4 and png writing.

It draws what world.py lays out: a grid of open cells (w.grid), the wall material seen from each (w.mat, an index
into MATERIALS) and the landmarks painted on wall faces (w.lm, w.landmarks: a colour of COLOURS, an object of
OBJECTS). The look of the world lives here: colours, object shapes and wall textures.
"""
import os

import numpy as np

COLOURS = {"red": (225, 30, 30), "blue": (35, 75, 235), "green": (30, 190, 60), "yellow": (245, 215, 30),
           "purple": (150, 50, 205), "orange": (250, 135, 20)}
OBJECTS = ("door", "bench", "box", "sign", "lamp")
MATERIALS = ("brick", "wood", "stone", "concrete", "tile")  # textures drawn at WALL_SATURATION: near grey
TEX = 32  # texture size in texels
WALL_SATURATION = 0.25  # of the wall materials' colour (1 = as drawn)


def _textures():
    """Atlas (n, TEX, TEX, 3) float: the materials, then every object x colour painted over every material."""
    r = np.random.default_rng(1234)
    v, u = np.mgrid[0:TEX, 0:TEX] / TEX
    noise = r.normal(0, 1, (TEX, TEX))[..., None]
    mats = []
    brick = np.where(((v * 4) % 1 < 0.12)[..., None] | (((u * 2 + 0.5 * (np.floor(v * 4) % 2)) % 1) < 0.06)[..., None],
                     (195, 185, 170), (150, 70, 50)) + 8 * noise
    wood = np.where(((u * 5) % 1 < 0.1)[..., None], (85, 55, 30), (145, 100, 58)) + 10 * np.sin(40 * v[..., None] + 3 * noise)
    stone = np.where((((v * 2) % 1 < 0.06) | (((u * 2 + 0.5 * (np.floor(v * 2) % 2)) % 1) < 0.05))[..., None],
                     (65, 65, 75), (118, 118, 128)) + 12 * noise
    concrete = np.full((TEX, TEX, 3), (178, 178, 168.0)) + 7 * noise - 25 * (np.abs(v - 0.5) < 0.03)[..., None]
    tile = np.where((((v * 4) % 1 < 0.08) | ((u * 4) % 1 < 0.08))[..., None], (110, 140, 170), (215, 225, 235)) + 0 * noise
    # walls keep WALL_SATURATION of their colour: the saturated landmark colours are then the only strong colours on
    # screen, so that seeing a landmark does not first need telling a red door from a reddish brick wall
    mats = [m.mean(-1, keepdims=True) + WALL_SATURATION * (m - m.mean(-1, keepdims=True))
            for m in (brick, wood, stone, concrete, tile)]
    shapes = {  # masks of the objects on a wall face (v = 0 top, 1 floor): big and simple, readable at 112 px
        "door": (abs(u - 0.5) < 0.28) & (v > 0.12),
        "bench": ((abs(u - 0.5) < 0.42) & (abs(v - 0.66) < 0.06)) | ((abs(u - 0.5) < 0.42) & (abs(v - 0.5) < 0.04))
                 | (((abs(u - 0.2) < 0.05) | (abs(u - 0.8) < 0.05)) & (v > 0.66)),
        "box": (abs(u - 0.5) < 0.3) & (v > 0.45),
        "sign": ((abs(u - 0.5) < 0.4) & (abs(v - 0.3) < 0.17)) | ((abs(u - 0.5) < 0.05) & (v > 0.3)),
        "lamp": ((u - 0.5) ** 2 + (v - 0.22) ** 2 < 0.04) | ((abs(u - 0.5) < 0.06) & (v > 0.22)),
    }
    out = list(mats)
    for o in OBJECTS:
        m = shapes[o][..., None]
        edge = m & ~(np.roll(shapes[o], 2, 0) & np.roll(shapes[o], -2, 0) & np.roll(shapes[o], 2, 1)
                     & np.roll(shapes[o], -2, 1))[..., None]
        for c in COLOURS.values():
            for base in mats:
                out.append(np.where(edge, (20, 20, 20), np.where(m, c, base)))
    return np.clip(np.stack(out), 0, 255).astype(np.float32)


_ATLAS = None


def cast(w, pose, width, fov=np.pi / 2):
    """Cast one ray per screen column (DDA through the grid). Returns per column: perpendicular distance, the
    open cell the ray left (ox, oy), the side d of that cell it hit, the texture column u, the face axis."""
    x, y, th = pose
    cx = (2 * (np.arange(width) + 0.5) / width - 1) * np.tan(fov / 2)
    ang = th + np.arctan(cx)
    dx, dy = np.cos(ang), np.sin(ang)
    dx = np.where(np.abs(dx) < 1e-9, 1e-9, dx)
    dy = np.where(np.abs(dy) < 1e-9, 1e-9, dy)
    mx, my = np.full(width, int(x)), np.full(width, int(y))
    ox, oy = mx.copy(), my.copy()
    ddx, ddy = np.abs(1 / dx), np.abs(1 / dy)
    sx, sy = np.where(dx > 0, 1, -1), np.where(dy > 0, 1, -1)
    sdx = np.where(dx > 0, mx + 1 - x, x - mx) * ddx
    sdy = np.where(dy > 0, my + 1 - y, y - my) * ddy
    axis = np.zeros(width, np.int64)
    done = np.zeros(width, bool)
    for _ in range(2 * max(w.grid.shape)):
        go = ~done
        if not go.any():
            break
        gx = go & (sdx < sdy)
        gy = go & ~(sdx < sdy)
        ox, oy = np.where(go, mx, ox), np.where(go, my, oy)
        mx, sdx = mx + gx * sx, sdx + gx * ddx
        my, sdy = my + gy * sy, sdy + gy * ddy
        axis = np.where(gx, 0, np.where(gy, 1, axis))
        done |= go & ~w.grid[my, mx]
    dist = np.where(axis == 0, sdx - ddx, sdy - ddy)
    along = np.where(axis == 0, y + dist * dy, x + dist * dx)
    d = np.where(axis == 0, np.where(sx > 0, 0, 2), np.where(sy > 0, 1, 3))
    return {"dist": dist * np.cos(ang - th), "ox": ox, "oy": oy, "d": d, "u": along - np.floor(along), "axis": axis}


def seen_materials(w, cams, width):
    """Wall materials on screen in the given camera poses."""
    hits = [cast(w, pose, width) for pose in cams]
    return [int(m) for h in hits for m in np.unique(w.mat[h["oy"], h["ox"]])]


def render(w, pose, size=112, fov=np.pi / 2):
    """One first-person frame (size, size, 3) uint8 and the landmark index seen in each column (-1: none)."""
    global _ATLAS
    if _ATLAS is None:
        _ATLAS = _textures()
    hit = cast(w, pose, size, fov)
    mat = w.mat[hit["oy"], hit["ox"]]
    lm = w.lm[hit["oy"], hit["ox"], hit["d"]]
    nm, nc = len(MATERIALS), len(COLOURS)
    tex = mat.copy()
    for k, L in enumerate(w.landmarks):  # object x colour x material -> atlas index (see _textures)
        code = len(MATERIALS) + (OBJECTS.index(L["object"]) * nc + list(COLOURS).index(L["colour"])) * nm
        tex = np.where(lm == k, code + mat, tex)
    height = size / (np.maximum(hit["dist"], 1e-3) * 2 * np.tan(fov / 2))  # wall of height 1, eye at 1/2
    rows = np.arange(size)[:, None] + 0.5
    v = (rows - (size - height) / 2) / height  # (H, W): 0 at the top of the wall, 1 at its foot
    wall = (v >= 0) & (v < 1)
    tu = np.minimum((hit["u"] * TEX).astype(int), TEX - 1)
    tv = np.clip((v * TEX).astype(int), 0, TEX - 1)
    img = _ATLAS[tex[None, :], tv, tu[None, :]]
    shade = np.clip(1.25 / (1 + 0.3 * hit["dist"]), 0.25, 1.0) * np.where(hit["axis"] == 1, 0.8, 1.0)
    img = img * shade[None, :, None]
    g = np.abs(rows - size / 2) / (size / 2)  # darker towards the horizon: depth cue for floor and ceiling
    sky = np.where(rows < size / 2, 30 + 50 * g, 25 + 85 * g)[:, :, None] * np.array([1.0, 1.0, 1.05])
    img = np.where(wall[..., None], img, np.broadcast_to(sky, img.shape))
    return np.clip(img, 0, 255).astype(np.uint8), np.where(lm >= 0, lm, -1)


def write_mp4(path, frames, fps=8):
    """H.264 mp4 (yuv420p) at a fixed frame rate; written to a temporary name and renamed (atomic)."""
    import av
    tmp = path + ".tmp.mp4"
    with av.open(tmp, "w") as out:
        # the same world must make the same bench: x264 gave different pixels from run to run (up to 52/255), also
        # with one thread, until its lookahead and macroblock tree were off (tests/test_world.py, 30 of 30 equal)
        st = out.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "veryfast",
                                                          "x264-params": "threads=1:rc-lookahead=0:mbtree=0"})
        st.width, st.height, st.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for i, f in enumerate(frames):
            # converted to yuv420p here and stamped: left to the encoder, these varied from run to run too
            frame = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    os.replace(tmp, path)


def write_png(path, img):
    """Minimal PNG writer (8-bit RGB, zlib), so contact sheets need no imaging library."""
    import struct
    import zlib
    h, wd = img.shape[:2]
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", wd, h, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def contact_sheet(pick, cols=4, gap=2):
    """Frames (n, H, W, 3) tiled cols per row, on white: world.py passes the 8 a reader samples, what the model sees."""
    rows = -(-len(pick) // cols)
    H, W = pick.shape[1:3]
    sheet = np.full((rows * (H + gap) - gap, cols * (W + gap) - gap, 3), 255, np.uint8)
    for i, f in enumerate(pick):
        r, c = divmod(i, cols)
        sheet[r * (H + gap):r * (H + gap) + H, c * (W + gap):c * (W + gap) + W] = f
    return sheet
