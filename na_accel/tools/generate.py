"""Loading a pipeline, validating generation sizes, and generating with or without a config.

Used by the command line (``na_accel.cli``) and usable from Python. No heavy import at module level: torch and
diffusers are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, UnsupportedModelError

__all__ = [
    "TINY_LABEL",
    "InputError",
    "LoadedModel",
    "ShapeRules",
    "adapter_of",
    "load_model",
    "read_prompts",
    "resolve_config",
    "shape_rules",
    "versions",
]

TINY_LABEL = "tiny random-weight model"
TINY_FPS = 8


# --------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file (lines starting with '#' are comments)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"prompt file not found: {str(p)!r}")
    if not p.is_file():
        raise InputError(f"prompt file is not a regular file: {str(p)!r}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"prompt file is not UTF-8 text: {str(p)!r}") from None
    except OSError as e:
        raise InputError(f"cannot read prompt file {str(p)!r}: {e.strerror or e}") from None
    prompts = [ln.strip() for ln in text.splitlines()]
    prompts = [ln for ln in prompts if ln and not ln.startswith("#")]
    if not prompts:
        raise InputError(f"prompt file has no prompts (every line is empty or a comment): {str(p)!r}")
    return prompts


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ShapeRules:
    """What sizes a pipeline can generate: height/width multiple of ``spatial_multiple``; for video, frames
    ``= temporal_factor * k + 1`` with the latent frame count a multiple of ``temporal_patch``."""

    family: str
    is_video: bool
    spatial_multiple: int
    temporal_factor: int = 1
    temporal_patch: int = 1

    def check(self, height: int | None, width: int | None, frames: int | None, model: str = "the model") -> None:
        for name, v in (("height", height), ("width", width)):
            if v is None:
                continue
            if v <= 0:
                raise InputError(f"--{name} must be positive, got {v}")
            if v % self.spatial_multiple:
                lo = max(self.spatial_multiple, v // self.spatial_multiple * self.spatial_multiple)
                raise InputError(
                    f"--{name} {v} is not a multiple of {self.spatial_multiple} (VAE scale x patch size) for "
                    f"{model}; try {lo}"
                )
        if frames is None:
            return
        if not self.is_video:
            if frames != 1:
                raise InputError(f"{model} generates images; --frames must be 1 or omitted, got {frames}")
            return
        t, pt = self.temporal_factor, self.temporal_patch
        if frames < 1 or (frames - 1) % t:
            k = max(0, (frames - 1) // t)
            raise InputError(
                f"--frames {frames} is not of the form {t}k+1 required by {model}'s VAE; try {t * k + 1} or "
                f"{t * (k + 1) + 1}"
            )
        latent = (frames - 1) // t + 1
        if latent % pt:
            raise InputError(
                f"--frames {frames} gives {latent} latent frames, not a multiple of the temporal patch size {pt}"
            )


def _transformer_class(pipe: Any) -> str:
    tr = getattr(pipe, "transformer", None)
    return type(tr).__name__ if tr is not None else "(no transformer)"


def adapter_of(pipe: Any) -> Any:
    """The family adapter of a pipeline's transformer, else :class:`UnsupportedModelError` naming the supported
    models."""
    from ..patching.families import adapter_for_class, supported_models_text

    cls = _transformer_class(pipe)
    adapter = adapter_for_class(cls)
    if adapter is None:
        raise UnsupportedModelError(
            f"unsupported model: {type(pipe).__name__} with transformer {cls}; na_accel supports "
            f"{supported_models_text()}"
        )
    return adapter


def shape_rules(pipe: Any) -> ShapeRules:
    """Size constraints of a loaded pipeline, from its family adapter (VAE scale factors and patch size)."""
    adapter = adapter_of(pipe)
    f = adapter.size_factors(pipe)
    return ShapeRules(adapter.family, f.is_video, f.spatial_multiple, f.temporal_factor, f.temporal_patch)


@dataclass
class LoadedModel:
    pipe: Any
    family: str
    label: str  # human name used in outputs
    model_id: str | None  # what --model said (None: built-in tiny default)
    random_weights: bool
    rules: ShapeRules
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    fps: int = 8
    load_s: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def file_tag(self) -> str:
        """Suffix for output file names: says 'tiny-random-weight-model' for the built-in model."""
        return "tiny-random-weight-model" if self.random_weights else ""


def _resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine")
    return device


def _resolve_dtype(dtype: str | None, device: str) -> Any:
    import torch

    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in table:
        raise InputError(f"--dtype {dtype!r} is not one of float32, bfloat16, float16")
    return table[dtype]


def load_model(model: str | None = None, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """``None`` (or ``"tiny"`` / ``"tiny:<family>"``): the built-in tiny random-weight pipeline; anything else:
    ``DiffusionPipeline.from_pretrained(model)`` (hub id or local directory)."""
    import torch

    dev = _resolve_device(device)
    t0 = time.perf_counter()
    if model is None or model == "tiny" or model.startswith("tiny:"):
        from .. import tiny

        family = tiny.TINY_DEFAULT if model in (None, "tiny") else model.split(":", 1)[1]
        if family not in tiny.FAMILIES:
            raise InputError(f"unknown tiny model family {family!r}; choose one of {', '.join(tiny.FAMILIES)}")
        tdtype = _resolve_dtype(dtype, "cpu") if dtype not in (None, "", "auto") else torch.float32
        pipe = tiny.tiny_pipeline(family=family, seed=0, dtype=tdtype)
        pipe.to(dev)
        defaults = dict(tiny.default_generation_kwargs(family))
        adapter = adapter_of(pipe)
        return LoadedModel(
            pipe=pipe,
            family=adapter.family,
            label=f"{TINY_LABEL} ({adapter.display_name})",
            model_id=model,
            random_weights=True,
            rules=shape_rules(pipe),
            default_kwargs=defaults,
            fps=TINY_FPS,
            load_s=time.perf_counter() - t0,
            device=dev,
            dtype=str(tdtype).replace("torch.", ""),
        )
    from diffusers import DiffusionPipeline

    tdtype = _resolve_dtype(dtype, dev)
    p = Path(model).expanduser()
    looks_local = p.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not p.exists():
        raise InputError(f"model directory not found: {model!r}")
    if p.exists() and not (p / "model_index.json").is_file():
        raise InputError(f"{model!r} is not a diffusers pipeline directory (no model_index.json)")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(str(p) if p.exists() else model, torch_dtype=tdtype)
    except Exception as e:  # noqa: BLE001 - anything from the hub or the loader is reported on one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"cannot load model {model!r}: {msg}") from None
    adapter = adapter_of(pipe)
    pipe.to(dev)
    from ..tiny import tiny_family

    tiny_attr = tiny_family(pipe)
    return LoadedModel(
        pipe=pipe,
        family=adapter.family,
        label=f"{model} ({TINY_LABEL})" if tiny_attr else model,
        model_id=model,
        random_weights=bool(tiny_attr),
        rules=shape_rules(pipe),
        default_kwargs={},
        fps=TINY_FPS if tiny_attr else adapter.default_fps,
        load_s=time.perf_counter() - t0,
        device=dev,
        dtype=str(tdtype).replace("torch.", ""),
    )


def generation_kwargs(
    lm: LoadedModel,
    height: int | None = None,
    width: int | None = None,
    frames: int | None = None,
    steps: int | None = None,
) -> dict[str, Any]:
    """The model's defaults with the user's sizes on top, validated against the model's shape rules."""
    if steps is not None and steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    lm.rules.check(height, width, frames, model=lm.label)
    kw = dict(lm.default_kwargs)
    if height is not None:
        kw["height"] = height
    if width is not None:
        kw["width"] = width
    if steps is not None:
        kw["num_inference_steps"] = steps
    if lm.rules.is_video and frames is not None:
        kw["num_frames"] = frames
    if not lm.rules.is_video:
        kw.pop("num_frames", None)
    # re-check the merged values (defaults of a tiny model are valid, but a user height with a default width...)
    lm.rules.check(
        kw.get("height"), kw.get("width"), kw.get("num_frames") if lm.rules.is_video else None, model=lm.label
    )
    return kw


# --------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ResolvedConfig:
    name: str  # "dense" or the preset name / file stem
    source: str | None  # preset name or path as given
    config: Any  # NAConfig or None for dense


def resolve_config(config: str | None, dense: bool = False) -> ResolvedConfig:
    """Load ``config`` (preset name or YAML path); ``dense`` or ``config == 'dense'`` means no patching."""
    if dense or config in ("dense", "none"):
        return ResolvedConfig("dense", None, None)
    if config is None:
        raise InputError("no config given")
    from ..patching.config import load_config

    cfg = load_config(config)  # ConfigError for an unknown preset, a missing file or invalid YAML
    name = Path(config).stem if (os.sep in config or config.endswith((".yaml", ".yml"))) else config
    return ResolvedConfig(name, config, cfg)


def default_config_for(lm: LoadedModel) -> str | None:
    """The name of the shipped preset for the model's family (None when there is none)."""
    from ..patching.config import list_presets

    cls = _transformer_class(lm.pipe)
    pipe_cls = type(lm.pipe).__name__
    presets = list(list_presets())
    for p in presets:
        if getattr(p, "model", None) in (cls, pipe_cls):
            return p.name
    for p in presets:  # by family prefix (hunyuan_fast, flux_fast, ...)
        if p.name.startswith(lm.family):
            return p.name
    return None


def token_grid(lm: LoadedModel, kw: dict[str, Any]) -> tuple[int, ...] | None:
    """The latent token grid the transformer will see for these generation kwargs (None if sizes are unknown)."""
    h, w = kw.get("height"), kw.get("width")
    if h is None or w is None:
        return None
    r = lm.rules
    gh, gw = h // r.spatial_multiple, w // r.spatial_multiple
    if not r.is_video:
        return (gh, gw)
    f = kw.get("num_frames")
    if f is None:
        return None
    return (((f - 1) // r.temporal_factor + 1) // r.temporal_patch, gh, gw)


def check_config_fits(lm: LoadedModel, rc: ResolvedConfig, kw: dict[str, Any] | None = None) -> None:
    """Surface config problems before anything runs or is written: patch and unpatch once (unsupported model,
    a config for another model, a rule matching no layer), and resolve every layer's window for the token grid
    of ``kw`` (a window that does not fit with ``on_oversize: raise``)."""
    if rc.config is None:
        return
    import na_accel

    handle = na_accel.patch(lm.pipe, config=rc.config)
    try:
        names = [row["layer"] for row in handle.layer_plans()] if hasattr(handle, "layer_plans") else []
    finally:
        na_accel.unpatch(lm.pipe)
    grid = token_grid(lm, kw or {})
    cfg = rc.config
    if grid is None or not hasattr(cfg, "window_for"):
        return
    for name in names:
        _rule, window = cfg.window_for(name)
        if window is not None:
            window.resolve(grid, where=f"{getattr(cfg, 'source', rc.name)}: layer {name}")


@contextlib.contextmanager
def maybe_patched(pipe: Any, config: Any):
    if config is None:
        yield None
        return
    import na_accel

    with na_accel.patched(pipe, config) as h:
        yield h


# --------------------------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("na_accel", "torch", "diffusers", "triton", "transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    if out["na_accel"] is None:  # running from a source tree that is not installed
        from .. import __version__

        out["na_accel"] = __version__
    return out


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
