"""Quality check: a patched run against the dense run of the same seed and inputs.

What is compared:

* the final latents (relative L2 error and cosine similarity, computed in float64);
* the decoded frames or image (PSNR and SSIM per frame and their mean; LPIPS where available locally);
* the output of every attention module on one calibration step: the transformer is run once dense and once
  patched on the same inputs (captured from the dense run), with forward hooks on the attention modules; the
  relative L2 error per layer is reported. Errors accumulate through the network, so layer ``i`` shows the
  effect of every sparse layer up to and including ``i``.

``compare(pipe, config, prompt, seed, **gen_kwargs)`` returns a :class:`~.report.QualityReport` whose thresholds
come from the config's ``quality`` section.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from typing import Any

import torch

from ..errors import NAAccelError
from ..patching.api import PatchHandle, is_patched, patched
from ..patching.config import NAConfig, QualityThresholds, load_config
from .metrics import latent_metrics, lpips_distance, lpips_status, psnr, ssim
from .report import QualityReport
from .run import RunResult, run_pipeline

__all__ = ["attention_layer_errors", "calibration_step_for", "compare", "compare_runs", "coverage_notes",
           "sparse_config"]  # fmt: skip


def attention_modules(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every diffusers attention module of ``transformer`` (``Attention`` or ``AttentionModuleMixin``)."""
    classes: list[type] = []
    with contextlib.suppress(ImportError):
        from diffusers.models.attention_processor import Attention

        classes.append(Attention)
    with contextlib.suppress(ImportError):
        from diffusers.models.attention import AttentionModuleMixin

        classes.append(AttentionModuleMixin)
    out = []
    for name, m in transformer.named_modules():
        if (classes and isinstance(m, tuple(classes))) or (
            not classes and hasattr(m, "processor") and hasattr(m, "set_processor")
        ):
            out.append((name, m))
    return out


def _flat_output(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out.detach().to(torch.float64).flatten().cpu()
    if isinstance(out, (tuple, list)):
        parts = [_flat_output(o) for o in out]
        parts = [p for p in parts if p is not None]
        return torch.cat(parts) if parts else None
    return None


def _capture_attention(transformer: torch.nn.Module, inputs: tuple[tuple, dict]) -> dict[str, torch.Tensor]:
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in attention_modules(transformer):

        def hook(_m: torch.nn.Module, _a: Any, out: Any, _name: str = name) -> None:
            if _name not in outputs:  # first call of the module in this forward
                flat = _flat_output(out)
                if flat is not None:
                    outputs[_name] = flat

        handles.append(module.register_forward_hook(hook))
    args, kwargs = inputs
    try:
        with torch.no_grad():
            transformer(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return outputs


def attention_layer_errors(pipe: Any, config: NAConfig, inputs: tuple[tuple, dict]) -> list[dict[str, Any]]:
    """Relative L2 error of every attention module's output, patched vs dense, for one transformer call.

    ``inputs``: the (args, kwargs) of a transformer call captured by :func:`~.run.run_pipeline`. ``pipe`` must not
    be patched on entry; it is patched with ``config`` (every step sparse) for the second call and unpatched after.
    """
    transformer = pipe.transformer
    dense = _capture_attention(transformer, inputs)
    with patched(pipe, sparse_config(config)):
        sparse = _capture_attention(transformer, inputs)
    errors = []
    for name, _m in attention_modules(transformer):
        a, b = dense.get(name), sparse.get(name)
        if a is None or b is None or a.shape != b.shape:
            errors.append({"name": name, "rel_l2": None})
            continue
        na = a.norm().item()
        diff = (b - a).norm().item()
        errors.append({"name": name, "rel_l2": diff / na if na > 0 else (0.0 if diff == 0 else math.inf)})
    return errors


def sparse_config(config: NAConfig | str | dict) -> NAConfig:
    """``config`` with ``dense_steps = 0``: the calibration call is a single transformer forward, which the patch
    would count as step 0 (dense when the config has dense steps). Every other setting is kept."""
    return dataclasses.replace(load_config(config), dense_steps=0)


def config_name(config: NAConfig | str | os.PathLike | None) -> str:
    """A short human name for a config: "dense" for None, the preset name, or the file stem."""
    if config is None:
        return "dense"
    if isinstance(config, str | os.PathLike):
        return os.path.splitext(os.path.basename(str(config)))[0]
    if config.name:
        return config.name
    if config.source and not config.source.startswith("<"):
        return os.path.splitext(os.path.basename(config.source))[0]
    return "custom"


def calibration_step_for(config: NAConfig, num_steps: int) -> int:
    """The first sparse step (after the config's dense steps), or the last step when all are dense."""
    return max(0, min(config.dense_steps, num_steps - 1))


def compare_runs(
    dense: RunResult,
    patched: RunResult,
    *,
    model: str,
    config: str,
    prompt: str,
    seed: int,
    thresholds: QualityThresholds,
    attention: list[dict[str, Any]] | None = None,
    calibration_step: int | None = None,
    random_weights: bool = False,
    generation: dict[str, Any] | None = None,
    with_lpips: bool = True,
    attention_calls: dict[str, int] | None = None,
) -> QualityReport:
    """Build a :class:`QualityReport` from a dense and a patched :class:`RunResult` of the same inputs
    (``attention_calls``: the patch handle's :meth:`~na_accel.patching.api.PatchHandle.call_counts` for the patched
    run, so that a run without any sparse call is reported as testing nothing)."""
    notes: list[str] = []
    if dense.latents is not None and patched.latents is not None:
        lm = latent_metrics(dense.latents, patched.latents)
    else:
        lm = {"rel_l2": math.nan, "cosine": math.nan}
        notes.append("final latents were not captured (the pipeline has no callback_on_step_end)")
    a, b = dense.frames, patched.frames
    p = psnr(a, b).tolist()
    s = ssim(a, b).tolist()
    ok, status = lpips_status() if with_lpips else (False, "not requested")
    lp = None
    if ok and a.shape[1] == 3:
        d = lpips_distance(a, b)
        lp = d.tolist() if d is not None else None
        status = "available" if lp is not None else "unavailable: LPIPS failed to run"
    return QualityReport(
        model=model,
        config=config,
        prompt=prompt,
        seed=int(seed),
        latent_rel_l2=lm["rel_l2"],
        latent_cosine=lm["cosine"],
        psnr_per_frame=[float(v) for v in p],
        ssim_per_frame=[float(v) for v in s],
        thresholds=thresholds,
        lpips_per_frame=lp,
        lpips_status=status,
        attention=attention or [],
        calibration_step=calibration_step,
        dense_time_s=dense.total_s,
        patched_time_s=patched.total_s,
        dense_step_s=dense.mean_step_s,
        patched_step_s=patched.mean_step_s,
        random_weights=random_weights,
        generation=dict(generation or {}),
        notes=notes,
        attention_calls=dict(attention_calls) if attention_calls is not None else None,
    )


def compare(
    pipe: Any,
    config: Any,
    prompt: str,
    seed: int = 0,
    *,
    attention: bool = True,
    progress: bool = False,
    dense_run: RunResult | None = None,
    thresholds: QualityThresholds | None = None,
    model_label: str | None = None,
    random_weights: bool = False,
    **gen_kwargs: Any,
) -> QualityReport:
    """Run ``pipe`` dense and patched with ``config`` on the same prompt, seed and ``gen_kwargs``; compare.

    ``config``: a preset name, a YAML path, a dict or an ``NAConfig``. ``pipe`` must not already be patched (it
    is patched for the second run and restored after). ``dense_run`` reuses an earlier dense run of the same
    inputs (it must have captured the calibration step when ``attention`` is True). Thresholds come from the
    config's ``quality`` section unless ``thresholds`` is given.
    """
    cfg = load_config(config)
    if is_patched(pipe):
        raise NAAccelError("compare() needs an unpatched pipeline (call na_accel.unpatch(pipe) first)")
    steps = int(gen_kwargs.get("num_inference_steps") or _default_steps(pipe))
    cal = calibration_step_for(cfg, steps) if attention else None
    if dense_run is None or (attention and cal not in dense_run.captured):
        dense_run = run_pipeline(pipe, prompt, seed, capture_step=cal, progress=progress, **gen_kwargs)
    with patched(pipe, cfg) as handle:
        patched_run = run_pipeline(pipe, prompt, seed, progress=progress, **gen_kwargs)
        notes = coverage_notes(handle, cfg, steps)
        calls = handle.call_counts()
    errors = None
    if attention and cal in dense_run.captured:
        errors = attention_layer_errors(pipe, cfg, dense_run.captured[cal])
    label = model_label or getattr(getattr(pipe, "config", None), "_name_or_path", None) or type(pipe).__name__
    name = config_name(config if isinstance(config, str | os.PathLike) else cfg)
    report = compare_runs(
        dense_run,
        patched_run,
        model=label,
        config=name,
        prompt=prompt,
        seed=seed,
        thresholds=thresholds or cfg.quality,
        attention=errors,
        calibration_step=cal if errors is not None else None,
        random_weights=random_weights,
        generation={k: v for k, v in gen_kwargs.items() if isinstance(v, (int, float, str))},
        attention_calls=calls,
    )
    report.notes.extend(notes)
    return report


def coverage_notes(handle: PatchHandle, config: NAConfig, steps: int, comparison: bool = True) -> list[str]:
    """Warnings that make a comparison (``comparison=True``) or a patched generation vacuous: every step dense, or
    every window covering the whole grid."""
    notes = []
    ds = config.dense_steps
    if ds >= steps:
        what = "for a meaningful check (the attention error above is measured with the sparse windows all the same)"
        notes.append(
            f"all {steps} denoising step(s) ran dense (the config's dense_steps is {ds}): the patched run equals "
            f"dense; use --steps > {ds} " + (what if comparison else "to run sparse steps")
        )
    covering, grid = [], None
    for r in handle.layer_plans():
        if not r["patched"] or not r["grid"]:
            continue
        grid = tuple(r["grid"])
        for window in config.windows_for(r["layer"]):  # every window the layer gets at some step
            if window is not None:  # None: dense by rule
                covering.append(window.resolve(grid).params.is_dense)
    if covering and all(covering):
        notes.append(
            f"every window covers the whole token grid {grid} at this size (clamped): attention is effectively "
            "dense; use a larger --height/--width/--frames to exercise the sparse windows"
        )
    return notes


def _default_steps(pipe: Any) -> int:
    import inspect

    try:
        return int(inspect.signature(pipe.__call__).parameters["num_inference_steps"].default)
    except (KeyError, TypeError, ValueError):
        return 50
