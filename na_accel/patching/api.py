"""Public patching API: :func:`patch`, :func:`unpatch`, :func:`patched`, :func:`is_patched`.

``handle = na_accel.patch(pipe_or_transformer, config="hunyuan_fast")`` replaces dense self-attention of the
supported diffusers transformers (HunyuanVideo, FLUX.1, Cosmos 1.0 / Predict2, Wan 2.1 / 2.2) with GNA, layer by
layer as the config says; ``na_accel.unpatch(obj)`` restores the original processor objects and hooks, after which
outputs are bit-identical to a never-patched model.

Denoising steps (for ``dense_steps``) are counted per generation by the transformer(s) of one handle: a forward
whose ``timestep`` (and, when a pipeline was patched, whose scheduler ``step_index``) equals the previous one's is
the same step, so cond and uncond passes share a plan; anything else is the next step. A new generation starts on
``scheduler.set_timesteps`` (hooked on the instance when a pipeline is patched), when the scheduler's step index
returns to None, when the timestep increases, or on :meth:`PatchHandle.new_generation`. Patch the pipeline rather
than the bare transformer when timesteps are low precision (HunyuanVideo passes bf16 timesteps; consecutive steps
near t = 1000 round to one value).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import AlreadyPatchedError, ConfigError, UnsupportedModelError
from ..ops.precision import fp8_fallbacks
from .config import NAConfig, load_config
from .families import adapter_for, supported_models_text
from .hooks import SchedulerHook, TransformerPatch
from .plan import AttentionProbe, StepTracker

__all__ = ["AlreadyPatchedError", "PatchHandle", "is_patched", "patch", "patched", "unpatch"]

logger = logging.getLogger("na_accel")

_TRANSFORMER_ATTRS = ("transformer", "transformer_2")

# transformer module -> the handle that patched it
_PATCHES: weakref.WeakKeyDictionary[torch.nn.Module, PatchHandle] = weakref.WeakKeyDictionary()


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    while isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):  # torch.compile's OptimizedModule
        module = module._orig_mod
    return module


def _targets(obj: Any) -> tuple[list[tuple[str, torch.nn.Module]], Any]:
    """``([(label, transformer), ...], pipeline or None)`` for a transformer or a diffusers pipeline."""
    if isinstance(obj, torch.nn.Module):
        return [("transformer", _unwrap(obj))], None
    found = []
    for attr in _TRANSFORMER_ATTRS:
        module = getattr(obj, attr, None)
        if isinstance(module, torch.nn.Module):
            found.append((attr, _unwrap(module)))
    if not found:
        raise UnsupportedModelError(
            f"na_accel cannot patch {type(obj).__name__}: it is neither a supported transformer nor a pipeline with "
            f"a `transformer` attribute. Supported models: {supported_models_text()}."
        )
    return found, obj


class PatchHandle:
    """What :func:`patch` installed. Use :meth:`summary` to see the per-layer plan, :meth:`unpatch` to undo."""

    def __init__(self, target: Any, patches: list[TransformerPatch], config: NAConfig, tracker: StepTracker,
                 scheduler_hook: SchedulerHook | None) -> None:  # fmt: skip
        self._target = weakref.ref(target) if _weakrefable(target) else (lambda: target)
        self._patches = patches
        self.config = config
        self._tracker = tracker
        self._scheduler_hook = scheduler_hook
        self._active = True

    # ---- state ---------------------------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True until :meth:`unpatch`."""
        return self._active

    @property
    def transformers(self) -> dict[str, torch.nn.Module]:
        """The patched transformers by attribute name (``transformer``, ``transformer_2``)."""
        return {p.label: p.model for p in self._patches}

    @property
    def step(self) -> int | None:
        """Index of the current denoising step in the current generation (None before the first forward)."""
        return self._tracker.step

    def new_generation(self) -> None:
        """Restart step counting: the next forward is step 0 (and dense if ``dense_steps > 0``)."""
        self._tracker.new_generation()

    def set_probe(self, probe: AttentionProbe | None) -> None:
        """Observe every eager sparse attention call of the patched transformers with ``probe`` (a callable taking a
        :class:`~na_accel.patching.plan.ProbeCall`, e.g. :class:`na_accel.quality.locality.LocalityProbe`); None
        removes it. Probes only read: outputs are unchanged. :meth:`unpatch` removes the probe as well."""
        for p in self._patches:
            p.probe = probe

    def layer_plans(self) -> list[dict[str, Any]]:
        """One dict per self-attention layer: transformer, layer, rule and window (for the last seen grid and step),
        reason, precision (``bf16`` or ``fp8``: of its GNA calls, and of its dense calls where that is fp8), and call
        counts (``sparse_calls``, ``dense_calls``, ``fallback_calls``; ``compiled_calls`` of them ran inside
        torch.compile and are counted from the forward's plan)."""
        rows = []
        for p in self._patches:
            for layer in p.layers:
                rows.append({
                    "transformer": p.label,
                    "layer": layer.name,
                    "rule": None if layer.rule is None else layer.rule.match,
                    "patched": layer.static_reason is None,
                    "kernel_size": None if layer.params is None else layer.params.kernel_size,
                    "stride": None if layer.params is None else layer.params.stride,
                    "dilation": None if layer.params is None else layer.params.dilation,
                    "grid": layer.grid,
                    "dense_reason": layer.reason if layer.params is None else None,
                    "precision": "bf16" if layer.static_reason is not None else layer.spec.precision,
                    "sparse_calls": layer.stats.sparse,
                    "dense_calls": layer.stats.dense,
                    "fallback_calls": layer.stats.fallback,
                    "compiled_calls": layer.stats.compiled,
                    "last_fallback": layer.stats.last_fallback,
                })  # fmt: skip
        return rows

    def call_counts(self) -> dict[str, int]:
        """Attention calls of the planned layers so far, summed over layers: ``sparse`` (GNA), ``dense`` (planned
        dense: dense steps, windows covering the grid), ``fallback`` (declined, ran the original attention) and
        ``compiled`` (calls inside torch.compile, already in ``sparse`` / ``dense`` as the plan had them)."""
        out = {"sparse": 0, "dense": 0, "fallback": 0, "compiled": 0}
        for p in self._patches:
            for layer in p.layers:
                st = layer.stats
                out["sparse"] += st.sparse
                out["dense"] += st.dense
                out["fallback"] += st.fallback
                out["compiled"] += st.compiled
        return out

    def summary(self) -> str:
        """Readable per-layer plan: which layer got which window (resolved for the last seen grid, and the rule as
        configured), which stayed dense and why, and call counts; for a config with precision fp8, the reasons and
        counts of the calls in this process that fell back to the inputs' precision (``fp8_fallbacks()``)."""
        cfg = self.config
        name = f"preset {cfg.name!r} ({cfg.source})" if cfg.name else cfg.source
        lines = [f"na_accel patch{'' if self._active else ' (removed)'}: config {name}"]
        if cfg.description:
            lines.append(f"  description: {cfg.description}")
        lines.append(f"  measured: {cfg.measured}")
        d = cfg.defaults
        lines.append(
            f"  dense_steps: {cfg.dense_steps} (the first steps of each generation run dense); "
            f"on_oversize: {d.on_oversize}; backend: {d.backend}"
            + (f"; precision: {d.precision}" if d.precision != "bf16" else "")
        )
        gen = self._tracker
        if gen.step is not None:
            where = [] if gen.last_t is None else [f"timestep {gen.last_t:g}"]
            where += [] if gen.last_index is None else [f"scheduler step_index {gen.last_index}"]
            lines.append(
                f"  generation {gen.generation}, step {gen.step}" + (f" ({', '.join(where)})" if where else "")
            )
        for p in self._patches:
            lines.extend(p.summary_lines())
        fallbacks = fp8_fallbacks()
        if fallbacks and (d.precision == "fp8" or any(r.precision == "fp8" for r in cfg.layers)):
            counts = "; ".join(f"{n} call{'s' if n != 1 else ''}: {reason}" for reason, n in fallbacks.items())
            lines.append(f"  precision fp8 fell back to the inputs' precision (in this process): {counts}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        state = "active" if self._active else "removed"
        return f"<na_accel.PatchHandle {state}: {', '.join(self.transformers)} with config {self.config.source}>"

    # ---- undo ----------------------------------------------------------------------------------------------------

    def unpatch(self) -> None:
        """Restore the original processors, hooks and scheduler; idempotent."""
        if not self._active:
            return
        self._active = False
        for p in self._patches:
            p.remove()
            if _PATCHES.get(p.model) is self:
                del _PATCHES[p.model]
        if self._scheduler_hook is not None:
            self._scheduler_hook.remove()
            self._scheduler_hook = None

    def __enter__(self) -> PatchHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.unpatch()


def _weakrefable(obj) -> bool:
    try:
        weakref.ref(obj)
        return True
    except TypeError:
        return False


def patch(obj: Any, config: NAConfig | dict | str | None = None) -> PatchHandle:
    """Patch a diffusers transformer, or a pipeline's ``transformer`` (and ``transformer_2``), with GNA.

    Args:
        obj: a ``HunyuanVideoTransformer3DModel``, ``FluxTransformer2DModel``, ``CosmosTransformer3DModel`` or
            ``WanTransformer3DModel`` (also wrapped by ``torch.compile``), or a pipeline holding them.
        config: a preset name (see :func:`na_accel.list_presets`), a path to a YAML file, a dict in the YAML
            schema, or an :class:`~na_accel.config.NAConfig`. None: the family's ``*_fast`` preset.

    Raises:
        UnsupportedModelError: ``obj`` is not a supported model (the message names the supported ones).
        AlreadyPatchedError: already patched; call ``na_accel.unpatch(obj)`` first.
        ConfigError: invalid config, a config for another model, or a rule matching no layer.
    """
    targets, pipeline = _targets(obj)
    adapters = [adapter_for(model) for _, model in targets]
    for label, model in targets:
        if model in _PATCHES:
            raise AlreadyPatchedError(
                f"{type(model).__name__} ({label}) is already patched by na_accel; call na_accel.unpatch(obj) "
                "(or handle.unpatch()) first."
            )
    if config is None:
        config = adapters[0].default_preset
    cfg = load_config(config)
    for (label, _model), adapter in zip(targets, adapters, strict=True):
        if cfg.model is not None and cfg.model != adapter.model_class:
            raise ConfigError(
                f"{cfg.source}: model: the config is for {cfg.model}, but {label} is {adapter.model_class}. Use a "
                f"config for {adapter.model_class} (e.g. preset {adapter.default_preset!r})."
            )
    tracker = StepTracker()
    patches: list[TransformerPatch] = []
    scheduler_hook = None
    try:
        for (label, model), adapter in zip(targets, adapters, strict=True):
            tp = TransformerPatch(model, adapter, cfg, tracker, label)
            tp.plan_layers()
            patches.append(tp)
        for tp in patches:
            tp.install()
        if pipeline is not None:
            pipe_ref = weakref.ref(pipeline) if _weakrefable(pipeline) else (lambda: pipeline)
            tracker.scheduler_source = lambda: getattr(pipe_ref(), "scheduler", None)
            scheduler = getattr(pipeline, "scheduler", None)
            if scheduler is not None and callable(getattr(scheduler, "set_timesteps", None)):
                scheduler_hook = SchedulerHook(scheduler, tracker)
    except BaseException:
        for tp in patches:
            tp.remove()
        raise
    handle = PatchHandle(obj, patches, cfg, tracker, scheduler_hook)
    for tp in patches:
        _PATCHES[tp.model] = handle
    logger.debug("na_accel: patched %s", handle)
    return handle


def _handles(obj: Any) -> list[PatchHandle]:
    if isinstance(obj, PatchHandle):
        return [obj] if obj.active else []
    if isinstance(obj, torch.nn.Module):
        models = [_unwrap(obj)]
    else:
        models = [_unwrap(m) for a in _TRANSFORMER_ATTRS if isinstance(m := getattr(obj, a, None), torch.nn.Module)]
    out: list[PatchHandle] = []
    for m in models:
        h = _PATCHES.get(m)
        if h is not None and h not in out:
            out.append(h)
    return out


def unpatch(obj: Any) -> bool:
    """Undo :func:`patch` for a transformer, a pipeline or a :class:`PatchHandle`.

    Removes the whole patch the object belongs to (for a pipeline patched as a whole, both transformers) and
    restores the original processor objects, hooks and the scheduler. Returns False if nothing was patched.
    """
    handles = _handles(obj)
    for h in handles:
        h.unpatch()
    return bool(handles)


def is_patched(obj: Any) -> bool:
    """True if the transformer, or any transformer of the pipeline, is patched by na_accel."""
    return bool(_handles(obj))


@contextlib.contextmanager
def patched(obj: Any, config: NAConfig | dict | str | None = None) -> Iterator[PatchHandle]:
    """Context manager: ``with na_accel.patched(pipe, config="wan_fast") as handle: ...``; unpatches on exit."""
    handle = patch(obj, config=config)
    try:
        yield handle
    finally:
        handle.unpatch()
