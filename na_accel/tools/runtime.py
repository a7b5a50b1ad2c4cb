"""What a generation runs with besides the GNA config: CPU offloading, VAE tiling, a diffusers step cache and
regional ``torch.compile``. Each is applied to a loaded pipeline with diffusers' own API and composes with
:func:`na_accel.patch` (applied before or after it):

* offloading: ``enable_model_cpu_offload`` / ``enable_sequential_cpu_offload`` (accelerate hooks that move weights
  to the GPU when a model or submodule runs); na_accel keeps no device: its kernels run where the tensors are, and
  its transformer hooks are plain PyTorch forward hooks, which accelerate's hooks (re-installed by diffusers after
  every pipeline call) leave alone;
* VAE tiling: ``vae.enable_tiling()``;
* caches (``--cache NAME[:PARAM]``): ``transformer.enable_cache(FirstBlockCacheConfig | TaylorSeerCacheConfig |
  MagCacheConfig)`` on every transformer of the pipeline. They skip or predict transformer *blocks*; the
  transformer's forward still runs every step, so na_accel's step counter (a forward pre-hook on the transformer
  that reads the timestep and the scheduler's step index) follows the real denoising step;
* regional compile: diffusers' ``compile_repeated_blocks`` (each repeated block compiled; Cosmos, which names no
  repeated blocks, gets each of its ``transformer_blocks`` compiled), ``fullgraph`` unless a cache is on (the
  caches' block hooks call ``torch.compiler.disable``-d functions, a graph break of diffusers' own).

torch and diffusers are imported inside the functions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = [
    "CACHE_NAMES",
    "OFFLOAD_MODES",
    "CacheSpec",
    "apply_offload",
    "check_offload",
    "compile_regions",
    "disable_caches",
    "enable_caches",
    "enable_vae_tiling",
    "parse_cache",
    "pipeline_transformers",
    "raise_recompile_limit",
]

OFFLOAD_MODES = ("none", "model", "sequential")
CACHE_NAMES = ("fbc", "taylorseer", "magcache")
_TRANSFORMER_ATTRS = ("transformer", "transformer_2")


def pipeline_transformers(pipe: Any) -> list[tuple[str, Any]]:
    """``[(attribute, module), ...]`` for the pipeline's ``transformer`` and ``transformer_2`` (when present)."""
    import torch

    return [(a, m) for a in _TRANSFORMER_ATTRS if isinstance(m := getattr(pipe, a, None), torch.nn.Module)]


# --------------------------------------------------------------------------------------------------------------
# Offloading
# --------------------------------------------------------------------------------------------------------------


def check_offload(mode: str | None, device: str) -> str:
    """Validate ``--offload`` for the run's device (before the model is loaded); returns the mode ("none" for None).

    Offloading moves each model between CPU memory and an accelerator's memory, so it needs a CUDA device."""
    mode = "none" if mode in (None, "") else mode
    if mode not in OFFLOAD_MODES:
        raise InputError(f"--offload {mode!r} is not one of {', '.join(OFFLOAD_MODES)}")
    if mode != "none" and not device.startswith("cuda"):
        raise InputError(
            f"--offload {mode} keeps the models in CPU memory and moves each to a CUDA GPU when it runs, but this run "
            f"uses the CPU ({device}); run on a machine with a CUDA GPU, or omit --offload (everything already is in "
            "CPU memory)"
        )
    return mode


def apply_offload(pipe: Any, mode: str, device: str) -> None:
    """``pipe.enable_model_cpu_offload`` (``mode="model"``: one whole model at a time on ``device``) or
    ``pipe.enable_sequential_cpu_offload`` (``"sequential"``: each submodule's weights moved in when it runs);
    ``"none"`` does nothing. The pipeline must still be on the CPU. ``device`` is the accelerator the models run
    on; diffusers also accepts ``"cpu"`` (nothing is saved then, but the same hooks run: the tests use it)."""
    if mode == "none":
        return
    if mode not in OFFLOAD_MODES:
        raise InputError(f"offload mode {mode!r} is not one of {', '.join(OFFLOAD_MODES)}")
    method = "enable_model_cpu_offload" if mode == "model" else "enable_sequential_cpu_offload"
    fn = getattr(pipe, method, None)
    if fn is None:
        raise InputError(f"{type(pipe).__name__} has no {method}; use --offload none")
    try:
        fn(device=device)
    except ValueError as e:  # e.g. a pipeline without model_cpu_offload_seq
        raise InputError(f"--offload {mode}: {type(pipe).__name__}.{method} failed: {e}") from None


# --------------------------------------------------------------------------------------------------------------
# VAE tiling
# --------------------------------------------------------------------------------------------------------------


def enable_vae_tiling(pipe: Any) -> None:
    """``pipe.vae.enable_tiling()``: decode (and encode) in overlapping tiles, so the VAE's memory stays bounded at
    high resolutions and frame counts. Raises :class:`InputError` when the pipeline's VAE cannot tile."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not callable(getattr(vae, "enable_tiling", None)):
        what = "no VAE" if vae is None else f"a VAE ({type(vae).__name__}) without enable_tiling"
        raise InputError(f"--vae-tiling: {type(pipe).__name__} has {what}; omit --vae-tiling")
    vae.enable_tiling()


# --------------------------------------------------------------------------------------------------------------
# diffusers caches
# --------------------------------------------------------------------------------------------------------------

# name -> (primary key, {key: (kind, description)})
_CACHE_KEYS: dict[str, tuple[str, dict[str, tuple[str, str]]]] = {
    "fbc": ("threshold", {"threshold": ("float>0", "relative change of the first block's residual below which the "
                                        "other blocks are skipped (default 0.05)")}),
    "taylorseer": ("interval", {
        "interval": ("int>=1", "steps between full computations (default 5)"),
        "warmup": ("int>=0", "first steps always computed (default 3)"),
        "order": ("int>=1", "order of the Taylor expansion (default 1)"),
    }),
    "magcache": ("threshold", {
        "threshold": ("float>0", "accumulated error below which a step's blocks are skipped (default 0.06)"),
        "ratios": ("ratios", "'flux' (diffusers' FLUX.1 ratios) or a JSON file holding the list of magnitude ratios"),
        "max_skip": ("int>=1", "most consecutive skipped steps (default 3)"),
        "retention": ("fraction", "share of the first steps never skipped (default 0.2)"),
        "calibrate": ("flag", "compute the ratios of this model: nothing is skipped, diffusers prints them"),
    }),
}  # fmt: skip


@dataclass
class CacheSpec:
    """A parsed ``--cache NAME[:PARAM]``: ``fbc[:THRESHOLD]``, ``taylorseer[:INTERVAL]``, ``magcache[:THRESHOLD]``,
    or ``NAME:key=value,key=value`` (see :func:`parse_cache`)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({opts})" if opts else self.name


def _cache_help() -> str:
    parts = []
    for name, (primary, keys) in _CACHE_KEYS.items():
        parts.append(f"{name}[:{primary.upper()}] (keys: {', '.join(keys)})")
    return "; ".join(parts)


def _convert(name: str, key: str, kind: str, raw: str) -> Any:
    where = f"--cache {name}: {key}"
    if kind == "flag":
        if raw not in ("", "1", "true", "yes"):
            raise InputError(f"{where} takes no value (write {name}:{key}), got {raw!r}")
        return True
    if kind == "ratios":
        if raw == "flux":
            return "flux"
        path = Path(raw).expanduser()
        if not path.is_file():
            raise InputError(f"{where}={raw!r}: no such file; give 'flux' or a JSON file with a list of numbers")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{where}={raw!r}: cannot read a JSON list of numbers ({e})") from None
        if isinstance(data, dict):
            data = data.get("mag_ratios", data.get("ratios"))
        if (
            not isinstance(data, list)
            or len(data) < 2
            or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in data)
        ):
            raise InputError(f"{where}={raw!r}: expected a JSON list of at least 2 finite numbers")
        return [float(x) for x in data]
    try:
        value: Any = int(raw) if kind.startswith("int") else float(raw)
    except ValueError:
        allowed = "an integer" if kind.startswith("int") else "a number"
        raise InputError(f"{where}={raw!r} is not {allowed}") from None
    ok = {
        "float>0": lambda v: math.isfinite(v) and v > 0,
        "int>=1": lambda v: v >= 1,
        "int>=0": lambda v: v >= 0,
        "fraction": lambda v: 0 <= v <= 1,
    }[kind](value)
    if not ok:
        allowed = {"float>0": "> 0", "int>=1": ">= 1", "int>=0": ">= 0", "fraction": "between 0 and 1"}[kind]
        raise InputError(f"{where}={raw} is out of range: it must be {allowed}")
    return value


def parse_cache(spec: str | None) -> CacheSpec | None:
    """Parse ``--cache NAME[:PARAM]`` (None / "" / "none": no cache).

    NAME is ``fbc`` (diffusers' FirstBlockCache), ``taylorseer`` (TaylorSeer) or ``magcache`` (MagCache). PARAM is
    the cache's main value (``fbc:0.1`` threshold, ``taylorseer:4`` interval, ``magcache:0.1`` threshold), a word
    (``magcache:calibrate``) or ``key=value`` pairs separated by commas (``taylorseer:interval=2,warmup=1``,
    ``magcache:ratios=r.json,threshold=0.1``). Raises :class:`InputError` naming what is allowed."""
    if spec is None or spec.strip() in ("", "none"):
        return None
    text = spec.strip()
    name, _, param = text.partition(":")
    name = name.strip().lower()
    if name not in _CACHE_KEYS:
        raise InputError(f"--cache {text!r}: unknown cache {name!r}; choose {_cache_help()}")
    primary, keys = _CACHE_KEYS[name]
    options: dict[str, Any] = {}
    for item in [p.strip() for p in param.split(",")] if param.strip() else []:
        if not item:
            continue
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq:
            if key in keys and keys[key][0] == "flag":
                raw = ""
            else:
                key, raw = primary, item
        if key not in keys:
            raise InputError(f"--cache {text!r}: {name} has no option {key!r}; its options: {', '.join(keys)}")
        if key in options:
            raise InputError(f"--cache {text!r}: {key} is given twice")
        options[key] = _convert(name, key, keys[key][0], raw.strip())
    return CacheSpec(name, options, text)


def _cache_config(spec: CacheSpec, family: str, steps: int | None) -> Any:
    import diffusers.hooks as dh

    o = spec.options
    if spec.name == "fbc":
        return dh.FirstBlockCacheConfig(threshold=o.get("threshold", 0.05))
    if spec.name == "taylorseer":
        return dh.TaylorSeerCacheConfig(
            cache_interval=o.get("interval", 5), disable_cache_before_step=o.get("warmup", 3),
            max_order=o.get("order", 1),
        )  # fmt: skip
    # magcache: its ratios are per checkpoint and are interpolated to the run's step count
    if steps is None:
        raise InputError("--cache magcache needs the number of denoising steps (--steps)")
    common = dict(num_inference_steps=steps, max_skip_steps=o.get("max_skip", 3),
                  retention_ratio=o.get("retention", 0.2), threshold=o.get("threshold", 0.06))  # fmt: skip
    if o.get("calibrate"):
        return dh.MagCacheConfig(calibrate=True, **common)
    ratios = o.get("ratios", "flux" if family == "flux" else None)
    if ratios is None:
        raise InputError(
            f"--cache magcache: MagCache needs magnitude ratios calibrated for the model, and diffusers ships them "
            f"for FLUX.1 only (this is a {family} model). Run once with --cache magcache:calibrate (nothing is "
            "skipped; diffusers prints the ratios), save the printed list as a JSON file and pass "
            "--cache magcache:ratios=FILE.json"
        )
    if ratios == "flux":
        from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

        ratios = FLUX_MAG_RATIOS.clone()
    return dh.MagCacheConfig(mag_ratios=ratios, **common)


def enable_caches(pipe: Any, spec: CacheSpec | None, family: str, steps: int | None) -> list[Any]:
    """``enable_cache`` with the config of ``spec`` on every transformer of the pipeline (``transformer`` and
    ``transformer_2``); returns the transformers it was enabled on (for :func:`disable_caches`). Raises
    :class:`InputError` when a transformer has no diffusers cache support (Cosmos) or already has a cache."""
    if spec is None:
        return []
    enabled: list[Any] = []
    try:
        for attr, model in pipeline_transformers(pipe):
            if not callable(getattr(model, "enable_cache", None)):
                raise InputError(
                    f"--cache {spec.text}: {type(model).__name__} ({attr}) has no diffusers cache support "
                    "(enable_cache); diffusers' caches work with HunyuanVideo, FLUX.1 and Wan. Omit --cache"
                )
            if getattr(model, "is_cache_enabled", False):
                raise InputError(f"--cache {spec.text}: {attr} already has a cache enabled ({model._cache_config})")
            model.enable_cache(_cache_config(spec, family, steps))
            enabled.append(model)
    except BaseException:
        disable_caches(enabled)
        raise
    return enabled


def disable_caches(models: list[Any]) -> None:
    """Undo :func:`enable_caches`."""
    for model in models:
        if getattr(model, "is_cache_enabled", False):
            model.disable_cache()


# --------------------------------------------------------------------------------------------------------------
# Regional torch.compile
# --------------------------------------------------------------------------------------------------------------


def compile_regions(pipe: Any, backend: str = "inductor", fullgraph: bool = True) -> list[str]:
    """Compile the repeated blocks of every transformer of the pipeline (regional compilation): diffusers'
    ``compile_repeated_blocks`` where the model names its repeated blocks, else each block of its block lists.
    Returns the compiled block names. The transformer's own forward (and na_accel's hooks on it, which read the
    token grid and the step) stays eager; inside the blocks na_accel's attention is one custom op
    (``na_accel::gna``), so na_accel adds no graph break (``fullgraph=True`` holds unless another library's hook
    breaks the graph, e.g. a diffusers cache)."""
    import torch

    compiled: list[str] = []
    for attr, model in pipeline_transformers(pipe):
        repeated = getattr(model, "_repeated_blocks", None)
        if repeated:
            model.compile_repeated_blocks(backend=backend, fullgraph=fullgraph)
            compiled += [f"{attr}.{n}" for n, m in model.named_modules() if type(m).__name__ in repeated]
            continue
        for name, child in model.named_children():
            if isinstance(child, torch.nn.ModuleList) and "blocks" in name:
                for i, block in enumerate(child):
                    block.compile(backend=backend, fullgraph=fullgraph)
                    compiled.append(f"{attr}.{name}.{i}")
        if not any(c.startswith(f"{attr}.") for c in compiled):
            raise InputError(f"--compile: {type(model).__name__} ({attr}) has no block list to compile")
    return compiled


def raise_recompile_limit(n_blocks: int) -> int:
    """Raise torch.compile's per-function recompile limit (``torch._dynamo.config.recompile_limit``, default 8) to
    ``4 * n_blocks + 8`` when it is lower, and return the limit in force.

    A diffusers cache hook is one Python function object per block (a bound method of that block's hook), so
    torch.compile guards each block's graph on its own hook and compiles the resumed code once per block and
    cache branch; past the limit it runs the remaining blocks eagerly (with a warning). Without a cache all blocks
    of one class share their graphs and the default limit suffices."""
    import torch._dynamo

    cfg = torch._dynamo.config
    want = 4 * n_blocks + 8
    if cfg.recompile_limit < want:
        cfg.recompile_limit = want
    if cfg.accumulated_recompile_limit < 4 * want:
        cfg.accumulated_recompile_limit = 4 * want
    return cfg.recompile_limit
