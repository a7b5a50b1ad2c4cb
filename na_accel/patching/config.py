"""Patch configurations: the YAML schema, its validation, and the shipped presets.

A config says, per attention layer of one diffusers transformer, which GNA window (kernel_size / stride /
dilation over the latent token grid) replaces dense self-attention, which layers stay dense, and for how many
initial denoising steps everything stays dense::

    version: 1                      # required
    model: HunyuanVideoTransformer3DModel
    description: "..."
    measured: "unmeasured"          # or what it was measured to give (speed, quality, GPU, shape)
    defaults:
      kernel_size: [18, 24, 24]     # per axis in latent tokens; -1 = whole axis; float in (0, 1] = fraction of axis
      stride: [16, 8, 8]            # same forms
      dilation: 1
      is_causal: false
      dense_steps: 15               # first N denoising steps dense
      on_oversize: clamp            # window larger than the grid at run time: clamp or raise
      backend: auto
      precision: bf16               # operands of the attention kernel: bf16 (the inputs' dtype) or fp8
    layers:                         # exact module name first, then "re:" regex (first match), then "_default"
      - match: "transformer_blocks.0.attn"
        dense: true
      - match: "re:single_transformer_blocks.*"
        steps: [15, 29]             # only at denoising steps 15..29 (0-based, inclusive; [30, -1]: 30 to the end)
        kernel_size: 0.5            # other steps: the next rule that matches, or the defaults
    quality: {min_psnr: 25.0, min_ssim: 0.85, max_latent_rel_l2: 0.2, min_latent_cosine: 0.97}

Every error is a :class:`~na_accel.errors.ConfigError` naming the file, the key path, what is allowed and, for a
misspelt key, the closest allowed one.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..ops.precision import PRECISIONS
from ..ops.semantics import GNAParams, make_params

__all__ = [
    "SUPPORTED_VERSIONS",
    "LayerRule",
    "NAConfig",
    "PresetInfo",
    "QualityThresholds",
    "ResolvedWindow",
    "WindowSpec",
    "list_presets",
    "load_config",
    "preset_path",
    "quality_value_problem",
]

SUPPORTED_VERSIONS = (1,)
PRESET_DIR = Path(__file__).resolve().parent / "presets"
BACKENDS = ("auto", "sdpa", "triton", "flex", "masked_sdpa", "reference")
ON_OVERSIZE = ("clamp", "raise")

# An axis value of kernel_size / stride: -1 (whole axis), an int >= 1, or a fraction of the axis in (0, 1].
AxisValue = int | float

_TOP_KEYS = ("version", "model", "description", "measured", "defaults", "layers", "quality")
_WINDOW_KEYS = ("kernel_size", "stride", "dilation", "is_causal", "on_oversize", "backend", "precision")
_DEFAULT_KEYS = _WINDOW_KEYS + ("dense_steps",)
_RULE_KEYS = ("match", "steps", "dense") + _WINDOW_KEYS
_QUALITY_KEYS = ("min_psnr", "min_ssim", "max_latent_rel_l2", "min_latent_cosine")


# --------------------------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSpec:
    """Window settings as configured (before a token grid is known). Tuples are per axis; a scalar means all."""

    kernel_size: AxisValue | tuple[AxisValue, ...] = -1
    stride: AxisValue | tuple[AxisValue, ...] = 1
    dilation: int | tuple[int, ...] = 1
    is_causal: bool | tuple[bool, ...] = False
    on_oversize: str = "clamp"
    backend: str = "auto"
    #: operands of the attention kernel (:data:`~na_accel.ops.precision.PRECISIONS`): "bf16", the inputs' own dtype,
    #: or "fp8", 8-bit operands on Hopper GPUs (elsewhere the call falls back to the inputs' precision)
    precision: str = "bf16"

    def describe(self) -> str:
        def fmt(v):
            if isinstance(v, tuple):
                return "[" + ", ".join(fmt(x) for x in v) + "]"
            return "true" if v is True else "false" if v is False else str(v)

        parts = [f"kernel_size={fmt(self.kernel_size)}", f"stride={fmt(self.stride)}"]
        if self.dilation != 1:
            parts.append(f"dilation={fmt(self.dilation)}")
        if self.is_causal is not False:
            parts.append(f"is_causal={fmt(self.is_causal)}")
        if self.precision != "bf16":
            parts.append(f"precision={self.precision}")
        return " ".join(parts)

    def resolve(self, grid: Sequence[int], where: str = "") -> ResolvedWindow:
        """Integer window for a concrete token ``grid`` (applies ``-1``, fractions and ``on_oversize``).

        Raises :class:`ConfigError` if the window does not fit the grid and ``on_oversize`` is ``raise``.
        """
        grid = tuple(int(n) for n in grid)
        nd = len(grid)
        ks = _per_axis(self.kernel_size, nd, "kernel_size", where)
        st = _per_axis(self.stride, nd, "stride", where)
        dl = _per_axis(self.dilation, nd, "dilation", where)
        cz = _per_axis(self.is_causal, nd, "is_causal", where)
        out_k, out_s, out_d, notes = [], [], [], []
        for axis, (n, k, s, d) in enumerate(zip(grid, ks, st, dl, strict=True)):
            k = _axis_value(k, n)
            s = _axis_value(s, n)
            if k > n or k * d > n:
                if self.on_oversize == "raise":
                    raise ConfigError(
                        f"{where or 'config'}: kernel_size {k} * dilation {d} on axis {axis} exceeds the token grid "
                        f"{grid} (axis length {n}). Allowed: on_oversize: clamp (shrink the window to the grid), a "
                        "fraction of the axis (e.g. 0.5) or -1 (whole axis)."
                    )
                if k > n:
                    notes.append(f"axis {axis}: kernel_size {k} clamped to {n}")
                    k, d = n, 1
                else:
                    notes.append(f"axis {axis}: dilation {d} clamped to {n // k}")
                    d = n // k
            if s > k:
                if self.on_oversize == "raise":
                    raise ConfigError(
                        f"{where or 'config'}: stride {s} on axis {axis} exceeds the resolved kernel_size {k} for the "
                        f"token grid {grid}. Allowed: 1 <= stride <= kernel_size, or on_oversize: clamp."
                    )
                notes.append(f"axis {axis}: stride {s} clamped to {k}")
                s = k
            out_k.append(k)
            out_s.append(s)
            out_d.append(d)
        params = make_params(grid, tuple(out_k), tuple(out_s), tuple(out_d), tuple(bool(c) for c in cz))
        return ResolvedWindow(params, tuple(notes))


@dataclass(frozen=True)
class ResolvedWindow:
    """A window resolved for one token grid: validated GNA parameters (``params.is_dense`` when every query sees
    the whole grid) and what was clamped to fit (``notes``)."""

    params: GNAParams
    notes: tuple[str, ...] = ()

    @property
    def grid(self) -> tuple[int, ...]:
        return self.params.grid

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.params.kernel_size

    @property
    def stride(self) -> tuple[int, ...]:
        return self.params.stride

    @property
    def dilation(self) -> tuple[int, ...]:
        return self.params.dilation

    @property
    def is_causal(self) -> tuple[bool, ...]:
        return self.params.is_causal

    def describe(self) -> str:
        def t(v):
            return "(" + ", ".join(str(int(x)) for x in v) + ")"

        s = f"kernel_size={t(self.kernel_size)} stride={t(self.stride)} dilation={t(self.dilation)}"
        if any(self.is_causal):
            s += " is_causal=(" + ", ".join(str(c) for c in self.is_causal) + ")"
        if self.notes:
            s += " [" + "; ".join(self.notes) + "]"
        return s


@dataclass(frozen=True)
class LayerRule:
    """One ``layers`` entry. Unset window fields (None) inherit from ``defaults``."""

    match: str
    dense: bool = False
    kernel_size: Any = None
    stride: Any = None
    dilation: Any = None
    is_causal: Any = None
    on_oversize: str | None = None
    backend: str | None = None
    precision: str | None = None
    steps: tuple[int, int | None] | None = None  # (first, last) denoising steps, inclusive; last None: to the end
    index: int = 0  # position in the ``layers`` list (for messages)

    @property
    def kind(self) -> str:
        if self.match == "_default":
            return "default"
        return "regex" if self.match.startswith("re:") else "exact"

    def matches(self, name: str) -> bool:
        if self.kind == "exact":
            return self.match == name
        if self.kind == "regex":
            return re.fullmatch(self.match[3:], name) is not None
        return True

    def covers(self, step: int | None) -> bool:
        """Whether the rule applies at denoising step ``step``: a rule without ``steps`` at every step, a rule with
        ``steps`` only at a known step inside its range."""
        if self.steps is None:
            return True
        if step is None:
            return False
        first, last = self.steps
        return first <= step and (last is None or step <= last)

    def steps_text(self) -> str:
        if self.steps is None:
            return "all steps"
        first, last = self.steps
        return f"steps {first}-{'end' if last is None else last}"

    def apply(self, defaults: WindowSpec) -> WindowSpec:
        updates = {k: getattr(self, k) for k in _WINDOW_KEYS if getattr(self, k) is not None}
        return replace(defaults, **updates)

    def label(self) -> str:
        where = "" if self.steps is None else f", {self.steps_text()}"
        return f"layers[{self.index}] (match: {self.match!r}{where})"


@dataclass(frozen=True)
class QualityThresholds:
    """Pass conditions of the quality gate (``na-accel check``, :func:`na_accel.quality.compare`); ``None`` means
    the metric is reported but not checked."""

    min_psnr: float | None = 25.0
    min_ssim: float | None = 0.85
    max_latent_rel_l2: float | None = 0.2
    min_latent_cosine: float | None = 0.97

    def with_overrides(self, **overrides: float | None) -> QualityThresholds:
        """A copy with the given (non-None) values replaced, e.g. from command-line options; :class:`ConfigError`
        for a value outside its range (see :func:`quality_value_problem`)."""
        for k, v in overrides.items():
            why = None if v is None else quality_value_problem(k, v)
            if why is not None:
                raise ConfigError(f"quality threshold {k}: {why}")
        return replace(self, **{k: float(v) for k, v in overrides.items() if v is not None})


#: Range of each quality threshold: a gate outside it can never pass (or always passes).
QUALITY_RANGES: dict[str, tuple[float, float | None, str]] = {
    "min_psnr": (0.0, None, "PSNR in dB of frames in [0, 1]"),
    "min_ssim": (-1.0, 1.0, "SSIM"),
    "max_latent_rel_l2": (0.0, None, "a relative L2 error"),
    "min_latent_cosine": (-1.0, 1.0, "a cosine similarity"),
}


def quality_value_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the quality threshold ``key`` (None when it can): not a number, not finite, or
    outside the metric's range."""
    lo, hi, what = QUALITY_RANGES[key]
    allowed = f"a number from {lo:g} to {hi:g}" if hi is not None else f"a number, finite, of at least {lo:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected {allowed} ({what}), got {value!r}."
    if not math.isfinite(value) or value < lo or (hi is not None and value > hi):
        return f"expected {allowed} ({what}), got {value:g}."
    return None


@dataclass(frozen=True)
class NAConfig:
    """A validated patch configuration (see the module docstring for the YAML schema)."""

    version: int = 1
    model: str | None = None
    description: str = ""
    measured: str = "unmeasured"
    defaults: WindowSpec = field(default_factory=WindowSpec)
    dense_steps: int = 0
    layers: tuple[LayerRule, ...] = ()
    quality: QualityThresholds = field(default_factory=QualityThresholds)
    source: str = "<object>"  # file path, preset name or "<dict>" (for messages)
    name: str | None = None  # preset name when loaded from a preset

    # ---- rule lookup ----------------------------------------------------------------------------------------

    def rule_for(self, layer_name: str, step: int | None = None) -> LayerRule | None:
        """The rule that applies to ``layer_name`` at denoising step ``step``: exact name, then first matching
        regex, then ``_default``, each only where its ``steps`` cover ``step`` (a rule with ``steps`` never applies
        when the step is unknown, None)."""
        for kind in ("exact", "regex", "default"):
            for rule in self.layers:
                if rule.kind == kind and rule.matches(layer_name) and rule.covers(step):
                    return rule
        return None

    def window_for(self, layer_name: str, step: int | None = None) -> tuple[LayerRule | None, WindowSpec | None]:
        """``(rule, window)`` for a layer at a denoising step (see :meth:`rule_for`); ``window`` is None when the
        layer stays dense by rule."""
        rule = self.rule_for(layer_name, step)
        if rule is None:
            return None, self.defaults
        if rule.dense:
            return rule, None
        return rule, rule.apply(self.defaults)

    def step_rules_for(self, layer_name: str) -> tuple[LayerRule, ...]:
        """The rules with ``steps`` that match ``layer_name`` (empty: its window does not change with the step)."""
        return tuple(r for r in self.layers if r.steps is not None and r.matches(layer_name))

    def windows_for(self, layer_name: str) -> list[WindowSpec | None]:
        """Every window ``layer_name`` can get at some step (None: dense by rule), without repeats: the window of
        the rules without ``steps`` and that of each rule with ``steps`` that would be chosen in its range."""
        out: list[WindowSpec | None] = []
        ranged = self.step_rules_for(layer_name)
        probes = [None] + [r.steps[0] for r in ranged] + [r.steps[1] + 1 for r in ranged if r.steps[1] is not None]
        for step in probes:
            _rule, window = self.window_for(layer_name, step)
            if window not in out:
                out.append(window)
        return out

    def check_layers(self, layer_names: Sequence[str], model_name: str, other_names: Sequence[str] = ()) -> None:
        """Raise :class:`ConfigError` if a rule (other than ``_default``) matches none of ``layer_names``."""
        names = list(layer_names)
        for rule in self.layers:
            if rule.kind == "default" or any(rule.matches(n) for n in names):
                continue
            shown = ", ".join(names[:4]) + (f", ... ({len(names)} layers)" if len(names) > 4 else "")
            msg = f"{self.source}: {rule.label()} matches no patchable attention layer of {model_name}."
            if rule.kind == "exact":
                close = difflib.get_close_matches(rule.match, names, n=1, cutoff=0.6)
                if close:
                    msg += f" Did you mean {close[0]!r}?"
                if rule.match in other_names:
                    msg += " (That module is not a token-grid self-attention layer, e.g. cross-attention.)"
            msg += f" Patchable layers: {shown}. Regex rules start with 're:' and must match the whole name."
            raise ConfigError(msg)

    def check_ndim(self, ndim: int, model_name: str) -> None:
        """Raise :class:`ConfigError` if a per-axis list does not have one entry per token-grid axis."""
        specs = [("defaults", self.defaults)] + [(f"layers[{r.index}]", r) for r in self.layers]
        for path, spec in specs:
            for key in ("kernel_size", "stride", "dilation", "is_causal"):
                value = getattr(spec, key)
                if isinstance(value, tuple) and len(value) != ndim:
                    raise ConfigError(
                        f"{self.source}: {path}.{key} has {len(value)} entries {list(value)}, but the token grid of "
                        f"{model_name} has {ndim} axes. Allowed: a list of {ndim} values or one value for all axes."
                    )

    def with_precision(self, precision: str) -> NAConfig:
        """A copy whose defaults and every rule run in ``precision`` (one of
        :data:`~na_accel.ops.precision.PRECISIONS`; :class:`ConfigError` otherwise), e.g. from ``--precision``."""
        _choice(precision, PRECISIONS, self.source, "precision")
        # a rule that sets no precision takes the defaults'
        layers = tuple(replace(r, precision=None) for r in self.layers)
        return replace(self, defaults=replace(self.defaults, precision=precision), layers=layers)

    def to_dict(self) -> dict:
        """The config in the YAML schema (round-trips through :func:`load_config`)."""

        def enc(v):
            return list(v) if isinstance(v, tuple) else v

        d = self.defaults
        out: dict[str, Any] = {"version": self.version}
        if self.model is not None:
            out["model"] = self.model
        out["description"] = self.description
        out["measured"] = self.measured
        out["defaults"] = {
            "kernel_size": enc(d.kernel_size),
            "stride": enc(d.stride),
            "dilation": enc(d.dilation),
            "is_causal": enc(d.is_causal),
            "dense_steps": self.dense_steps,
            "on_oversize": d.on_oversize,
            "backend": d.backend,
            "precision": d.precision,
        }
        layers = []
        for r in self.layers:
            entry: dict[str, Any] = {"match": r.match}
            if r.steps is not None:
                entry["steps"] = [r.steps[0], -1 if r.steps[1] is None else r.steps[1]]
            if r.dense:
                entry["dense"] = True
            for k in _WINDOW_KEYS:
                if getattr(r, k) is not None:
                    entry[k] = enc(getattr(r, k))
            layers.append(entry)
        out["layers"] = layers
        q = self.quality
        out["quality"] = {k: getattr(q, k) for k in _QUALITY_KEYS if getattr(q, k) is not None}
        return out


@dataclass(frozen=True)
class PresetInfo:
    name: str
    model: str | None
    description: str
    measured: str
    path: str


# --------------------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------------------


def _err(source: str, path: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {path}: {msg}" if path else f"{source}: {msg}")


def _check_keys(data: Mapping, allowed: Sequence[str], source: str, path: str) -> None:
    for key in data:
        if not isinstance(key, str):
            raise _err(source, path or "<top level>", f"keys must be strings, got {key!r}.")
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            msg = f"unknown key. Allowed keys: {', '.join(allowed)}."
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            if close:
                msg += f" Did you mean {close[0]!r}?"
            raise _err(source, where, msg)


def _type_name(v) -> str:
    return type(v).__name__


_AXIS_ALLOWED = "an int >= 1, -1 (whole axis) or a float in (0, 1] (fraction of the axis)"


def _axis_entry(v, source: str, path: str) -> AxisValue:
    if isinstance(v, bool):
        raise _err(source, path, f"expected {_AXIS_ALLOWED}, got {v!r}.")
    if isinstance(v, int):
        if v == -1 or v >= 1:
            return v
        raise _err(source, path, f"expected {_AXIS_ALLOWED}, got {v}.")
    if isinstance(v, float):
        if 0.0 < v <= 1.0 and math.isfinite(v):
            return v
        raise _err(source, path, f"expected {_AXIS_ALLOWED}, got {v}.")
    raise _err(source, path, f"expected {_AXIS_ALLOWED}, got {v!r} ({_type_name(v)}).")


def _axis_field(v, source: str, path: str):
    if isinstance(v, list | tuple):
        if not 1 <= len(v) <= 3:
            raise _err(source, path, f"expected one value per grid axis (1 to 3 entries), got {len(v)}: {v!r}.")
        return tuple(_axis_entry(x, source, f"{path}[{i}]") for i, x in enumerate(v))
    return _axis_entry(v, source, path)


def _int_field(v, source: str, path: str, minimum: int):
    def one(x, p):
        if isinstance(x, bool) or not isinstance(x, int) or x < minimum:
            raise _err(source, p, f"expected an int >= {minimum}, got {x!r}.")
        return x

    if isinstance(v, list | tuple):
        if not 1 <= len(v) <= 3:
            raise _err(source, path, f"expected one value per grid axis (1 to 3 entries), got {len(v)}: {v!r}.")
        return tuple(one(x, f"{path}[{i}]") for i, x in enumerate(v))
    return one(v, path)


def _bool_field(v, source: str, path: str):
    if isinstance(v, list | tuple):
        if not 1 <= len(v) <= 3:
            raise _err(source, path, f"expected one value per grid axis (1 to 3 entries), got {len(v)}: {v!r}.")
        out = []
        for i, x in enumerate(v):
            if not isinstance(x, bool):
                raise _err(source, f"{path}[{i}]", f"expected true or false, got {x!r}.")
            out.append(x)
        return tuple(out)
    if not isinstance(v, bool):
        raise _err(source, path, f"expected true or false (or a list of them, one per axis), got {v!r}.")
    return v


def _choice(v, allowed: Sequence[str], source: str, path: str) -> str:
    if not isinstance(v, str) or v not in allowed:
        msg = f"expected one of {', '.join(repr(a) for a in allowed)}, got {v!r}."
        if isinstance(v, str):
            close = difflib.get_close_matches(v, allowed, n=1, cutoff=0.6)
            if close:
                msg += f" Did you mean {close[0]!r}?"
        raise _err(source, path, msg)
    return v


def _str_field(v, source: str, path: str) -> str:
    if not isinstance(v, str):
        raise _err(source, path, f"expected a string, got {v!r} ({_type_name(v)}).")
    return v


def _check_stride_le_kernel(kernel, stride, source: str, path: str) -> None:
    """Static check where both are known integers (fractions and -1 are checked when the grid is known)."""
    if kernel is None or stride is None:
        return
    n = max(len(kernel) if isinstance(kernel, tuple) else 1, len(stride) if isinstance(stride, tuple) else 1)
    ks = kernel if isinstance(kernel, tuple) else (kernel,) * n
    ss = stride if isinstance(stride, tuple) else (stride,) * n
    if len(ks) != len(ss):
        raise _err(source, f"{path}.stride", f"has {len(ss)} entries but kernel_size has {len(ks)}.")
    for axis, (k, s) in enumerate(zip(ks, ss, strict=True)):
        if isinstance(k, int) and isinstance(s, int) and k != -1 and s != -1 and s > k:
            raise _err(
                source,
                f"{path}.stride",
                f"stride {s} exceeds kernel_size {k} on axis {axis}. Allowed: 1 <= stride <= kernel_size "
                "(1 = neighborhood attention, kernel_size = blocked attention).",
            )


def _window_fields(data: Mapping, source: str, path: str) -> dict:
    out: dict[str, Any] = {}
    if "kernel_size" in data:
        out["kernel_size"] = _axis_field(data["kernel_size"], source, f"{path}.kernel_size")
    if "stride" in data:
        out["stride"] = _axis_field(data["stride"], source, f"{path}.stride")
    if "dilation" in data:
        out["dilation"] = _int_field(data["dilation"], source, f"{path}.dilation", 1)
    if "is_causal" in data:
        out["is_causal"] = _bool_field(data["is_causal"], source, f"{path}.is_causal")
    if "on_oversize" in data:
        out["on_oversize"] = _choice(data["on_oversize"], ON_OVERSIZE, source, f"{path}.on_oversize")
    if "backend" in data:
        out["backend"] = _choice(data["backend"], BACKENDS, source, f"{path}.backend")
    if "precision" in data:
        out["precision"] = _choice(data["precision"], PRECISIONS, source, f"{path}.precision")
    return out


def _steps_field(v, source: str, path: str) -> tuple[int, int | None]:
    allowed = ("[first, last]: denoising steps (0-based, inclusive), ints with 0 <= first <= last, or last = -1 for "
               "'to the end'")  # fmt: skip
    if not isinstance(v, list | tuple) or len(v) != 2:
        raise _err(source, path, f"expected {allowed}; got {v!r}.")
    first, last = v
    if any(isinstance(x, bool) or not isinstance(x, int) for x in (first, last)):
        raise _err(source, path, f"expected {allowed}; got {v!r}.")
    if first < 0 or (last != -1 and last < first):
        raise _err(source, path, f"expected {allowed}; got {list(v)}.")
    return first, None if last == -1 else last


def _overlap(a: tuple[int, int | None], b: tuple[int, int | None]) -> bool:
    a_end = math.inf if a[1] is None else a[1]
    b_end = math.inf if b[1] is None else b[1]
    return a[0] <= b_end and b[0] <= a_end


def _range_text(r: tuple[int, int | None]) -> str:
    return f"steps [{r[0]}, {-1 if r[1] is None else r[1]}]"


def _mapping(v, source: str, path: str) -> Mapping:
    if not isinstance(v, Mapping):
        raise _err(source, path, f"expected a mapping (key: value), got {v!r} ({_type_name(v)}).")
    return v


def config_from_dict(data: Any, source: str = "<dict>", name: str | None = None) -> NAConfig:
    """Validate a dict in the YAML schema and build an :class:`NAConfig`."""
    if not isinstance(data, Mapping):
        raise _err(source, "", f"a config must be a mapping with at least 'version: 1', got {_type_name(data)}.")
    _check_keys(data, _TOP_KEYS, source, "")
    if "version" not in data:
        raise _err(source, "version", "missing required key. Add 'version: 1' at the top of the config.")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _err(source, "version", f"expected an int, got {version!r}. Supported: {list(SUPPORTED_VERSIONS)}.")
    if version not in SUPPORTED_VERSIONS:
        raise _err(
            source,
            "version",
            f"version {version} is not supported by this na_accel; supported: {list(SUPPORTED_VERSIONS)}.",
        )
    model = data.get("model")
    if model is not None:
        model = _str_field(model, source, "model")
    description = _str_field(data.get("description", ""), source, "description")
    measured = _str_field(data.get("measured", "unmeasured"), source, "measured")

    defaults_data = _mapping(data.get("defaults", {}) or {}, source, "defaults")
    _check_keys(defaults_data, _DEFAULT_KEYS, source, "defaults")
    fields = _window_fields(defaults_data, source, "defaults")
    defaults = WindowSpec(**fields)
    _check_stride_le_kernel(defaults.kernel_size, defaults.stride, source, "defaults")
    dense_steps = defaults_data.get("dense_steps", 0)
    if isinstance(dense_steps, bool) or not isinstance(dense_steps, int) or dense_steps < 0:
        raise _err(
            source, "defaults.dense_steps", f"expected an int >= 0 (number of dense steps), got {dense_steps!r}."
        )

    layers_data = data.get("layers", []) or []
    if not isinstance(layers_data, list | tuple):
        raise _err(source, "layers", f"expected a list of rules (each with 'match'), got {_type_name(layers_data)}.")
    rules = []
    seen: dict[str, list[int]] = {}
    for i, entry in enumerate(layers_data):
        path = f"layers[{i}]"
        entry = _mapping(entry, source, path)
        _check_keys(entry, _RULE_KEYS, source, path)
        if "match" not in entry:
            raise _err(
                source,
                f"{path}.match",
                "missing required key: an exact module name, 're:<regex>' or '_default'.",
            )
        match = _str_field(entry["match"], source, f"{path}.match")
        if not match:
            raise _err(source, f"{path}.match", "must not be empty.")
        if match.startswith("re:"):
            try:
                re.compile(match[3:])
            except re.error as exc:
                raise _err(source, f"{path}.match", f"invalid regular expression {match[3:]!r}: {exc}.") from None
        steps = _steps_field(entry["steps"], source, f"{path}.steps") if "steps" in entry else None
        for j in seen.get(match, []):
            other = rules[j]
            if steps is None or other.steps is None:
                raise _err(source, f"{path}.match", f"{match!r} is already matched by layers[{j}]. Rules for the same "
                           "match need 'steps' with ranges that do not overlap.")  # fmt: skip
            if _overlap(steps, other.steps):
                raise _err(source, f"{path}.steps", f"{_range_text(steps)} overlaps {_range_text(other.steps)} of "
                           f"layers[{j}] (same match {match!r}). Allowed: ranges that do not overlap.")  # fmt: skip
        seen.setdefault(match, []).append(i)
        dense = entry.get("dense", False)
        if not isinstance(dense, bool):
            raise _err(source, f"{path}.dense", f"expected true or false, got {dense!r}.")
        fields = _window_fields(entry, source, path)
        if dense and fields:
            raise _err(
                source,
                path,
                f"a rule with 'dense: true' takes no window settings (got {', '.join(fields)}); remove them or "
                "set 'dense: false'.",
            )
        rule = LayerRule(match=match, dense=dense, steps=steps, index=i, **fields)
        if not dense:
            eff = rule.apply(defaults)
            _check_stride_le_kernel(eff.kernel_size, eff.stride, source, path)
        rules.append(rule)

    quality_data = _mapping(data.get("quality", {}) or {}, source, "quality")
    _check_keys(quality_data, _QUALITY_KEYS, source, "quality")
    qvals = {}
    for key in _QUALITY_KEYS:
        if key in quality_data:
            v = quality_data[key]
            why = quality_value_problem(key, v)
            if why is not None:
                raise _err(source, f"quality.{key}", why)
            qvals[key] = float(v)
    quality = QualityThresholds(**qvals)

    return NAConfig(
        version=version,
        model=model,
        description=description,
        measured=measured,
        defaults=defaults,
        dense_steps=dense_steps,
        layers=tuple(rules),
        quality=quality,
        source=source,
        name=name,
    )


# --------------------------------------------------------------------------------------------------------------
# Resolution against a grid
# --------------------------------------------------------------------------------------------------------------


def _per_axis(value, ndim: int, key: str, where: str) -> tuple:
    if isinstance(value, tuple):
        if len(value) != ndim:
            raise ConfigError(
                f"{where or 'config'}: {key} has {len(value)} entries {list(value)}, but the token grid has {ndim} "
                f"axes. Allowed: {ndim} values or a single value for all axes."
            )
        return value
    return (value,) * ndim


def _axis_value(v: AxisValue, n: int) -> int:
    if isinstance(v, float):
        return max(1, min(n, int(round(v * n))))
    if v == -1:
        return n
    return int(v)


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------


def _preset_files() -> dict[str, Path]:
    if not PRESET_DIR.is_dir():
        return {}
    return {p.stem: p for p in sorted(PRESET_DIR.glob("*.yaml"))}


def preset_path(name: str) -> Path:
    """Path of the shipped preset ``name``; :class:`ConfigError` listing the available ones if unknown."""
    presets = _preset_files()
    if name in presets:
        return presets[name]
    msg = f"unknown preset {name!r}. Available presets: {', '.join(presets) or '(none)'}."
    close = difflib.get_close_matches(name, list(presets), n=1, cutoff=0.6)
    if close:
        msg += f" Did you mean {close[0]!r}?"
    msg += " A path to a YAML file (ending in .yaml/.yml) is also accepted."
    raise ConfigError(msg)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, line: int, first_line: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first_line = key, line, first_line


_LOADER = None


def _unique_key_loader():
    """yaml.SafeLoader that raises :class:`_DuplicateKey` for a key repeated in one mapping (PyYAML keeps the last)."""
    global _LOADER
    if _LOADER is not None:
        return _LOADER
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it
                continue
            if first is not None:
                raise _DuplicateKey(key, line, first)
            seen[key] = line
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    _LOADER = UniqueKeyLoader
    return _LOADER


def _load_yaml(path: Path, name: str | None = None) -> NAConfig:
    import yaml

    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file: {exc}.") from None
    try:
        data = yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise ConfigError(
            f"{source}: line {exc.line}: key {exc.key!r} appears twice in the same mapping (first on line "
            f"{exc.first_line}); keep one of them."
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{source}: the file is empty; a config needs at least 'version: 1'.")
    return config_from_dict(data, source=source, name=name)


def load_config(config: NAConfig | Mapping | str | os.PathLike) -> NAConfig:
    """Load a config from a preset name, a YAML path, a dict in the YAML schema, or return an :class:`NAConfig`.

    Raises :class:`~na_accel.errors.ConfigError` with the file, key path, what is allowed and a suggestion.
    """
    if isinstance(config, NAConfig):
        return config
    if isinstance(config, Mapping):
        return config_from_dict(config, source="<dict>")
    if isinstance(config, os.PathLike) or (
        isinstance(config, str) and (config.endswith((".yaml", ".yml")) or os.sep in config or "/" in config)
    ):
        path = Path(config)
        if not path.is_file():
            raise ConfigError(
                f"{path}: config file not found. Give an existing YAML file or a preset name "
                f"({', '.join(_preset_files()) or 'none shipped'})."
            )
        return _load_yaml(path)
    if isinstance(config, str):
        return _load_yaml(preset_path(config), name=config)
    raise ConfigError(
        f"config must be a preset name, a path to a YAML file, a dict in the YAML schema or an NAConfig, got "
        f"{_type_name(config)}."
    )


def list_presets() -> list[PresetInfo]:
    """The shipped presets, with the model each is for, its description and what it was measured to give."""
    out = []
    for name, path in _preset_files().items():
        cfg = _load_yaml(path, name=name)
        out.append(PresetInfo(name, cfg.model, cfg.description, cfg.measured, str(path)))
    return out
