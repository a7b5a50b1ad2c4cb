"""Writing outputs: PNG images, MP4 videos, JSON sidecars and side-by-side comparisons.

Every file is written to a hidden temporary file in the destination directory and moved into place with
``os.replace``, so a reader never sees a partial or corrupt file, and a failure leaves nothing behind.
Frames are float tensors or arrays [F, C, H, W] (or [F, H, W, C]) in [0, 1], or uint8 [F, H, W, C].
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_path",
    "check_writable_dir",
    "label_frames",
    "side_by_side",
    "slugify",
    "to_uint8",
    "write_json",
    "write_media",
    "video_writer_problem",
    "write_mp4",
    "write_png",
    "write_text",
]


def slugify(text: str, max_len: int = 40) -> str:
    """A file-name-safe short form of ``text``: lowercase letters, digits and dashes."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    s = s[:max_len].rstrip("-")
    return s or "prompt"


def check_writable_dir(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be used as an output directory (None when it can). Creates nothing.

    The directory may not exist yet: then its nearest existing ancestor must be a writable directory.
    """
    p = Path(path).expanduser()
    if p.exists():
        if not p.is_dir():
            return f"output path {str(p)!r} exists and is not a directory"
        if not os.access(p, os.W_OK | os.X_OK):
            return f"output directory {str(p)!r} is not writable"
        return None
    parent = p.absolute().parent
    while not parent.exists():
        if parent == parent.parent:
            return f"cannot create output directory {str(p)!r}"
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create output directory {str(p)!r}: {str(parent)!r} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create output directory {str(p)!r}: {str(parent)!r} is not writable"
    return None


def _umask() -> int:
    """The process's file mode creation mask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest`` (same suffix); on success move it onto ``dest``, else delete it.

    The file gets the mode a plain ``open(dest, "w")`` would give it (0666 less the umask: 0644 under umask 022),
    not the 0600 of the private temporary file."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=f".partial{dest.suffix}", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def to_uint8(frames: Any) -> np.ndarray:
    """Frames -> uint8 array [F, H, W, 3]. Accepts torch/numpy [F, C, H, W], [F, H, W, C], [C, H, W], [H, W, C]."""
    if hasattr(frames, "detach"):
        frames = frames.detach().cpu().float().numpy()
    a = np.asarray(frames)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"expected frames [F, C, H, W] or [F, H, W, C], got shape {a.shape}")
    if a.shape[1] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = a.transpose(0, 2, 3, 1)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] == 4:
        a = a[..., :3]
    return np.ascontiguousarray(a)


def write_png(path: str | os.PathLike, image: Any) -> Path:
    """Write one image (the first frame of ``image``) as PNG, atomically."""
    from PIL import Image

    arr = to_uint8(image)[0]
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path


def _even(a: np.ndarray) -> np.ndarray:
    """Pad H and W to even sizes (yuv420p needs them) by repeating the last row/column."""
    f, h, w, c = a.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        a = np.pad(a, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return a


def video_writer_problem() -> str | None:
    """Why MP4 files cannot be written here (None when they can): imageio's FFMPEG plugin needs imageio-ffmpeg."""
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except ImportError:
        return "cannot write MP4 videos: the imageio-ffmpeg package is not installed (pip install 'imageio[ffmpeg]')"
    except Exception as e:  # noqa: BLE001 - e.g. no ffmpeg binary for this platform
        return f"cannot write MP4 videos: no ffmpeg executable ({e})"
    return None


def write_mp4(path: str | os.PathLike, frames: Any, fps: int = 8) -> Path:
    """Write frames as an H.264 MP4 (imageio-ffmpeg), atomically. Every frame is kept (no frame dropping)."""
    import imageio.v2 as imageio

    a = _even(to_uint8(frames))
    path = Path(path)
    with atomic_path(path) as tmp:
        writer = imageio.get_writer(
            str(tmp),
            format="FFMPEG",
            mode="I",
            fps=fps,
            codec="libx264",
            pixelformat="yuv420p",
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-movflags", "+faststart"],
        )
        try:
            for frame in a:
                writer.append_data(frame)
        finally:
            writer.close()
    return path


def write_media(path_stem: str | os.PathLike, frames: Any, fps: int = 8) -> Path:
    """``stem.png`` for a single frame, ``stem.mp4`` for a video. Returns the written path."""
    n = to_uint8(frames).shape[0]
    stem = Path(path_stem)
    if n == 1:
        return write_png(stem.with_name(stem.name + ".png"), frames)
    return write_mp4(stem.with_name(stem.name + ".mp4"), frames, fps=fps)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write strict JSON (inf/nan as strings), indented, atomically."""
    from ..quality.report import json_safe

    path = Path(path)
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def label_frames(frames: Any, label: str, min_width: int = 0) -> np.ndarray:
    """uint8 frames [F, H, W, 3] with a text strip above them (and padded to ``min_width``)."""
    from PIL import Image, ImageDraw

    a = to_uint8(frames)
    f, h, w, _ = a.shape
    w_out = max(w, min_width)
    strip_h = max(14, min(28, w_out // 10))
    strip = Image.new("RGB", (w_out, strip_h), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    font = _font(max(9, strip_h - 6))
    text = label
    # shorten the label until it fits
    while len(text) > 1 and draw.textlength(text, font=font) > w_out - 4:
        text = text.rstrip("…")[:-1] + "…"
    draw.text((2, 1), text, fill=(0, 0, 0), font=font)
    strip_a = np.asarray(strip)
    out = np.full((f, h + strip_h, w_out, 3), 255, dtype=np.uint8)
    out[:, :strip_h] = strip_a[None]
    out[:, strip_h:, :w] = a
    return out


def upscale(frames: np.ndarray, min_size: int) -> np.ndarray:
    """Nearest-neighbour integer upscaling of uint8 [F, H, W, 3] until the short side is >= ``min_size``."""
    f, h, w, _ = frames.shape
    k = max(1, -(-min_size // max(1, min(h, w))))
    if k == 1:
        return frames
    return frames.repeat(k, axis=1).repeat(k, axis=2)


def side_by_side(items: Sequence[tuple[str, Any]], gap: int = 4, min_size: int = 128) -> np.ndarray:
    """Labelled frames placed left to right: uint8 [F, H, W, 3]. Shorter videos hold their last frame.

    Small frames (tiny models) are upscaled (nearest neighbour, integer factor) to at least ``min_size`` pixels.
    """
    labelled = [label_frames(upscale(to_uint8(frames), min_size), label) for label, frames in items]
    if not labelled:
        raise ValueError("nothing to place side by side")
    n = max(a.shape[0] for a in labelled)
    h = max(a.shape[1] for a in labelled)
    w = sum(a.shape[2] for a in labelled) + gap * (len(labelled) - 1)
    out = np.full((n, h, w, 3), 255, dtype=np.uint8)
    x = 0
    for a in labelled:
        idx = np.minimum(np.arange(n), a.shape[0] - 1)
        out[:, : a.shape[1], x : x + a.shape[2]] = a[idx]
        x += a.shape[2] + gap
    return out
