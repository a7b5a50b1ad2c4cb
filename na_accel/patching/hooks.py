"""Everything installed on one transformer (:class:`TransformerPatch`: processor wrappers, the interceptor, the
forward pre-hook that reads the token grid and the step) and on a pipeline's scheduler (:class:`SchedulerHook`).

How a patched denoising step flows (diffusers 0.42.1):

1. The transformer's forward pre-hook (:meth:`TransformerPatch.pre_hook`, run eagerly, outside torch.compile)
   asks the family adapter for the token layout (grid, number and position of text tokens) and the timestep,
   updates the step counter and resolves every planned layer's window for that grid.
2. Each planned attention module's processor wraps the original (:mod:`.intercept`); diffusers' processor runs
   unchanged (QKV, QK-norm, RoPE, concatenation) and its ``dispatch_attention_fn`` call reaches
   :meth:`.plan.LayerPatch.attend`, which computes GNA with :func:`na_accel.ops.functional.na_joint` /
   :func:`~na_accel.ops.functional.na_flat` or declines (dense layer, dense step, unrecognised situation), in which
   case the original function runs with the identical arguments; where the layer's precision is fp8, its dense calls
   run GNA over the whole grid instead (the 8-bit kernel on Hopper). Under diffusers' context parallelism the call
   carries a parallel config and the rank's local tokens; :func:`.parallel.attend_context_parallel` then runs GNA
   inside diffusers' Ulysses attention, or declines.
3. When a probe is set (:attr:`TransformerPatch.probe`, through :meth:`.api.PatchHandle.set_probe`), every eager
   GNA call outside context parallelism also hands its query, key, layout and window to the probe
   (:class:`.plan.ProbeCall`), e.g. to measure how much softmax mass the window keeps
   (:mod:`na_accel.quality.locality`); a probe with ``observe_dense`` also gets the planned dense calls, e.g. to
   measure a whole ladder of windows during a dense generation (:mod:`na_accel.quality.ladder`).

The transformer hooks are PyTorch forward hooks, not diffusers' ``HookRegistry`` hooks: those wrap ``forward``, and
accelerate's offload hooks (which diffusers removes and re-installs after every call of a model-offloaded
pipeline) restore ``forward`` from before their own wrapper, dropping any wrapper added after it; PyTorch's hooks
are kept beside ``forward`` and survive. diffusers' caches hook the blocks, so the pre-hook still sees every step.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
import sys

import torch

from .config import ConfigError, NAConfig
from .families.base import Adapter, Layout
from .intercept import DISPATCH_NAME, NAProcessor, install_dispatcher, uninstall_dispatcher, wrapper_class
from .parallel import context_parallel_summary
from .plan import AttentionProbe, ForwardPlan, LayerPatch, StepTracker

logger = logging.getLogger("na_accel")


class TransformerPatch:
    """Everything installed on one transformer; undone by :meth:`remove`."""

    def __init__(self, model: torch.nn.Module, adapter: Adapter, config: NAConfig, tracker: StepTracker,
                 label: str) -> None:  # fmt: skip
        self.model = model
        self.adapter = adapter
        self.config = config
        self.tracker = tracker
        self.label = label
        self.plan: ForwardPlan | None = None
        self.layers: list[LayerPatch] = []
        self.other_attention: list[str] = []  # attention modules that are never patched (cross-attention, ...)
        self.forwards = 0
        self.warnings: set[str] = set()  # one-time warnings already logged (e.g. ring attention runs dense)
        #: observer of eager sparse attention calls (see :class:`.plan.AttentionProbe`); None: none, no cost
        self.probe: AttentionProbe | None = None
        self._hook = None
        self._post_hook = None
        self._signature = inspect.signature(type(model).forward)
        self._installed_modules: list[str] = []

    # ---- building ----------------------------------------------------------------------------------------------

    def plan_layers(self) -> None:
        adapter, config = self.adapter, self.config
        pattern = re.compile(adapter.layer_regex)
        candidates, others = [], []
        for name, module in self.model.named_modules():
            if not hasattr(module, "processor") or not hasattr(module, "set_processor"):
                continue
            (candidates if pattern.fullmatch(name) else others).append((name, module))
        self.other_attention = [n for n, _ in others]
        names = [n for n, _ in candidates]
        if not names:
            raise ConfigError(
                f"{adapter.model_class} has no attention modules matching {adapter.layer_regex!r}; "
                "this diffusers version is not supported by na_accel's adapter."
            )
        config.check_ndim(adapter.grid_ndim, adapter.model_class)
        config.check_layers(names, adapter.model_class, self.other_attention)
        for name, module in candidates:
            rule, window = config.window_for(name)
            by_step = bool(config.step_rules_for(name))  # rules with `steps`: the window is chosen every step
            static_reason = None
            if window is None and not by_step and config.defaults.precision != "fp8":
                # dense by rule at every step: the original attention answers it, unless its dense calls run fp8
                static_reason = f"rule '{rule.match}' says dense: true"
            proc = module.processor
            proc_cls = type(proc)
            if isinstance(proc, NAProcessor):  # pragma: no cover - guarded by the double-patch check
                raise ConfigError(f"{name} already has an na_accel processor")
            if static_reason is None and proc_cls.__name__ not in adapter.processor_classes:
                supported = ", ".join(adapter.processor_classes)
                static_reason = f"processor {proc_cls.__name__} is not supported (supported: {supported})"
            module_name = getattr(proc_cls.__call__, "__module__", None)
            if static_reason is None:
                mod = sys.modules.get(module_name or "")
                code = getattr(proc_cls.__call__, "__code__", None)
                calls_dispatch = code is not None and DISPATCH_NAME in code.co_names
                if mod is None or not hasattr(mod, DISPATCH_NAME) or not calls_dispatch:
                    static_reason = f"processor {proc_cls.__name__} does not call {DISPATCH_NAME}"
            layer = LayerPatch(self, name, module, rule, window, static_reason, by_step=by_step)
            layer.module_name = module_name
            self.layers.append(layer)

    def install(self) -> None:
        try:
            for layer in self.layers:
                if layer.static_reason is not None:
                    continue
                if layer.module_name not in self._installed_modules:
                    install_dispatcher(layer.module_name)
                    self._installed_modules.append(layer.module_name)
                layer.original = layer.module.processor
                layer.wrapper = wrapper_class(type(layer.original))(layer.original, layer)
                layer.module.processor = layer.wrapper
            hook = torch.compiler.disable(self.pre_hook)
            self._hook = self.model.register_forward_pre_hook(hook, with_kwargs=True)
            self._post_hook = self.model.register_forward_hook(torch.compiler.disable(self.post_hook))
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for h in (self._hook, self._post_hook):
            if h is not None:
                h.remove()
        self._hook = self._post_hook = None
        for layer in self.layers:
            if layer.wrapper is None:
                continue
            if layer.module.processor is layer.wrapper:
                layer.module.processor = layer.original
            else:
                logger.debug("na_accel: %s's processor was replaced after patching; left as is", layer.name)
            layer.wrapper = None
            layer.original = None
        for module_name in self._installed_modules:
            uninstall_dispatcher(module_name)
        self._installed_modules = []
        self.plan = None
        self.probe = None

    # ---- the forward pre-hook ------------------------------------------------------------------------------------

    def pre_hook(self, module, args, kwargs):
        try:
            bound = self._signature.bind_partial(module, *args, **kwargs)
            arguments = dict(bound.arguments)
        except TypeError as exc:
            arguments = None
            layout: Layout | str = f"cannot read the forward arguments ({exc})"
        if arguments is not None:
            layout = self.adapter.layout(module, arguments)
            if not isinstance(layout, str):
                layout = self.adapter.check_forward(module, arguments, layout)
        t = self.adapter.timestep(module, arguments) if arguments is not None else None
        step = self.tracker.observe(t)
        self.forwards += 1
        dense_reason = None
        dense_steps = self.config.dense_steps
        if isinstance(layout, str):
            dense_reason = f"unrecognised input: {layout}"
            logger.debug("na_accel: %s forward runs dense: %s", self.label, dense_reason)
            layout = None
        else:
            for layer in self.layers:
                layer.prepare(layout.grid, step)
            if dense_steps > 0 and step is None:
                dense_reason = "no timestep argument: the denoising step is unknown"
            elif step is not None and step < dense_steps:
                dense_reason = f"dense step {step} (the first {dense_steps} steps are dense)"
        self.plan = ForwardPlan(layout, step, dense_reason, dense=dense_reason is not None)
        for layer in self.layers:
            layer.forward_started()
        return None

    def post_hook(self, module, args, output):
        """Count the attention calls of this forward that ran inside torch.compile (see :class:`.plan.LayerStats`)."""
        for layer in self.layers:
            layer.forward_ended(self.plan)
        return None

    # ---- reporting -----------------------------------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        plan, adapter = self.plan, self.adapter
        lines = [f"{self.label}: {type(self.model).__name__} ({adapter.family}; token grid {adapter.grid_axes})"]
        parallel = context_parallel_summary(self.model)
        if parallel is not None:
            lines.append(f"  {parallel}")
        if plan is None or plan.layout is None:
            seen = "no forward seen yet" if plan is None else f"last forward not recognised ({plan.dense_reason})"
            lines.append(f"  last seen: {seen}")
        else:
            step = "unknown" if plan.step is None else str(plan.step)
            mode = f"dense ({plan.dense_reason})" if plan.dense_reason else "sparse"
            lines.append(f"  last seen: {plan.layout.describe()}, step {step}: {mode}")
        sparse = [layer for layer in self.layers if layer.static_reason is None]
        lines.append(f"  {len(sparse)} of {len(self.layers)} self-attention layers patched; "
                     f"{len(self.other_attention)} other attention module(s) never patched"
                     + (f" ({_abbrev(self.other_attention)})" if self.other_attention else ""))  # fmt: skip
        width = max(len(layer.name) for layer in self.layers)
        for layer in self.layers:
            rule = "(defaults)" if layer.rule is None else f"'{layer.rule.match}'"
            if layer.rule is not None and layer.rule.steps is not None:
                rule += f" ({layer.rule.steps_text()})"
            if layer.static_reason is not None:
                lines.append(f"  {layer.name:<{width}}  dense: {layer.static_reason}")
                continue
            configured = "dense: true" if layer.window is None else layer.window.describe()
            if layer.window is None and layer.spec.precision != "bf16":
                configured += f" (precision={layer.spec.precision}, the defaults')"
            if layer.by_step:
                n_rules = len(self.config.step_rules_for(layer.name))
                configured += f" (at the last step seen; {n_rules} rule(s) by step)"
            if layer.resolved is None and layer.window is not None:
                now = "not resolved yet (no grid seen)"
            elif layer.params is None:
                now = f"dense: {layer.reason}"
            else:
                now = layer.resolved.describe()
            st = layer.stats
            calls = f"calls: {st.sparse} sparse, {st.dense} dense"
            if st.fallback:
                calls += f", {st.fallback} fallback (last: {st.last_fallback})"
            if st.compiled:
                calls += f" ({st.compiled} inside torch.compile, counted as planned)"
            lines.append(f"  {layer.name:<{width}}  {now}  <- rule {rule}: {configured}; {calls}")
        return lines


class SchedulerHook:
    """Wraps ``scheduler.set_timesteps`` on the instance so every generation restarts the step count."""

    def __init__(self, scheduler, tracker: StepTracker) -> None:
        self.scheduler = scheduler
        self.had_instance_attr = "set_timesteps" in vars(scheduler)
        self.original = scheduler.set_timesteps

        @functools.wraps(self.original)
        def set_timesteps(*args, **kwargs):
            tracker.new_generation()
            return self.original(*args, **kwargs)

        self.wrapper = set_timesteps
        scheduler.set_timesteps = set_timesteps

    def remove(self) -> None:
        if vars(self.scheduler).get("set_timesteps") is not self.wrapper:
            return
        if self.had_instance_attr:
            self.scheduler.set_timesteps = self.original
        else:
            del self.scheduler.set_timesteps


def _abbrev(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
