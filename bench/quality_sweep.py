#!/usr/bin/env python3
"""Speed-vs-quality sweep of GNA windows on the embedded text-to-video model (trained HunyuanVideo pipeline).

For every config (window x dense steps x stride) the held-out eval prompts of the model (seeds from 3_000_000, as
``stage_eval`` of ``training/train_tiny_t2v.py``; one CPU generator per clip, seeded with the clip's seed) are
generated in batches with the pipeline patched, and compared with the dense generation of the same prompts and
seeds (generated once):

* PSNR and SSIM of the decoded frames against dense (per clip: the mean over frames; then mean and min over clips);
* relative L2 error of the final latents against dense (from ``callback_on_step_end`` at the last step);
* prompt adherence of the generated clips (:mod:`na_accel.tiny.detect`), also for the dense row;
* attention recall: the share of dense softmax mass inside the GNA window (:mod:`na_accel.quality.locality`),
  measured on every sparse attention call for a fixed sample of grid queries; mean over layers, steps, heads and
  sampled queries, and the lowest per-layer mean;
* wall time of the pipeline calls (synchronised; the recall probe runs inside them and is included).

With ``--precisions bf16,fp8`` every config also runs with ``precision: fp8`` (8-bit attention operands, dense steps
included; Hopper GPUs): its row (label ``...-fp8``) adds PSNR / SSIM against the bf16 row of the same config and the
difference in prompt adherence, and counts the calls that fell back to 16 bits (``fp8_fallbacks``).

The attention FLOP bound of a window is ``1 / density`` over the video grid (``GNAParams.density``: the exact
fraction of attended query-key grid pairs; text tokens excluded); it does not depend on the stride.
``flop_bound_steps`` averages it over the denoising steps (dense steps count 1).

Windows (``--windows``) are integers per axis of the latent token grid; the defaults are chosen for the model's
grid (9, 16, 16): (8, 12, 12) 2.00x, (4, 12, 12) 4.00x, (3, 10, 10) 7.68x, (3, 8, 8) 12.00x. Dense steps are
fractions of the steps (``--dense-fractions``), rounded half up (16 steps: 0, 2, 5). Stride ``1`` is neighbourhood
attention; ``tile`` is ``min(query tile, window)`` per axis with the Triton kernel's 3-D query tile (2, 8, 8), which
makes GNA perfectly block-sparse.

Writes ``OUT/quality-sweep-<date>[-tag].json`` (environment, settings, one row per config; rewritten after every
config, so an interrupted run keeps what it finished), ``.md`` (the table), ``.png`` (PSNR, recall and adherence
against the FLOP bound) and, with ``--strip NAME``, ``-strip.png`` (8 frames of the first prompt, dense above NAME).
Progress goes to stderr. Usage::

    PYTHONPATH=. python3 bench/quality_sweep.py --out DIR [--pipeline DIR] [--count 64] [--batch 32] [--strip NAME]
    PYTHONPATH=. python3 bench/quality_sweep.py --smoke --pipeline DIR --out /tmp/sweep   # CPU check, ~2 minutes
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

import na_accel  # noqa: E402
from na_accel.errors import ShapeError  # noqa: E402
from na_accel.kernels.configs import FAST  # noqa: E402
from na_accel.ops.precision import PRECISIONS, fp8_fallbacks  # noqa: E402
from na_accel.ops.semantics import make_params  # noqa: E402
from na_accel.patching.config import load_config  # noqa: E402
from na_accel.patching.families import adapter_for  # noqa: E402
from na_accel.quality.locality import LocalityProbe  # noqa: E402
from na_accel.quality.metrics import latent_metrics, psnr, ssim  # noqa: E402
from na_accel.tiny import detect, world  # noqa: E402
from na_accel.tools import media  # noqa: E402

DEFAULT_PIPELINE = Path(na_accel.__file__).resolve().parent / "tiny" / "t2v_pipeline"
WINDOWS = ((8, 12, 12), (4, 12, 12), (3, 10, 10), (3, 8, 8))
DENSE_FRACTIONS = (0.0, 0.1, 0.3)
STRIDES = ("1", "tile")
TILE = FAST[3][0].tq  # the Triton 3-D kernel's query tile, (2, 8, 8)
SMOKE_CONFIGS = (((4, 12, 12), "1", 0.0), ((3, 8, 8), "tile", 0.3))
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
STRIP_FRAMES = 8
_T0 = time.perf_counter()


def say(msg: str) -> None:
    """A progress line on stderr, with the seconds since start."""
    print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepConfig:
    """One sparse config of the sweep: a window, its stride and the number of dense steps."""

    window: tuple[int, ...]
    stride: tuple[int, ...]
    stride_kind: str  # "1" or "tile"
    dense_steps: int
    density: float  # exact fraction of attended grid pairs
    steps: int
    precision: str = "bf16"

    @property
    def twin(self) -> str:
        """The label of the same config in bf16 (its reference for an 8-bit row)."""
        return f"w{_x(self.window)}-s{self.stride_kind}-d{self.dense_steps}"

    @property
    def label(self) -> str:
        return self.twin + ("" if self.precision == "bf16" else f"-{self.precision}")

    @property
    def flop_bound(self) -> float:
        return 1.0 / self.density

    @property
    def flop_bound_steps(self) -> float:
        """The attention FLOP bound averaged over the denoising steps (dense steps at 1x)."""
        return self.steps / (self.dense_steps + (self.steps - self.dense_steps) * self.density)

    def config(self) -> dict[str, Any]:
        """The na_accel patch config (every layer the same window)."""
        return {
            "version": 1,
            "model": "HunyuanVideoTransformer3DModel",
            "description": f"quality sweep {self.label}",
            "defaults": {"kernel_size": list(self.window), "stride": list(self.stride),
                         "dense_steps": self.dense_steps, "on_oversize": "raise", "precision": self.precision},
        }  # fmt: skip


def _x(values) -> str:
    return "x".join(str(int(v)) for v in values)


def dense_steps_for(fraction: float, steps: int) -> int:
    """``fraction`` of ``steps``, rounded half up (0.1 and 0.3 of 16 steps: 2 and 5)."""
    return int(math.floor(fraction * steps + 0.5))


def make_configs(grid: tuple[int, ...], windows, strides, fractions, steps: int,
                 precisions=("bf16",)) -> list[SweepConfig]:  # fmt: skip
    """Every (dense steps, stride, window, precision) combination, windows in the given order, each 8-bit config
    right after its bf16 twin; duplicates dropped (e.g. when two fractions round to one step count, or a window is
    smaller than the tile so both strides are equal)."""
    out: list[SweepConfig] = []
    seen = set()
    for fraction in fractions:
        dense = dense_steps_for(fraction, steps)
        for kind in strides:
            for window in windows:
                window = tuple(int(w) for w in window)
                if len(window) != len(grid):
                    raise SystemExit(f"window {window} needs one entry per grid axis {grid}")
                stride = (1,) * len(grid) if kind == "1" else tuple(min(t, k) for t, k in zip(TILE, window))
                key = (window, stride, dense)
                if key in seen:
                    continue
                seen.add(key)
                try:
                    params = make_params(grid, window, stride)
                except ShapeError as exc:
                    raise SystemExit(f"window {window} does not fit the token grid {grid}: {exc}") from exc
                for precision in precisions:
                    out.append(SweepConfig(window, stride, kind, dense, params.density(), steps, precision))
    return out


# --------------------------------------------------------------------------------------------------------------
# Generation and scoring
# --------------------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_batch(pipe: Any, prompts: list[str], seeds: list[int], gen: dict[str, Any], device: torch.device,
              output_type: str = "pt") -> tuple[torch.Tensor, torch.Tensor, float]:  # fmt: skip
    """One batched pipeline call: ``(frames [b, T, 3, H, W] float32 in [0, 1], final latents float32, seconds)``.

    Every clip has its own CPU generator seeded with its seed; ``negative_prompt`` is repeated per clip. The final
    latents are taken in ``callback_on_step_end`` at the last step (what the VAE decodes). With ``output_type``
    ``"latent"`` the frames are the latents.
    """
    gen = dict(gen)
    negative = gen.pop("negative_prompt", None)
    last = int(gen["num_inference_steps"]) - 1
    state: dict[str, torch.Tensor] = {}

    def on_step_end(_pipe: Any, i: int, _t: Any, kwargs: dict) -> dict:
        if i == last:
            state["latents"] = kwargs["latents"].detach().float().clone()
        return {}

    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    extra = {} if negative is None else {"negative_prompt": [negative] * len(prompts)}
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = pipe(prompt=prompts, generator=generators, output_type=output_type, callback_on_step_end=on_step_end,
                   callback_on_step_end_tensor_inputs=["latents"], **extra, **gen).frames  # fmt: skip
    _sync(device)
    seconds = time.perf_counter() - t0
    return out.float(), state["latents"], seconds


def _adherence(scene: world.Scene, video: np.ndarray) -> dict[str, Any]:
    """Detector score of one uint8 clip ``[T, H, W, 3]`` (a top-level function, for the process pool)."""
    return detect.adherence(scene, detect.detect(video))


class Scorer:
    """Detector scoring of clips: in a pool of spawned processes when there are CPU cores to spare (so the detector
    never competes with the pipeline's Python thread), else inline."""

    def __init__(self, workers: int) -> None:
        self.pool = None
        if workers > 1:
            self.pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))

    def score(self, scenes: list[world.Scene], videos: list[np.ndarray]) -> list[dict[str, Any]]:
        if self.pool is None:
            return [_adherence(s, v) for s, v in zip(scenes, videos, strict=True)]
        return list(self.pool.map(_adherence, scenes, videos))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def clip_metrics(ref: torch.Tensor, out: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-clip mean over frames of PSNR (dB) and SSIM of ``out`` against ``ref`` (both ``[b, T, 3, H, W]``)."""
    p, s = [], []
    for a, b in zip(ref, out, strict=True):
        p.append(float(psnr(a, b).mean()))
        s.append(float(ssim(a, b).mean()))
    return p, s


def to_uint8(frames: torch.Tensor) -> list[np.ndarray]:
    """``[b, T, 3, H, W]`` in [0, 1] -> list of uint8 ``[T, H, W, 3]`` (what the detector reads)."""
    u8 = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2).cpu().numpy()
    return list(u8)


@dataclass
class Prompts:
    scenes: list[world.Scene]
    captions: list[str]
    seeds: list[int]


def eval_prompts(count: int) -> Prompts:
    """The first ``count`` held-out prompts of the world (:func:`na_accel.tiny.world.eval_prompts`)."""
    seeds, scenes, captions = zip(*world.eval_prompts(count), strict=True)
    return Prompts(list(scenes), list(captions), list(seeds))


def generate_all(pipe: Any, prompts: Prompts, gen: dict[str, Any], batch: int, device: torch.device, name: str,
                 on_batch) -> float:  # fmt: skip
    """Generate every prompt in batches; ``on_batch(start, frames, latents)`` after each; returns the seconds spent
    in pipeline calls."""
    total = 0.0
    n = len(prompts.captions)
    for start in range(0, n, batch):
        sl = slice(start, start + batch)
        frames, latents, seconds = run_batch(pipe, prompts.captions[sl], prompts.seeds[sl], gen, device)
        total += seconds
        on_batch(start, frames, latents)
        say(f"{name}: {min(start + batch, n)} / {n} clips ({total:.1f} s in the pipeline)")
    return total


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def sweep_row(cfg: SweepConfig | None, pipe: Any, prompts: Prompts, gen: dict[str, Any], batch: int,
              device: torch.device, dense: dict[str, Any] | None, scorer: Scorer, probe_queries: int | None,
              warmup: bool, twin: dict[str, Any] | None = None,
              keep_frames: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Generate and score one row (``cfg`` None: the dense baseline). Returns ``(row, kept)``; ``kept`` holds the
    dense reference (frames and latents on the device) for the dense row (and, with ``keep_frames``, the frames of
    a sparse row: the reference of its 8-bit twin) and the first clip's uint8 frames. ``twin``: the bf16 row's
    ``kept`` and row, compared with this (8-bit) row."""

    name = "dense" if cfg is None else cfg.label
    handle = probe = None
    if cfg is not None:
        if warmup:  # compile / specialise the kernel for this window outside the timed calls
            with na_accel.patched(pipe, dict(cfg.config(), defaults={**cfg.config()["defaults"], "dense_steps": 0})):
                run_batch(pipe, prompts.captions[:batch], prompts.seeds[:batch], dict(gen, num_inference_steps=1),
                          device, output_type="latent")  # fmt: skip
        handle = na_accel.patch(pipe, cfg.config())
        probe = LocalityProbe(queries=probe_queries).attach(handle)
    n = len(prompts.captions)
    per = {"psnr": [None] * n, "ssim": [None] * n, "latent_rel_l2": [None] * n}
    if twin is not None:
        per.update(psnr_vs_bf16=[None] * n, ssim_vs_bf16=[None] * n)
    videos: list[np.ndarray] = []
    kept: dict[str, Any] = {}
    if cfg is None or keep_frames:
        kept["frames"], kept["latents"] = [], []
    fp8_before = fp8_fallbacks()

    def on_batch(start: int, frames: torch.Tensor, latents: torch.Tensor) -> None:
        if cfg is None or keep_frames:
            kept["frames"].append(frames)
            kept["latents"].append(latents)
        if twin is not None:
            p, s = clip_metrics(twin["kept"]["frames"][start : start + len(frames)], frames)
            for j in range(len(frames)):
                per["psnr_vs_bf16"][start + j], per["ssim_vs_bf16"][start + j] = p[j], s[j]
        if cfg is not None:
            ref = dense["frames"][start : start + len(frames)]
            p, s = clip_metrics(ref, frames)
            for j in range(len(frames)):
                per["psnr"][start + j], per["ssim"][start + j] = p[j], s[j]
                lm = latent_metrics(dense["latents"][start + j], latents[j])
                per["latent_rel_l2"][start + j] = lm["rel_l2"]
        if start == 0:
            kept["first"] = to_uint8(frames[:1])[0]
        videos.extend(to_uint8(frames))

    try:
        seconds = generate_all(pipe, prompts, gen, batch, device, name, on_batch)
        calls = handle.call_counts() if handle is not None else None
        recall = probe.summary() if probe is not None else None
        if recall is not None:  # compact per (layer, step): [layer, step, [kept mass per head]]
            recall["records"] = [[r["layer"], r["step"], [round(v, 5) for v in r["kept_mass"]]]
                                 for r in probe.records()]  # fmt: skip
    finally:
        if handle is not None:
            handle.unpatch()
    if cfg is None or keep_frames:
        kept["frames"] = torch.cat(kept["frames"])
        kept["latents"] = torch.cat(kept["latents"])
    fallbacks = {k: v - fp8_before.get(k, 0) for k, v in fp8_fallbacks().items() if v > fp8_before.get(k, 0)}
    scores = scorer.score(prompts.scenes, videos)
    row: dict[str, Any] = {
        "label": name,
        "window": None if cfg is None else list(cfg.window),
        "stride": None if cfg is None else list(cfg.stride),
        "stride_kind": None if cfg is None else cfg.stride_kind,
        "dense_steps": None if cfg is None else cfg.dense_steps,
        "density": 1.0 if cfg is None else cfg.density,
        "flop_bound": 1.0 if cfg is None else cfg.flop_bound,
        "flop_bound_steps": 1.0 if cfg is None else cfg.flop_bound_steps,
        "clips": n,
        "psnr_db": _mean(per["psnr"]),
        "psnr_db_min": min(per["psnr"]) if cfg is not None else None,
        "ssim": _mean(per["ssim"]),
        "ssim_min": min(per["ssim"]) if cfg is not None else None,
        "latent_rel_l2": _mean(per["latent_rel_l2"]),
        "latent_rel_l2_max": max(per["latent_rel_l2"]) if cfg is not None else None,
        "adherence": detect.summarize(scores),
        "recall": recall,
        "seconds": round(seconds, 3),
        "seconds_per_clip": round(seconds / n, 4),
        "attention_calls": calls,
        "per_clip": {**per, "adherence_all": [s["all"] for s in scores]},
    }
    if cfg is not None:
        row["precision"] = cfg.precision
        row["fp8_fallbacks"] = fallbacks
        if fallbacks:
            say(f"WARNING {name}: {sum(fallbacks.values())} attention call(s) asked for fp8 and ran in 16 bits: "
                f"{fallbacks}")  # fmt: skip
    if twin is not None:
        ref_all = twin["row"]["adherence"].get("all")
        row.update(
            bf16_twin=twin["row"]["label"],
            psnr_vs_bf16_db=_mean(per["psnr_vs_bf16"]),
            psnr_vs_bf16_db_min=min(per["psnr_vs_bf16"]),
            ssim_vs_bf16=_mean(per["ssim_vs_bf16"]),
            adherence_delta_vs_bf16=None if ref_all is None or row["adherence"].get("all") is None
            else row["adherence"]["all"] - ref_all,
        )  # fmt: skip
    if calls is not None and (calls["fallback"] or not calls["sparse"]):
        say(f"WARNING {name}: attention calls {calls} (fallbacks, or no sparse call at all)")
    return row, kept


# --------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def markdown_table(rows: list[dict[str, Any]], settings: dict[str, Any], env: dict[str, Any]) -> str:
    """The sweep as a Markdown table (for the README), with one line of settings above it."""
    head = (f"Quality sweep, {settings['model']}: {settings['count']} held-out prompts, {settings['steps']} steps, "
            f"token grid {tuple(settings['grid'])}, {env['device']}, {settings['dtype']}, {env['date'][:10]}. "
            "FLOP bound: 1 / density of the window over the video grid. PSNR / SSIM / latent error against the dense "
            "generation of the same prompt and seed; adherence: detector, all attributes right; recall: share of "
            "dense softmax mass inside the window (mean; lowest layer).")  # fmt: skip
    lines = [head, "",
             "| config | window | stride | dense steps | FLOP bound | PSNR (dB) | SSIM | latent rel L2 | adherence | "
             "recall | recall (min layer) | s / clip |",
             "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    twins = [r for r in rows if r.get("bf16_twin")]
    for r in rows:
        rec = r["recall"] or {}
        lines.append(
            f"| {r['label']} | {_x(r['window']) if r['window'] else 'dense'} | "
            f"{_x(r['stride']) if r['stride'] else '-'} | {_fmt(r['dense_steps'], 'd')} | "
            f"{r['flop_bound']:.2f}x | {_fmt(r['psnr_db'], '.2f')} | {_fmt(r['ssim'], '.4f')} | "
            f"{_fmt(r['latent_rel_l2'], '.4f')} | {_fmt(r['adherence'].get('all'), '.3f')} | "
            f"{_fmt(rec.get('mean'), '.4f')} | {_fmt(rec.get('min_layer'), '.4f')} | {r['seconds_per_clip']:.3f} |"
        )
    if twins:
        lines += ["", "8-bit attention (`precision: fp8`, dense steps included) against the same config in bf16:", "",
                  "| config | PSNR vs bf16 (dB, mean / min) | SSIM vs bf16 | adherence fp8 - bf16 (points) | "
                  "calls in 16 bits |", "|---|--:|--:|--:|--:|"]  # fmt: skip
        for r in twins:
            delta = r["adherence_delta_vs_bf16"]
            lines.append(
                f"| {r['label']} | {_fmt(r['psnr_vs_bf16_db'], '.2f')} / {_fmt(r['psnr_vs_bf16_db_min'], '.2f')} | "
                f"{_fmt(r['ssim_vs_bf16'], '.4f')} | {_fmt(None if delta is None else 100 * delta, '+.1f')} | "
                f"{sum(r['fp8_fallbacks'].values())} |"
            )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> bool:
    """PSNR, recall and adherence against the FLOP bound, one line per (dense steps, stride); False without
    matplotlib or without a sparse row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib is not installed: no plot")
        return False
    sparse = [r for r in rows if r["window"] is not None]
    dense = next((r for r in rows if r["window"] is None), None)
    if not sparse:
        say("no sparse row: no plot")
        return False
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in sparse:
        kind = r["stride_kind"] + ("" if r.get("precision", "bf16") == "bf16" else f", {r['precision']}")
        groups.setdefault((r["dense_steps"], kind), []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = (("psnr_db", "PSNR vs dense (dB)"), ("recall", "attention recall (kept softmax mass)"),
              ("adherence", "prompt adherence (all attributes)"))  # fmt: skip
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    dense_values = sorted({k[0] for k in groups})
    for ax, (key, label) in zip(axes, panels, strict=True):
        for (ds, kind), rs in sorted(groups.items()):
            rs = sorted(rs, key=lambda r: r["flop_bound"])
            x = [r["flop_bound"] for r in rs]
            if key == "recall":
                y = [(r["recall"] or {}).get("mean") for r in rs]
            elif key == "adherence":
                y = [r["adherence"].get("all") for r in rs]
            else:
                y = [r[key] for r in rs]
            colour = colours[dense_values.index(ds) % len(colours)]
            ax.plot(x, [math.nan if v is None else v for v in y], marker="o" if kind == "1" else "s",
                    linestyle="-" if kind == "1" else "--", color=colour,
                    label=f"{ds} dense steps, stride {kind.replace('tile', '= tile')}")  # fmt: skip
        if key == "adherence" and dense is not None and dense["adherence"].get("all") is not None:
            ax.axhline(dense["adherence"]["all"], color="black", linestyle=":", label="dense")
        ax.set_xscale("log", base=2)
        bounds = sorted({round(r["flop_bound"], 2) for r in sparse})
        ax.set_xticks(bounds)
        ax.set_xticklabels([f"{b:g}x" for b in bounds])
        ax.minorticks_off()
        ax.set_xlabel("attention FLOP bound (1 / window density)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[2].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with media.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def frame_strip(top: np.ndarray, bottom: np.ndarray, frames: int = STRIP_FRAMES) -> np.ndarray:
    """``frames`` evenly spaced frames of two uint8 clips ``[T, H, W, 3]``, one row each, 2 px gaps."""
    idx = np.linspace(0, len(top) - 1, frames).round().astype(int)
    h, w = top.shape[1:3]
    gap = 2
    out = np.full((2 * h + gap, frames * w + (frames - 1) * gap, 3), 255, dtype=np.uint8)
    for r, clip in enumerate((top, bottom)):
        for c, i in enumerate(idx):
            out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = clip[i]
    return out


def environment(device: torch.device, pipeline: Path) -> dict[str, Any]:
    import diffusers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        name += "torch threads)"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "diffusers": diffusers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "autotune": os.environ.get("NA_ACCEL_AUTOTUNE", "1") != "0",
        "pipeline": str(pipeline),
    }


# --------------------------------------------------------------------------------------------------------------


def parse_windows(text: str) -> list[tuple[int, ...]]:
    try:
        return [tuple(int(v) for v in w.strip().split("x")) for w in text.split(",") if w.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"windows are comma-separated TxHxW, e.g. 4x12x12,3x8x8: {exc}") from exc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", type=Path, default=DEFAULT_PIPELINE, help="saved HunyuanVideo pipeline directory "
                    "(with na_accel_generation.json); default: the package's tiny/t2v_pipeline")  # fmt: skip
    ap.add_argument("--out", type=Path, required=True, help="output directory")
    ap.add_argument("--count", type=int, default=64, help="held-out prompts (default 64)")
    ap.add_argument("--batch", type=int, default=None, help="clips per pipeline call (default 32 on CUDA, 2 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's, 16)")
    ap.add_argument("--windows", type=parse_windows, default=list(WINDOWS), help="comma-separated TxHxW windows")
    ap.add_argument("--dense-fractions", default=",".join(str(f) for f in DENSE_FRACTIONS),
                    help="fractions of the steps that run dense (rounded half up)")  # fmt: skip
    ap.add_argument("--strides", default=",".join(STRIDES), help="'1' and/or 'tile' (stride = min(tile, window))")
    ap.add_argument("--precisions", default="bf16", help="'bf16' or 'bf16,fp8': each config also with 8-bit "
                    "attention, compared with its bf16 row (Hopper GPUs)")  # fmt: skip
    ap.add_argument("--probe-queries", type=int, default=256, help="grid queries sampled by the recall probe")
    ap.add_argument("--strip", default=None, help="also write a frame strip of the first prompt: dense above this "
                    "config (a row label of this sweep, a preset name or a YAML path)")  # fmt: skip
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--workers", type=int, default=None, help="detector processes (default: min(8, cores - 2))")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up calls")
    ap.add_argument("--budget-s", type=float, default=None, help="start no further config after this many seconds "
                    "(the rows done so far are written; the skipped ones are listed in the JSON)")  # fmt: skip
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    ap.add_argument("--smoke", action="store_true", help="2 prompts, 2 configs, 4 steps (a quick end-to-end check)")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (32 if device.type == "cuda" else 2)
    count = 2 if args.smoke else args.count
    warmup = args.warmup and device.type == "cuda"
    workers = args.workers if args.workers is not None else min(8, (os.cpu_count() or 1) - 2)
    if device.type != "cuda" and args.workers is None:
        workers = 0
    gen_path = args.pipeline / "na_accel_generation.json"
    if not gen_path.is_file():
        raise SystemExit(f"{args.pipeline} is not a saved na_accel pipeline (no na_accel_generation.json); "
                         "pass --pipeline DIR")  # fmt: skip
    gen = json.loads(gen_path.read_text())
    if args.smoke:
        gen["num_inference_steps"] = 4
    if args.steps:
        gen["num_inference_steps"] = args.steps
    steps = int(gen["num_inference_steps"])

    from diffusers import HunyuanVideoPipeline

    say(f"loading {args.pipeline} on {device} in {dtype}")
    pipe = HunyuanVideoPipeline.from_pretrained(args.pipeline, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    factors = adapter_for(pipe.transformer).size_factors(pipe)
    grid = factors.token_grid(gen["height"], gen["width"], gen["num_frames"])
    fractions = [float(f) for f in args.dense_fractions.split(",") if f.strip()]
    strides = [s.strip() for s in args.strides.split(",") if s.strip()]
    precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    if not precisions or any(x not in PRECISIONS for x in precisions) or precisions[0] != "bf16":
        raise SystemExit(f"--precisions {args.precisions!r}: a comma-separated list from {', '.join(PRECISIONS)} "
                         "starting with bf16 (the reference of the 8-bit rows), e.g. bf16,fp8")  # fmt: skip
    if any(s not in STRIDES for s in strides):
        raise SystemExit(f"--strides: choose from {', '.join(STRIDES)}")
    if args.smoke:
        configs = [c for w, s, f in SMOKE_CONFIGS for c in make_configs(grid, [w], [s], [f], steps, precisions)]
    else:
        configs = make_configs(grid, args.windows, strides, fractions, steps, precisions)
    prompts = eval_prompts(count)
    env = environment(device, args.pipeline)
    settings = {
        "model": "HunyuanVideo t2v (na_accel tiny)",
        "count": count,
        "batch": batch,
        "steps": steps,
        "generation": gen,
        "grid": list(grid),
        "dtype": str(dtype).replace("torch.", ""),
        "eval_seed0": world.EVAL_SEED0,
        "windows": [list(w) for w in (args.windows if not args.smoke else [c.window for c in configs])],
        "dense_fractions": fractions,
        "strides": strides,
        "precisions": precisions,
        "tile": list(TILE),
        "probe_queries": args.probe_queries,
        "smoke": args.smoke,
        "warmup": warmup,
        "metrics": "per clip: mean over frames (PSNR dB, SSIM on frames in [0, 1]); rows: mean (min) over clips; "
                   "latent_rel_l2: ||latents - dense|| / ||dense|| of the final latents per clip",
    }  # fmt: skip
    stem = "quality-sweep-" + dt.date.today().isoformat() + ("-smoke" if args.smoke else "")
    stem += f"-{args.tag}" if args.tag else ""
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (args.out / f"{stem}{ext}" for ext in (".json", ".md", ".png"))
    say(f"grid {grid}, {steps} steps, {count} prompts in batches of {batch}, {len(configs)} sparse configs: "
        + ", ".join(f"{c.label} ({c.flop_bound:.2f}x)" for c in configs))  # fmt: skip

    scorer = Scorer(workers)
    rows: list[dict[str, Any]] = []
    firsts: dict[str, np.ndarray] = {}
    dense: dict[str, Any] | None = None  # the dense row's frames and latents, the reference of every other row
    bf16_rows: dict[str, dict[str, Any]] = {}  # the bf16 row (and frames) of the config whose 8-bit twin runs next
    result = {"environment": env, "settings": settings, "rows": rows}
    try:
        if warmup:
            say("warm-up (untimed): one dense batch")
            run_batch(pipe, prompts.captions[:batch], prompts.seeds[:batch], dict(gen, num_inference_steps=2), device)
        for cfg in [None, *configs]:
            if cfg is not None and args.budget_s is not None and time.perf_counter() - _T0 > args.budget_s:
                result["skipped"] = [c.label for c in configs[configs.index(cfg) :]]
                say(f"time budget of {args.budget_s:.0f} s spent: skipping {len(result['skipped'])} config(s)")
                media.write_json(json_path, result)
                break
            twin = None if cfg is None or cfg.precision == "bf16" else bf16_rows.get(cfg.twin)
            keep = cfg is not None and cfg.precision == "bf16" and len(precisions) > 1
            row, kept = sweep_row(cfg, pipe, prompts, gen, batch, device, dense, scorer,
                                  args.probe_queries, warmup, twin, keep)  # fmt: skip
            if keep:
                bf16_rows.clear()  # only the last bf16 row is needed: its 8-bit twin runs right after it
                bf16_rows[cfg.twin] = {"kept": kept, "row": row}
            if cfg is None:
                dense = kept
            firsts[row["label"]] = kept["first"]
            rows.append(row)
            rec = row["recall"] or {}
            say(f"{row['label']}: bound {row['flop_bound']:.2f}x, PSNR {_fmt(row['psnr_db'], '.2f')} dB, SSIM "
                f"{_fmt(row['ssim'], '.4f')}, latent {_fmt(row['latent_rel_l2'], '.4f')}, adherence "
                f"{_fmt(row['adherence'].get('all'), '.3f')}, recall {_fmt(rec.get('mean'), '.4f')} (min layer "
                f"{_fmt(rec.get('min_layer'), '.4f')}), {row['seconds']:.1f} s")  # fmt: skip
            media.write_json(json_path, result)
            media.write_text(md_path, markdown_table(rows, settings, env))
        if args.strip:
            label = args.strip
            if label in firsts:
                other = firsts[label]
            else:
                config = load_config(label)
                with na_accel.patched(pipe, config):
                    frames, _, _ = run_batch(pipe, prompts.captions[:1], prompts.seeds[:1], gen, device)
                other = to_uint8(frames)[0]
                label = config.name or Path(label).stem
            strip_path = args.out / f"{stem}-strip.png"
            media.write_png(strip_path, frame_strip(firsts["dense"], other))
            result["strip"] = {"file": strip_path.name, "config": label, "prompt": prompts.captions[0],
                               "seed": prompts.seeds[0], "rows": ["dense", label]}  # fmt: skip
            media.write_json(json_path, result)
            say(f"strip: {strip_path}")
    finally:
        scorer.close()
        if rows:
            title = (f"{settings['model']}, {count} prompts, {steps} steps, grid {grid}, {env['device']}, "
                     f"{settings['dtype']}")  # fmt: skip
            if plot(rows, png_path, title):
                say(f"plot: {png_path}")
    sys.stdout.write(markdown_table(rows, settings, env))
    say(f"wrote {json_path}, {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
