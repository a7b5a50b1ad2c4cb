"""Running a pipeline for a comparison: decoded frames, final latents, per-step timing, peak memory, and the
transformer inputs of chosen denoising steps (for the per-layer attention error)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["RunResult", "frames_from_output", "run_pipeline"]


@dataclass
class RunResult:
    """One pipeline run: decoded frames [F, C, H, W] float32 in [0, 1] (F = 1 for an image), final latents,
    timing, and optionally the transformer inputs of one denoising step (for the attention calibration)."""

    frames: torch.Tensor
    latents: torch.Tensor | None
    total_s: float
    step_s: list[float]
    peak_mem_bytes: int | None = None
    captured: dict[int, tuple[tuple, dict]] = field(default_factory=dict)

    @property
    def mean_step_s(self) -> float | None:
        return sum(self.step_s) / len(self.step_s) if self.step_s else None

    @property
    def is_video(self) -> bool:
        return self.frames.shape[0] > 1


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def _pipe_device(pipe: Any) -> torch.device:
    dev = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None)
    return torch.device(dev) if dev is not None else torch.device("cpu")


def frames_from_output(out: Any) -> torch.Tensor:
    """A pipeline output with ``output_type="np"`` -> float32 [F, C, H, W] in [0, 1] for the first sample."""
    import numpy as np

    arr = None
    for attr in ("frames", "images", "videos"):
        if hasattr(out, attr):
            arr = getattr(out, attr)
            break
    if arr is None and isinstance(out, (tuple, list)):
        arr = out[0]
    if arr is None:
        raise TypeError(f"cannot find frames or images in pipeline output {type(out).__name__}")
    if isinstance(arr, list):
        arr = arr[0]
    elif isinstance(arr, torch.Tensor) or isinstance(arr, np.ndarray):
        if arr.ndim in (4, 5):
            arr = arr[0]
    if isinstance(arr, list):  # list of PIL images or arrays (frames)
        arr = np.stack([np.asarray(a) for a in arr])
    t = torch.as_tensor(np.asarray(arr) if not isinstance(arr, torch.Tensor) else arr).float()
    if t.dim() == 2:
        t = t[None, :, :, None]
    if t.dim() == 3:  # one image, HWC or CHW
        t = t[None]
    # [F, H, W, C] (numpy layout from diffusers) or [F, C, H, W]
    if t.shape[-1] in (1, 3, 4) and t.shape[1] not in (1, 3, 4):
        t = t.permute(0, 3, 1, 2)
    elif t.shape[-1] in (1, 3, 4) and t.shape[1] in (1, 3, 4) and t.shape[-1] != t.shape[1]:
        t = t.permute(0, 3, 1, 2)
    if t.max() > 1.5:  # uint8 values
        t = t / 255.0
    return t.clamp(0, 1).contiguous()


def run_pipeline(
    pipe: Any,
    prompt: str,
    seed: int,
    capture_step: int | Iterable[int] | None = None,
    progress: bool = True,
    **gen_kwargs: Any,
) -> RunResult:
    """Run ``pipe(prompt, ...)`` with a CPU generator seeded with ``seed`` and ``output_type="np"``.

    Records the final latents (through ``callback_on_step_end``), the time per denoising step (synchronised on
    CUDA), the total time and the peak CUDA memory. With ``capture_step`` (one step index or several) the
    transformer's inputs of the first call at each of those steps are kept (cloned) in ``captured`` for
    :func:`attention_layer_errors`.
    """
    device = _pipe_device(pipe)
    transformer = getattr(pipe, "transformer", None)
    if capture_step is None:
        wanted: set[int] = set()
    elif isinstance(capture_step, int):
        wanted = {capture_step}
    else:
        wanted = {int(c) for c in capture_step}
    state: dict[str, Any] = {"step": 0, "t_start": None, "marks": [], "latents": None, "captured": {}}

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if state["t_start"] is None:
            _sync(device)
            state["t_start"] = time.perf_counter()
        if state["step"] in wanted and state["step"] not in state["captured"]:
            state["captured"][state["step"]] = (
                tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args),
                {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()},
            )

    def on_step_end(_pipe: Any, i: int, t: Any, cb_kwargs: dict) -> dict:
        _sync(device)
        state["marks"].append(time.perf_counter())
        state["step"] = i + 1
        lat = cb_kwargs.get("latents")
        if lat is not None:
            state["latents"] = lat.detach().clone()
        return {}

    handle = transformer.register_forward_pre_hook(pre_hook, with_kwargs=True) if transformer is not None else None
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=not progress)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    try:
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = pipe(
                prompt=prompt,
                generator=generator,
                output_type="np",
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                **gen_kwargs,
            )
        _sync(device)
        total = time.perf_counter() - t0
    finally:
        if handle is not None:
            handle.remove()
    start = state["t_start"] if state["t_start"] is not None else t0
    marks = [start] + state["marks"]
    steps = [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]
    peak = int(torch.cuda.max_memory_allocated(device)) if cuda else None
    return RunResult(
        frames=frames_from_output(out),
        latents=state["latents"],
        total_s=total,
        step_s=steps,
        peak_mem_bytes=peak,
        captured=state["captured"],
    )
