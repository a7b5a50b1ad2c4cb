"""Read object attributes back from a video and score how well it follows a :class:`~.world.Scene`.

:func:`detect` works on any uint8 RGB video ``[T, H, W, 3]`` (generator output or a model's), in five steps:

1. **Pixels.** A pixel belongs to an object when its chroma ``max(R, G, B) - min(R, G, B)`` is at least 0.3 of the
   range. Object colours have chroma >= 0.7 and every background (muted palette, gradients, textures) <= 0.18, so
   backgrounds, grey noise and dim blur halos drop out. Its colour is the palette colour with the nearest hue (the
   angle in the chroma plane; palette hues are 30-60 degrees apart, so a hue may be off by up to 15-28 degrees).
2. **Cleaning.** Per colour and frame: a 3x3 opening finds solid cores (speckles and one- or two-pixel colour
   fringes have none), raw pixels next to a core are kept, and pixels farther than ``2.2 sqrt(area / pi) + 2``
   pixels from the mask's median point are dropped (stray blobs of the same colour).
3. **Tracks.** A colour is *present* in a frame with at least ``max(4, 0.0015 H W)`` pixels and is *found* when
   present in at least 40% of the frames. Per frame it gets a centroid (fractions of width / height), area and box.
4. **Motion**, from the track, tested in this order:
   ``reenter``  absent for a run of frames (>= 6% of the clip, at least one) between presence in the first and
                last quarters, and touching or near (0.15) an edge just before and just after the gap;
   ``growing``  ``sqrt(area)`` (fitted linearly over time, frames not touching the border) grows by >= 1.35x;
   ``bouncing`` the vertical position deviates from its straight-line fit by a standard deviation >= 0.06;
   ``static``   the straight-line fit moves the centroid less than 0.15 of the frame;
   otherwise the direction of the fitted displacement, in eight 45-degree sectors (left, up-left, ...).
   The generator's values are 0 and 1.8x, 0.134 and 0.5-0.57, so each test sits far from both sides.
5. **Shape and size**, from up to 8 frames where the object touches neither the border nor another object's box:
   each shape is drawn at the mask's centroid with the mask's area (analysis by synthesis, so stray edge pixels and
   blur barely matter) and compared with the mask by IoU; the shape with the highest mean IoU wins
   (``shape_scores``; ``shape_margin``, best minus second, below about 0.05 marks an unreliable guess). Size: the
   radius implied by the area for that shape, over ``min(H, W)`` (median; for ``growing`` the linear fit at t = 0),
   classified with thresholds 0.095 and 0.13 between the generator's radii 0.08, 0.11, 0.15.
6. **Camera pan** (``Detection.pan``) from the background's shift over the clip, see :func:`_pan`.

:func:`adherence` compares a detection with the scene a video was meant to show; :func:`temporal_coherence` measures
frame-to-frame change. Accuracy on ground-truth clips and on degraded ones: :data:`MEASURED`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .world import COLOURS, SHAPES, SIZES, Scene, is_held_out, shape_distance
from .world import PAN_SHIFT as PAN_SPEED

MEASURED = """\
Ground truth (generator output of seeds 0..N-1 of both splits; 1-3 objects, every background and pan):
  17x96x96    1200 clips, 2324 objects: colour, motion, shape, size, pan 100%, no extra colours
  33x128x128   200 clips,  409 objects: colour, motion, shape, size, pan 100%
  9x64x64      600 clips, 1192 objects: colour, motion, shape, size, pan 100%
Mildly degraded (tests/test_world.py _degrade: blur sigma 1 px, colour noise sigma 10, hue turned 10 degrees, 0.2%
speckles), 17x96x96, 400 clips, 808 objects: colour, motion, pan 100%, shape 98.6% (blurred crosses read as
diamonds), size 99.8%.
Heavily degraded (blur sigma 2 px, noise sigma 20, hue turned by up to 15 degrees, saturation x0.7, 1% speckles),
17x96x96, 400 clips: colour 98.3%, motion 96.0%, pan 95.4%, shape 57%, size 63%.
Time: about 25 ms per 33x128x128 clip, 12 ms per 17x96x96 clip (one core).
"""

CHROMA_MIN = 0.3  # object pixel: (max - min channel) / 255 at least this
PRESENT_FRACTION = 0.0015  # of the frame area (and at least 4 pixels)
FOUND_FRACTION = 0.4  # of the frames
REENTER_GAP = 0.06  # of the clip (at least one frame)
GROWTH_MIN = 1.35
BOUNCE_STD = 0.06
STATIC_SHIFT = 0.15
SIZE_EDGES = (0.095, 0.13)
PAN_MIN = 0.12  # of the frame (the generator pans PAN_SPEED = 0.3)
PAN_GAIN = 2.0  # per step, squared levels; see _pan
PAN_MATCH = 0.9
PAN_CLIP = 40.0
SHAPE_FRAMES = 8  # shape is judged on at most this many frames, evenly spread
_NAMES = tuple(COLOURS)


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees [0, 360) as the angle in the chroma plane; rgb [..., 3] float."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.degrees(np.arctan2(math.sqrt(3) / 2 * (g - b), r - 0.5 * (g + b))) % 360.0


_CENTRES = _hue(np.asarray(list(COLOURS.values()), dtype=np.float64))
_HUE_GAP = np.abs((np.arange(360)[:, None] + 0.5 - _CENTRES[None, :] + 180.0) % 360.0 - 180.0)
_LUT = np.argmin(_HUE_GAP, axis=1).astype(np.int8)  # whole degree of hue -> nearest palette colour


def _shape_constants() -> tuple[np.ndarray, np.ndarray]:
    """Area (in units of r^2) and vertical centroid offset (in units of r, downwards) of each shape."""
    c = (np.arange(400) + 0.5) / 400 * 2.0 - 1.0
    u, v = c[None, :], c[:, None]
    inside = np.stack([shape_distance(s, u, v, 1.0) <= 0 for s in SHAPES])
    area = inside.mean(axis=(1, 2)) * 4.0
    dy = (inside * v[None]).sum(axis=(1, 2)) / inside.sum(axis=(1, 2))
    return area, dy


_AREA, _DY = _shape_constants()


def _shape_iou(mask: np.ndarray, frames: np.ndarray, px: np.ndarray, py: np.ndarray, area: np.ndarray) -> np.ndarray:
    """[S] mean IoU, over ``frames``, of ``mask`` [T, h, w] with each shape drawn at the mask's centroid
    ``(px, py)`` (pixel-centre coordinates of ``mask``) and with its area."""
    r = np.sqrt(area[frames, None] / _AREA[None, :])  # [F, S] pixels
    half = int(math.ceil(1.5 * r.max())) + 2
    pad = np.pad(mask, ((0, 0), (half, half), (half, half)))
    px, py = px[frames], py[frames]
    ox, oy = np.round(px).astype(np.int64), np.round(py).astype(np.int64)
    off = np.arange(-half, half + 1)
    crop = pad[frames[:, None, None], (oy[:, None] + half + off)[:, :, None], (ox[:, None] + half + off)[:, None, :]]
    u = (ox[:, None] + off[None, :] - px[:, None])[:, None, None, :]  # [F, 1, 1, N]
    v = (oy[:, None] + off[None, :] - py[:, None])[:, None, :, None]
    ious = []
    for k, shape in enumerate(SHAPES):
        rk = r[:, k, None, None, None]
        model = shape_distance(shape, u, v + _DY[k] * rk, rk)[:, 0] <= 0  # [F, N, N]
        inter = (model & crop).sum(axis=(1, 2))
        union = (model | crop).sum(axis=(1, 2))
        ious.append((inter / np.maximum(union, 1)).mean())
    return np.asarray(ious)


@dataclass
class DetectedObject:
    """What :func:`detect` found for one colour. Positions are fractions of the frame width / height; ``areas`` are
    fractions of the frame; ``radius`` is a fraction of ``min(H, W)``."""

    colour: str
    centroids: list[tuple[float, float] | None]
    areas: list[float]
    motion: str
    shape: str
    shape_scores: dict[str, float]
    shape_margin: float
    size: str
    radius: float
    mean_position: tuple[float, float]
    displacement: tuple[float, float]
    features: dict[str, float] = field(default_factory=dict)

    @property
    def present(self) -> list[bool]:
        return [c is not None for c in self.centroids]


@dataclass
class Detection:
    """All colours found in a video (key: colour name)."""

    frames: int
    height: int
    width: int
    objects: dict[str, DetectedObject]
    pan: str = "none"
    pan_shift: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "frames": self.frames,
            "height": self.height,
            "width": self.width,
            "pan": self.pan,
            "pan_shift": self.pan_shift,
            "objects": {k: asdict(o) for k, o in self.objects.items()},
        }


# ---------------------------------------------------------------------------------------------------------------
# Masks


def _erode(m: np.ndarray) -> np.ndarray:
    """3x3 erosion of [T, H, W] bool (outside the frame counts as set, so objects at the border keep their edge)."""
    out = m.copy()
    out[:, 1:] &= m[:, :-1]
    out[:, :-1] &= m[:, 1:]
    m = out.copy()
    out[:, :, 1:] &= m[:, :, :-1]
    out[:, :, :-1] &= m[:, :, 1:]
    return out


def _dilate(m: np.ndarray) -> np.ndarray:
    """3x3 dilation of [T, H, W] bool."""
    out = m.copy()
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    m = out.copy()
    out[:, :, 1:] |= m[:, :, :-1]
    out[:, :, :-1] |= m[:, :, 1:]
    return out


def _median_index(weights: np.ndarray) -> np.ndarray:
    """Per row of [T, N] non-negative weights, the index where the cumulative sum reaches half the total."""
    cs = np.cumsum(weights, axis=1)
    return np.argmax(cs >= cs[:, -1:] / 2.0, axis=1)


def _clean(mask: np.ndarray) -> np.ndarray:
    """Cleaned object mask [T, H, W]: pixels next to a 3x3-solid core, near the frame's median point."""
    m = mask & _dilate(_dilate(_erode(mask)))
    area = m.sum(axis=(1, 2)).astype(np.float64)
    my = _median_index(m.sum(axis=2))
    mx = _median_index(m.sum(axis=1))
    gate = 2.2 * np.sqrt(area / np.pi) + 2.0
    _, h, w = m.shape
    dy2 = (np.arange(h)[None, :] - my[:, None]) ** 2  # [T, H]
    dx2 = (np.arange(w)[None, :] - mx[:, None]) ** 2  # [T, W]
    return m & (dy2[:, :, None] + dx2[:, None, :] <= (gate**2)[:, None, None])


def _first_last(any_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of [T, N] bool, the first and last set index (0 and N - 1 for an empty row)."""
    n = any_.shape[1]
    return np.argmax(any_, axis=1), n - 1 - np.argmax(any_[:, ::-1], axis=1)


# ---------------------------------------------------------------------------------------------------------------
# Track analysis


def _linfit(t: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least-squares line y = a + b t; returns (a, b, residual std)."""
    if len(t) < 2 or np.ptp(t) == 0:
        return float(np.mean(y)), 0.0, 0.0
    tc = t - t.mean()
    b = float((tc * (y - y.mean())).sum() / (tc * tc).sum())
    a = float(y.mean() - b * t.mean())
    return a, b, float(np.std(y - (a + b * t)))


def _reenter(present: np.ndarray, near_edge: np.ndarray) -> float:
    """Length (frames) of the longest absence between an exit and a re-entry at an edge; 0 when there is none."""
    n = len(present)
    idx = np.nonzero(present)[0]
    if len(idx) < 2 or idx[0] > 0.25 * (n - 1) or idx[-1] < 0.75 * (n - 1):
        return 0.0
    best = 0
    for a, b in zip(idx[:-1], idx[1:], strict=True):
        if b - a > 1 and near_edge[a] and near_edge[b]:
            best = max(best, int(b - a - 1))
    return float(best) if best >= max(1, round(REENTER_GAP * (n - 1))) else 0.0


_SECTORS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")


def _motion(
    t: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    root_area: np.ndarray,
    clear: np.ndarray,
    present: np.ndarray,
    near_edge: np.ndarray,
) -> tuple[str, dict[str, float]]:
    """Motion label from a track (see the module docstring, step 4) and the features it was decided on."""
    gap = _reenter(present, near_edge)
    p = present
    _, bx, _ = _linfit(t[p], cx[p])
    _, by, y_std = _linfit(t[p], cy[p])
    sel = p & clear if (p & clear).sum() >= 3 else p
    a0, a1, _ = _linfit(t[sel], root_area[sel])
    growth = (a0 + a1) / a0 if a0 > 0 else 1.0
    feats = {"gap_frames": gap, "growth": growth, "bounce_std": y_std, "shift": math.hypot(bx, by)}
    if gap:
        return "reenter", feats
    if growth >= GROWTH_MIN:
        return "growing", feats
    if y_std >= BOUNCE_STD:
        return "bouncing", feats
    if math.hypot(bx, by) < STATIC_SHIFT:
        return "static", feats
    angle = math.degrees(math.atan2(-by, bx)) % 360.0
    return _SECTORS[int((angle + 22.5) // 45) % 8], feats


def _size_class(radius: float) -> str:
    """small / medium / large for a radius (fraction of min(H, W))."""
    names = list(SIZES)
    return names[int(np.searchsorted(SIZE_EDGES, radius))]


# ---------------------------------------------------------------------------------------------------------------
# Camera pan


def _shift_errors(a: np.ndarray, b: np.ndarray, ka: np.ndarray, kb: np.ndarray, reach: int) -> np.ndarray:
    """[2, 2 reach + 1] mean truncated squared difference between image ``b`` at p and image ``a`` at p + shift,
    for shifts -reach..reach along x (row 0) and along y (row 1), over pixels kept in both (inf: too few)."""
    h, w = a.shape
    out = np.full((2, 2 * reach + 1), np.inf)
    for axis in (0, 1):
        for i, d in enumerate(range(-reach, reach + 1)):
            dx, dy = (d, 0) if axis == 0 else (0, d)
            ys, xs = slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx))
            ys2, xs2 = slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx))
            k = kb[ys, xs] & ka[ys2, xs2]
            cnt = k.sum()
            if cnt > 16:
                diff = np.minimum(np.abs(b[ys, xs] - a[ys2, xs2]), PAN_CLIP)
                out[axis, i] = float((diff * diff * k).sum() / cnt)
    return out


def _pan(video: np.ndarray, colour_px: np.ndarray, objects: np.ndarray) -> tuple[str, float]:
    """Camera pan from the background's motion: ``(pan, shift)``, the total shift over the clip as a fraction of
    the frame along the pan axis (positive: right / down).

    Works on half-resolution luminance, leaving out pixels of any palette colour (``colour_px``, chroma >= 0.3) and
    the detected objects (``objects``) with a ring of about 0.04 of the frame around them (blurred edges move with
    the objects). For frames k apart (k = (T - 1) / 8, at least 1) it measures the mean squared difference (each
    pixel's difference truncated at PAN_CLIP levels, so speckles weigh little) between a frame and its predecessor
    shifted by whole pixels along x and along y, up to 1.5 times the generator's per-step pan (so periodic textures
    cannot alias), and sums these error curves over the clip. The clip pans when the best shift lowers the summed
    error below that of no shift by at least PAN_GAIN squared levels and to at most PAN_MATCH of it (noise changes
    it between shifts by far less; plain and still backgrounds have their best at no shift or no gain), and that
    shift (refined to sub-pixel by a parabola, times the number of steps) is at least PAN_MIN of the frame."""
    n, h, w, _ = video.shape
    if n < 2 or h < 16 or w < 16:
        return "none", 0.0
    h2, w2 = h // 2, w // 2
    k = max(1, round((n - 1) / 8))
    frames = np.arange(0, n, k)

    def half(x: np.ndarray) -> list[np.ndarray]:  # the four pixels of each 2x2 block
        return [x[:, i : 2 * h2 : 2, j : 2 * w2 : 2] for i in (0, 1) for j in (0, 1)]

    v = video[frames].astype(np.float32)
    lum = sum(half(v[..., 0] + v[..., 1] + v[..., 2])) / 12.0
    obj = np.logical_or.reduce(half(objects[frames]))
    for _ in range(2 + round(0.02 * min(h2, w2))):
        obj = _dilate(obj)
    keep = ~(obj | np.logical_or.reduce(half(colour_px[frames])))
    reach = max(2, math.ceil(1.5 * PAN_SPEED * max(h2, w2) * k / (n - 1)))
    errors = sum(_shift_errors(lum[i], lum[i + 1], keep[i], keep[i + 1], reach) for i in range(len(frames) - 1))
    e0 = errors[0, reach]
    axis, i = (int(j) for j in np.unravel_index(np.argmin(errors), errors.shape))
    e = errors[axis]
    if not (np.isfinite(e0) and e[i] <= e0 - PAN_GAIN * (len(frames) - 1) and e[i] <= PAN_MATCH * e0):
        return "none", 0.0
    sub = 0.0
    if 0 < i < len(e) - 1 and np.isfinite(e[i - 1]) and np.isfinite(e[i + 1]):
        den = e[i - 1] - 2 * e[i] + e[i + 1]
        sub = 0.5 * (e[i - 1] - e[i + 1]) / den if den > 0 else 0.0
    steps = (n - 1) / k  # steps of k frames in the whole clip
    shift = (i - reach + sub) * steps / (w2 if axis == 0 else h2)
    if abs(shift) < PAN_MIN:
        return "none", 0.0
    names = ("left", "right") if axis == 0 else ("up", "down")
    return names[int(shift > 0)], float(shift)


# ---------------------------------------------------------------------------------------------------------------
# Detection


def _labels(video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of object pixels and their palette colour index."""
    r, g, b = video[..., 0], video[..., 1], video[..., 2]
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    idx = np.flatnonzero(chroma >= round(CHROMA_MIN * 255))
    rgb = video.reshape(-1, 3)[idx].astype(np.float32)
    lab = _LUT[_hue(rgb).astype(np.int64) % 360]
    return idx, lab


def detect(video: np.ndarray) -> Detection:
    """Find the palette-coloured objects of ``video`` (uint8 ``[T, H, W, 3]``; float in [0, 1] is accepted) and
    describe each: track, motion, shape, size. See the module docstring for the method."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected [T, H, W, 3], got {video.shape}")
    if video.dtype != np.uint8:
        video = (np.clip(video.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    n, h, w, _ = video.shape
    idx, lab = _labels(video)
    frame_of = idx // (h * w)
    counts = np.bincount(frame_of * len(_NAMES) + lab, minlength=n * len(_NAMES)).reshape(n, len(_NAMES))
    min_px = max(4.0, PRESENT_FRACTION * h * w)
    need = max(min(2, n), FOUND_FRACTION * n)  # frames a colour must be present in
    candidates = [c for c in range(len(_NAMES)) if (counts[:, c] >= min_px).sum() >= need]
    t = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
    s = min(h, w)

    per: dict[int, dict[str, np.ndarray]] = {}
    for c in candidates:
        # work in the colour's bounding box over the whole clip (plus a margin), in crop coordinates
        pix = idx[lab == c]
        f, rest = np.divmod(pix, h * w)
        py, px = np.divmod(rest, w)
        oy, ox = max(0, int(py.min()) - 3), max(0, int(px.min()) - 3)
        ch, cw = min(h, int(py.max()) + 4) - oy, min(w, int(px.max()) + 4) - ox
        mask = np.zeros((n, ch, cw), dtype=bool)
        mask[f, py - oy, px - ox] = True
        m = _clean(mask)
        area = m.sum(axis=(1, 2)).astype(np.float64)
        present = area >= min_px
        if present.sum() < need:
            continue
        y0, y1 = _first_last(m.any(axis=2))
        x0, x1 = _first_last(m.any(axis=1))
        x0, x1, y0, y1 = x0 + ox, x1 + ox, y0 + oy, y1 + oy
        safe = np.maximum(area, 1.0)
        cx = (m.sum(axis=1) @ (np.arange(cw) + ox + 0.5)) / safe / w
        cy = (m.sum(axis=2) @ (np.arange(ch) + oy + 0.5)) / safe / h
        border = (x0 == 0) | (y0 == 0) | (x1 == w - 1) | (y1 == h - 1)
        near = border | (np.minimum(np.minimum(cx, 1 - cx), np.minimum(cy, 1 - cy)) < 0.15)
        per[c] = dict(
            mask=m,
            origin=(ox, oy),
            area=area,
            present=present,
            box=np.stack([x0, y0, x1, y1], 1),
            cx=cx,
            cy=cy,
            border=border,
            near=near & present,
        )

    objects: dict[str, DetectedObject] = {}
    for c, d in per.items():
        present, box = d["present"], d["box"]
        overlap = np.zeros(n, dtype=bool)
        for c2, d2 in per.items():
            if c2 != c:
                b2 = d2["box"]
                overlap |= (
                    d2["present"]
                    & (box[:, 0] <= b2[:, 2] + 1)
                    & (b2[:, 0] <= box[:, 2] + 1)
                    & (box[:, 1] <= b2[:, 3] + 1)
                    & (b2[:, 1] <= box[:, 3] + 1)
                )
        bw, bh = box[:, 2] - box[:, 0] + 1, box[:, 3] - box[:, 1] + 1
        clear = present & ~d["border"] & (np.minimum(bw, bh) >= 4)
        good = clear & ~overlap
        if not good.any():
            good = clear if clear.any() else present
        motion, feats = _motion(t, d["cx"], d["cy"], np.sqrt(d["area"]), clear, present, d["near"])

        fi = np.nonzero(good)[0]
        fi = fi[np.unique(np.linspace(0, len(fi) - 1, min(len(fi), SHAPE_FRAMES)).round().astype(np.int64))]
        ox, oy = d["origin"]
        iou = _shape_iou(d["mask"], fi, d["cx"] * w - 0.5 - ox, d["cy"] * h - 0.5 - oy, d["area"])
        order = np.argsort(iou)[::-1]
        shape = SHAPES[int(order[0])]
        # radius from the area and the shape's area constant (robust to stray edge pixels, unlike the box)
        rad = np.sqrt(d["area"] / _AREA[order[0]]) / s
        if motion == "growing" and good.sum() >= 2:
            radius = _linfit(t[good], rad[good])[0]
        else:
            radius = float(np.median(rad[good]))
        cents = [(float(d["cx"][i]), float(d["cy"][i])) if present[i] else None for i in range(n)]
        _, bx, _ = _linfit(t[present], d["cx"][present])
        _, by, _ = _linfit(t[present], d["cy"][present])
        objects[_NAMES[c]] = DetectedObject(
            colour=_NAMES[c],
            centroids=cents,
            areas=[float(a) / (h * w) for a in d["area"]],
            motion=motion,
            shape=shape,
            shape_scores={SHAPES[k]: float(iou[k]) for k in range(len(SHAPES))},
            shape_margin=float(iou[order[0]] - iou[order[1]]),
            size=_size_class(radius),
            radius=float(radius),
            mean_position=(float(d["cx"][present].mean()), float(d["cy"][present].mean())),
            displacement=(bx, by),
            features=feats,
        )
    colour_px = np.zeros(n * h * w, dtype=bool)
    colour_px[idx] = True
    found = np.zeros((n, h, w), dtype=bool)
    for d in per.values():
        (ox, oy), m = d["origin"], d["mask"]
        found[:, oy : oy + m.shape[1], ox : ox + m.shape[2]] |= m
    pan, shift = _pan(video, colour_px.reshape(n, h, w), found)
    return Detection(n, h, w, objects, pan, shift)


# ---------------------------------------------------------------------------------------------------------------
# Scores


def adherence(scene: Scene, det: Detection) -> dict[str, Any]:
    """Prompt adherence of a detected video to ``scene``, JSON-ready.

    Per scene object: ``colour_found`` (its colour was detected), ``motion_ok``, ``shape_ok``, ``size_ok`` (the
    detection of that colour has the scene's motion / shape / size; false when the colour was not found), the
    detected values and whether the object is a held-out triple. Aggregates over the scene's objects: fractions
    ``colour``, ``motion``, ``shape``, ``size`` and ``all`` (colour, motion and shape all right); ``extra_colours``:
    colours detected but not in the scene; ``pan``: 1.0 when the detected camera pan is the scene's, else 0.0."""
    rows = []
    for o in scene.objects:
        d = det.objects.get(o.colour)
        rows.append(
            {
                "colour": o.colour,
                "shape": o.shape,
                "motion": o.motion,
                "size": o.size,
                "held_out": is_held_out(o),
                "colour_found": d is not None,
                "motion_ok": d is not None and d.motion == o.motion,
                "shape_ok": d is not None and d.shape == o.shape,
                "size_ok": d is not None and d.size == o.size,
                "detected_motion": d.motion if d else None,
                "detected_shape": d.shape if d else None,
                "detected_size": d.size if d else None,
            }
        )

    def frac(key: str) -> float:
        return float(np.mean([r[key] for r in rows])) if rows else 0.0

    for r in rows:
        r["all_ok"] = r["colour_found"] and r["motion_ok"] and r["shape_ok"]
    wanted = {o.colour for o in scene.objects}
    return {
        "objects": rows,
        "colour": frac("colour_found"),
        "motion": frac("motion_ok"),
        "shape": frac("shape_ok"),
        "size": frac("size_ok"),
        "all": frac("all_ok"),
        "extra_colours": sorted(set(det.objects) - wanted),
        "pan": float(det.pan == scene.pan),
        "detected_pan": det.pan,
    }


def summarize(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate :func:`adherence` results of many clips: per-object fractions over all objects (``colour``,
    ``motion``, ``shape``, ``size``, ``all``), the same over held-out objects only (``held_out_*``), the camera-pan
    accuracy over clips whose scene pans, and the mean number of colours detected but not asked for."""
    objects = [r for s in scores for r in s["objects"]]
    held = [r for r in objects if r["held_out"]]

    def frac(rows: list[dict], key: str) -> float | None:
        return float(np.mean([r[key] for r in rows])) if rows else None

    out: dict[str, Any] = {"clips": len(scores), "objects": len(objects), "held_out_objects": len(held)}
    for key, name in (("colour_found", "colour"), ("motion_ok", "motion"), ("shape_ok", "shape"),
                      ("size_ok", "size"), ("all_ok", "all")):  # fmt: skip
        out[name] = frac(objects, key)
        out[f"held_out_{name}"] = frac(held, key)
    panning = [s for s in scores if s["objects"] and s.get("detected_pan") is not None]
    out["pan"] = float(np.mean([s["pan"] for s in panning])) if panning else None
    out["extra_colours_mean"] = float(np.mean([len(s["extra_colours"]) for s in scores])) if scores else None
    return out


def temporal_coherence(video: np.ndarray, reference: np.ndarray | None = None) -> float:
    """Mean absolute change between consecutive frames, in [0, 1] units of the pixel range (0 for a still video).

    With ``reference`` (e.g. the ground-truth render of the same scene) the ratio of the two values is returned:
    about 1 for a video that changes as much as the reference, above 1 for flicker or noise, below 1 for a video
    that moves less."""

    def change(v: np.ndarray) -> float:
        v = np.asarray(v)
        v = v.astype(np.float32) / (255.0 if v.dtype == np.uint8 else 1.0)
        return float(np.abs(np.diff(v, axis=0)).mean()) if len(v) > 1 else 0.0

    own = change(video)
    if reference is None:
        return own
    ref = change(reference)
    return own / ref if ref > 0 else (1.0 if own == 0 else math.inf)
