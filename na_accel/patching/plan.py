"""Per-generation and per-layer planning: the denoising-step counter, the plan of one forward call, and each
planned layer's window for the current grid together with its attention call (GNA or a decline)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from ..ops.functional import na_flat, na_joint
from ..ops.precision import fp8_device_reason, record_fp8_fallback
from ..ops.semantics import GNAParams
from .config import LayerRule, ResolvedWindow, WindowSpec
from .families.base import Layout, key_padding_lengths, mask_shape_reason
from .intercept import bind_dispatch
from .parallel import attend_context_parallel

if TYPE_CHECKING:  # pragma: no cover
    from .hooks import TransformerPatch

logger = logging.getLogger("na_accel")

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


@dataclass(frozen=True)
class ProbeCall:
    """What an attention probe sees of one attention call; see :class:`AttentionProbe`.

    ``query`` and ``key`` are the tensors the call received (``[B, S, heads, D]``, after QK-norm and RoPE, the
    text tokens at ``layout.text_slice``); ``text_lengths`` is the int ``[B]`` count of valid text tokens (None: all
    valid); ``scale`` is the softmax scale as passed (None: ``D ** -0.5``). ``params`` is the GNA window of a sparse
    call, None for a dense call (reported only to probes with ``observe_dense``). The tensors must not be modified.
    """

    transformer: str  # the patched transformer's label ("transformer", "transformer_2")
    layer: str  # module name of the attention layer
    step: int | None  # denoising step of the current generation (None when unknown)
    layout: Layout
    params: GNAParams | None
    query: torch.Tensor
    key: torch.Tensor
    text_lengths: torch.Tensor | None
    scale: float | None


class AttentionProbe(Protocol):
    """A read-only observer of sparse attention calls, set with
    :meth:`na_accel.patching.api.PatchHandle.set_probe` (stored as :attr:`.hooks.TransformerPatch.probe`).

    :meth:`LayerPatch.attend` calls it once per eager GNA call (after the GNA output is computed, outside
    ``torch.compile`` and not under context parallelism) with a :class:`ProbeCall`. A probe whose attribute
    ``observe_dense`` is True also gets the planned dense calls of a recognised forward (dense steps, windows that
    cover the grid; ``params`` None), before the original attention answers them, when their arguments are ones GNA
    could answer; layers dense by rule, unrecognised forwards and fallbacks are never reported. With no probe set (the
    default) nothing is built or called. A probe must not change its arguments or any global state the model reads
    (e.g. the global RNG), so outputs stay bit-identical.
    """

    def __call__(self, call: ProbeCall) -> None: ...


@dataclass
class LayerStats:
    """Attention calls of one layer. Eager calls are counted where they are answered; a call inside torch.compile
    cannot count itself (reading a counter there would specialise the graph on its value), so it only marks the layer
    as called (:attr:`LayerPatch.called_in_compiled`, a constant store that torch.compile replays after the graph)
    and the transformer's forward post-hook counts it from the forward's plan (sparse or dense), adding it to
    ``compiled`` as well (a fallback inside compiled code is then counted as planned). A layer that did not run in a
    forward (its block skipped by a diffusers cache such as FirstBlockCache) is not counted."""

    sparse: int = 0
    dense: int = 0
    fallback: int = 0
    compiled: int = 0
    last_fallback: str | None = None

    @property
    def total(self) -> int:
        return self.sparse + self.dense + self.fallback


class LayerPatch:
    """One planned attention module: its rule, its window for the current grid, and its wrapper.

    Planned dense calls (dense steps, windows covering the grid, rules with ``dense: true``) run the original
    attention, except where the precision in force (:attr:`spec`) is ``fp8``: GNA then answers them with a window
    covering the whole grid, so the 8-bit kernel runs dense steps too (:meth:`_dense_fp8`). A layer dense by a rule
    without ``steps`` is installed only for that (``dense_by_rule``; the defaults' precision is fp8).
    """

    def __init__(self, owner: TransformerPatch, name: str, module, rule: LayerRule | None, window: WindowSpec | None,
                 static_reason: str | None, by_step: bool = False) -> None:  # fmt: skip
        self.owner = owner
        self.name = name
        self.module = module
        self.rule = rule  # the rule in force (at the current step when by_step)
        self.window = window  # None: dense by rule (or not patchable)
        #: a rule without ``steps`` keeps this layer dense at every step
        self.dense_by_rule = window is None and not by_step
        #: rules with ``steps`` match this layer: :meth:`prepare` picks the rule and window for each step
        self.by_step = by_step
        self._step_choice: dict[int | None, tuple[LayerRule | None, WindowSpec | None]] = {}
        self.static_reason = static_reason  # why this layer is never patched (None if it is)
        self.original = None  # the original processor object while patched
        self.wrapper = None
        self.module_name: str | None = None  # module whose dispatch_attention_fn the processor calls
        self._resolved: dict[tuple[WindowSpec, tuple[int, ...]], ResolvedWindow] = {}
        self.resolved: ResolvedWindow | None = None  # for the last seen grid (None: dense by rule at this step)
        self.grid: tuple[int, ...] | None = None  # the last seen token grid
        self.params: GNAParams | None = None  # GNA params for the current grid; None: dense
        self.reason: str | None = static_reason  # why params is None
        if self.dense_by_rule and static_reason is None:
            self.reason = f"rule '{rule.match}' says dense: true"
        self.stats = LayerStats()
        self._calls_at_forward_start: int | None = None  # stats.total when the current forward began
        self.called_in_compiled = False  # set by an attention call traced into compiled code, during this forward

    # ---- counting calls that ran inside torch.compile ------------------------------------------------------------

    def forward_started(self) -> None:
        self._calls_at_forward_start = self.stats.total
        self.called_in_compiled = False

    def forward_ended(self, plan: ForwardPlan | None) -> None:
        """After a forward: if this layer was called inside compiled code and no call was counted eagerly, count
        one call as the plan had it. A layer that was not called at all (skipped by a cache) is not counted."""
        start, self._calls_at_forward_start = self._calls_at_forward_start, None
        called, self.called_in_compiled = self.called_in_compiled, False
        if start is None or self.static_reason is not None or self.stats.total != start or not called:
            return
        if plan is not None and not plan.dense and self.params is not None:
            self.stats.sparse += 1
        else:
            self.stats.dense += 1
        self.stats.compiled += 1

    # ---- planning (eager, in the pre-hook) --------------------------------------------------------------------

    @property
    def spec(self) -> WindowSpec:
        """The settings in force (precision, backend): the window's, or for a layer dense by rule the defaults'."""
        return self.window if self.window is not None else self.owner.config.defaults

    def prepare(self, grid: tuple[int, ...], step: int | None = None) -> None:
        """Resolve the window for this forward's token ``grid`` (and, for a layer with rules by step, choose the
        rule in force at denoising ``step``)."""
        if self.static_reason is not None:
            return
        self.grid = grid
        if self.dense_by_rule:
            self.resolved, self.params = None, None
            self.reason = f"rule '{self.rule.match}' says dense: true"
            return
        if self.by_step:
            choice = self._step_choice.get(step)
            if choice is None:
                choice = self._step_choice[step] = self.owner.config.window_for(self.name, step)
            self.rule, self.window = choice
            if self.window is None:
                self.resolved = None
                self.params = None
                self.reason = f"rule '{self.rule.match}' says dense: true at {self.rule.steps_text()}"
                return
        resolved = self._resolved.get((self.window, grid))
        if resolved is None:
            where = f"{self.owner.config.source}: layer {self.name!r}"
            resolved = self.window.resolve(grid, where=where)
            self._resolved[(self.window, grid)] = resolved
            for note in resolved.notes:
                logger.debug("na_accel: %s: %s", where, note)
        self.resolved = resolved
        if resolved.params.is_dense:
            clamped = f" ({'; '.join(resolved.notes)})" if resolved.notes else ""
            self.params, self.reason = None, f"window covers the whole grid{clamped}: dense attention"
        else:
            self.params, self.reason = resolved.params, None

    # ---- the attention call ------------------------------------------------------------------------------------

    def _decline(self, reason: str):
        """Fall back to the original attention call for an unrecognised situation."""
        if not torch.compiler.is_compiling():
            self.stats.fallback += 1
            self.stats.last_fallback = reason
            logger.debug("na_accel: %s falls back to dense attention: %s", self.name, reason)
        return None

    def _dense(self, fp8_fallback: str | None = None):
        """Planned dense (dense step, dense window, unrecognised forward); the reason is in the plan / layer.
        ``fp8_fallback``: why a dense call in fp8 runs the original attention in the inputs' precision."""
        if not torch.compiler.is_compiling():
            self.stats.dense += 1
            if fp8_fallback is not None:
                record_fp8_fallback(fp8_fallback)
        return None

    def attend(self, args: tuple, kwargs: dict):
        """GNA output for this dispatch_attention_fn call, or None to let the original function answer it."""
        if torch.compiler.is_compiling():
            self.called_in_compiled = True  # a side effect torch.compile replays after the graph; see LayerStats
        plan = self.owner.plan
        if plan is None:
            return self._decline("no plan: the transformer's forward pre-hook did not run for this call")
        if plan.dense or self.params is None:
            probe = self.owner.probe
            # a probe that observes dense calls gets the ones GNA could have answered (eager, no context parallelism)
            observe = (probe is not None and getattr(probe, "observe_dense", False) and plan.layout is not None
                       and not self.dense_by_rule and not torch.compiler.is_compiling())  # fmt: skip
            fp8 = plan.layout is not None and self.spec.precision == "fp8"
            if not (observe or fp8):
                return self._dense()
            call = self._inputs(plan, args, kwargs)
            if observe and not isinstance(call, str) and call[5] is None:
                q, k, _v, _mask, scale, _, lengths = call
                probe(ProbeCall(self.owner.label, self.name, plan.step, plan.layout, None, q, k, lengths, scale))
            return self._dense_fp8(plan, call) if fp8 else self._dense()
        call = self._inputs(plan, args, kwargs)
        if isinstance(call, str):
            return self._decline(call)
        q, k, v, mask, scale, parallel_config, lengths = call
        if parallel_config is not None:  # diffusers' context parallelism: GNA inside its Ulysses attention, or decline
            return attend_context_parallel(self, q, k, v, mask, scale, parallel_config)
        layout = plan.layout
        p = self.params
        out = self._gna(layout, q, k, v, scale, lengths, p)
        if not torch.compiler.is_compiling():
            self.stats.sparse += 1
            probe = self.owner.probe
            if probe is not None:
                probe(ProbeCall(self.owner.label, self.name, plan.step, layout, p, q, k, lengths, scale))
        return out

    def _inputs(self, plan: ForwardPlan, args: tuple, kwargs: dict) -> tuple | str:
        """``(q, k, v, mask, scale, parallel_config, lengths)`` of a dispatch_attention_fn call GNA can answer on the
        forward's layout, or why it cannot. Under context parallelism the call is returned as it is (``lengths``
        None): :func:`attend_context_parallel` checks it on the local shard."""
        call = self._read_call(args, kwargs)
        if isinstance(call, str):
            return call
        q, k, v, mask, scale, parallel_config = call
        if parallel_config is not None:
            return (*call, None)
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return "autograd is recording (na_accel attention is forward-only)"
        lengths = self._grid_text_lengths(plan, q, mask)
        if isinstance(lengths, str):
            return lengths
        return (*call, lengths)

    def _gna(self, layout: Layout, q, k, v, scale, lengths, p: GNAParams | None):
        """GNA over the layout's grid (and text) with window ``p`` (None: the whole grid) in the settings in force."""
        spec = self.spec
        if p is None:
            ks, st, dl, cz = (-1,) * len(layout.grid), 1, 1, False
        else:
            ks, st, dl, cz = p.kernel_size, p.stride, p.dilation, p.is_causal
        if layout.num_text:
            return na_joint(q, k, v, layout.grid, layout.num_text, kernel_size=ks, stride=st, dilation=dl,
                            is_causal=cz, scale=scale, text_first=layout.text_first, text_lengths=lengths,
                            backend=spec.backend, precision=spec.precision)  # fmt: skip
        return na_flat(q, k, v, layout.grid, kernel_size=ks, stride=st, dilation=dl, is_causal=cz, scale=scale,
                       backend=spec.backend, precision=spec.precision)  # fmt: skip

    def _dense_fp8(self, plan: ForwardPlan, call: tuple | str):
        """A planned dense call where the precision in force is fp8 (``call``: :meth:`_inputs`): GNA with a window
        covering the whole grid (the 8-bit kernel on Hopper; on a CPU ``na_joint`` / ``na_flat`` fall back to the
        inputs' precision and count it). A call GNA could not answer (the checks of a sparse call, context
        parallelism, autograd), or one on a GPU without the 8-bit kernel, runs the original attention in the inputs'
        precision, counted as an fp8 fallback."""
        if isinstance(call, str):
            return self._dense(fp8_fallback=f"a dense call GNA cannot answer ({call}) runs the original attention")
        q, k, v, _mask, scale, parallel_config, lengths = call
        if parallel_config is not None:
            return self._dense(fp8_fallback="context parallelism: dense calls run diffusers' own attention")
        if q.is_cuda and (reason := fp8_device_reason(q)) is not None:
            # on a GPU where the 8-bit kernel cannot run, diffusers' own dense attention (cuDNN / flash) beats GNA's
            # dense path in 16 bits
            return self._dense(fp8_fallback=f"{reason}: dense calls run the original attention")
        out = self._gna(plan.layout, q, k, v, scale, lengths, None)
        self._dense()
        return out

    @staticmethod
    def _read_call(args: tuple, kwargs: dict) -> tuple | str:
        """``(q, k, v, mask, scale, parallel_config)`` of a dispatch_attention_fn call GNA can answer (shapes and
        dtypes permitting), or why it cannot."""
        try:
            q, k, v, mask, dropout_p, is_causal, scale, enable_gqa, attention_kwargs, parallel_config = bind_dispatch(
                *args, **kwargs
            )
        except TypeError as exc:
            return f"unexpected dispatch_attention_fn arguments ({exc})"
        if dropout_p:
            return f"dropout_p={dropout_p}"
        if is_causal:
            return "is_causal=True"
        if enable_gqa:
            return "enable_gqa=True"
        if attention_kwargs:
            return f"attention_kwargs {sorted(attention_kwargs)}"
        if not all(isinstance(t, torch.Tensor) for t in (q, k, v)):
            return "query/key/value are not tensors"
        if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
            return (f"query/key/value shapes {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)} differ or are not "
                    "[B, S, heads, D]")  # fmt: skip
        if not q.is_floating_point() or q.dtype != k.dtype or q.dtype != v.dtype:
            return f"dtypes {q.dtype}, {k.dtype}, {v.dtype}"
        return q, k, v, mask, scale, parallel_config

    def _grid_text_lengths(self, plan: ForwardPlan, q: torch.Tensor, mask):
        """The valid text lengths of a call on the forward's layout (None: all valid), or why its sequence or mask
        does not fit that layout."""
        layout = plan.layout
        if q.shape[1] != layout.seq_len:
            return f"sequence length {q.shape[1]} is not {layout.describe()} = {layout.seq_len} tokens"
        return None if mask is None else self._text_lengths(mask, plan, q)

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
