"""The result of a dense-vs-patched comparison (:class:`QualityReport`) and strict-JSON helpers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..patching.config import QualityThresholds

__all__ = ["QualityReport", "json_safe"]

def _json_float(v: float | None) -> float | str | None:
    if v is None:
        return None
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def json_safe(obj: Any) -> Any:
    """Recursively make ``obj`` strict-JSON serialisable: inf/nan floats become the strings "inf"/"nan"."""
    if isinstance(obj, float):
        return _json_float(obj)
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    return obj


def _mean(values: Iterable[float] | None) -> float | None:
    vals = [float(v) for v in (values or [])]
    return sum(vals) / len(vals) if vals else None


@dataclass
class QualityReport:
    """Result of one dense-vs-patched comparison.

    ``psnr`` / ``ssim`` values are in dB / [-1, 1]; ``psnr`` is ``inf`` for identical frames (written to JSON as
    the string ``"inf"``). ``attention`` lists ``{"name", "rel_l2"}`` per attention module on the calibration
    step. ``attention_calls`` counts the patched run's attention calls (``PatchHandle.call_counts()``: sparse,
    dense, fallback, compiled; None when unknown). ``verdict`` is ``FAIL`` when a threshold that is set does not
    hold (``failures`` says which), else ``NOTHING TESTED`` when the patched run made no sparse attention call (it
    ran dense, so the comparison says nothing about the config), else ``PASS``; ``passed`` is True only for ``PASS``.
    """

    model: str
    config: str
    prompt: str
    seed: int
    latent_rel_l2: float
    latent_cosine: float
    psnr_per_frame: list[float]
    ssim_per_frame: list[float]
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    lpips_per_frame: list[float] | None = None
    lpips_status: str = "unavailable"
    attention: list[dict[str, Any]] = field(default_factory=list)
    calibration_step: int | None = None
    dense_time_s: float | None = None
    patched_time_s: float | None = None
    dense_step_s: float | None = None
    patched_step_s: float | None = None
    random_weights: bool = False
    generation: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    attention_calls: dict[str, int] | None = None

    @property
    def psnr_mean(self) -> float | None:
        return _mean(self.psnr_per_frame)

    @property
    def ssim_mean(self) -> float | None:
        return _mean(self.ssim_per_frame)

    @property
    def lpips_mean(self) -> float | None:
        return _mean(self.lpips_per_frame) if self.lpips_per_frame else None

    @property
    def attention_max_rel_l2(self) -> float | None:
        vals = [a["rel_l2"] for a in self.attention if a.get("rel_l2") is not None]
        return max(vals) if vals else None

    @property
    def speedup(self) -> float | None:
        if self.dense_time_s and self.patched_time_s:
            return self.dense_time_s / self.patched_time_s
        return None

    @property
    def failures(self) -> list[str]:
        t = self.thresholds
        out: list[str] = []
        checks = [
            ("PSNR", self.psnr_mean, t.min_psnr, ">=", " dB"),
            ("SSIM", self.ssim_mean, t.min_ssim, ">=", ""),
            ("latent relative L2", self.latent_rel_l2, t.max_latent_rel_l2, "<=", ""),
            ("latent cosine", self.latent_cosine, t.min_latent_cosine, ">=", ""),
        ]
        for name, value, limit, op, unit in checks:
            if limit is None:
                continue
            if value is None or math.isnan(value):
                out.append(f"{name} could not be measured (threshold {op} {limit:g}{unit})")
                continue
            ok = value >= limit if op == ">=" else value <= limit
            if not ok:
                out.append(f"{name} {value:.4g}{unit} fails threshold {op} {limit:g}{unit}")
        return out

    @property
    def sparse_calls(self) -> int | None:
        return None if self.attention_calls is None else int(self.attention_calls.get("sparse", 0))

    @property
    def tested(self) -> bool:
        """False when the patched run made no sparse attention call (True when the counts are unknown)."""
        return self.sparse_calls is None or self.sparse_calls > 0

    @property
    def verdict(self) -> str:
        if self.failures:
            return "FAIL"
        return "PASS" if self.tested else "NOTHING TESTED"

    @property
    def passed(self) -> bool:
        return self.verdict == "PASS"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["thresholds"] = asdict(self.thresholds)
        d.update(
            psnr_mean=self.psnr_mean,
            ssim_mean=self.ssim_mean,
            lpips_mean=self.lpips_mean,
            attention_max_rel_l2=self.attention_max_rel_l2,
            speedup=self.speedup,
            passed=self.passed,
            failures=self.failures,
            sparse_calls=self.sparse_calls,
            tested=self.tested,
            verdict=self.verdict,
        )
        return json_safe(d)

    def summary(self) -> str:
        def f(v: float | None, spec: str = ".4f") -> str:
            if v is None:
                return "n/a"
            if math.isinf(v):
                return "inf"
            return format(v, spec)

        model = self.model + (
            " [tiny random-weight model]" if self.random_weights and "tiny" not in self.model else ""
        )
        lines = [
            f"Quality check: {self.config} vs dense  ({self.verdict})",
            f"  model: {model}",
            f"  prompt: {self.prompt!r}  seed: {self.seed}",
        ]
        if self.generation:
            lines.append("  " + "  ".join(f"{k}: {v}" for k, v in self.generation.items()))
        t = self.thresholds

        def lim(v: float | None, op: str) -> str:
            return f"(threshold {op} {v:g})" if v is not None else "(no threshold)"

        n = len(self.psnr_per_frame)
        lines += [
            f"  latent relative L2: {f(self.latent_rel_l2, '.3e')} {lim(t.max_latent_rel_l2, '<=')}",
            f"  latent cosine:      {f(self.latent_cosine, '.6f')} {lim(t.min_latent_cosine, '>=')}",
            f"  PSNR mean:          {f(self.psnr_mean, '.2f')} dB over {n} frame(s) {lim(t.min_psnr, '>=')}",
            f"  SSIM mean:          {f(self.ssim_mean, '.4f')} {lim(t.min_ssim, '>=')}",
        ]
        if n > 1:
            lines.append("  PSNR per frame: " + ", ".join(f(v, ".2f") for v in self.psnr_per_frame))
            lines.append("  SSIM per frame: " + ", ".join(f(v, ".4f") for v in self.ssim_per_frame))
        if self.lpips_per_frame:
            lines.append(f"  LPIPS mean:         {f(self.lpips_mean)}")
        else:
            lines.append(f"  LPIPS: {self.lpips_status}")
        if self.attention:
            worst = sorted(self.attention, key=lambda a: -(a.get("rel_l2") or 0.0))[:5]
            lines.append(
                f"  attention output rel. L2 on step {self.calibration_step} ({len(self.attention)} modules), "
                f"max {f(self.attention_max_rel_l2, '.3e')}; worst: "
                + ", ".join(f"{a['name']}={f(a['rel_l2'], '.2e')}" for a in worst)
            )
        if self.dense_time_s is not None and self.patched_time_s is not None:
            lines.append(
                f"  time: dense {self.dense_time_s:.2f} s, patched {self.patched_time_s:.2f} s "
                f"(x{f(self.speedup, '.2f')}; not a benchmark)"
            )
        if self.attention_calls is not None:
            c = self.attention_calls
            calls = f"{c.get('sparse', 0)} sparse, {c.get('dense', 0)} dense, {c.get('fallback', 0)} fallback"
            lines.append(f"  attention calls of the patched run: {calls}")
        if not self.tested:
            lines.append(
                "  NOTHING TESTED: the patched run made no sparse attention call, so it equals dense and says "
                "nothing about the config (see the notes)"
            )
        for note in self.notes:
            lines.append(f"  note: {note}")
        for fail in self.failures:
            lines.append(f"  FAILED: {fail}")
        return "\n".join(lines)
