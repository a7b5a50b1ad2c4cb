"""End-to-end step benchmark: a real-size transformer with random weights, dense vs a config.

Speed does not depend on the weights, so the transformer is built directly on the GPU in bf16 with the real
model's configuration (the family adapter's ``real_config``), fed random inputs of the real shapes, and one
denoising step (one transformer call) is timed dense and patched. On a CPU only the tiny transformer can be used
(``tiny=True``), which exercises the code path but measures nothing meaningful.

The record says whether the patched step really ran sparse attention (``patched_step_sparse``): at a small token
grid a config's windows may cover the whole grid, and then the "patched" step is a dense step; its speedup and the
projection are then left out (null) rather than reported as a sparse step's.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..patching.families import family_adapter

__all__ = ["BenchCase", "build_transformer", "count_text", "family_from", "make_case", "run_bench"]


def family_from(family: str | None, model_class: str | None) -> str:
    """The family to benchmark from ``--family`` / ``--model-class`` (default hunyuan)."""
    from ..patching.families import FAMILIES, adapter_for_class

    if model_class:
        adapter = adapter_for_class(model_class)
        if adapter is None:
            classes = ", ".join(a.model_class for a in FAMILIES.values())
            raise InputError(f"unsupported model class {model_class!r}; choose one of {classes}")
        if family and family != adapter.family:
            raise InputError(f"--model-class {model_class} is a {adapter.family} model, not {family}")
        return adapter.family
    fam = family or "hunyuan"
    if fam not in FAMILIES:
        raise InputError(f"unknown family {fam!r}; choose one of {', '.join(FAMILIES)}")
    return fam


@dataclass
class BenchCase:
    family: str
    height: int
    width: int
    frames: int
    tiny: bool
    vae_spatial: int
    vae_temporal: int
    text_tokens: int

    @property
    def latent_shape(self) -> tuple[int, ...]:
        h, w = self.height // self.vae_spatial, self.width // self.vae_spatial
        if self.family == "flux":
            return (16, h, w)
        return (16, (self.frames - 1) // self.vae_temporal + 1, h, w)

    @property
    def token_grid(self) -> tuple[int, ...]:
        return family_adapter(self.family).real_token_grid(self.height, self.width, self.frames)


def make_case(family: str, height: int | None, width: int | None, frames: int | None, tiny: bool) -> BenchCase:
    if tiny:
        from ..tiny import default_generation_kwargs

        d = default_generation_kwargs(family)
        sizes = dict(
            height=d["height"],
            width=d["width"],
            frames=d.get("num_frames", 1),
            vae_spatial=8,
            vae_temporal=8 if family == "cosmos" else (1 if family == "flux" else 4),
            text_tokens=d.get("max_sequence_length", 32),
        )
    else:
        sizes = dict(family_adapter(family).real_size)
    h = height if height is not None else sizes["height"]
    w = width if width is not None else sizes["width"]
    f = frames if frames is not None else sizes["frames"]
    mult = sizes["vae_spatial"] * 2
    from .generate import MAX_FRAMES, MAX_SIDE

    for name, v in (("height", h), ("width", w)):
        if not 1 <= v <= MAX_SIDE:
            raise InputError(f"--{name} {v} is out of range: height and width must be between {mult} and {MAX_SIDE}")
        if v % mult:
            raise InputError(f"--{name} {v} is not a positive multiple of {mult} (VAE scale x patch size)")
    if not 1 <= f <= MAX_FRAMES:
        raise InputError(f"--frames {f} is out of range: the frame count must be between 1 and {MAX_FRAMES}")
    if family == "flux":
        if f != 1:
            raise InputError(f"FLUX generates images; --frames must be 1 or omitted, got {f}")
    elif f < 1 or (f - 1) % sizes["vae_temporal"]:
        t = sizes["vae_temporal"]
        raise InputError(f"--frames {f} is not of the form {t}k+1 required by the {family} VAE")
    return BenchCase(family, h, w, f, tiny, sizes["vae_spatial"], sizes["vae_temporal"], sizes["text_tokens"])


def build_transformer(family: str, tiny: bool, device: str, dtype: Any) -> Any:
    import torch

    if tiny:
        from ..tiny import tiny_transformer

        return tiny_transformer(family).to(device=device, dtype=dtype).eval()
    import diffusers

    adapter = family_adapter(family)
    cls_name, kwargs = adapter.model_class, dict(adapter.real_config)
    if family == "cosmos" and kwargs.get("concat_padding_mask"):
        try:
            import torchvision  # noqa: F401
        except ImportError:  # the padding-mask channel needs torchvision's resize; speed is unaffected
            kwargs["concat_padding_mask"] = False
    cls = getattr(diffusers, cls_name)
    with torch.device(device):
        model = cls(**kwargs).to(dtype)
    return model.eval()


def _time(fn: Any, device: str, warmup: int, iters: int) -> list[float]:
    import torch

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


def run_bench(
    family: str,
    config: Any,
    config_name: str,
    case: BenchCase,
    *,
    device: str,
    iters: int = 1,
    warmup: int = 1,
    total_steps: int = 50,
    echo: Any = print,
) -> dict[str, Any]:
    """Time one transformer call dense and patched; return a JSON-ready record."""
    import torch

    import na_accel

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    t0 = time.perf_counter()
    tr = build_transformer(family, case.tiny, device, dtype)
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in tr.parameters())
    inputs = family_adapter(family).example_inputs(tr, case.latent_shape, case.text_tokens, device, dtype)
    echo(
        f"built {type(tr).__name__} ({count_text(n_params)} parameters, {str(dtype).replace('torch.', '')}) "
        f"on {device} in {build_s:.1f} s; token grid {case.token_grid}"
    )

    def step() -> None:
        with torch.no_grad():
            tr(**inputs)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    echo("timing dense ...")
    dense = _time(step, device, warmup, iters)
    dense_mem = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    patch_summary = None
    echo(f"timing {config_name} ...")
    handle = _patch(na_accel, tr, config)
    layer_plans = None
    try:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        patched = _time(step, device, warmup, iters)
        patched_mem = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
        patch_summary = handle.summary()
        layer_plans = plan_rows(handle)
        calls = handle.call_counts()
        dense_reason = _dense_reason(handle, calls)
    finally:
        handle.unpatch()
    d, p = statistics.median(dense), statistics.median(patched)
    sparse = calls["sparse"] > 0
    ds = min(config.dense_steps, total_steps)
    proj_dense = total_steps * d
    proj_patched = ds * d + (total_steps - ds) * p if sparse else None
    return {
        "family": family,
        "model_class": type(tr).__name__,
        "parameters": n_params,
        "tiny": case.tiny,
        "random_weights": True,
        "config": config_name,
        "height": case.height,
        "width": case.width,
        "frames": case.frames,
        "latent_shape": list(case.latent_shape),
        "token_grid": list(case.token_grid),
        "text_tokens": case.text_tokens,
        "dtype": str(dtype).replace("torch.", ""),
        "iters": iters,
        "warmup": warmup,
        "dense_step_s": d,
        "patched_step_s": p,
        "dense_step_all_s": dense,
        "patched_step_all_s": patched,
        "patched_step_sparse": sparse,
        "patched_attention_calls": calls,
        "patched_dense_reason": None if sparse else dense_reason,
        "speedup_per_sparse_step": d / p if sparse and p > 0 else None,
        "dense_steps": ds,
        "projection_steps": total_steps,
        "projected_dense_s": proj_dense,
        "projected_patched_s": proj_patched,
        "projected_speedup": proj_dense / proj_patched if proj_patched else None,
        "peak_mem_dense_bytes": dense_mem,
        "peak_mem_patched_bytes": patched_mem,
        "patch_summary": patch_summary,
        "patch_layers": layer_plans,
        "build_s": build_s,
    }


def count_text(n: int) -> str:
    """A parameter count for people: 123, 45.6K, 7.89M, 12.8B."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _dense_reason(handle: Any, calls: dict[str, int]) -> str | None:
    """Why the timed patched calls made no sparse attention call (None when they made one)."""
    if calls["sparse"]:
        return None
    reasons = []
    for row in handle.layer_plans():
        why = row["dense_reason"] or (f"fallback: {row['last_fallback']}" if row["last_fallback"] else None)
        if why and why not in reasons:
            reasons.append(why)
    return "; ".join(reasons) or "every attention call ran dense"


def _patch(na_accel: Any, tr: Any, config: Any) -> Any:
    """Patch the bare transformer with the config's windows on every step (the timed call is a sparse step;
    the dense steps enter only the projection)."""
    from ..quality.compare import sparse_config

    return na_accel.patch(tr, config=sparse_config(config))


def plan_rows(handle: Any) -> list[dict[str, Any]] | None:
    """Per-layer plan of a patch handle as JSON-ready rows (None when the handle cannot say)."""
    from ..quality.report import json_safe

    rows = getattr(handle, "layer_plans", None)
    if rows is None:
        return None
    try:
        return [json_safe({k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()}) for r in rows()]
    except Exception:  # noqa: BLE001 - reporting only
        return None
