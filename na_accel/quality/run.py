"""Running a pipeline for a comparison: decoded frames, final latents, per-step timing, peak memory, and the
transformer inputs of chosen denoising steps (for the per-layer attention error)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["RunResult", "frames_from_output", "num_samples", "run_pipeline"]


@dataclass
class RunResult:
    """One pipeline run: decoded frames [F, C, H, W] float32 in [0, 1] (F = 1 for an image) of the first output,
    every output of the call (``samples``, e.g. ``num_videos_per_prompt`` of them; ``samples[0]`` is ``frames``),
    final latents, timing per phase, peak CUDA memory per phase, and optionally the transformer inputs of chosen
    denoising steps (for the attention calibration).

    Phases: ``encode_s`` from the call to the first transformer forward (prompt encoding, latent preparation; with
    model offloading, moving the text encoders in and out), ``step_s`` each denoising step (from its first
    transformer forward, or the previous step's end, to the end of the step's scheduler update), ``decode_s`` from
    the last step's end to the end of the call (VAE decode, post-processing)."""

    frames: torch.Tensor
    latents: torch.Tensor | None
    total_s: float
    step_s: list[float]
    peak_mem_bytes: int | None = None
    captured: dict[int, tuple[tuple, dict]] = field(default_factory=dict)
    samples: list[torch.Tensor] = field(default_factory=list)
    encode_s: float | None = None
    decode_s: float | None = None
    phase_peak_mem_bytes: dict[str, int] | None = None  # encode / denoise / decode (CUDA only)

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


def _output_array(out: Any) -> Any:
    arr = None
    for attr in ("frames", "images", "videos"):
        if hasattr(out, attr):
            arr = getattr(out, attr)
            break
    if arr is None and isinstance(out, (tuple, list)):
        arr = out[0]
    if arr is None:
        raise TypeError(f"cannot find frames or images in pipeline output {type(out).__name__}")
    return arr


def num_samples(out: Any) -> int:
    """How many outputs (videos or images) a pipeline output with ``output_type="np"`` holds."""
    import numpy as np

    arr = _output_array(out)
    if isinstance(arr, list):
        return len(arr)
    if isinstance(arr, (torch.Tensor, np.ndarray)) and arr.ndim in (4, 5):
        return int(arr.shape[0])
    return 1


def frames_from_output(out: Any, index: int = 0) -> torch.Tensor:
    """A pipeline output with ``output_type="np"`` -> float32 [F, C, H, W] in [0, 1] for sample ``index``."""
    import numpy as np

    arr = _output_array(out)
    if isinstance(arr, list):
        arr = arr[index]
    elif isinstance(arr, torch.Tensor) or isinstance(arr, np.ndarray):
        if arr.ndim in (4, 5):
            arr = arr[index]
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
    cuda = device.type == "cuda" and torch.cuda.is_available()
    peaks = {"encode": 0, "denoise": 0, "decode": 0}

    def phase_peak(phase: str) -> None:
        """Fold the peak since the last reset into ``phase`` and start a new measurement."""
        if cuda:
            peaks[phase] = max(peaks[phase], int(torch.cuda.max_memory_allocated(device)))
            torch.cuda.reset_peak_memory_stats(device)

    def pre_hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if state["t_start"] is None:
            _sync(device)
            state["t_start"] = time.perf_counter()
            phase_peak("encode")
        if state["step"] in wanted and state["step"] not in state["captured"]:
            state["captured"][state["step"]] = (
                tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args),
                {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()},
            )

    def on_step_end(_pipe: Any, i: int, t: Any, cb_kwargs: dict) -> dict:
        _sync(device)
        state["marks"].append(time.perf_counter())
        phase_peak("denoise")
        state["step"] = i + 1
        lat = cb_kwargs.get("latents")
        if lat is not None:
            state["latents"] = lat.detach().clone()
        return {}

    handle = transformer.register_forward_pre_hook(pre_hook, with_kwargs=True) if transformer is not None else None
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
        t_end = time.perf_counter()
        total = t_end - t0
    finally:
        if handle is not None:
            handle.remove()
    start = state["t_start"] if state["t_start"] is not None else t0
    marks = [start] + state["marks"]
    steps = [b - a for a, b in zip(marks[:-1], marks[1:], strict=True)]
    phase_peak("decode" if state["marks"] else "encode")
    samples = [frames_from_output(out, j) for j in range(num_samples(out))]
    return RunResult(
        frames=samples[0],
        latents=state["latents"],
        total_s=total,
        step_s=steps,
        peak_mem_bytes=max(peaks.values()) if cuda else None,
        captured=state["captured"],
        samples=samples,
        encode_s=start - t0,
        decode_s=t_end - marks[-1],
        phase_peak_mem_bytes=dict(peaks) if cuda else None,
    )
