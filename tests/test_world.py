"""Procedural captioned clips (na_accel.tiny.world) and the attribute detector (na_accel.tiny.detect)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from na_accel.tiny import world as clips
from na_accel.tiny.detect import adherence, detect, temporal_coherence
from na_accel.tiny.world import (
    BACKGROUND_COLOURS,
    COLOURS,
    HELD_OUT,
    MOTION_PHRASES,
    MOTIONS,
    PANS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    Scene,
    SceneObject,
    caption,
    is_held_out,
    make_clip,
    render,
    sample_scene,
    vocabulary,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(frames=17, height=96, width=96)


@pytest.fixture(scope="module")
def scenes() -> dict[str, list[Scene]]:
    return {split: [sample_scene(s, split) for s in range(400)] for split in ("train", "eval")}


# ---------------------------------------------------------------------------------------------------------------
# Generator


def test_shapes_dtypes_and_sizes():
    video, text, scene = make_clip(3)
    assert video.shape == (33, 128, 128, 3) and video.dtype == np.uint8
    assert isinstance(text, str) and isinstance(scene, Scene)
    for frames, h, w in ((1, 32, 48), (9, 64, 40), (17, 96, 96)):
        v, _, _ = make_clip(5, "eval", frames=frames, height=h, width=w)
        assert v.shape == (frames, h, w, 3) and v.dtype == np.uint8


def test_determinism():
    a, ta, sa = make_clip(11)
    b, tb, sb = make_clip(11)
    assert a.tobytes() == b.tobytes() and ta == tb and sa == sb
    c, tc, _ = make_clip(12)
    assert a.tobytes() != c.tobytes()
    assert make_clip(11, "eval")[0].tobytes() != a.tobytes()
    assert caption(sa, 4) == caption(sa, 4)
    assert len({caption(sa, k) for k in range(30)}) > 3


def test_determinism_across_processes():
    code = (
        "import hashlib; from na_accel.tiny.world import make_clip; v, t, s = make_clip(123, 'eval', 9, 40, 48); "
        "print(hashlib.sha256(v.tobytes() + t.encode()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    v, t, _ = make_clip(123, "eval", 9, 40, 48)
    assert out.stdout.strip() == hashlib.sha256(v.tobytes() + t.encode()).hexdigest()


def test_scene_dict_round_trip():
    for seed in range(20):
        scene = sample_scene(seed, "eval")
        d = json.loads(json.dumps(scene.to_dict()))
        assert Scene.from_dict(d) == scene


def test_held_out_set():
    assert len(HELD_OUT) == 48  # 10% of 8 colours x 5 shapes x 12 motions
    assert {c for c, _, _ in HELD_OUT} == set(COLOURS)
    assert {s for _, s, _ in HELD_OUT} == set(SHAPES)
    assert {m for _, _, m in HELD_OUT} == set(MOTIONS)
    # every pair of attributes still occurs in training
    for c in COLOURS:
        for s in SHAPES:
            assert any((c, s, m) not in HELD_OUT for m in MOTIONS)
    for s in SHAPES:
        for m in MOTIONS:
            assert any((c, s, m) not in HELD_OUT for c in COLOURS)
    assert is_held_out(next(iter(HELD_OUT)))


def test_splits(scenes):
    for scene in scenes["train"]:
        assert not any(is_held_out(o) for o in scene.objects)
    for scene in scenes["eval"]:
        assert is_held_out(scene.objects[0])
    # eval covers many held-out triples
    assert len({s.objects[0].triple for s in scenes["eval"]}) >= 40


def test_scene_validity(scenes):
    for scene in scenes["train"] + scenes["eval"]:
        assert 1 <= len(scene.objects) <= 3
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
        bg = scene.background
        if bg.kind == "plain":
            assert scene.pan == "none"
        if bg.kind == "gradient":
            assert bg.colour2 != bg.colour
            assert scene.pan in (("none", "up", "down") if bg.pattern == "vertical" else ("none", "left", "right"))
        for i, o in enumerate(scene.objects):
            x, y, r, vis = clips.object_track(o, 65)
            if o.motion != "reenter":
                assert vis.all()
                assert np.all(x - r >= 0.0) and np.all(x + r <= 1.0) and np.all(y - r >= 0.0) and np.all(y + r <= 1.0)
            else:
                assert vis[0] and vis[-1] and not vis[32]
            for p in scene.objects[:i]:
                x2, y2, r2, vis2 = clips.object_track(p, 65)
                d = np.hypot(x - x2, y - y2)
                assert np.all((d >= r + r2) | ~vis | ~vis2)


def test_every_attribute_appears(scenes):
    everything = scenes["train"] + scenes["eval"]
    objs = [o for s in everything for o in s.objects]
    assert {o.colour for o in objs} == set(COLOURS)
    assert {o.shape for o in objs} == set(SHAPES)
    assert {o.motion for o in objs} == set(MOTIONS)
    assert {o.size for o in objs} == set(clips.SIZES)
    assert {s.background.kind for s in everything} == set(clips.BACKGROUNDS)
    assert {s.background.colour for s in everything} == set(BACKGROUND_COLOURS)
    assert {s.background.pattern for s in everything if s.background.kind == "textured"} == set(clips.TEXTURES)
    assert {s.background.pattern for s in everything if s.background.kind == "gradient"} == set(clips.GRADIENTS)
    assert {s.pan for s in everything} == set(PANS)
    assert Counter(len(s.objects) for s in everything).keys() == {1, 2, 3}


def test_motion_is_large_and_pan_scrolls():
    """Linear motions cover >= 0.4 of the frame; a pan moves the background; objects keep their on-screen path."""
    for m in MOTIONS[:8]:
        x, y, _, _ = clips.object_track(SceneObject("circle", "red", "small", m, 0.5, 0.5), 2)
        assert max(abs(x[1] - x[0]), abs(y[1] - y[0])) >= 0.4
    obj = SceneObject("square", "blue", "small", "static", 0.5, 0.5)
    still = Scene((obj,), clips.Background("textured", "gray", "", "checker", 7), "none")
    pan = Scene((obj,), clips.Background("textured", "gray", "", "checker", 7), "right")
    a, b = render(still, 9, 64, 64), render(pan, 9, 64, 64)
    assert np.array_equal(a[0], a[-1])
    assert not np.array_equal(b[0], b[-1])
    centre = (slice(None), slice(28, 36), slice(28, 36))
    assert np.array_equal(a[centre], b[centre])  # the object hides the background the same way


def test_backgrounds_never_look_like_objects():
    """Every background pixel (all colours, kinds, pans) has chroma well below the detector's 0.3 threshold."""
    worst = 0
    for seed in range(150):
        scene = sample_scene(seed)
        bare = Scene((), scene.background, scene.pan)
        v = render(bare, 5, 48, 48).astype(np.int16)
        worst = max(worst, int((v.max(-1) - v.min(-1)).max()))
    assert worst <= 0.2 * 255


def _words_ok(text: str, vocab: set[str]) -> bool:
    return set(text.split()) <= vocab


def test_captions():
    vocab = set(vocabulary())
    assert all(w == w.lower() and w.replace("-", "").isalpha() for w in vocab)
    templates = set()
    for split in ("train", "eval"):
        for seed in range(300):
            _, text, scene = make_clip(seed, split, frames=1, height=8, width=8)
            words = text.split()
            assert _words_ok(text, vocab), text
            assert len(words) < 40, text
            assert text == " ".join(words)  # single spaces, no punctuation
            for o in scene.objects:
                options = [
                    f"{size} {o.colour} {shape} {motion}"
                    for size in SIZE_WORDS[o.size]
                    for shape in SHAPE_WORDS[o.shape]
                    for motion in MOTION_PHRASES[o.motion]
                ]
                assert any(opt in text for opt in options), (text, o)
            assert scene.background.colour in words
            if scene.pan != "none":
                assert "pans" in words or "panning" in words
            templates.add(tuple(w for w in words[:2]))
            if len(scene.objects) > 1:
                assert "and" in words
    assert len(templates) >= 4


# ---------------------------------------------------------------------------------------------------------------
# Detector


def _accuracy(scenes: list[Scene], **size) -> tuple[Counter, int]:
    tot: Counter = Counter()
    n = 0
    for scene in scenes:
        video = render(scene, **size)
        det = detect(video)
        score = adherence(scene, det)
        assert score["extra_colours"] == []
        n += len(scene.objects)
        for key in ("colour", "motion", "shape", "size"):
            tot[key] += score[key] * len(scene.objects)
        tot["pan"] += (det.pan == scene.pan) * len(scene.objects)
    return tot, n


def test_detector_accuracy_small(scenes):
    """240 clips at 17x96x96 (both splits): measured 100% colour, motion, shape, size and pan (1200 clips too)."""
    chosen = scenes["train"][:120] + scenes["eval"][:120]
    tot, n = _accuracy(chosen, **SMALL)
    assert n >= 450
    assert tot["colour"] / n >= 0.99
    assert tot["motion"] / n >= 0.98
    assert tot["shape"] / n >= 0.97
    assert tot["size"] / n >= 0.97
    assert tot["pan"] / n >= 0.97


def test_detector_accuracy_default_size(scenes):
    chosen = scenes["train"][200:206] + scenes["eval"][200:206]
    tot, n = _accuracy(chosen)
    assert tot["colour"] == n and tot["motion"] == n
    assert tot["shape"] / n >= 0.95 and tot["size"] / n >= 0.95


def test_every_motion_and_shape_detected():
    """Each motion x shape once, on a textured, panning background, at a small size."""
    bg = clips.Background("textured", "beige", "", "noise", 3)
    for i, motion in enumerate(MOTIONS):
        for j, shape in enumerate(SHAPES):
            colour = list(COLOURS)[(i + j) % len(COLOURS)]
            rng = np.random.default_rng([i, j])
            x, y = clips._start_range(motion, clips.SIZES["medium"], rng)
            scene = Scene((SceneObject(shape, colour, "medium", motion, x, y),), bg, "up")
            det = detect(render(scene, 13, 80, 80))
            d = det.objects[colour]
            assert (d.motion, d.shape, d.size) == (motion, shape, "medium"), (d.features, d.shape_scores)
            assert det.pan == "up"


def _degrade(video: np.ndarray, seed: int) -> np.ndarray:
    """Blur (sigma 1 px), colour noise (sigma 10), a hue shift of 10 degrees, 0.2% speckles."""
    rng = np.random.default_rng(seed)
    v = video.astype(np.float32)
    k = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    k /= k.sum()
    n, h, w, _ = v.shape
    p = np.pad(v, ((0, 0), (3, 3), (0, 0), (0, 0)), mode="edge")
    v = sum(p[:, i : i + h] * k[i] for i in range(7))
    p = np.pad(v, ((0, 0), (0, 0), (3, 3), (0, 0)), mode="edge")
    v = sum(p[:, :, i : i + w] * k[i] for i in range(7))
    mean = v.mean(-1, keepdims=True)
    a = np.radians(10.0)
    axis = np.ones(3) / np.sqrt(3)
    kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx
    v = mean + (v - mean) @ rot.T.astype(np.float32)
    v = v + rng.normal(0, 10, v.shape)
    m = int(0.002 * v[..., 0].size)
    v[rng.integers(0, n, m), rng.integers(0, h, m), rng.integers(0, w, m)] = rng.uniform(0, 255, (m, 3))
    return np.clip(v, 0, 255).astype(np.uint8)


def test_detector_robust_to_degradation(scenes):
    """Blurred, noisy, hue-shifted, speckled clips. Measured on these 60 clips (111 objects): colour, motion, size
    and pan 100%, shape 98%."""
    tot: Counter = Counter()
    n = 0
    for i, scene in enumerate(scenes["train"][300:330] + scenes["eval"][300:330]):
        score = adherence(scene, detect(_degrade(render(scene, **SMALL), i)))
        n += len(scene.objects)
        tot["colour"] += score["colour"] * len(scene.objects)
        tot["motion"] += score["motion"] * len(scene.objects)
        tot["shape"] += score["shape"] * len(scene.objects)
    assert tot["colour"] / n >= 0.97 and tot["motion"] / n >= 0.95
    assert tot["shape"] / n >= 0.9


def test_adherence_can_fail():
    obj = SceneObject("triangle", "green", "medium", "left", 0.7, 0.5)
    shown = Scene((obj,), clips.Background("plain", "gray"), "none")
    video = render(shown, **SMALL)
    det = detect(video)
    assert adherence(shown, det)["all"] == 1.0

    wrong_motion = Scene((SceneObject("triangle", "green", "medium", "right", 0.3, 0.5),), shown.background)
    score = adherence(wrong_motion, det)
    assert score["colour"] == 1.0 and score["shape"] == 1.0 and score["motion"] == 0.0 and score["all"] == 0.0

    wrong_shape = Scene((SceneObject("circle", "green", "medium", "left", 0.7, 0.5),), shown.background)
    assert adherence(wrong_shape, det)["shape"] == 0.0

    wrong_colour = Scene((SceneObject("triangle", "blue", "medium", "left", 0.7, 0.5),), shown.background)
    score = adherence(wrong_colour, det)
    assert score["colour"] == score["motion"] == score["shape"] == 0.0
    assert score["extra_colours"] == ["green"]

    # an empty (background-only) video finds nothing
    empty = render(Scene((), shown.background), **SMALL)
    assert detect(empty).objects == {}
    assert adherence(shown, detect(empty))["colour"] == 0.0

    # two objects, one missing
    two = Scene((obj, SceneObject("circle", "pink", "small", "static", 0.3, 0.3)), shown.background)
    assert adherence(two, det)["colour"] == 0.5


def test_temporal_coherence():
    scene = sample_scene(8)
    video = render(scene, **SMALL)
    assert temporal_coherence(video) > 0
    assert temporal_coherence(video, reference=video) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    noisy = np.clip(video + rng.normal(0, 20, video.shape), 0, 255).astype(np.uint8)
    assert temporal_coherence(noisy, reference=video) > 3
    still = np.repeat(video[:1], len(video), axis=0)
    assert temporal_coherence(still) == 0.0


def test_detection_to_dict_is_json():
    det = detect(render(sample_scene(2), **SMALL))
    d = json.loads(json.dumps(det.to_dict()))
    assert set(d["objects"]) == {o.colour for o in sample_scene(2).objects}
