"""Procedural captioned video clips: coloured shapes moving over muted backgrounds.

A :class:`Scene` holds 1 to 3 :class:`SceneObject` s (shape, colour, size, motion, start position), a
:class:`Background` and a camera pan. :func:`sample_scene` draws one from a seed, :func:`render` turns it into a
uint8 video ``[T, H, W, 3]`` and :func:`caption` describes it in plain lower-case English; :func:`make_clip` does all
three. Everything is deterministic: the same seed gives the same bytes in any process.

Geometry is resolution independent. Positions are fractions of the frame width (x, left to right) and height
(y, top to bottom); object sizes are radii as fractions of ``min(height, width)``; time runs over ``t = f / (T - 1)``
in ``[0, 1]``, so a motion covers the same fraction of the frame whatever the frame count.

Attributes
    shapes      circle, square, triangle (apex up), diamond, cross; each fills the square of side ``2 r`` around
                its centre (triangle: full-width base at the bottom, apex at the top middle)
    colours     red, orange, yellow, green, cyan, blue, purple, pink: saturated, chroma >= 0.7, hues 30-60 degrees
                apart; the objects of one scene have distinct colours
    sizes       small, medium, large: radius 0.08, 0.11, 0.15
    motions     left, right, up, down (0.5 of the frame over the clip); up-left, up-right, down-left, down-right
                (0.4 of the frame along each axis); static; bouncing (falls from rest, bounces off a floor 0.45 of
                the frame below its start and rises back, twice, along parabolic arcs); growing (radius grows
                linearly to 1.8x, centre fixed); reenter (moves to the nearer side edge, leaves the frame at
                t = 0.375, stays fully out until t = 0.625, then comes back in through the same edge to its start)
    backgrounds plain (one colour), gradient (two colours, vertical or horizontal), textured (one colour with a
                low-contrast stripe, checker or smooth-noise luminance pattern; stripes run across the pan)
    pans        none, left, right, up, down: the background scrolls by 0.3 of the frame over the clip (camera pans
                right: the background moves left on screen); objects keep their on-screen motion. Plain backgrounds
                never pan; gradients pan only along their colour axis; textures pan any way.

Background colours come from a separate muted palette (chroma <= 0.18; luminance patterns do not change chroma)
and object colours all have chroma >= 0.7, so a chroma threshold alone separates objects from any background
(see :mod:`.detect`).

Objects stay inside the frame (margin 0.02) except during ``reenter``, and objects of one scene keep their centres
at least ``1.05 (r1 + r2) + 0.02`` apart at every moment, so they overlap little (at most square corners).

Held-out combinations: :data:`HELD_OUT` is the set of (colour, shape, motion) triples with
``(colour index + 2 * shape index + 3 * motion index) % 10 == 0`` over the orders of :data:`COLOURS`,
:data:`SHAPES` and :data:`MOTIONS`: 48 of the 480 triples (10%), covering every colour, shape and motion. For each
(shape, motion) pair at most one colour is held out and for each (colour, shape) pair at most two motions, so every
pair of attributes still occurs in training. Split ``"train"`` never contains a held-out triple; in split ``"eval"``
the first object is a held-out triple and the other objects are drawn as in training.

Rendering is vectorised over frames: the background is computed once on a larger canvas and scrolled with sub-pixel
interpolation; each object is drawn from an anti-aliased signed distance in a small window that follows it.
Measured cost of a default clip (33 x 128 x 128) on one core of a shared 2-core Xeon VM (numpy 2.4, 400 scenes of
both splits, best of 3 each): mean 8.7 ms, median 8.2 ms, 99th percentile 19 ms; panned backgrounds cost about 2 ms
more than still ones. :func:`sample_scene` takes about 3 ms (layout checks).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------------------------
# Attribute tables (order matters: HELD_OUT is defined over these indices)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "orange": (255, 128, 0),
    "yellow": (235, 235, 20),
    "green": (25, 205, 45),
    "cyan": (0, 210, 220),
    "blue": (30, 70, 235),
    "purple": (150, 40, 230),
    "pink": (240, 40, 170),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
MOTIONS: tuple[str, ...] = (
    "left",
    "right",
    "up",
    "down",
    "up-left",
    "up-right",
    "down-left",
    "down-right",
    "static",
    "bouncing",
    "growing",
    "reenter",
)
SIZES: dict[str, float] = {"small": 0.08, "medium": 0.11, "large": 0.15}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (16, 16, 18),
    "charcoal": (58, 58, 62),
    "gray": (120, 120, 120),
    "silver": (185, 185, 190),
    "white": (236, 236, 232),
    "beige": (215, 200, 170),
    "navy": (22, 28, 68),
    "brown": (82, 60, 40),
}
BACKGROUNDS: tuple[str, ...] = ("plain", "gradient", "textured")
GRADIENTS: tuple[str, ...] = ("vertical", "horizontal")
TEXTURES: tuple[str, ...] = ("stripes", "checker", "noise")
PANS: tuple[str, ...] = ("none", "left", "right", "up", "down")
SPLITS: tuple[str, ...] = ("train", "eval")

LINEAR_SHIFT = 0.5  # left/right/up/down: displacement over the clip, fraction of the frame
DIAGONAL_SHIFT = 0.4  # diagonals: displacement along each axis
BOUNCE_HEIGHT = 0.45  # bouncing: drop from the start (apex) to the floor
BOUNCES = 2
GROWTH = 1.8  # growing: final radius / start radius
REENTER_OUT = (0.375, 0.625)  # reenter: fully out of the frame for t in this interval
PAN_SHIFT = 0.3  # background scroll over the clip, fraction of the frame
MARGIN = 0.02  # objects keep this far inside the frame edges
CROSS_ARM = 0.38  # cross: half-width of each arm as a fraction of the radius
TEXTURE_CONTRAST = 11.0  # textured backgrounds: luminance amplitude in 8-bit levels

_DIRECTIONS: dict[str, tuple[float, float]] = {
    "left": (-LINEAR_SHIFT, 0.0),
    "right": (LINEAR_SHIFT, 0.0),
    "up": (0.0, -LINEAR_SHIFT),
    "down": (0.0, LINEAR_SHIFT),
    "up-left": (-DIAGONAL_SHIFT, -DIAGONAL_SHIFT),
    "up-right": (DIAGONAL_SHIFT, -DIAGONAL_SHIFT),
    "down-left": (-DIAGONAL_SHIFT, DIAGONAL_SHIFT),
    "down-right": (DIAGONAL_SHIFT, DIAGONAL_SHIFT),
}
_PAN_VECTORS: dict[str, tuple[float, float]] = {
    "none": (0.0, 0.0),
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}

Triple = tuple[str, str, str]

HELD_OUT: frozenset[Triple] = frozenset(
    (c, s, m)
    for ci, c in enumerate(COLOURS)
    for si, s in enumerate(SHAPES)
    for mi, m in enumerate(MOTIONS)
    if (ci + 2 * si + 3 * mi) % 10 == 0
)
_HELD_OUT_SORTED: tuple[Triple, ...] = tuple(sorted(HELD_OUT))


# ---------------------------------------------------------------------------------------------------------------
# Scene description


@dataclass(frozen=True)
class SceneObject:
    """One object: attributes plus its centre at t = 0 (fractions of the frame width / height)."""

    shape: str
    colour: str
    size: str
    motion: str
    x: float
    y: float

    @property
    def triple(self) -> Triple:
        return (self.colour, self.shape, self.motion)

    @property
    def radius(self) -> float:
        return SIZES[self.size]


@dataclass(frozen=True)
class Background:
    """Background: ``kind`` plain / gradient / textured; ``colour2`` is the gradient's end colour; ``pattern`` is the
    gradient direction (vertical: colour at the top, colour2 at the bottom) or the texture; ``seed`` sets the
    texture's phases and frequencies."""

    kind: str
    colour: str
    colour2: str = ""
    pattern: str = ""
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    """A clip's content: objects (drawn in order, later ones on top), background and camera pan."""

    objects: tuple[SceneObject, ...]
    background: Background
    pan: str = "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (inverse: :meth:`from_dict`)."""
        return {
            "objects": [asdict(o) for o in self.objects],
            "background": asdict(self.background),
            "pan": self.pan,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        return cls(
            objects=tuple(SceneObject(**o) for o in d["objects"]),
            background=Background(**d["background"]),
            pan=d["pan"],
        )


def is_held_out(obj: SceneObject | Triple) -> bool:
    """Whether an object's (colour, shape, motion) triple is reserved for split ``"eval"``."""
    triple = obj.triple if isinstance(obj, SceneObject) else tuple(obj)
    return triple in HELD_OUT


# ---------------------------------------------------------------------------------------------------------------
# Motion


def _times(frames: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)


def object_track(
    obj: SceneObject, t: np.ndarray | int, height: int = 128, width: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ground-truth path of ``obj`` at times ``t`` (array in [0, 1], or a frame count for evenly spaced frames).

    Returns ``(x, y, radius, visible)``: centre as fractions of the width / height, radius as a fraction of
    ``min(height, width)`` and whether any part of the object is drawn. Only ``reenter`` depends on the frame aspect
    (how far outside the frame "fully out" is)."""
    t = _times(t) if isinstance(t, int) else np.asarray(t, dtype=np.float64)
    r = obj.radius
    x = np.full(t.shape, obj.x)
    y = np.full(t.shape, obj.y)
    radius = np.full(t.shape, r)
    visible = np.ones(t.shape, dtype=bool)
    m = obj.motion
    if m in _DIRECTIONS:
        dx, dy = _DIRECTIONS[m]
        x = obj.x + dx * t
        y = obj.y + dy * t
    elif m == "bouncing":
        phase = (t * BOUNCES + 0.5) % 1.0
        phase = np.where((t > 0) & (phase == 0.0), 1.0, phase)
        y = obj.y + BOUNCE_HEIGHT * (1.0 - 4.0 * phase * (1.0 - phase))
    elif m == "growing":
        radius = r * (1.0 + (GROWTH - 1.0) * t)
    elif m == "reenter":
        rx = r * min(height, width) / width
        right = obj.x >= 0.5
        x_out = 1.0 + rx + 0.01 if right else -rx - 0.01
        t0, t1 = REENTER_OUT
        going = np.clip(t / t0, 0.0, 1.0)
        coming = np.clip((1.0 - t) / (1.0 - t1), 0.0, 1.0)
        frac = np.where(t <= 0.5, going, coming)
        x = obj.x + (x_out - obj.x) * frac
        visible = (t < t0) | (t > t1)
    elif m != "static":
        raise ValueError(f"unknown motion {m!r}")
    return x, y, radius, visible


def _start_range(motion: str, r: float, rng: np.random.Generator) -> tuple[float, float]:
    """A random start centre for which the whole path stays inside the frame (margin MARGIN)."""
    lo, hi = r + MARGIN, 1.0 - r - MARGIN
    if motion in _DIRECTIONS:
        dx, dy = _DIRECTIONS[motion]
        x = rng.uniform(max(lo, lo - dx), min(hi, hi - dx))
        y = rng.uniform(max(lo, lo - dy), min(hi, hi - dy))
    elif motion == "bouncing":
        x = rng.uniform(lo, hi)
        y = rng.uniform(lo, hi - BOUNCE_HEIGHT)
    elif motion == "growing":
        g = r * GROWTH + MARGIN
        x, y = rng.uniform(g, 1.0 - g, size=2)
    elif motion == "reenter":
        x = rng.uniform(0.58, 0.75)
        if rng.random() < 0.5:
            x = 1.0 - x
        y = rng.uniform(lo, hi)
    else:
        x, y = rng.uniform(lo, hi, size=2)
    return float(round(x, 4)), float(round(y, 4))


_LAYOUT_T = np.linspace(0.0, 1.0, 65)


def _apart(a: SceneObject, b: SceneObject) -> bool:
    ax, ay, ar, av = object_track(a, _LAYOUT_T)
    bx, by, br, bv = object_track(b, _LAYOUT_T)
    d = np.hypot(ax - bx, ay - by)
    need = 1.05 * (ar + br) + 0.02
    return bool(np.all((d >= need) | ~av | ~bv))


# ---------------------------------------------------------------------------------------------------------------
# Sampling


def _rng(seed: int, split: str, stream: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(seed) >> 32 & 0xFFFFFFFF, SPLITS.index(split), stream])


def _sample_background(rng: np.random.Generator) -> tuple[Background, str]:
    names = list(BACKGROUND_COLOURS)
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    colour = names[rng.integers(len(names))]
    seed = int(rng.integers(1 << 30))
    if kind == "plain":
        return Background("plain", colour, seed=seed), "none"
    if kind == "gradient":
        luma = {k: float(np.dot(v, (0.299, 0.587, 0.114))) for k, v in BACKGROUND_COLOURS.items()}
        others = [n for n in names if abs(luma[n] - luma[colour]) >= 50.0]
        colour2 = others[rng.integers(len(others))]
        pattern = GRADIENTS[rng.integers(2)]
        axis_pans = ("up", "down") if pattern == "vertical" else ("left", "right")
        pan = "none" if rng.random() < 0.5 else axis_pans[rng.integers(2)]
        return Background("gradient", colour, colour2, pattern, seed), pan
    pattern = TEXTURES[rng.integers(len(TEXTURES))]
    pan = "none" if rng.random() < 0.4 else PANS[1 + rng.integers(4)]
    return Background("textured", colour, "", pattern, seed), pan


def _sample_triple(rng: np.random.Generator, colours: list[str]) -> Triple:
    while True:
        t = (
            colours[rng.integers(len(colours))],
            SHAPES[rng.integers(len(SHAPES))],
            MOTIONS[rng.integers(len(MOTIONS))],
        )
        if t not in HELD_OUT:
            return t


#: First seed of the held-out evaluation prompts: prompt i is the "eval" scene of seed ``EVAL_SEED0 + i`` with its
#: caption, generated with a torch generator seeded the same (see :func:`eval_prompts`).
EVAL_SEED0 = 3_000_000


def eval_prompts(count: int) -> list[tuple[int, Scene, str]]:
    """The first ``count`` held-out evaluation prompts as ``(seed, scene, caption)``: the one evaluation set of the
    embedded model (its training script's eval stage and ``bench/quality_sweep.py`` both use it)."""
    out = []
    for seed in range(EVAL_SEED0, EVAL_SEED0 + count):
        scene = sample_scene(seed, split="eval")
        out.append((seed, scene, caption(scene, seed)))
    return out


def sample_scene(seed: int, split: str = "train", n_objects: int | None = None) -> Scene:
    """The scene of ``seed`` in ``split`` ("train" or "eval"); ``n_objects`` (1-3) overrides the drawn count.

    Objects are placed one at a time by rejection sampling of start positions (then of size and motion) so that all
    objects stay apart; an object that finds no place is dropped, so a scene may have fewer objects than drawn
    (never fewer than one; the held-out first object of an eval scene is always kept)."""
    rng = _rng(seed, split, 0)
    n = int(rng.integers(1, 4)) if n_objects is None else int(n_objects)
    if not 1 <= n <= 3:
        raise ValueError(f"n_objects must be 1, 2 or 3, got {n}")
    background, pan = _sample_background(rng)
    objects: list[SceneObject] = []
    for i in range(n):
        free = [c for c in COLOURS if c not in {o.colour for o in objects}]
        if i == 0 and split == "eval":
            colour, shape, motion = _HELD_OUT_SORTED[rng.integers(len(_HELD_OUT_SORTED))]
        else:
            colour, shape, motion = _sample_triple(rng, free)
        size = list(SIZES)[rng.integers(len(SIZES))]
        for attempt in range(120):
            if attempt and attempt % 40 == 0 and not (i == 0 and split == "eval"):
                colour, shape, motion = _sample_triple(rng, free)
                size = list(SIZES)[rng.integers(len(SIZES))]
            x, y = _start_range(motion, SIZES[size], rng)
            obj = SceneObject(shape, colour, size, motion, x, y)
            if all(_apart(obj, o) for o in objects):
                objects.append(obj)
                break
    return Scene(tuple(objects), background, pan)


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def _texture(bg: Background, pan: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Luminance offset (8-bit levels) of a textured background at world coordinates (in units of the frame's
    short side); xs [1, W'] and ys [H', 1] broadcast to [H', W'].

    Stripes run across the pan (vertical stripes for a left / right pan, horizontal for up / down) so that the
    scroll is visible and unambiguous; without a pan they are vertical, horizontal or diagonal."""
    rng = np.random.default_rng(bg.seed)
    if bg.pattern == "stripes":
        period = rng.uniform(0.15, 0.25)
        phase = rng.uniform(0, 2 * np.pi)
        k = int(rng.integers(4))
        if pan != "none":
            k = 0 if pan in ("left", "right") else 1
        wx, wy = ((1.0, 0.0), (0.0, 1.0), (0.5**0.5, 0.5**0.5), (0.5**0.5, -(0.5**0.5)))[k]
        return TEXTURE_CONTRAST * np.sin((xs * wx + ys * wy) * (2 * np.pi / period) + phase)
    if bg.pattern == "checker":
        period = rng.uniform(0.15, 0.25)
        px, py = rng.uniform(0, 2 * np.pi, size=2)
        w = 2 * np.pi / period
        return TEXTURE_CONTRAST * np.tanh(3.0 * np.sin(xs * w + px) * np.sin(ys * w + py))
    if bg.pattern == "noise":
        out = np.zeros(np.broadcast_shapes(xs.shape, ys.shape))
        for _ in range(5):
            ang = rng.uniform(0, np.pi)
            w = 2 * np.pi / rng.uniform(0.2, 0.45)
            out = out + np.sin((xs * math.cos(ang) + ys * math.sin(ang)) * w + rng.uniform(0, 2 * np.pi))
        return TEXTURE_CONTRAST * out / math.sqrt(2.5)
    raise ValueError(f"unknown texture {bg.pattern!r}")


def _background(scene: Scene, frames: int, height: int, width: int) -> np.ndarray:
    """Float32 background frames [T, H, W, 3]: a world image larger than the frame, scrolled by the pan."""
    bg = scene.background
    c1 = np.asarray(BACKGROUND_COLOURS[bg.colour], dtype=np.float32)
    out = np.empty((frames, height, width, 3), dtype=np.float32)
    if bg.kind == "plain":
        out[:] = np.tile(c1, height * width).reshape(height, width, 3)
        return out
    vx, vy = _PAN_VECTORS[scene.pan]
    px, py = abs(vx) * PAN_SHIFT * width, abs(vy) * PAN_SHIFT * height
    ww, wh = width + math.ceil(px) + 1, height + math.ceil(py) + 1
    s = float(min(height, width))
    if bg.kind == "gradient":
        c2 = np.asarray(BACKGROUND_COLOURS[bg.colour2], dtype=np.float32)
        if bg.pattern == "vertical":
            f = (np.arange(wh, dtype=np.float32)[:, None] + 0.5) / wh
        else:
            f = (np.arange(ww, dtype=np.float32)[None, :] + 0.5) / ww
        world = np.broadcast_to(c1 + (c2 - c1) * f[..., None], (wh, ww, 3))
    else:
        xs = (np.arange(ww, dtype=np.float64)[None, :] + 0.5) / s
        ys = (np.arange(wh, dtype=np.float64)[:, None] + 0.5) / s
        lum = _texture(bg, scene.pan, xs, ys).astype(np.float32)
        world = np.clip(c1 + lum[..., None], 0.0, 255.0)
    if scene.pan == "none":
        out[:] = world[:height, :width]
        return out
    t = _times(frames)
    offset = (t if vx + vy > 0 else 1.0 - t) * (px + py)
    for i in range(frames):
        o = int(offset[i])
        f = np.float32(offset[i] - o)
        if vx:
            a, b = world[:height, o : o + width], world[:height, o + 1 : o + 1 + width]
        else:
            a, b = world[o : o + height, :width], world[o + 1 : o + 1 + height, :width]
        np.multiply(a, 1 - f, out=out[i])
        if f:
            out[i] += b * f
    return out


def shape_distance(shape: str, u: np.ndarray, v: np.ndarray, r: np.ndarray | float) -> np.ndarray:
    """Signed distance (pixels, negative inside) of ``shape`` with radius ``r`` at offsets ``(u, v)`` from its centre
    (pixels, v downwards). Exact for circles; a close bound elsewhere (enough for 1-pixel anti-aliasing)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return np.sqrt(u * u + v * v) - r
    if shape == "square":
        return np.maximum(au, av) - r
    if shape == "diamond":
        return (au + av - r) * np.float32(1 / math.sqrt(2))
    if shape == "triangle":
        return np.maximum(v - r, (2 * au - v - r) * np.float32(1 / math.sqrt(5)))
    if shape == "cross":
        w = CROSS_ARM * r
        return np.minimum(np.maximum(au - w, av - r), np.maximum(au - r, av - w))
    raise ValueError(f"unknown shape {shape!r}")


def _draw(canvas: np.ndarray, obj: SceneObject) -> None:
    """Alpha-blend ``obj`` into ``canvas`` [T, H, W, 3] (float32, in place) inside a window that follows it."""
    frames, height, width, _ = canvas.shape
    s = min(height, width)
    x, y, radius, visible = object_track(obj, frames, height, width)
    if not visible.any():
        return
    keep = np.nonzero(visible)[0]
    r_px = radius[keep] * s
    cx = x[keep] * width - 0.5  # pixel-centre coordinates
    cy = y[keep] * height - 0.5
    win = int(math.ceil(2 * r_px.max() + 4))
    wy, wx = min(win, height), min(win, width)
    y0 = np.clip(np.round(cy).astype(np.int64) - wy // 2, 0, height - wy)
    x0 = np.clip(np.round(cx).astype(np.int64) - wx // 2, 0, width - wx)
    iy = y0[:, None] + np.arange(wy)[None, :]  # [K, wy] pixel rows of each frame's window
    ix = x0[:, None] + np.arange(wx)[None, :]  # [K, wx]
    v = (iy - cy[:, None]).astype(np.float32)[:, :, None]
    u = (ix - cx[:, None]).astype(np.float32)[:, None, :]
    d = shape_distance(obj.shape, u, v, r_px.astype(np.float32)[:, None, None])
    alpha = np.clip(0.5 - d, 0.0, 1.0)[..., None]
    colour = np.asarray(COLOURS[obj.colour], dtype=np.float32)
    for k, i in enumerate(keep):
        region = canvas[i, y0[k] : y0[k] + wy, x0[k] : x0[k] + wx]
        region += (colour - region) * alpha[k]


def render(scene: Scene, frames: int = 33, height: int = 128, width: int = 128) -> np.ndarray:
    """The clip of ``scene`` as uint8 ``[frames, height, width, 3]`` (RGB)."""
    if frames < 1 or height < 8 or width < 8:
        raise ValueError(f"need frames >= 1 and height, width >= 8; got {frames}, {height}, {width}")
    canvas = _background(scene, frames, height, width)
    for obj in scene.objects:
        _draw(canvas, obj)
    canvas += 0.5
    return canvas.astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Captions

# Caption phrasings per attribute value (public so that tests and tools can parse captions).
SIZE_WORDS = {"small": ("small", "little"), "medium": ("medium", "medium sized"), "large": ("large", "big")}
SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "diamond": ("diamond",),
    "cross": ("cross", "plus sign"),
}


def _dir_phrases(d: str) -> tuple[str, ...]:
    if d in ("left", "right"):
        return (f"moves to the {d}", f"slides to the {d}", f"glides {d}", f"travels to the {d}", f"drifts {d}")
    if d == "up":
        return ("moves up", "rises", "slides upward", "floats up", "drifts upward")
    if d == "down":
        return ("moves down", "sinks", "slides downward", "drifts down", "travels downward")
    vert, hor = d.split("-")
    return (
        f"moves diagonally {vert} and to the {hor}",
        f"slides {vert} and to the {hor}",
        f"drifts diagonally {vert} and {hor}",
        f"moves {vert} and {hor}",
    )


MOTION_PHRASES: dict[str, tuple[str, ...]] = {
    **{d: _dir_phrases(d) for d in _DIRECTIONS},
    "static": ("stays still", "does not move", "stays in place", "remains still"),
    "bouncing": ("bounces", "bounces up and down", "keeps bouncing", "hops up and down"),
    "growing": ("grows", "grows larger", "gets bigger", "expands"),
    "reenter": (
        "leaves the frame and comes back",
        "exits the frame and returns",
        "moves out of view and comes back",
        "leaves and comes back",
    ),
}
_TEXTURE_WORDS = {"stripes": ("striped",), "checker": ("checkered",), "noise": ("mottled", "cloudy")}
_PAN_WORDS: dict[str, tuple[str, ...]] = {
    d: (
        f"while the camera pans {d}",
        f"as the camera pans to the {d}" if d in ("left", "right") else f"as the camera pans {d}",
        f"with the camera panning {d}",
    )
    for d in PANS[1:]
}
_STILL_CAMERA = ("with a still camera", "with a static camera")
_INTROS = ("", "in this video", "in this clip", "here")
_MAX_WORDS = 39


def _pick(rng: np.random.Generator, options: tuple[str, ...], short: bool) -> str:
    """One option: random, or the shortest when ``short``; the draw happens either way so later choices do not
    depend on ``short``."""
    choice = options[rng.integers(len(options))]
    return min(options, key=lambda o: len(o.split())) if short else choice


def _object_phrase(o: SceneObject, rng: np.random.Generator, short: bool) -> str:
    size = _pick(rng, SIZE_WORDS[o.size], short)
    shape = _pick(rng, SHAPE_WORDS[o.shape], short)
    motion = _pick(rng, MOTION_PHRASES[o.motion], short)
    return f"a {size} {o.colour} {shape} {motion}"


def _background_phrase(bg: Background, rng: np.random.Generator, short: bool) -> str:
    k = rng.integers(3)
    if bg.kind == "plain":
        return ("on a plain {c} background", "against a plain {c} background", "on a {c} background")[
            2 if short else k
        ].format(c=bg.colour)
    if bg.kind == "gradient":
        forms = (
            "on a {p} gradient from {c} to {d}",
            "on a background fading from {c} to {d}",
            "on a {c} to {d} gradient",
        )
        return forms[2 if short else k].format(p=bg.pattern, c=bg.colour, d=bg.colour2)
    texture = _pick(rng, _TEXTURE_WORDS[bg.pattern], short)
    return ("on a {c} {t} background", "against a {t} {c} background", "on a {t} {c} background")[
        0 if short else k
    ].format(c=bg.colour, t=texture)


def _build_caption(scene: Scene, rng: np.random.Generator, short: bool) -> str:
    objs = [_object_phrase(o, rng, short) for o in scene.objects]
    bg = _background_phrase(scene.background, rng, short)
    if scene.pan != "none":
        pan = _pick(rng, _PAN_WORDS[scene.pan], short)
    else:
        pan = _STILL_CAMERA[rng.integers(2)] if rng.random() < 0.25 else ""
        pan = "" if short else pan
    intro = _INTROS[rng.integers(len(_INTROS))]
    order = int(rng.integers(4))
    body = " and ".join(objs)
    if short:
        parts = [body, bg, pan]
    elif order == 0:
        parts = [intro, body, bg, pan]
    elif order == 1:
        parts = [bg, body, pan]
    elif order == 2 and pan.startswith(("while", "as")):
        parts = [pan, body, bg]
    else:
        parts = [intro, body, pan, bg]
    return " ".join(p for p in parts if p)


def caption(scene: Scene, rng_or_seed: np.random.Generator | int) -> str:
    """Plain lower-case English description of ``scene`` (words only, single spaces, no punctuation, at most 39
    words), with the phrasing drawn from ``rng_or_seed``. Falls back to the shortest phrasings when the drawn one is
    too long."""
    if isinstance(rng_or_seed, np.random.Generator):
        rng = rng_or_seed
    else:
        rng = np.random.default_rng([int(rng_or_seed) & 0xFFFFFFFF, 7])
    state = rng.bit_generator.state
    text = _build_caption(scene, rng, short=False)
    if len(text.split()) > _MAX_WORDS:
        rng.bit_generator.state = state  # the short build makes the same draws, so rng ends in the same state
        text = _build_caption(scene, rng, short=True)
    return text


def vocabulary() -> list[str]:
    """Every word any caption can contain, sorted."""
    words: set[str] = {"a", "and", "on", "against", "plain", "background", "gradient", "from", "to", "fading"}
    words |= set(COLOURS) | set(BACKGROUND_COLOURS) | set(GRADIENTS)
    for table in (SIZE_WORDS, SHAPE_WORDS, MOTION_PHRASES, _TEXTURE_WORDS, _PAN_WORDS):
        for options in table.values():
            for phrase in options:
                words |= set(phrase.split())
    for phrase in _STILL_CAMERA + _INTROS:
        words |= set(phrase.split())
    return sorted(words)


# ---------------------------------------------------------------------------------------------------------------


def make_clip(
    seed: int, split: str = "train", frames: int = 33, height: int = 128, width: int = 128
) -> tuple[np.ndarray, str, Scene]:
    """``(video, caption, scene)`` for ``seed``: video uint8 ``[frames, height, width, 3]``."""
    scene = sample_scene(seed, split)
    text = caption(scene, _rng(seed, split, 1))
    return render(scene, frames, height, width), text, scene
