"""diffusers' context parallelism (Ulysses) with GNA: the public set-up (:func:`context_parallel_plan`,
:func:`enable_context_parallel`) and the attention call of a planned layer under a parallel config
(:func:`attend_context_parallel`).

How a planned layer runs under Ulysses (diffusers 0.42.1): the family's plan splits the tokens across the ranks;
each attention processor calls ``dispatch_attention_fn(..., parallel_config=...)`` with its rank's local tokens of
every head. :meth:`na_accel.patching.plan.LayerPatch.attend` hands such a call to :func:`attend_context_parallel`,
which decides, before any communication, whether GNA can run (:func:`ulysses_decline_reason`). If it can, it calls
diffusers' own ``_templated_context_parallel_attention`` with a GNA ``forward_op``: diffusers does the all-to-all
(local tokens of all heads -> all tokens of this rank's share of the heads) on its own meshes, the forward op puts
the tokens back into the layout's order (the family adapter's :meth:`~.families.base.Adapter.ulysses_token_positions`;
an all-gathered key-padding mask goes along), runs :func:`~na_accel.ops.functional.na_joint` /
:func:`~na_accel.ops.functional.na_flat` on the whole sequence and restores the order, and diffusers does the
reverse all-to-all. Otherwise the call is declined with its reason (the layer's summary row shows it) and diffusers'
dense context-parallel attention answers it with the identical arguments.

Ring attention (``ring_degree > 1``, alone or with Ulysses) passes each step one chunk of keys without their token
positions, so GNA cannot be a ring step: those layers run dense, with one warning per patched transformer and the
reason in the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InputError, UnsupportedModelError
from ..ops.functional import na_flat, na_joint
from .families import adapter_for
from .families.base import Adapter, Layout, context_parallel_config, key_padding_lengths

if TYPE_CHECKING:  # pragma: no cover
    from .plan import LayerPatch

__all__ = ["attend_context_parallel", "context_parallel_plan", "enable_context_parallel", "ulysses_decline_reason"]

logger = logging.getLogger("na_accel")

_TRANSFORMER_ATTRS = ("transformer", "transformer_2")

# --------------------------------------------------------------------------------------------------------------
# Public set-up
# --------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Prepared:
    plan: dict[str, Any]
    handles: list[Any]


# transformer -> what context_parallel_plan installed on it (once per transformer)
_PREPARED: weakref.WeakKeyDictionary[torch.nn.Module, _Prepared] = weakref.WeakKeyDictionary()


def context_parallel_plan(transformer: torch.nn.Module) -> dict[str, Any]:
    """The context-parallel plan of a supported transformer, for ``transformer.enable_parallelism(config=...,
    cp_plan=...)``, with the hooks it relies on installed on ``transformer``.

    Wan and FLUX: diffusers' own plan (the class's ``_cp_plan``). HunyuanVideo and Cosmos, which diffusers ships
    none for: na_accel's (see :mod:`na_accel.patching.families.hunyuan` and :mod:`~na_accel.patching.families.cosmos`).
    Installed once per transformer, all inert while the transformer has no context-parallel config: a forward
    pre-hook that stops a forward the plan cannot split (e.g. a token count not divisible by the number of ranks)
    with a one-line :class:`~na_accel.InputError` instead of diffusers' assertion; for HunyuanVideo a pre-hook on
    each block that gives every rank its part of the text key mask; for Cosmos a self-attention processor that
    passes the parallel config to diffusers' attention call (the same processor otherwise). Call it, or
    :func:`enable_context_parallel`, before :func:`na_accel.patch`.

    Raises:
        UnsupportedModelError: not a supported transformer, or a variant the plan does not cover.
        AlreadyPatchedError: a Cosmos transformer already patched by na_accel (set up parallelism first).
    """
    transformer = _unwrap(transformer)
    prepared = _PREPARED.get(transformer)
    if prepared is not None:
        return dict(prepared.plan)
    adapter = adapter_for(transformer)
    plan = adapter.context_parallel_plan(transformer)
    handles = list(adapter.install_context_parallel_hooks(transformer))
    hook = functools.partial(_check_inputs, adapter=adapter)
    handles.append(transformer.register_forward_pre_hook(hook, with_kwargs=True))
    _PREPARED[transformer] = _Prepared(plan, handles)
    return dict(plan)


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    while isinstance(getattr(module, "_orig_mod", None), torch.nn.Module):  # torch.compile's wrapper
        module = module._orig_mod
    return module


def _check_inputs(module: torch.nn.Module, args: tuple, kwargs: dict, adapter: Adapter) -> None:
    """Forward pre-hook: raise :class:`InputError` for a forward the context-parallel plan cannot split."""
    cp = context_parallel_config(module)
    if cp is None:
        return None
    try:
        bound = inspect.signature(type(module).forward).bind_partial(module, *args, **kwargs)
    except TypeError:
        return None  # the forward itself will say what is wrong
    problem = adapter.context_parallel_input_error(module, dict(bound.arguments), cp)
    if problem is not None:
        raise InputError(problem)
    return None


@contextlib.contextmanager
def _device_count_at_least_one() -> Iterator[None]:
    """diffusers 0.42.1's ``enable_parallelism`` computes ``torch.device(type, rank % torch.accelerator.
    device_count())``, a division by zero on a torch without accelerators. There (only), count one device while it
    runs: the device it records (``cpu:0``) is not used by context parallelism, whose meshes and collectives are the
    process group's (gloo)."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is None or accelerator.device_count() > 0:
        yield
        return
    original = accelerator.device_count
    accelerator.device_count = lambda *args, **kwargs: 1
    try:
        yield
    finally:
        accelerator.device_count = original


def _transformers(obj: Any) -> list[tuple[str, torch.nn.Module]]:
    if isinstance(obj, torch.nn.Module):
        return [("transformer", _unwrap(obj))]
    found = [(a, _unwrap(m)) for a in _TRANSFORMER_ATTRS if isinstance(m := getattr(obj, a, None), torch.nn.Module)]
    if not found:
        raise UnsupportedModelError(
            f"na_accel cannot enable context parallelism on {type(obj).__name__}: it is neither a transformer nor a "
            "pipeline with a `transformer` attribute"
        )
    return found


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def enable_context_parallel(obj: Any, config: Any) -> None:
    """Enable diffusers' context parallelism on a transformer, or on a pipeline's ``transformer`` (and
    ``transformer_2``), with the plan of :func:`context_parallel_plan`.

    Every rank of the process group calls it (the process group must be initialised, e.g. by ``torchrun`` and
    ``torch.distributed.init_process_group``), with the same model and the same config; then every rank runs the
    same pipeline call. Patch with :func:`na_accel.patch` afterwards: planned layers then run GNA under Ulysses
    (``ulysses_degree > 1, ring_degree == 1``) and dense under ring attention (see the module docstring).

    Args:
        obj: a supported transformer or a pipeline holding one or two.
        config: a ``diffusers.ContextParallelConfig`` (or ``ParallelConfig`` with one), or an ``int`` N as
            shorthand for ``ContextParallelConfig(ulysses_degree=N)``.

    Raises:
        InputError: the process group is not initialised, it has fewer ranks than the config needs, or the
            Ulysses degree does not divide the model's attention heads.
        UnsupportedModelError: not a supported model, or already parallel.
    """
    from diffusers import ContextParallelConfig, ParallelConfig

    if isinstance(config, bool) or not isinstance(config, int | ContextParallelConfig | ParallelConfig):
        raise InputError(
            f"enable_context_parallel: config must be a diffusers ContextParallelConfig (or ParallelConfig) or an int "
            f"Ulysses degree, got {type(config).__name__}"
        )
    if isinstance(config, int):
        if config < 2:
            raise InputError(f"enable_context_parallel: the Ulysses degree must be at least 2, got {config}")
        config = ContextParallelConfig(ulysses_degree=config)
    cp = config.context_parallel_config if isinstance(config, ParallelConfig) else config
    if cp is None:
        raise InputError("enable_context_parallel: the ParallelConfig has no context_parallel_config")
    targets = _transformers(obj)
    for label, model in targets:
        adapter_for(model)  # UnsupportedModelError naming the supported models
        if getattr(model, "_parallel_config", None) is not None:
            raise UnsupportedModelError(
                f"enable_context_parallel: {type(model).__name__} ({label}) is already parallel (diffusers' "
                "enable_parallelism runs once per model); build the model again to change the degree"
            )
        heads = getattr(model.config, "num_attention_heads", None)
        if isinstance(heads, int) and heads % cp.ulysses_degree and not cp.ulysses_anything:
            raise InputError(
                f"enable_context_parallel: ulysses_degree {cp.ulysses_degree} does not divide the {heads} attention "
                f"heads of {type(model).__name__} ({label}); allowed Ulysses degrees: {_divisors(heads)} (divisors of "
                "the head count); use one of them"
            )
    dist = torch.distributed
    if not dist.is_available() or not dist.is_initialized():
        raise InputError(
            "enable_context_parallel: torch.distributed is not initialised; launch one process per rank (e.g. "
            "torchrun --nproc-per-node N) and call torch.distributed.init_process_group first"
        )
    needed, world = cp.ulysses_degree * cp.ring_degree, dist.get_world_size()
    if needed > world:
        raise InputError(
            f"enable_context_parallel: ulysses_degree {cp.ulysses_degree} x ring_degree {cp.ring_degree} = {needed} "
            f"ranks, but the process group has {world}; launch {needed} processes or lower the degree"
        )
    mesh = None
    for _label, model in targets:
        plan = context_parallel_plan(model)
        # one mesh for both transformers of a pipeline (Wan 2.2): the second reuses the first's
        model_config = config if mesh is None else dataclasses.replace(cp, mesh=mesh)
        with _device_count_at_least_one():
            model.enable_parallelism(config=model_config, cp_plan=plan)
        mesh = context_parallel_config(model)._mesh


# --------------------------------------------------------------------------------------------------------------
# The attention call of a planned layer under a parallel config
# --------------------------------------------------------------------------------------------------------------


def ring_reason(cp_config: Any) -> str:
    return (
        f"ring_degree={cp_config.ring_degree}: ring attention gives each step one chunk of keys without its token "
        "positions, so GNA cannot run there; dense attention (use ulysses_degree with ring_degree=1 for GNA)"
    )


def ulysses_decline_reason(cp_config: Any, layout: Layout, query: torch.Tensor, mask: Any) -> str | None:
    """Why GNA cannot run inside diffusers' Ulysses attention for this call (None if it can). Decided before any
    communication from shapes and the config only, so every rank decides the same. ``query`` is the rank's local
    ``[B, S_local, heads, D]``; ``mask`` the local key mask as the processor passes it."""
    if cp_config is None:
        return "a parallel config without context parallelism"
    if cp_config.ring_degree > 1:
        return ring_reason(cp_config)
    if cp_config.ulysses_anything:
        return "ulysses_anything=True: ranks may hold unequal token counts, whose order GNA does not follow; dense"
    world = cp_config.ulysses_degree
    if world < 2:
        return f"ulysses_degree={world}: no Ulysses attention"
    if query.shape[2] % world:
        return f"{query.shape[2]} heads are not divisible by ulysses_degree {world}"
    if layout.num_grid % world or layout.num_text % world:
        return f"{layout.describe()}: grid or text token count not divisible by ulysses_degree {world}"
    if query.shape[1] * world != layout.seq_len:
        return (
            f"local sequence of {query.shape[1]} tokens x {world} ranks is not {layout.describe()} = "
            f"{layout.seq_len} tokens"
        )
    if mask is not None:
        if layout.num_text == 0:
            return "attention mask on a grid-only self-attention"
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            return "attention mask is not a boolean tensor"
        if tuple(mask.shape) != (query.shape[0], 1, 1, query.shape[1]):
            return f"attention mask of shape {tuple(mask.shape)} is not this rank's [B, 1, 1, S_local] key mask"
    return None


@functools.lru_cache(maxsize=64)
def _positions(adapter: Adapter, layout: Layout, world: int, device: torch.device):
    """(pos, inverse) on ``device`` for the adapter's gathered token order, or None when it is the layout's."""
    pos = adapter.ulysses_token_positions(layout, world)
    if pos is None:
        return None
    return pos.to(device), torch.argsort(pos).to(device)


def _warn_once(layer: LayerPatch, reason: str) -> None:
    owner = layer.owner
    if reason in owner.warnings:
        return
    owner.warnings.add(reason)
    logger.warning("na_accel: %s (%s): planned layers run dense under context parallelism: %s", owner.label,
                   type(owner.model).__name__, reason)  # fmt: skip


def attend_context_parallel(layer: LayerPatch, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            mask: Any, scale: float | None, parallel_config: Any) -> torch.Tensor | None:  # fmt: skip
    """GNA for a planned layer's ``dispatch_attention_fn`` call with a parallel config, computed inside diffusers'
    Ulysses attention; or None (declined, with the reason recorded) to let diffusers' dense context-parallel
    attention answer it. ``query``/``key``/``value`` are the rank's local ``[B, S_local, heads, D]`` tensors."""
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad):
        return layer._decline("autograd is recording (na_accel attention is forward-only)")
    cp = getattr(parallel_config, "context_parallel_config", None)
    layout = layer.owner.plan.layout
    reason = ulysses_decline_reason(cp, layout, query, mask)
    if reason is not None:
        if cp is not None and cp.ring_degree > 1 and not torch.compiler.is_compiling():
            _warn_once(layer, reason)
        return layer._decline(reason)
    from diffusers.models.attention_dispatch import _templated_context_parallel_attention

    positions = _positions(layer.owner.adapter, layout, cp.ulysses_degree, query.device)
    forward_op = functools.partial(_gna_forward_op, layer=layer, layout=layout, positions=positions)
    return _templated_context_parallel_attention(
        query, key, value, mask, 0.0, False, scale, False, False,
        forward_op=forward_op, backward_op=_no_backward, _parallel_config=parallel_config,
    )  # fmt: skip


def _no_backward(ctx, grad_out, *args, **kwargs):
    raise NotImplementedError("na_accel attention is forward-only")


def _gna_forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                    enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None, *, layer: LayerPatch,
                    layout: Layout, positions):  # fmt: skip
    """The ``forward_op`` diffusers' Ulysses attention calls after its all-to-all: ``[B, S, heads / W, D]`` tensors
    holding every token of this rank's heads, in the gathered order, and the all-gathered ``[B, 1, 1, S]`` key mask
    (or None). Returns the output (and the fp32 logsumexp if ``return_lse``) in the same order."""
    if positions is not None:
        pos, inverse = positions
        query, key, value = (x.index_select(1, pos) for x in (query, key, value))
        if attn_mask is not None:
            attn_mask = attn_mask.index_select(-1, pos)
    lengths = None
    if attn_mask is not None:
        if torch.compiler.is_compiling():  # no host sync: the mask is what the family builds (a text prefix)
            lengths = attn_mask[:, 0, 0, layout.text_slice].sum(dim=-1, dtype=torch.int32)
        else:
            lengths = key_padding_lengths(attn_mask, layout)
    if isinstance(lengths, str):
        # Not a text key-padding mask (the local masks looked like one): the communication is done, so answer
        # exactly with dense attention under that mask, as diffusers' own forward op would.
        layer._decline(lengths)
        out = torch.nn.functional.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attn_mask, scale=scale
        ).transpose(1, 2)
        if return_lse:
            raise NotImplementedError("dense fallback inside the Ulysses forward op has no logsumexp")
        lse = None
    else:
        params, backend, precision = layer.params, layer.spec.backend, layer.spec.precision
        if layout.num_text:
            res = na_joint(query, key, value, layout.grid, layout.num_text, kernel_size=params.kernel_size,
                           stride=params.stride, dilation=params.dilation, is_causal=params.is_causal, scale=scale,
                           text_first=layout.text_first, text_lengths=lengths, backend=backend,
                           return_lse=return_lse, precision=precision)  # fmt: skip
        else:
            res = na_flat(query, key, value, layout.grid, kernel_size=params.kernel_size, stride=params.stride,
                          dilation=params.dilation, is_causal=params.is_causal, scale=scale, backend=backend,
                          return_lse=return_lse, precision=precision)  # fmt: skip
        out, lse = res if return_lse else (res, None)
        if not torch.compiler.is_compiling():
            layer.stats.sparse += 1
    if positions is not None:
        out = out.index_select(1, inverse)
        lse = None if lse is None else lse.index_select(1, inverse)
    return (out, lse) if return_lse else out


def context_parallel_summary(model: torch.nn.Module) -> str | None:
    """One line for the patch summary: the context-parallel degrees and what planned layers do under them."""
    cp = context_parallel_config(model)
    if cp is None:
        return None
    head = f"context parallel: ulysses_degree {cp.ulysses_degree}, ring_degree {cp.ring_degree}"
    if cp.ring_degree > 1:
        return f"{head}: planned layers run dense ({ring_reason(cp)})"
    if cp.ulysses_anything:
        return f"{head}, ulysses_anything: planned layers run dense (unequal token splits)"
    return f"{head}: planned layers run GNA on the full sequence of each rank's {cp.ulysses_degree}-way head share"
