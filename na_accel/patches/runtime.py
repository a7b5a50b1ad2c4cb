"""The machinery shared by every model adapter: processor wrappers, the attention-call interceptor, the forward
pre-hook that reads the token grid and the denoising step, and the per-layer plans.

How a patched attention call flows (diffusers 0.42.1):

1. The transformer's forward pre-hook (:meth:`TransformerPatch.pre_hook`, run eagerly, outside torch.compile)
   asks the family adapter for the token layout (grid, number and position of text tokens) and the timestep,
   updates the step counter and resolves every planned layer's window for that grid.
2. Each planned attention module's processor is a :class:`NAProcessor` wrapping the original processor object.
   It keeps the original ``__call__`` signature (diffusers' ``Attention.forward`` drops keyword arguments the
   processor's signature does not name), marks its layer as the active one (a thread-local) and calls the
   original processor, which runs unchanged (QKV, QK-norm, RoPE, concatenation).
3. The original processor calls ``dispatch_attention_fn`` through its module's globals; while any model of that
   module is patched, that global is :func:`_make_dispatcher`'s interceptor. With no active layer (every
   unpatched layer, every other model) it calls the original function with the identical arguments. With an
   active layer it asks :meth:`LayerPatch.attend`, which either computes GNA with
   :func:`na_accel.functional.na_joint` / :func:`~na_accel.functional.na_flat` or declines (dense layer,
   dense step, unrecognised situation), in which case the original function runs with the identical arguments.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any

import torch

from ..config import ConfigError, LayerRule, NAConfig, ResolvedWindow, WindowSpec
from ..semantics import GNAParams, make_params

logger = logging.getLogger("na_accel")

_DISPATCH_NAME = "dispatch_attention_fn"


# --------------------------------------------------------------------------------------------------------------
# Token layout and adapters
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Token layout of one self-attention sequence: the latent grid (raster order) and the text tokens."""

    grid: tuple[int, ...]
    num_text: int = 0
    text_first: bool = False

    @property
    def num_grid(self) -> int:
        n = 1
        for g in self.grid:
            n *= g
        return n

    @property
    def seq_len(self) -> int:
        return self.num_grid + self.num_text

    @property
    def grid_slice(self) -> slice:
        return slice(self.num_text, self.seq_len) if self.text_first else slice(0, self.num_grid)

    @property
    def text_slice(self) -> slice:
        return slice(0, self.num_text) if self.text_first else slice(self.num_grid, self.seq_len)

    def describe(self) -> str:
        s = "grid (" + ", ".join(str(g) for g in self.grid) + ")"
        if self.num_text:
            s += f" + {self.num_text} text tokens ({'text first' if self.text_first else 'grid first'})"
        return s


class Adapter:
    """Model knowledge for one diffusers transformer class. Subclasses fill in the class attributes and
    :meth:`layout`."""

    family: str = ""
    model_class: str = ""  # diffusers class name
    default_preset: str = ""
    processor_classes: tuple[str, ...] = ()  # processors whose dispatch_attention_fn call we can answer
    layer_regex: str = ""  # names of the token-grid self-attention modules
    grid_ndim: int = 3
    grid_axes: str = "(T, H, W)"
    notes: str = ""

    def model_type(self) -> type:
        import diffusers

        return getattr(diffusers, self.model_class)

    def layout(self, model: torch.nn.Module, args: dict[str, Any]) -> Layout | str:
        """The token layout of this forward call, or a string saying why it is not recognised."""
        raise NotImplementedError

    def check_forward(self, model: torch.nn.Module, args: dict[str, Any], layout: Layout) -> Layout | str:
        """Further checks of a recognised forward (e.g. a user-given attention mask); a string makes it dense."""
        return layout

    def timestep(self, model: torch.nn.Module, args: dict[str, Any]) -> float | None:
        """A scalar summary of the ``timestep`` argument (its maximum), or None if absent."""
        t = args.get("timestep")
        if t is None:
            return None
        if isinstance(t, torch.Tensor):
            if t.numel() == 0:
                return None
            return float(t.detach().max().float())
        if isinstance(t, int | float):
            return float(t)
        return None


def video_grid(hidden_states, patch: tuple[int, int, int]) -> tuple[int, int, int] | str:
    """Token grid of a (B, C, F, H, W) latent for a (p_t, p_h, p_w) patch embedding (floor, like the conv)."""
    if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 5:
        shape = tuple(hidden_states.shape) if isinstance(hidden_states, torch.Tensor) else type(hidden_states)
        return f"hidden_states is not a (B, C, F, H, W) tensor: {shape}"
    f, h, w = hidden_states.shape[2:]
    grid = (f // patch[0], h // patch[1], w // patch[2])
    if min(grid) < 1:
        return f"latent (F, H, W) = {(f, h, w)} is smaller than the patch size {patch}"
    return grid


class VideoSelfAttentionAdapter(Adapter):
    """Models whose planned layers are video-only self-attention over the (T, H, W) grid of a (B, C, F, H, W)
    latent, patchified with ``config.patch_size`` (Cosmos, Wan)."""

    def layout(self, model, args):
        grid = video_grid(args.get("hidden_states"), tuple(int(p) for p in model.config.patch_size))
        if isinstance(grid, str):
            return grid
        return Layout(grid)


# --------------------------------------------------------------------------------------------------------------
# Step tracking
# --------------------------------------------------------------------------------------------------------------


class StepTracker:
    """Counts denoising steps within one generation (shared by the transformers of one patch).

    A forward is in the same step as the previous one when both its timestep and, if a pipeline was patched, its
    scheduler's ``step_index`` are unchanged: the cond / uncond passes of a step (and Wan 2.2's second expert, which
    shares the tracker) get the same plan. Otherwise it is the next step. A new generation (step 0) starts on the
    first forward, after ``scheduler.set_timesteps`` (hooked when a pipeline is patched) or
    :meth:`new_generation`, when the scheduler's ``step_index`` returns to None (``set_timesteps`` resets it), or
    when the timestep increases. The scheduler index matters for low-precision timesteps: HunyuanVideo's pipeline
    passes bf16 timesteps, and consecutive steps near t = 1000 round to the same value.
    """

    def __init__(self) -> None:
        self.last_t: float | None = None
        self.last_index: int | None = None
        self.step: int | None = None
        self.generation = 0
        self.scheduler_source = None  # callable returning the pipeline's current scheduler (or None)
        self._pending = True

    def new_generation(self) -> None:
        self._pending = True

    def _scheduler_index(self) -> int | None:
        scheduler = self.scheduler_source() if self.scheduler_source is not None else None
        index = getattr(scheduler, "step_index", None) if scheduler is not None else None
        return index if isinstance(index, int) else None

    def observe(self, t: float | None) -> int | None:
        index = self._scheduler_index()
        if t is None and index is None and self.scheduler_source is None:
            return None
        restart = (
            self._pending
            or self.step is None
            or (index is None and self.last_index is not None)
            or (t is not None and self.last_t is not None and t > self.last_t)
        )
        if restart:
            self.step = 0
            self.generation += 1
            self._pending = False
        elif t != self.last_t or index != self.last_index:
            self.step += 1
        self.last_t, self.last_index = t, index
        return self.step


# --------------------------------------------------------------------------------------------------------------
# The active layer and the dispatch interceptor
# --------------------------------------------------------------------------------------------------------------


class _Active(threading.local):
    """The attention layer whose processor is running, per thread (set by the processor wrappers)."""

    def __init__(self) -> None:
        # An instance attribute from the start (not a class default): torch.compile guards on this dict's keys.
        self.layer: LayerPatch | None = None


_ACTIVE = _Active()


def _bind_dispatch(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
    attention_kwargs=None,
    *,
    backend=None,
    parallel_config=None,
):
    """Mirror of diffusers' ``dispatch_attention_fn`` signature (0.42.1), to read the arguments of a call."""
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, attention_kwargs, parallel_config


def _make_dispatcher(original):
    @functools.wraps(original)
    def na_accel_dispatch_attention_fn(*args, **kwargs):
        layer = _ACTIVE.layer
        if layer is not None:
            out = layer.attend(args, kwargs)
            if out is not None:
                return out
        return original(*args, **kwargs)

    na_accel_dispatch_attention_fn._na_accel_original = original
    return na_accel_dispatch_attention_fn


@dataclass
class _Installed:
    module: Any
    original: Any
    dispatcher: Any
    refs: int = 0


_INSTALLED: dict[str, _Installed] = {}
_INSTALL_LOCK = threading.Lock()


def install_dispatcher(module_name: str) -> None:
    """Route ``<module>.dispatch_attention_fn`` through the interceptor (reference counted)."""
    with _INSTALL_LOCK:
        entry = _INSTALLED.get(module_name)
        if entry is None:
            mod = sys.modules[module_name]
            original = getattr(mod, _DISPATCH_NAME)
            entry = _Installed(mod, original, _make_dispatcher(original))
            setattr(mod, _DISPATCH_NAME, entry.dispatcher)
            _INSTALLED[module_name] = entry
        entry.refs += 1


def uninstall_dispatcher(module_name: str) -> None:
    with _INSTALL_LOCK:
        entry = _INSTALLED.get(module_name)
        if entry is None:
            return
        entry.refs -= 1
        if entry.refs > 0:
            return
        del _INSTALLED[module_name]
        if getattr(entry.module, _DISPATCH_NAME, None) is entry.dispatcher:
            setattr(entry.module, _DISPATCH_NAME, entry.original)
        else:  # someone replaced it after us; leave theirs in place (ours is a pass-through without patches)
            logger.debug("na_accel: %s.%s was replaced by someone else; not restored", module_name, _DISPATCH_NAME)


# --------------------------------------------------------------------------------------------------------------
# Processor wrappers
# --------------------------------------------------------------------------------------------------------------


class NAProcessor:
    """Base of the per-class processor wrappers. Attributes not starting with ``_na_`` are read from and written to
    the wrapped processor (so ``set_attention_backend`` and friends still reach it)."""

    def __init__(self, original, layer: LayerPatch) -> None:
        object.__setattr__(self, "_na_original", original)
        object.__setattr__(self, "_na_layer", layer)

    def __getattr__(self, name):
        if name.startswith("_na_"):
            raise AttributeError(name)
        return getattr(self._na_original, name)

    def __setattr__(self, name, value):
        if name.startswith("_na_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._na_original, name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(wrapping {self._na_original!r}, layer {self._na_layer.name!r})"


@functools.cache
def wrapper_class(processor_class: type) -> type:
    """A subclass of :class:`NAProcessor` whose ``__call__`` has ``processor_class.__call__``'s signature."""
    original_call = processor_class.__call__

    @functools.wraps(original_call)
    def __call__(self, *args, **kwargs):
        previous = _ACTIVE.layer
        _ACTIVE.layer = self._na_layer
        try:
            return self._na_original(*args, **kwargs)
        finally:
            _ACTIVE.layer = previous

    return type(f"NAAccel{processor_class.__name__}", (NAProcessor,), {"__call__": __call__})


# --------------------------------------------------------------------------------------------------------------
# Per-forward plan, per-layer and per-transformer state
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ForwardPlan:
    """What the pre-hook decided for the current forward call (shared by every layer)."""

    layout: Layout | None
    step: int | None
    dense_reason: str | None  # every layer dense in this forward (dense step, unrecognised input, ...)
    dense: bool = False  # dense_reason is not None (a bool, so torch.compile guards do not change every step)
    mask_cache: tuple | None = None  # (mask tensor, text lengths or a fallback reason string)


@dataclass
class LayerStats:
    sparse: int = 0
    dense: int = 0
    fallback: int = 0
    last_fallback: str | None = None


class LayerPatch:
    """One planned attention module: its rule, its window for the current grid, and its wrapper."""

    def __init__(self, owner: TransformerPatch, name: str, module, rule: LayerRule | None, window: WindowSpec | None,
                 static_reason: str | None) -> None:  # fmt: skip
        self.owner = owner
        self.name = name
        self.module = module
        self.rule = rule
        self.window = window  # None: dense by rule (or not patchable)
        self.static_reason = static_reason  # why this layer is never patched (None if it is)
        self.original = None  # the original processor object while patched
        self.wrapper = None
        self.module_name: str | None = None  # module whose dispatch_attention_fn the processor calls
        self._resolved: dict[tuple[int, ...], ResolvedWindow] = {}
        self.resolved: ResolvedWindow | None = None  # for the last seen grid
        self.params: GNAParams | None = None  # GNA params for the current grid; None: dense
        self.reason: str | None = static_reason  # why params is None
        self.stats = LayerStats()

    # ---- planning (eager, in the pre-hook) --------------------------------------------------------------------

    def prepare(self, grid: tuple[int, ...]) -> None:
        if self.static_reason is not None:
            return
        resolved = self._resolved.get(grid)
        if resolved is None:
            where = f"{self.owner.config.source}: layer {self.name!r}"
            resolved = self.window.resolve(grid, where=where)
            self._resolved[grid] = resolved
            for note in resolved.notes:
                logger.debug("na_accel: %s: %s", where, note)
        self.resolved = resolved
        if resolved.covers_grid:
            clamped = f" ({'; '.join(resolved.notes)})" if resolved.notes else ""
            self.params, self.reason = None, f"window covers the whole grid{clamped}: dense attention"
        else:
            self.params = make_params(grid, resolved.kernel_size, resolved.stride, resolved.dilation,
                                      resolved.is_causal)  # fmt: skip
            self.reason = None

    # ---- the attention call ------------------------------------------------------------------------------------

    def _decline(self, reason: str):
        """Fall back to the original attention call for an unrecognised situation."""
        if not torch.compiler.is_compiling():
            self.stats.fallback += 1
            self.stats.last_fallback = reason
            logger.debug("na_accel: %s falls back to dense attention: %s", self.name, reason)
        return None

    def _dense(self):
        """Planned dense (dense step, dense window, unrecognised forward); the reason is in the plan / layer."""
        if not torch.compiler.is_compiling():
            self.stats.dense += 1
        return None

    def attend(self, args: tuple, kwargs: dict):
        """GNA output for this dispatch_attention_fn call, or None to let the original function answer it."""
        plan = self.owner.plan
        if plan is None:
            return self._decline("no plan: the transformer's forward pre-hook did not run for this call")
        if plan.dense or self.params is None:
            return self._dense()
        try:
            q, k, v, mask, dropout_p, is_causal, scale, enable_gqa, attention_kwargs, parallel_config = _bind_dispatch(
                *args, **kwargs
            )
        except TypeError as exc:
            return self._decline(f"unexpected dispatch_attention_fn arguments ({exc})")
        if parallel_config is not None:
            return self._decline("a parallel (context-parallel) config is set")
        if dropout_p:
            return self._decline(f"dropout_p={dropout_p}")
        if is_causal:
            return self._decline("is_causal=True")
        if enable_gqa:
            return self._decline("enable_gqa=True")
        if attention_kwargs:
            return self._decline(f"attention_kwargs {sorted(attention_kwargs)}")
        if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
            return self._decline("query/key/value are not tensors")
        if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
            return self._decline(
                f"query/key/value shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)} differ or are not "
                "[B, S, heads, D]"
            )
        if not q.is_floating_point() or q.dtype != k.dtype or q.dtype != v.dtype:
            return self._decline(f"dtypes {q.dtype}, {k.dtype}, {v.dtype}")
        layout = plan.layout
        if q.shape[1] != layout.seq_len:
            return self._decline(f"sequence length {q.shape[1]} is not {layout.describe()} = {layout.seq_len} tokens")
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return self._decline("autograd is recording (na_accel attention is forward-only)")
        lengths = None
        if mask is not None:
            lengths = self._text_lengths(mask, plan, q)
            if isinstance(lengths, str):
                return self._decline(lengths)
        p = self.params
        backend = self.window.backend
        from ..functional import na_flat, na_joint

        if layout.num_text:
            out = na_joint(q, k, v, layout.grid, layout.num_text, kernel_size=p.kernel_size, stride=p.stride,
                           dilation=p.dilation, is_causal=p.is_causal, scale=scale, text_first=layout.text_first,
                           text_lengths=lengths, backend=backend)  # fmt: skip
        else:
            out = na_flat(q, k, v, layout.grid, kernel_size=p.kernel_size, stride=p.stride, dilation=p.dilation,
                          is_causal=p.is_causal, scale=scale, backend=backend)  # fmt: skip
        if not torch.compiler.is_compiling():
            self.stats.sparse += 1
        return out

    @staticmethod
    def _text_lengths(mask, plan: ForwardPlan, q: torch.Tensor):
        """Per-batch valid text lengths from a key-padding mask, None if all are valid, or a fallback reason."""
        layout = plan.layout
        reason = mask_shape_reason(mask, layout, q.shape[0], q.device)
        if reason is not None:
            return reason
        if torch.compiler.is_compiling():
            # The structure check needs a host sync. Under torch.compile the mask is taken to be what diffusers
            # builds (HunyuanVideo: valid grid keys and a valid text prefix, by construction) or what the forward
            # pre-hook verified (Flux's joint_attention_kwargs mask); the lengths come from the mask itself.
            return mask[:, 0, 0, layout.text_slice].sum(dim=-1, dtype=torch.int32)
        cached = plan.mask_cache
        if cached is not None and cached[0] is mask:
            return cached[1]
        result = key_padding_lengths(mask, layout)
        plan.mask_cache = (mask, result)
        return result


def mask_shape_reason(mask, layout: Layout, batch: int, device=None) -> str | None:
    """Why ``mask`` is not a boolean ``[B, 1, 1, S]`` key-padding mask for ``layout`` (None if its shape is)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        return "attention mask is not a boolean tensor"
    if mask.dim() != 4 or tuple(mask.shape) != (batch, 1, 1, layout.seq_len):
        return f"attention mask of shape {tuple(mask.shape)} is not a [B, 1, 1, S] key-padding mask"
    if layout.num_text == 0:
        return "attention mask on a grid-only self-attention"
    if device is not None and mask.device != device:
        return "attention mask is on another device than the query"
    return None


def key_padding_lengths(mask: torch.Tensor, layout: Layout):
    """Valid text lengths (int32 ``[B]``) of a ``[B, 1, 1, S]`` mask, None if all text is valid, or a reason if the
    mask is not a pure text key-padding mask (all grid keys valid, a valid prefix of the text keys). Syncs."""
    keys = mask[:, 0, 0, :]
    text = keys[:, layout.text_slice]
    t = layout.num_text
    lengths = text.sum(dim=-1, dtype=torch.int32)
    prefix = torch.arange(t, device=mask.device)[None, :] < lengths[:, None]
    if not bool(keys[:, layout.grid_slice].all()) or not bool(torch.equal(text, prefix)):
        return "attention mask is not a pure text key-padding mask (valid grid keys, a valid prefix of text)"
    if bool((lengths == t).all()):
        return None
    return lengths


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
        self._hook = None
        self._signature = inspect.signature(type(model).forward)
        self._installed_modules: list[str] = []

    # ---- building ----------------------------------------------------------------------------------------------

    def plan_layers(self) -> None:
        import re

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
            static_reason = None
            if window is None:
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
                calls_dispatch = code is not None and _DISPATCH_NAME in code.co_names
                if mod is None or not hasattr(mod, _DISPATCH_NAME) or not calls_dispatch:
                    static_reason = f"processor {proc_cls.__name__} does not call {_DISPATCH_NAME}"
            layer = LayerPatch(self, name, module, rule, window, static_reason)
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
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
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
                layer.prepare(layout.grid)
            if dense_steps > 0 and step is None:
                dense_reason = "no timestep argument: the denoising step is unknown"
            elif step is not None and step < dense_steps:
                dense_reason = f"dense step {step} (the first {dense_steps} steps are dense)"
        self.plan = ForwardPlan(layout, step, dense_reason, dense=dense_reason is not None)
        return None

    # ---- reporting -----------------------------------------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        plan, adapter = self.plan, self.adapter
        lines = [f"{self.label}: {type(self.model).__name__} ({adapter.family}; token grid {adapter.grid_axes})"]
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
            if layer.static_reason is not None:
                lines.append(f"  {layer.name:<{width}}  dense: {layer.static_reason}")
                continue
            configured = layer.window.describe()
            if layer.resolved is None:
                now = "not resolved yet (no grid seen)"
            elif layer.params is None:
                now = f"dense: {layer.reason}"
            else:
                now = layer.resolved.describe()
            st = layer.stats
            calls = f"calls: {st.sparse} sparse, {st.dense} dense"
            if st.fallback:
                calls += f", {st.fallback} fallback (last: {st.last_fallback})"
            lines.append(f"  {layer.name:<{width}}  {now}  <- rule {rule}: {configured}; {calls}")
        return lines


def _abbrev(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")
