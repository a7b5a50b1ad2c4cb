"""``na_accel.tune``: per-layer windows and dense steps chosen from the model's measured attention, to a budget.

Steps (:func:`tune`):

1. **Profile.** The fit prompts are generated dense (same seeds as every later run) with every self-attention layer
   patched by a window covering the grid (so the attention calls run their original dense path) and a
   :class:`.ladder.LadderProbe` attached: per (layer, denoising step, head) the kept softmax mass of every candidate
   of the ladder, exactly, on sampled query tiles. These dense runs are also the references.
2. **Choose.** For every threshold of a grid (:func:`.choose.sweep_ranges`): per layer the cheapest candidate
   clearing the threshold on every sparse step, and the number of dense first steps that minimises the attention
   FLOPs; also the same choice per step range (the sparse steps cut into 2 or 4 ranges, a window per layer and
   range: layer rules with ``steps`` in the config), kept where it saves at least 5% of the FLOPs at the same
   threshold, and of all these plans the ones no cheaper plan beats on threshold. Cost model: attention FLOPs over
   the token grid (``density`` of each window; text tokens excluded, as in the README's FLOP bound); no measured
   kernel speed table exists for arbitrary windows, so none is used.
3. **Validate.** Full generations of the fit prompts with a chosen config against the dense references (PSNR, SSIM,
   latent error; prompt adherence with :mod:`na_accel.tiny.detect` on the embedded model). ``target_psnr``: a search
   over the distinct plans, ordered by FLOPs, for the cheapest one whose mean PSNR over the fit prompts reaches the
   target (the middle plan first, then the plan where the PSNR interpolated linearly in log speedup between the
   passing and the failing plan meets the target; at most ``max_validations`` rounds). ``target_speedup``: the plan
   with the highest threshold whose attention-FLOP speedup over the whole generation reaches the target (validated
   once). Both: the cheapest plan reaching the PSNR among those reaching the speedup. A budget no plan meets raises
   :class:`~na_accel.errors.InputError` (received, allowed, what to do).
4. **Hold out.** The last ``holdout`` prompts are never profiled nor used in the search; their quality with the
   chosen config is reported.

The result (:class:`TuneResult`) holds the config (an :class:`~na_accel.patching.config.NAConfig`: per-layer windows
as fractions of each axis, ``dense_steps``, a ``measured`` line written by the tuner, quality thresholds for
``na-accel check``) and a JSON-ready report (also as Markdown and a plot of kept mass per layer and step).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, NAAccelError
from ..patching.api import is_patched, patched
from ..patching.config import NAConfig, config_from_dict
from ..patching.families import adapter_for
from .choose import Choice, choose, choose_per_head, sweep_ranges, threshold_grid
from .environment import versions
from .ladder import DEFAULT_FRACTIONS, STRIDE_KINDS, Ladder, LadderProbe, LocalityTable
from .metrics import latent_metrics, psnr, ssim
from .report import json_safe

__all__ = [
    "Clips",
    "Detector",
    "TuneResult",
    "generate_clips",
    "max_speedup",
    "plan_config",
    "plan_dict",
    "profile",
    "score_clips",
    "summarize_scores",
    "tune",
]

#: Config that leaves every planned layer on its dense path (the window covers the grid) for the profiling run.
PROFILE_CONFIG = {"version": 1, "description": "na-accel tune profiling: every window covers the grid",
                  "defaults": {"kernel_size": -1, "stride": 1, "dense_steps": 0}}  # fmt: skip
MAX_PSNR_DB = 1000.0


# --------------------------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------------------------


def check_targets(target_psnr: float | None, target_speedup: float | None) -> None:
    """:class:`InputError` unless at least one budget is given and each is in range."""
    if target_psnr is None and target_speedup is None:
        raise InputError(
            "no budget given: pass target_psnr (dB of the decoded frames against dense, e.g. 30) and/or "
            "target_speedup (attention-FLOP speedup over the whole generation, e.g. 4)"
        )
    if target_psnr is not None:
        v = target_psnr
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not 0 < v <= MAX_PSNR_DB:
            raise InputError(f"target PSNR {v!r} is out of range: allowed a finite number of dB above 0 and at most "
                             f"{MAX_PSNR_DB:g} (e.g. 30)")  # fmt: skip
    if target_speedup is not None:
        v = target_speedup
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 1:
            raise InputError(f"target speedup {v!r} is out of range: allowed a finite attention-FLOP speedup above 1 "
                             "(e.g. 2 or 4)")  # fmt: skip


def max_speedup(ladder: Ladder, steps: int) -> tuple[float, str]:
    """The largest attention-FLOP speedup over a whole generation any plan on ``ladder`` can give (its cheapest
    window on every layer and step, no dense step) and that window's label."""
    cheapest = min(ladder.candidates, key=lambda c: c.density)
    del steps  # no dense step: the per-step speedup is the whole generation's
    return 1.0 / cheapest.density, cheapest.label


def check_speedup_reachable(target_speedup: float | None, ladder: Ladder, steps: int) -> None:
    """:class:`InputError` when ``target_speedup`` exceeds what the ladder offers on its grid."""
    if target_speedup is None:
        return
    top, label = max_speedup(ladder, steps)
    if target_speedup > top * (1 + 1e-9):
        raise InputError(
            f"target speedup {target_speedup:g}x is above what the window ladder offers on the token grid "
            f"{ladder.grid}: allowed at most {top:.2f}x (window {label} on every layer and step, no dense step). "
            "Lower the target speedup, or generate at a larger size (a larger token grid allows smaller windows)."
        )


# --------------------------------------------------------------------------------------------------------------
# Generation and scoring
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Clips:
    """Outputs of one set of prompts: frames ``[F, C, H, W]`` float32 in [0, 1] and final latents per prompt."""

    frames: list[torch.Tensor]
    latents: list[torch.Tensor | None]
    seconds: float


def _split_frames(out: Any, n: int) -> list[torch.Tensor]:
    import numpy as np

    arr = None
    for attr in ("frames", "images", "videos"):
        if hasattr(out, attr):
            arr = getattr(out, attr)
            break
    if arr is None and isinstance(out, tuple | list):
        arr = out[0]
    if arr is None:
        raise TypeError(f"cannot find frames or images in the pipeline output {type(out).__name__}")
    items = list(arr) if not isinstance(arr, np.ndarray | torch.Tensor) else [arr[i] for i in range(arr.shape[0])]
    if len(items) != n:
        raise ValueError(f"the pipeline returned {len(items)} outputs for {n} prompts")
    clips = []
    for item in items:
        if isinstance(item, list):  # frames as PIL images or arrays
            item = np.stack([np.asarray(f) for f in item])
        t = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item).float()
        if t.dim() == 3:  # one image [H, W, C] or [C, H, W]
            t = t[None]
        if t.shape[-1] in (1, 3, 4) and t.shape[1] not in (1, 3, 4):
            t = t.permute(0, 3, 1, 2)
        if t.max() > 1.5:
            t = t / 255.0
        clips.append(t[:, :3].clamp(0, 1).contiguous())
    return clips


def generate_clips(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], kw: dict[str, Any], batch_size: int,
                   advance: Callable[[int], None] | None = None) -> Clips:  # fmt: skip
    """Generate ``prompts`` in batches, one CPU generator per prompt seeded with its seed (the same seed gives the
    same clip whatever the batch). ``advance(n)`` is called after every denoising step with the batch size ``n``
    (progress in clip-steps)."""
    kw = dict(kw)
    negative = kw.pop("negative_prompt", None)
    frames: list[torch.Tensor] = []
    latents: list[torch.Tensor | None] = []
    device = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None)
    cuda = device is not None and torch.device(device).type == "cuda"
    total = 0.0
    for start in range(0, len(prompts), batch_size):
        ps = list(prompts[start : start + batch_size])
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        state: dict[str, torch.Tensor] = {}

        def on_step_end(_pipe: Any, _i: int, _t: Any, cb: dict, state: dict = state, n: int = len(ps)) -> dict:
            lat = cb.get("latents")
            if lat is not None:
                state["latents"] = lat.detach()
            if advance is not None:
                advance(n)
            return {}

        extra: dict[str, Any] = {}
        if negative is not None:
            extra["negative_prompt"] = [negative] * len(ps) if isinstance(negative, str) else negative
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = pipe(prompt=ps, generator=gens, output_type="np", callback_on_step_end=on_step_end,
                       callback_on_step_end_tensor_inputs=["latents"], **extra, **kw)  # fmt: skip
        if cuda:
            torch.cuda.synchronize(device)
        total += time.perf_counter() - t0
        frames.extend(_split_frames(out, len(ps)))
        lat = state.get("latents")
        latents.extend([lat[i].float().cpu().clone() for i in range(len(ps))] if lat is not None else [None] * len(ps))
    return Clips(frames, latents, total)


def profile(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], kw: dict[str, Any],
            probe: LadderProbe | None = None, batch_size: int = 4,
            advance: Callable[[int], None] | None = None) -> tuple[LocalityTable, Clips]:  # fmt: skip
    """Generate ``prompts`` dense (every layer's window covers the grid: the original attention answers every call,
    so the clips equal the unpatched pipeline's) with a :class:`.ladder.LadderProbe` attached; returns its table
    and the clips (the dense references)."""
    probe = probe or LadderProbe()
    with patched(pipe, PROFILE_CONFIG) as handle:
        probe.attach(handle)
        try:
            clips = generate_clips(pipe, prompts, seeds, kw, batch_size, advance)
        finally:
            probe.detach()
    return probe.table(), clips


def _to_uint8(frames: torch.Tensor) -> Any:
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _agreement(ref: Any, det: Any) -> dict[str, float] | None:
    """Detector agreement of a clip with its dense reference: the share of the colours found in the dense clip that
    are found again (``colour``), with the same motion, shape and all three (``motion``, ``shape``, ``all``)."""
    colours = list(ref.objects)
    if not colours:
        return None
    rows = []
    for c in colours:
        d = det.objects.get(c)
        r = ref.objects[c]
        rows.append((d is not None, d is not None and d.motion == r.motion, d is not None and d.shape == r.shape))
    n = len(rows)
    return {"colour": sum(a for a, _, _ in rows) / n, "motion": sum(b for _, b, _ in rows) / n,
            "shape": sum(c for _, _, c in rows) / n, "all": sum(a and b and c for a, b, c in rows) / n}  # fmt: skip


class Detector:
    """Prompt adherence with :mod:`na_accel.tiny.detect`: against a scene when one is given, else as agreement
    with the dense clip of the same prompt and seed."""

    def __init__(self, scenes: Sequence[Any] | None) -> None:
        from ..tiny import detect

        self.detect = detect
        self.scenes = scenes
        self.refs: dict[int, Any] = {}

    def reference(self, index: int, frames: torch.Tensor) -> dict[str, Any] | None:
        det = self.detect.detect(_to_uint8(frames))
        self.refs[index] = det
        return self._score(index, det)

    def score(self, index: int, frames: torch.Tensor) -> dict[str, Any] | None:
        det = self.detect.detect(_to_uint8(frames))
        out = self._score(index, det)
        agree = _agreement(self.refs[index], det) if index in self.refs else None
        if out is None:
            return None if agree is None else {"vs_dense": agree}
        out["vs_dense"] = agree
        return out

    def _score(self, index: int, det: Any) -> dict[str, Any] | None:
        if self.scenes is None or self.scenes[index] is None:
            return None
        a = self.detect.adherence(self.scenes[index], det)
        return {k: a[k] for k in ("colour", "motion", "shape", "size", "all")}


def score_clips(ref: Clips, out: Clips, indices: Sequence[int], detector: Detector | None) -> list[dict[str, Any]]:
    rows = []
    for j, i in enumerate(indices):
        a, b = ref.frames[j], out.frames[j]
        row: dict[str, Any] = {"prompt_index": i, "psnr": float(psnr(a, b).mean()), "ssim": float(ssim(a, b).mean())}
        if ref.latents[j] is not None and out.latents[j] is not None:
            lm = latent_metrics(ref.latents[j], out.latents[j])
            row["latent_rel_l2"], row["latent_cosine"] = lm["rel_l2"], lm["cosine"]
        if detector is not None:
            row["adherence"] = detector.score(i, b)
        rows.append(row)
    return rows


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if any(math.isinf(v) for v in vals):
        return math.inf if all(v > 0 for v in vals if math.isinf(v)) else -math.inf
    return sum(vals) / len(vals)


def summarize_scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means (and the lowest PSNR / SSIM) over clips; adherence fractions averaged over clips."""
    out: dict[str, Any] = {"clips": len(rows)}
    for key in ("psnr", "ssim", "latent_rel_l2", "latent_cosine"):
        out[key] = _mean([r.get(key) for r in rows])
    out["psnr_min"] = min((r["psnr"] for r in rows), default=None)
    out["ssim_min"] = min((r["ssim"] for r in rows), default=None)
    out["latent_rel_l2_max"] = max((r["latent_rel_l2"] for r in rows if "latent_rel_l2" in r), default=None)
    out["latent_cosine_min"] = min((r["latent_cosine"] for r in rows if "latent_cosine" in r), default=None)
    adh = [r.get("adherence") for r in rows if r.get("adherence")]
    if adh:
        agg: dict[str, Any] = {}
        for key in ("colour", "motion", "shape", "size", "all"):
            vals = [a[key] for a in adh if key in a]
            if vals:
                agg[key] = sum(vals) / len(vals)
        vs = [a["vs_dense"] for a in adh if a.get("vs_dense")]
        if vs:
            agg["vs_dense"] = {k: sum(v[k] for v in vs) / len(vs) for k in vs[0]}
        out["adherence"] = agg
    return out


# --------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------


def _fraction(k: int, n: int) -> float | int:
    """``k`` tokens of an axis of ``n`` as a fraction of the axis that resolves back to ``k`` on this axis (the
    config's rounding, :func:`na_accel.patching.config._axis_value`); the integer when no 4-digit fraction does."""
    if k == n:
        return 1.0
    for digits in (2, 3, 4):
        f = round(k / n, digits)
        if 0 < f <= 1 and max(1, min(n, int(round(f * n)))) == k and abs(f - k / n) < 0.5 / n:
            return f
    return int(k)


def _window_fields(candidate: Any, grid: Sequence[int]) -> dict[str, Any]:
    return {"kernel_size": [_fraction(k, n) for k, n in zip(candidate.kernel_size, grid, strict=True)],
            "stride": [int(s) for s in candidate.stride]}  # fmt: skip


def plan_config(table: LocalityTable, plan: Choice, *, model_class: str | None, description: str = "",
                measured: str = "unmeasured", quality: dict[str, float] | None = None,
                on_oversize: str = "clamp") -> dict[str, Any]:  # fmt: skip
    """The config (YAML schema, as a dict) of a plan: the most common window (over layers and sparse steps) as the
    default, an exact-name rule for every layer with another window or dense, and for a layer whose window changes
    between step ranges one rule per range (``steps``; the last range runs to the end)."""
    ladder, grid = table.ladder, table.ladder.grid
    n_steps = len(table.steps)
    segments = plan.segments(n_steps)
    cells = Counter(c for a, b, row in segments for c in row for _ in range(b - a + 1) if c is not None)
    common = cells.most_common(1)[0][0] if cells else None
    defaults: dict[str, Any] = {}
    if common is not None:
        defaults.update(_window_fields(ladder.candidates[common], grid))
    else:
        defaults.update({"kernel_size": -1, "stride": 1})
    defaults.update({"dilation": 1, "dense_steps": int(plan.dense_steps), "on_oversize": on_oversize,
                     "backend": "auto"})  # fmt: skip
    layers = []
    for li, name in enumerate(table.layers):
        per_range = [row[li] for _a, _b, row in segments]
        if len(set(per_range)) == 1:  # one window over every sparse step: one rule (none for the default window)
            c = per_range[0]
            if c is None:
                layers.append({"match": name, "dense": True})
            elif c != common:
                layers.append({"match": name, **_window_fields(ladder.candidates[c], grid)})
            continue
        for k, (a, b, row) in enumerate(segments):  # a rule per step range; the last one runs to the end
            steps = [int(a), -1 if k == len(segments) - 1 else int(b)]
            c = row[li]
            window = {"dense": True} if c is None else _window_fields(ladder.candidates[c], grid)
            layers.append({"match": name, "steps": steps, **window})
    out: dict[str, Any] = {"version": 1}
    if model_class:
        out["model"] = model_class
    out.update({"description": description, "measured": measured, "defaults": defaults, "layers": layers})
    if quality:
        out["quality"] = quality
    return out


def config_yaml(data: dict[str, Any], header: Sequence[str] = ()) -> str:
    """YAML text of a config dict (keys in schema order, per-axis lists inline), with ``#`` header lines."""
    import yaml

    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=119, allow_unicode=True)
    return "".join(f"# {line}\n" if line else "#\n" for line in header) + body


def check_round_trip(config: NAConfig, table: LocalityTable, plan: Choice) -> None:
    """Raise :class:`NAAccelError` unless ``config`` resolves, on the profiled grid, to exactly the plan's windows."""
    grid = table.ladder.grid
    for name, cells in zip(table.layers, plan.cells(len(table.steps)), strict=True):
        for step in range(plan.dense_steps, len(table.steps)):
            _rule, window = config.window_for(name, step)
            got = None if window is None else window.resolve(grid).params
            c = cells[step]
            want = None if c is None else table.ladder.candidates[c].params(grid)
            if (got is None) != (want is None) or (got is not None and got != want):
                raise NAAccelError(f"internal error: the tuned config gives layer {name} at step {step} {got}, but "
                                   f"the plan chose {want}")  # fmt: skip
    if config.dense_steps != plan.dense_steps:
        raise NAAccelError(f"internal error: dense_steps {config.dense_steps} != planned {plan.dense_steps}")


# --------------------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------------------


def device_description(pipe: Any) -> str:
    dev = getattr(pipe, "_execution_device", None) or getattr(pipe, "device", None) or "cpu"
    dev = torch.device(dev)
    if dev.type == "cuda" and torch.cuda.is_available():
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _is_embedded(pipe: Any) -> bool:
    from ..tiny.trained import PIPELINE_DIR

    path = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    try:
        return path is not None and Path(str(path)).resolve() == PIPELINE_DIR
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TuneResult:
    """What :func:`tune` found: ``config`` (load it with ``na_accel.patch(pipe, config=result.config)`` or save it
    with :meth:`save`), ``report`` (JSON-ready dict), ``yaml`` (the config file's text) and the locality ``table``."""

    config: NAConfig
    report: dict[str, Any]
    yaml: str
    table: LocalityTable | None = field(default=None, repr=False)

    def markdown(self) -> str:
        from .tune_report import markdown

        return markdown(self.report)

    def save(self, path: str | os.PathLike, *, report: bool = True) -> list[Path]:
        """Write the config to ``path`` and, with ``report``, ``<stem>.report.json``, ``.report.md`` and
        ``.report.png`` next to it. All files are written to temporary names first and moved into place only when
        every one was written (no partial output)."""
        from .tune_report import plot, write_json_text

        path = Path(path)
        if path.is_dir():
            raise InputError(f"output {str(path)!r} is a directory; give a file name such as tuned.yaml")
        stem = path.with_suffix("") if path.suffix in (".yaml", ".yml") else path
        files: list[tuple[Path, Callable[[Path], None]]] = [(path, lambda p: p.write_text(self.yaml, "utf-8"))]
        if report:
            base = stem.name
            files += [
                (path.with_name(f"{base}.report.json"),
                 lambda p: p.write_text(write_json_text(self.report), "utf-8")),
                (path.with_name(f"{base}.report.md"), lambda p: p.write_text(self.markdown(), "utf-8")),
            ]  # fmt: skip
            if self.table is not None:
                files.append((path.with_name(f"{base}.report.png"), lambda p: plot(self.report, self.table, p)))
        with _atomic_files([f for f, _ in files]) as tmps:
            for (_dest, write), tmp in zip(files, tmps, strict=True):
                write(tmp)
        return [f for f, _ in files]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _atomic_files(dests: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary paths next to each destination; all moved onto their destinations on success, all removed on
    failure."""
    tmps: list[Path] = []
    try:
        for dest in dests:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=f".partial{dest.suffix}", dir=dest.parent)
            os.close(fd)
            tmps.append(Path(tmp))
        yield tmps
        mode = 0o666 & ~_umask()
        for tmp in tmps:
            os.chmod(tmp, mode)
        for tmp, dest in zip(tmps, dests, strict=True):
            os.replace(tmp, dest)
    except BaseException:
        for tmp in tmps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


# --------------------------------------------------------------------------------------------------------------
# tune
# --------------------------------------------------------------------------------------------------------------


class _Progress:
    def __init__(self, enabled: bool, total: int) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="step", desc="na-accel tune", dynamic_ncols=True)

    def stage(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def grow(self, n: int) -> None:
        if self.bar is not None:
            self.bar.total += n
            self.bar.refresh()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _grid_for(pipe: Any, adapter: Any, kw: dict[str, Any]) -> tuple[int, ...] | None:
    h, w = kw.get("height"), kw.get("width")
    if h is None or w is None:
        return None
    factors = adapter.size_factors(pipe)
    if factors.is_video and kw.get("num_frames") is None:
        return None
    return factors.token_grid(int(h), int(w), kw.get("num_frames"))


def _steps(pipe: Any, kw: dict[str, Any]) -> int:
    if kw.get("num_inference_steps") is not None:
        return int(kw["num_inference_steps"])
    import inspect

    try:
        return int(inspect.signature(type(pipe).__call__).parameters["num_inference_steps"].default)
    except (KeyError, TypeError, ValueError):
        return 50


def tune(
    pipe: Any,
    prompts: Sequence[str],
    *,
    target_psnr: float | None = None,
    target_speedup: float | None = None,
    seed: int = 0,
    holdout: int = 1,
    scenes: Sequence[Any] | None = None,
    adherence: bool | None = None,
    queries: int | None = 64,
    sample_tile: Sequence[int] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    strides: Sequence[str] = STRIDE_KINDS,
    thresholds: Sequence[float] | None = None,
    max_validations: int = 6,
    dense_steps: int | None = None,
    step_ranges: Sequence[int] = (1, 2, 4),
    batch_size: int = 4,
    progress: bool = True,
    model_label: str | None = None,
    **gen_kwargs: Any,
) -> TuneResult:
    """Tune per-layer GNA windows and dense steps for ``pipe`` from its measured attention, to a budget.

    Args:
        pipe: a diffusers pipeline of a supported family (not patched).
        prompts: the prompts; the last ``holdout`` are held out (quality reported, never used in the fit). Prompt
            ``i`` is generated with seed ``seed + i`` in every run.
        target_psnr: mean PSNR (dB, decoded frames against dense, over the fit prompts) the config must reach; the
            cheapest plan that does is chosen.
        target_speedup: attention-FLOP speedup over the whole generation (grid tokens, dense steps included) the
            config must reach; the plan with the most kept attention that does is chosen.
        scenes: optional :class:`na_accel.tiny.world.Scene` per prompt (None entries allowed), for detector
            adherence against the scene; without them adherence is agreement with the dense clip.
        adherence: score prompt adherence with :mod:`na_accel.tiny.detect` (default: on the embedded model only).
        queries: grid queries sampled per attention call (the same ones for every layer and step), None: all;
            ``sample_tile``: sample whole tiles of this shape instead of single queries (less accurate per query).
        fractions, strides: the ladder (:class:`.ladder.Ladder`); thresholds: the thresholds tried
            (:func:`.choose.threshold_grid`).
        max_validations: most fit-prompt validations of the PSNR search (over the plans, ordered by FLOPs).
        dense_steps: run exactly this many first steps dense (default: the number the chooser finds cheapest, which
            only counts locality; early steps can matter more than their locality says, bench/NOTES.md).
        step_ranges: the numbers of step ranges tried (1: one window per layer over all sparse steps; 2, 4: the
            sparse steps cut into that many ranges, a window per layer and range, where it saves at least 5%).
        batch_size: prompts per pipeline call.
        progress: show a progress bar (denoising steps of every clip generated).
        **gen_kwargs: pipeline call arguments (height, width, num_frames, num_inference_steps, guidance, ...).

    Raises:
        InputError: no budget, a budget out of range or that no plan meets (the message says what the ladder or
            the measurements allow), too few prompts.
        UnsupportedModelError: not a supported pipeline.
    """
    check_targets(target_psnr, target_speedup)
    prompts = [str(p) for p in prompts]
    if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
        raise InputError(f"holdout must be an int >= 0 (prompts held out of the fit), got {holdout!r}")
    if len(prompts) < holdout + 1:
        raise InputError(f"got {len(prompts)} prompt(s); tuning needs at least {holdout + 1}: one or more to fit and "
                         f"{holdout} held out. Add prompts (one per line).")  # fmt: skip
    if scenes is not None and len(scenes) != len(prompts):
        raise InputError(f"scenes must have one entry per prompt ({len(prompts)}), got {len(scenes)}")
    if max_validations < 1 or batch_size < 1:
        raise InputError(f"max_validations and batch_size must be >= 1, got {max_validations} and {batch_size}")
    bad = [r for r in step_ranges if isinstance(r, bool) or not isinstance(r, int) or r < 1]
    if bad or 1 not in step_ranges:
        raise InputError(f"step_ranges must be ints >= 1 that include 1 (one window per layer), got "
                         f"{list(step_ranges)}")  # fmt: skip
    steps = _steps(pipe, gen_kwargs)
    if dense_steps is not None and (isinstance(dense_steps, bool) or not isinstance(dense_steps, int)
                                    or not 0 <= dense_steps < steps):  # fmt: skip
        raise InputError(f"dense_steps {dense_steps!r} is out of range: allowed an int from 0 to {steps - 1} (at "
                         f"least one of the {steps} steps must run sparse)")  # fmt: skip
    if is_patched(pipe):
        raise NAAccelError("tune() needs an unpatched pipeline (call na_accel.unpatch(pipe) first)")
    transformer = getattr(pipe, "transformer", None)
    adapter = adapter_for(transformer if transformer is not None else pipe)
    kw = dict(gen_kwargs)
    kw.setdefault("num_inference_steps", steps)
    grid = _grid_for(pipe, adapter, kw)
    if grid is not None:
        check_speedup_reachable(target_speedup, Ladder(grid, fractions, strides), steps)
    if adherence is None:
        adherence = _is_embedded(pipe)
    n_fit = len(prompts) - holdout
    fit_idx = list(range(n_fit))
    hold_idx = list(range(n_fit, len(prompts)))
    seeds = [seed + i for i in range(len(prompts))]
    detector = Detector(scenes) if adherence else None
    label = model_label or getattr(pipe, "name_or_path", None) or type(pipe).__name__
    t_start = time.perf_counter()

    expected_validations = min(max_validations, 6) if target_psnr is not None else 1
    bar = _Progress(progress, (n_fit + 2 * holdout + expected_validations * n_fit) * steps)  # clip-steps
    saved_bar = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    try:
        # 1. profile: the dense references of the fit prompts, with the ladder probe
        bar.stage("profiling (dense)")
        probe = LadderProbe(queries=queries, sample_tile=sample_tile, fractions=fractions, strides=strides)
        table, dense_fit = profile(pipe, [prompts[i] for i in fit_idx], [seeds[i] for i in fit_idx], kw, probe,
                                   batch_size, bar.advance)  # fmt: skip
        ladder = table.ladder
        check_speedup_reachable(target_speedup, ladder, steps)
        dense_fit_ref = {}
        if detector is not None:
            for j, i in enumerate(fit_idx):
                dense_fit_ref[i] = detector.reference(i, dense_fit.frames[j])

        # 2. plans for every threshold
        kept = table.head_mean()
        plans = [p for p in sweep_ranges(kept, ladder.densities, table.flops, thresholds, ranges=step_ranges,
                                         dense_steps=dense_steps) if not p.is_dense]  # fmt: skip
        if not plans:
            raise InputError("no threshold gives a sparse plan: every layer's attention keeps too little mass in "
                             "every window of the ladder. Try a finer ladder (fractions) or more steps.")  # fmt: skip
        feasible = plans
        if target_speedup is not None:
            feasible = [p for p in plans if p.speedup >= target_speedup * (1 - 1e-9)]
            if not feasible:
                top = max(plans, key=lambda p: p.speedup)
                raise InputError(
                    f"target speedup {target_speedup:g}x is above what the measured plans offer: allowed at most "
                    f"{top.speedup:.2f}x (threshold {top.threshold:g}). Lower the target speedup."
                )

        # 3. the dense held-out references
        bar.stage("dense held-out")
        dense_hold = generate_clips(pipe, [prompts[i] for i in hold_idx], [seeds[i] for i in hold_idx], kw, batch_size,
                               bar.advance) if hold_idx else Clips([], [], 0.0)  # fmt: skip
        dense_hold_ref = {}
        if detector is not None:
            for j, i in enumerate(hold_idx):
                dense_hold_ref[i] = detector.reference(i, dense_hold.frames[j])

        model_class = adapter.model_class
        validations: list[dict[str, Any]] = []
        cache: dict[tuple, dict[str, Any]] = {}

        def validate(plan: Choice) -> dict[str, Any]:
            if plan.key in cache:
                return cache[plan.key]
            if len(validations) >= expected_validations:
                bar.grow(n_fit * steps)
            bar.stage(f"validating threshold {plan.threshold:g} ({plan.speedup:.2f}x)")
            cfg = config_from_dict(plan_config(table, plan, model_class=model_class), source="<tune>")
            with patched(pipe, cfg) as h:
                fit_prompts, fit_seeds = [prompts[i] for i in fit_idx], [seeds[i] for i in fit_idx]
                clips = generate_clips(pipe, fit_prompts, fit_seeds, kw, batch_size, bar.advance)
                calls = h.call_counts()
            rows = score_clips(dense_fit, clips, fit_idx, detector)
            summ = summarize_scores(rows)
            entry = {"threshold": plan.threshold, "dense_steps": plan.dense_steps, "speedup": plan.speedup,
                     "step_ranges": plan.step_ranges, "predicted_kept": plan.predicted_kept,
                     "lowest_kept": plan.lowest_kept, "fit": summ, "clips": rows, "seconds": clips.seconds,
                     "attention_calls": calls}  # fmt: skip
            if calls["sparse"] == 0:
                raise NAAccelError(f"internal error: the plan for threshold {plan.threshold:g} made no sparse "
                                   "attention call")  # fmt: skip
            entry["passed"] = target_psnr is None or (summ["psnr"] is not None and summ["psnr"] >= target_psnr)
            validations.append(entry)
            cache[plan.key] = entry
            return entry

        # 4. search
        if target_psnr is None:
            chosen = feasible[0]
            chosen_entry = validate(chosen)
        else:
            lo, hi = -1, len(feasible)  # feasible[lo] passes (-1: dense), feasible[hi] fails (len: beyond)
            while hi - lo > 1 and len(validations) < max_validations:
                mid = _next_probe(feasible, cache, lo, hi, target_psnr)
                if validate(feasible[mid])["passed"]:
                    lo = mid
                else:
                    hi = mid
            if lo < 0 and hi > 0:  # the budget ran out before the most expensive plan was tried
                if validate(feasible[0])["passed"]:
                    lo = 0
            if lo < 0:
                best = max((v for v in validations), key=lambda v: v["fit"]["psnr"] or -math.inf)
                what = f"target speedup {target_speedup:g}x and " if target_speedup is not None else ""
                raise InputError(
                    f"target PSNR {target_psnr:g} dB is not reached by any sparse plan: {what}the plan keeping the "
                    f"most attention (threshold {feasible[0].threshold:g}, {feasible[0].speedup:.2f}x attention "
                    f"FLOPs) gives {best['fit']['psnr']:.2f} dB on the fit prompts. Allowed: a target PSNR of at "
                    f"most {best['fit']['psnr']:.2f} dB"
                    + (" (or a lower target speedup)" if target_speedup is not None else "")
                    + "; or run the model dense."
                )
            chosen = feasible[lo]
            chosen_entry = cache[chosen.key]

        # 5. the held-out prompts with the chosen plan
        cfg = config_from_dict(plan_config(table, chosen, model_class=model_class), source="<tune>")
        check_round_trip(cfg, table, chosen)
        hold_rows: list[dict[str, Any]] = []
        hold_seconds = 0.0
        if hold_idx:
            bar.stage("held-out prompt")
            with patched(pipe, cfg):
                clips = generate_clips(pipe, [prompts[i] for i in hold_idx], [seeds[i] for i in hold_idx], kw,
                                  batch_size, bar.advance)  # fmt: skip
            hold_rows = score_clips(dense_hold, clips, hold_idx, detector)
            hold_seconds = clips.seconds
        bar.stage("done")
    finally:
        bar.close()
        if hasattr(pipe, "set_progress_bar_config"):
            pipe._progress_bar_config = saved_bar
    elapsed = time.perf_counter() - t_start

    # 6. analyses and the report
    density = ladder.densities
    ranges = {str(r): choose(kept, density, table.flops, chosen.threshold, dense_steps=chosen.dense_steps, ranges=r)
              for r in (1, 2, 4) if steps - chosen.dense_steps >= r}  # fmt: skip
    per_head = choose_per_head(table.kept, density, table.flops, chosen.threshold, chosen.dense_steps)
    head_curve = _head_tradeoff(table, chosen.dense_steps, thresholds)
    fit_summary = chosen_entry["fit"]
    hold_summary = summarize_scores(hold_rows) if hold_rows else None
    dense_clip_s = (dense_fit.seconds - table.probe_seconds) / max(1, n_fit)  # the probe's time left out
    tuned_clip_s = chosen_entry["seconds"] / max(1, n_fit)
    env = {"device": device_description(pipe), "versions": versions(),
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "dtype": str(getattr(transformer, "dtype", "")).replace("torch.", "")}  # fmt: skip
    size = _size_text(kw, grid or table.layout.grid)
    measured = _measured_text(label, size, steps, chosen, fit_summary, hold_summary, n_fit, len(hold_idx), env,
                              dense_clip_s, tuned_clip_s, target_psnr, target_speedup)  # fmt: skip
    quality = _quality_section(fit_summary, target_psnr)
    per = f"per-layer windows in {chosen.step_ranges} step ranges" if chosen.by_range else "per-layer windows"
    description = (f"tuned by na-accel tune for {label} at {size}: {chosen.dense_steps} dense steps, {per} "
                   f"(threshold {chosen.threshold:g} of kept attention), {chosen.speedup:.2f}x attention "
                   "FLOPs")  # fmt: skip
    cfg_dict = plan_config(table, chosen, model_class=model_class, description=description, measured=measured,
                           quality=quality)  # fmt: skip
    config = config_from_dict(cfg_dict, source="<tune>")
    check_round_trip(config, table, chosen)
    header = [f"Tuned by `na-accel tune` (na_accel {env['versions']['na_accel']}) on {env['date']}.",
              f"Model: {label}; generation: {size}, {steps} steps.",
              f"Budget: {_budget_text(target_psnr, target_speedup)}. Measured: see `measured` and the report.",
              "Windows are fractions of each axis of the token grid (valid at other sizes; measured at this "
              "one)."]  # fmt: skip
    report = {
        "kind": "na-accel tune report",
        "model": label,
        "model_class": model_class,
        "family": adapter.family,
        "generation": {k: v for k, v in kw.items() if isinstance(v, int | float | str | bool)},
        "size": size,
        "steps": steps,
        "budget": {"target_psnr": target_psnr, "target_speedup": target_speedup},
        "prompts": {
            "fit": [prompts[i] for i in fit_idx],
            "held_out": [prompts[i] for i in hold_idx],
            "seeds": seeds,
            "seed": seed,
        },  # fmt: skip
        "environment": env,
        "cost_model": "attention FLOPs over the token grid (window density; text tokens excluded); no measured "
        "kernel speed table exists for arbitrary windows, so none is used",  # fmt: skip
        "ladder": ladder.to_dict(),
        "profile": {
            "queries_per_call": table.queries,
            "calls": table.calls,
            "probe_seconds": table.probe_seconds,
            "dense_generation_seconds": dense_fit.seconds,
            "clips": n_fit,
            "steps": steps,
            "probe_seconds_in_dense_steps": _in_steps(
                table.probe_seconds, dense_fit.seconds, n_fit, steps, batch_size
            ),
        },  # fmt: skip
        "chosen": plan_dict(chosen, table),
        "fit": fit_summary,
        "fit_clips": chosen_entry["clips"],
        "held_out": hold_summary,
        "held_out_clips": hold_rows,
        "dense_adherence": {"fit": dense_fit_ref, "held_out": dense_hold_ref} if detector is not None else None,
        "timing": {
            "dense_seconds_per_clip": dense_clip_s,
            "tuned_seconds_per_clip": tuned_clip_s,
            "held_out_seconds": hold_seconds,
            "tune_seconds": elapsed,
        },  # fmt: skip
        "validations": [{k: v for k, v in e.items() if k != "clips"} for e in validations],
        "plans": [
            {
                "threshold": p.threshold,
                "dense_steps": p.dense_steps,
                "step_ranges": p.step_ranges,
                "speedup": p.speedup,
                "predicted_kept": p.predicted_kept,
                "lowest_kept": p.lowest_kept,
            }
            for p in plans
        ],  # fmt: skip
        "layers": _layer_rows(table, chosen),
        "step_ranges": {
            "chosen_ranges": [list(r) for r in chosen.ranges] if chosen.by_range else None,
            "one_range_speedup": ranges["1"].speedup,
            **{
                k: {
                    "ranges": [list(r) for r in v.ranges],
                    "speedup": v.speedup,
                    "saving_vs_one_range": 1.0 - v.cost / ranges["1"].cost,
                }
                for k, v in ranges.items()
                if k != "1"
            },
        },
        "heads": {
            "per_head_at_threshold": {"speedup": 1.0 / per_head["cost"], "predicted_kept": per_head["predicted_kept"]},
            "spread": _head_spread(table, chosen),
            "tradeoff": head_curve,
        },  # fmt: skip
        "config": cfg_dict,
        "locality": table.to_dict(_cells_by_layer(table, chosen)),
    }
    report["heads"]["verdict"] = _head_verdict(report["heads"])
    report["step_ranges"]["verdict"] = _range_verdict(report["step_ranges"])
    report = json_safe(report)
    return TuneResult(config, report, config_yaml(cfg_dict, header), table)


def _next_probe(plans: list[Choice], cache: dict[tuple, dict[str, Any]], lo: int, hi: int, target: float) -> int:
    """The next plan to validate in the bracket ``(lo, hi)`` of ``plans`` (ordered from the most expensive; ``lo``
    passed or is -1, ``hi`` failed or is ``len(plans)``): with both ends measured, the plan whose log speedup is
    nearest the linear interpolation of the target PSNR between them; otherwise the middle."""
    mid = (lo + hi) // 2
    if lo < 0 or hi >= len(plans):
        return mid
    p_lo, p_hi = (cache[plans[i].key]["fit"]["psnr"] for i in (lo, hi))
    if p_lo is None or p_hi is None or not math.isfinite(p_lo) or not math.isfinite(p_hi) or p_lo <= p_hi:
        return mid
    x_lo, x_hi = math.log(plans[lo].speedup), math.log(plans[hi].speedup)
    x = x_lo + (p_lo - target) / (p_lo - p_hi) * (x_hi - x_lo)
    return min(range(lo + 1, hi), key=lambda i: abs(math.log(plans[i].speedup) - x))


def _in_steps(probe_s: float, gen_s: float, clips: int, steps: int, batch_size: int) -> float | None:
    """Probe time in units of one dense denoising step of the profiled generation (probe time excluded; the VAE
    and text encoders are in the generation time, so this overstates the step and understates the ratio a little
    less than it would with the whole pipeline: it is the probe time over (generation time - probe) / steps)."""
    calls = max(1, math.ceil(clips / batch_size))
    step_s = (gen_s - probe_s) / (calls * steps) if steps else 0
    return probe_s / calls / step_s if step_s > 0 else None


def _size_text(kw: dict[str, Any], grid: Sequence[int]) -> str:
    parts = []
    if kw.get("num_frames") is not None and len(grid) == 3:
        parts.append(f"{kw['num_frames']} frames")
    if kw.get("height") is not None and kw.get("width") is not None:
        parts.append(f"{kw['height']}x{kw['width']}")
    g = "x".join(str(int(v)) for v in grid)
    return (" x ".join(parts) + f" (token grid {g})") if parts else f"token grid {g}"


def _budget_text(target_psnr: float | None, target_speedup: float | None) -> str:
    parts = []
    if target_psnr is not None:
        parts.append(f"PSNR >= {target_psnr:g} dB vs dense on the fit prompts")
    if target_speedup is not None:
        parts.append(f"attention-FLOP speedup >= {target_speedup:g}x")
    return " and ".join(parts)


def _fmt(v: float | None, spec: str) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, spec)


def _adh_text(s: dict[str, Any] | None) -> str:
    a = (s or {}).get("adherence")
    if not a:
        return ""
    if "all" in a:
        return f", adherence (detector, vs the scene) colour {a['colour']:.0%} all {a['all']:.0%}"
    v = a.get("vs_dense")
    return f", detector agreement with dense colour {v['colour']:.0%} all {v['all']:.0%}" if v else ""


def _measured_text(label: str, size: str, steps: int, plan: Choice, fit: dict[str, Any], hold: dict[str, Any] | None,
                   n_fit: int, n_hold: int, env: dict[str, Any], dense_s: float, tuned_s: float,
                   target_psnr: float | None, target_speedup: float | None) -> str:  # fmt: skip
    v = env["versions"]
    budget = _budget_text(target_psnr, target_speedup)
    text = (f"na-accel tune, {env['date'][:10]}: {label}, {size}, {steps} steps; budget {budget}. "
            f"Speed: {plan.speedup:.2f}x fewer attention FLOPs than dense over the whole generation "
            f"({plan.dense_steps} dense steps; grid tokens); wall time on {env['device']}: {tuned_s:.2f} s per "
            f"clip vs {dense_s:.2f} s dense. Quality vs dense, same seeds: {n_fit} fit prompt(s) PSNR "
            f"{_fmt(fit['psnr'], '.2f')} dB, SSIM {_fmt(fit['ssim'], '.3f')}, latent rel L2 "
            f"{_fmt(fit['latent_rel_l2'], '.3f')}{_adh_text(fit)}")  # fmt: skip
    if hold:
        text += (f"; {n_hold} held-out prompt(s) PSNR {_fmt(hold['psnr'], '.2f')} dB, SSIM "
                 f"{_fmt(hold['ssim'], '.3f')}, "
                 f"latent rel L2 {_fmt(hold['latent_rel_l2'], '.3f')}{_adh_text(hold)}")  # fmt: skip
    text += (f". Versions: na_accel {v['na_accel']}, torch {v['torch']}, diffusers {v['diffusers']}; dtype "
             f"{env['dtype']}.")  # fmt: skip
    return text


def _floor(v: float, digits: int) -> float:
    f = 10**digits
    return math.floor(v * f) / f


def _quality_section(fit: dict[str, Any], target_psnr: float | None) -> dict[str, float]:
    """Thresholds for ``na-accel check`` from what the fit prompts measured, with margins (1 dB, 0.05 SSIM,
    25% latent error, 0.01 cosine); the target PSNR when one was given."""
    q: dict[str, float] = {}
    p = fit.get("psnr_min")
    if target_psnr is not None:
        q["min_psnr"] = float(target_psnr)
    elif p is not None and math.isfinite(p):
        q["min_psnr"] = max(0.0, _floor(p - 1.0, 1))
    s = fit.get("ssim_min")
    if s is not None and math.isfinite(s):
        q["min_ssim"] = max(-1.0, _floor(s - 0.05, 2))
    r = fit.get("latent_rel_l2_max")
    if r is not None and math.isfinite(r):
        q["max_latent_rel_l2"] = math.ceil(r * 1.25 * 1000) / 1000
    c = fit.get("latent_cosine_min")
    if c is not None and math.isfinite(c):
        q["min_latent_cosine"] = max(-1.0, _floor(c - 0.01, 3))
    return q


def _cells_by_layer(table: LocalityTable, plan: Choice) -> dict[str, list[int | None] | None]:
    """Per layer its candidate at each profiled step (None for a layer dense at every step)."""
    return {name: cells if any(c is not None for c in cells) else None
            for name, cells in zip(table.layers, plan.cells(len(table.steps)), strict=True)}


def plan_dict(plan: Choice, table: LocalityTable) -> dict[str, Any]:
    """The plan for the report: ``windows`` maps each layer to its window's label (None: dense) or, for a layer
    whose window changes between step ranges, to one label (or None) per range of ``ranges``."""
    cands = table.ladder.candidates
    segments = plan.segments(len(table.steps))
    windows: dict[str, Any] = {}
    for li, name in enumerate(table.layers):
        labels = [None if row[li] is None else cands[row[li]].label for _a, _b, row in segments]
        windows[name] = labels[0] if len(set(labels)) == 1 else labels
    return {"threshold": plan.threshold, "dense_steps": plan.dense_steps, "speedup": plan.speedup,
            "cost": plan.cost, "predicted_kept": plan.predicted_kept, "lowest_kept": plan.lowest_kept,
            "ranges": [[int(a), int(b)] for a, b, _row in segments], "windows": windows}  # fmt: skip


def _layer_rows(table: LocalityTable, plan: Choice) -> list[dict[str, Any]]:
    """Per layer: its window (one, or ``steps a-b: window`` per step range), the FLOP density (mean over the
    sparse steps) and the kept mass of the chosen window per sparse step (min, mean, per head)."""
    hm = table.head_mean()
    cands = table.ladder.candidates
    rows = []
    n_steps = len(table.steps)
    for li, (name, per_step) in enumerate(zip(table.layers, plan.cells(n_steps), strict=True)):
        row: dict[str, Any] = {"layer": name, "window": None, "density": 1.0}
        cells = list(enumerate(per_step))[plan.dense_steps :]
        sparse = [(s, c) for s, c in cells if c is not None]
        if sparse:
            picks = [c for _s, c in cells]
            if len(set(picks)) == 1:
                cand = cands[picks[0]]
                row.update(window=cand.label, kernel_size=list(cand.kernel_size), stride=list(cand.stride))
            else:
                row["window"] = "; ".join(f"steps {a}-{b}: {'dense' if r[li] is None else cands[r[li]].label}"
                                          for a, b, r in plan.segments(n_steps))  # fmt: skip
            vals = torch.stack([hm[li, s, c] for s, c in sparse])
            heads = torch.stack([table.kept[li, s, c] for s, c in sparse])  # [S', H]
            seen = vals[~vals.isnan()]
            row.update(density=sum(1.0 if c is None else cands[c].density for _s, c in cells) / len(cells),
                       kept_min=float(seen.min()) if seen.numel() else None,
                       kept_mean=float(seen.mean()) if seen.numel() else None,
                       kept_per_head=[float(v) for v in heads.nanmean(0)])  # fmt: skip
        rows.append(row)
    return rows


def _head_spread(table: LocalityTable, plan: Choice) -> dict[str, Any]:
    """How much the heads of a layer differ, on the chosen windows and sparse steps: per layer the mean over steps
    of (max head - min head) kept mass; and the largest."""
    out: dict[str, Any] = {}
    for li, (name, per_step) in enumerate(zip(table.layers, plan.cells(len(table.steps)), strict=True)):
        cells = [(s, c) for s, c in enumerate(per_step) if c is not None]
        if not cells or table.heads[li] < 2:
            continue
        h = torch.stack([table.kept[li, s, c] for s, c in cells])  # [S', H]
        spread = h.nan_to_num(nan=-math.inf).max(-1).values - h.nan_to_num(nan=math.inf).min(-1).values
        spread = spread[torch.isfinite(spread)]
        if spread.numel():
            out[name] = float(spread.mean())
    return {"per_layer": out, "max": max(out.values(), default=None),
            "mean": sum(out.values()) / len(out) if out else None}  # fmt: skip


def _head_tradeoff(table: LocalityTable, dense_steps: int, thresholds: Sequence[float] | None) -> dict[str, Any]:
    """Predicted kept mass against attention FLOPs for one window per layer vs one window per head (the same
    dense steps), over the threshold grid; ``gain_at_equal_flops``: the mean over the per-layer points of (per-head
    kept mass interpolated at the same speedup - per-layer kept mass)."""
    from .choose import choose

    layer_pts, head_pts = [], []
    density = table.ladder.densities
    for tau in (thresholds if thresholds is not None else threshold_grid())[::4]:
        c = choose(table.head_mean(), density, table.flops, tau, dense_steps=dense_steps)
        if not c.is_dense:
            layer_pts.append((c.speedup, c.predicted_kept))
        h = choose_per_head(table.kept, density, table.flops, tau, dense_steps)
        if h["cost"] < 1:
            head_pts.append((1.0 / h["cost"], h["predicted_kept"]))
    gains = []
    hp = sorted(set(head_pts))
    for s, k in layer_pts:
        lower = [p for p in hp if p[0] <= s]
        upper = [p for p in hp if p[0] >= s]
        if not lower or not upper:
            continue
        (s0, k0), (s1, k1) = max(lower), min(upper)
        kh = k0 if s1 == s0 else k0 + (k1 - k0) * (math.log(s) - math.log(s0)) / (math.log(s1) - math.log(s0))
        gains.append(kh - k)
    return {"per_layer": sorted(set(layer_pts)), "per_head": hp,
            "gain_at_equal_flops": sum(gains) / len(gains) if gains else None}  # fmt: skip


def _head_verdict(heads: dict[str, Any]) -> str:
    gain = heads["tradeoff"].get("gain_at_equal_flops")
    spread = heads["spread"].get("mean")
    if gain is None:
        return "not measured (one head per layer, or no comparable plans)"
    return (f"heads differ by {_fmt(spread, '.3f')} kept mass on average (max - min head, chosen windows); one window "
            f"per head would keep {gain:+.4f} of the attention mass at equal attention FLOPs (predicted from the "
            "profile). Head groups are not implemented: " + ("the predicted gain is too small to pay for a launch "
            "per group" if gain < 0.02 else "the gain is predicted only; it has not been validated by "
            "generations"))  # fmt: skip


def _range_verdict(r: dict[str, Any]) -> str:
    parts = [f"{k} ranges: {v['speedup']:.2f}x ({v['saving_vs_one_range']:.1%} fewer FLOPs than one window per layer)"
             for k, v in r.items() if isinstance(v, dict)]  # fmt: skip
    if not parts:
        return "not measured (too few sparse steps)"
    chosen = r.get("chosen_ranges")
    used = (f"the chosen plan has a window per layer and step range ({len(chosen)} ranges: "
            + ", ".join(f"steps {a}-{b}" for a, b in chosen) + "; layer rules with `steps` in the config)"
            if chosen else "the chosen plan has one window per layer (ranges were tried: at this threshold they saved "
            "less than 5%, or a plan with one window per layer was as cheap at a higher threshold)")  # fmt: skip
    one = r["one_range_speedup"]
    return (f"at the chosen threshold, one window per layer over all sparse steps gives {one:.2f}x; "
            "a window per step range: " + "; ".join(parts) + f". {used[0].upper()}{used[1:]}.")  # fmt: skip
