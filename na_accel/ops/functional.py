"""Public functional API: ``na1d``, ``na2d``, ``na3d`` (NATTEN's names, heads-last layout), the flattened form
``na_flat`` and the joint-attention form ``na_joint`` used by the patch layer.

All of them go through one ``torch.library`` custom op, ``na_accel::gna``, which has a fake implementation so
``torch.compile(fullgraph=True)`` traces through it without a graph break.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from ..errors import ShapeError
from .dispatch import Problem, select_backend
from .precision import PRECISIONS, record_fp8_fallback
from .semantics import BoolOrTuple, GNAParams, IntOrTuple, make_params

__all__ = ["na1d", "na2d", "na3d", "na_flat", "na_joint"]


# --------------------------------------------------------------------------------------------------------------
# The custom op
# --------------------------------------------------------------------------------------------------------------


@torch.library.custom_op("na_accel::gna", mutates_args=())
def _gna_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    extra_key: torch.Tensor | None,
    extra_value: torch.Tensor | None,
    extra_lengths: torch.Tensor | None,
    grid: list[int],
    kernel_size: list[int],
    stride: list[int],
    dilation: list[int],
    is_causal: list[bool],
    scale: float,
    video_start: int,
    text_start: int,
    text_len: int,
    backend: str,
    return_lse: bool,
    precision: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical GNA forward on ``[B, S, heads, D]``.

    Grid tokens are ``[video_start, video_start + N)``. If ``text_len > 0`` (joint attention), the tokens
    ``[text_start, text_start + text_len)`` of query/key/value are text: their keys are extra keys of every grid
    query and their queries attend densely to all valid keys; ``extra_key``/``extra_value`` must then be None.
    ``precision``: ``"bf16"`` or ``"fp8"`` (:mod:`.precision`). Returns ``(out [B, S, heads, D], lse [B, S, heads]
    fp32)`` (``lse`` is empty unless ``return_lse``).
    """
    params = GNAParams(tuple(grid), tuple(kernel_size), tuple(stride), tuple(dilation), tuple(is_causal))
    n = params.num_tokens
    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    lse = torch.empty(query.shape[:3] if return_lse else (0,), dtype=torch.float32, device=query.device)
    vs = slice(video_start, video_start + n)
    text_query = text_out = text_lse = None
    if text_len > 0:
        ts = slice(text_start, text_start + text_len)
        extra_key, extra_value = key[:, ts], value[:, ts]
        text_query, text_out = query[:, ts], out[:, ts]
        text_lse = lse[:, ts] if return_lse else None
    problem = Problem(
        query=query[:, vs],
        key=key[:, vs],
        value=value[:, vs],
        params=params,
        scale=scale,
        extra_key=extra_key,
        extra_value=extra_value,
        extra_lengths=extra_lengths,
        text_query=text_query,
        out=out[:, vs],
        lse=lse[:, vs] if return_lse else None,
        text_out=text_out,
        text_lse=text_lse,
        precision=precision,
    )
    chosen = select_backend(backend, problem)
    if precision == "fp8" and chosen.name != "triton":
        record_fp8_fallback(f"backend {chosen.name!r} has no 8-bit path (only 'triton' on Hopper GPUs)")
    chosen.forward(problem)
    return out, lse


@_gna_op.register_fake
def _(query, key, value, extra_key, extra_value, extra_lengths, grid, kernel_size, stride, dilation, is_causal,
      scale, video_start, text_start, text_len, backend, return_lse, precision):  # fmt: skip
    out = torch.empty_like(query)
    lse = query.new_empty(query.shape[:3] if return_lse else (0,), dtype=torch.float32)
    return out, lse


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------


def _check_qkv(query, key, value, rank: int, layout: str) -> None:
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise ShapeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
        if t.dim() != rank:
            raise ShapeError(f"{name} must have rank {rank} ({layout}), got shape {tuple(t.shape)}.")
        if not t.is_floating_point():
            raise ShapeError(
                f"{name} must be a floating-point tensor (float16, bfloat16, float32, float64), got {t.dtype}."
            )
    if not (query.shape == key.shape == value.shape):
        raise ShapeError(
            "query, key and value must have the same shape, got "
            f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}."
        )
    if not (query.dtype == key.dtype == value.dtype):
        raise ShapeError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}.")
    if not (query.device == key.device == value.device):
        raise ShapeError(
            f"query, key and value must be on one device, got {query.device}, {key.device}, {value.device}."
        )
    if query.shape[0] == 0 or query.shape[-1] == 0 or query.shape[-2] == 0:
        raise ShapeError(f"batch, heads and head dim must be non-zero, got shape {tuple(query.shape)}.")


def _check_lengths(lengths, batch: int, num_extra: int, device, name: str) -> None:
    if not isinstance(lengths, torch.Tensor):
        raise ShapeError(f"{name} must be an integer tensor of shape [{batch}], got {type(lengths).__name__}.")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise ShapeError(f"{name} must be an integer tensor, got dtype {lengths.dtype}.")
    if tuple(lengths.shape) != (batch,):
        raise ShapeError(
            f"{name} must have shape [{batch}] (one length per batch element), got {tuple(lengths.shape)}."
        )
    if lengths.device != device:
        raise ShapeError(f"{name} must be on the device of query ({device}), got {lengths.device}.")
    if not torch.compiler.is_compiling():
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > num_extra:
            raise ShapeError(
                f"{name} values must lie in [0, {num_extra}] (the number of extra tokens), got [{lo}, {hi}]."
            )


def _check_extras(query, additional_keys, additional_values, additional_lengths) -> None:
    if (additional_keys is None) != (additional_values is None):
        raise ShapeError("additional_keys and additional_values must be given together (both or neither).")
    if additional_keys is None:
        if additional_lengths is not None:
            raise ShapeError("additional_lengths was given without additional_keys/additional_values.")
        return
    b, h, d = query.shape[0], query.shape[-2], query.shape[-1]
    for name, t in (("additional_keys", additional_keys), ("additional_values", additional_values)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ShapeError(f"{name} must be a tensor of shape [B, S, heads, D] = [{b}, S, {h}, {d}], got {shape}.")
        if t.shape[0] != b or t.shape[2] != h or t.shape[3] != d:
            raise ShapeError(f"{name} must have shape [{b}, S, {h}, {d}] to match query, got {tuple(t.shape)}.")
        if t.dtype != query.dtype or t.device != query.device:
            raise ShapeError(
                f"{name} must match query's dtype and device ({query.dtype}, {query.device}), "
                f"got {t.dtype}, {t.device}."
            )
    if additional_keys.shape != additional_values.shape:
        raise ShapeError(
            f"additional_keys and additional_values must have the same shape, got {tuple(additional_keys.shape)} and "
            f"{tuple(additional_values.shape)}."
        )
    if additional_lengths is not None:
        _check_lengths(additional_lengths, b, additional_keys.shape[1], query.device, "additional_lengths")


def _renamed(additional_keys, additional_values, additional_lengths, extra_keys, extra_values, extra_lengths):
    """Map the deprecated ``extra_*`` keyword names onto NATTEN's ``additional_*`` names (one warning per call)."""
    old = {"extra_keys": extra_keys, "extra_values": extra_values, "extra_lengths": extra_lengths}
    given = [name for name, v in old.items() if v is not None]
    if not given:
        return additional_keys, additional_values, additional_lengths
    new = {"extra_keys": additional_keys, "extra_values": additional_values, "extra_lengths": additional_lengths}
    both = [name for name in given if new[name] is not None]
    if both:
        raise ShapeError(
            f"{', '.join(both)} and {', '.join(n.replace('extra', 'additional') for n in both)} were both given; "
            "use only the additional_* names (NATTEN's)."
        )
    warnings.warn(
        f"{', '.join(given)} are deprecated; use NATTEN's names "
        f"{', '.join(n.replace('extra', 'additional') for n in given)}.",
        DeprecationWarning,
        stacklevel=4,
    )
    return (additional_keys if extra_keys is None else extra_keys,
            additional_values if extra_values is None else extra_values,
            additional_lengths if extra_lengths is None else extra_lengths)  # fmt: skip


def _check_backend(backend) -> None:
    if not isinstance(backend, str):
        raise ShapeError(
            f"backend must be a string ('auto', 'sdpa', 'triton', 'flex' or 'reference'), got {backend!r}."
        )


def _check_precision(precision) -> None:
    if precision not in PRECISIONS:
        raise ShapeError(
            f"precision must be one of {', '.join(repr(p) for p in PRECISIONS)}, got {precision!r} ('bf16': the "
            "inputs' own dtype, no quantization; 'fp8': 8-bit operands on Hopper GPUs, elsewhere it falls back)."
        )


def _scale(scale: float | None, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise ShapeError(f"scale must be a float or None, got {scale!r}.")
    return float(scale)


def _call(query, key, value, params: GNAParams, scale, extra_keys, extra_values, extra_lengths, video_start,
          text_start, text_len, backend, return_lse, precision):  # fmt: skip
    _check_precision(precision)
    out, lse = _gna_op(
        query, key, value, extra_keys, extra_values, extra_lengths,
        list(params.grid), list(params.kernel_size), list(params.stride), list(params.dilation),
        list(params.is_causal), _scale(scale, query.shape[-1]), video_start, text_start, text_len, backend,
        return_lse, precision,
    )  # fmt: skip
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------


def na_flat(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid_shape: Sequence[int],
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    additional_keys: torch.Tensor | None = None,
    additional_values: torch.Tensor | None = None,
    additional_lengths: torch.Tensor | None = None,
    backend: str = "auto",
    return_lse: bool = False,
    *,
    extra_keys: torch.Tensor | None = None,
    extra_values: torch.Tensor | None = None,
    extra_lengths: torch.Tensor | None = None,
    precision: str = "bf16",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Neighborhood attention on flattened tokens ``[B, N, heads, D]`` in raster order of ``grid_shape``.

    Same arguments as :func:`na3d`; ``N`` must equal ``prod(grid_shape)``. Returns ``[B, N, heads, D]`` (and
    the fp32 natural-log logsumexp ``[B, N, heads]`` if ``return_lse``).
    """
    _check_qkv(query, key, value, 4, "[B, N, heads, D]")
    _check_backend(backend)
    if not isinstance(grid_shape, Sequence) or not all(isinstance(n, int) for n in grid_shape):
        raise ShapeError(f"grid_shape must be a tuple of ints, got {grid_shape!r}.")
    params = make_params(grid_shape, kernel_size, stride, dilation, is_causal)
    if query.shape[1] != params.num_tokens:
        raise ShapeError(
            f"query has {query.shape[1]} tokens but grid_shape {params.grid} holds {params.num_tokens}; "
            "N must equal the product of grid_shape."
        )
    additional_keys, additional_values, additional_lengths = _renamed(
        additional_keys, additional_values, additional_lengths, extra_keys, extra_values, extra_lengths
    )
    _check_extras(query, additional_keys, additional_values, additional_lengths)
    return _call(query, key, value, params, scale, additional_keys, additional_values, additional_lengths, 0, 0, 0,
                 backend, return_lse, precision)  # fmt: skip


def na_joint(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    grid_shape: Sequence[int],
    num_text_tokens: int,
    kernel_size: IntOrTuple,
    stride: IntOrTuple = 1,
    dilation: IntOrTuple = 1,
    is_causal: BoolOrTuple = False,
    scale: float | None = None,
    text_first: bool = False,
    text_lengths: torch.Tensor | None = None,
    backend: str = "auto",
    return_lse: bool = False,
    *,
    precision: str = "bf16",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Joint attention over grid tokens and text tokens in one sequence ``[B, N + T, heads, D]``.

    The ``N = prod(grid_shape)`` grid tokens (raster order) come first, or after the ``T = num_text_tokens`` text
    tokens if ``text_first``. Grid queries attend to their GNA window plus every valid text key; text queries
    attend densely to every valid key. ``text_lengths`` (int ``[B]``) marks how many of the text tokens are valid
    (the first ones); padded text keys are masked for every query. ``precision`` as in :func:`na3d`.
    """
    _check_qkv(query, key, value, 4, "[B, N + T, heads, D]")
    _check_backend(backend)
    params = make_params(grid_shape, kernel_size, stride, dilation, is_causal)
    if isinstance(num_text_tokens, bool) or not isinstance(num_text_tokens, int) or num_text_tokens < 0:
        raise ShapeError(f"num_text_tokens must be an int >= 0, got {num_text_tokens!r}.")
    n, t = params.num_tokens, num_text_tokens
    if query.shape[1] != n + t:
        raise ShapeError(
            f"query has {query.shape[1]} tokens, but grid_shape {params.grid} ({n} tokens) plus {t} text tokens "
            f"make {n + t}."
        )
    if text_lengths is not None:
        if t == 0:
            raise ShapeError("text_lengths was given but num_text_tokens is 0.")
        _check_lengths(text_lengths, query.shape[0], t, query.device, "text_lengths")
    video_start, text_start = (t, 0) if text_first else (0, n)
    return _call(query, key, value, params, scale, None, None, text_lengths, video_start, text_start, t, backend,
                 return_lse, precision)  # fmt: skip


def _na_nd(ndim, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
           additional_values, additional_lengths, backend, return_lse, deprecated, precision):  # fmt: skip
    layout = "[B, " + ", ".join({1: "L", 2: "HW", 3: "THW"}[ndim]) + ", heads, D]"
    _check_qkv(query, key, value, ndim + 3, layout)
    grid = tuple(query.shape[1 : 1 + ndim])
    flat = [t.reshape(t.shape[0], -1, t.shape[-2], t.shape[-1]) for t in (query, key, value)]
    additional = _renamed(additional_keys, additional_values, additional_lengths, *deprecated)
    res = na_flat(*flat, grid, kernel_size, stride, dilation, is_causal, scale, *additional, backend,
                  return_lse, precision=precision)  # fmt: skip
    if return_lse:
        out, lse = res
        return out.view(query.shape), lse.view(query.shape[:-1])
    return res.view(query.shape)


_ND_DOC = """{n}-D neighborhood attention (GNA) on ``[B, {axes}, heads, D]`` tensors (NATTEN's heads-last layout).

    Args:
        query, key, value: floating-point tensors of one shape, dtype and device.
        kernel_size: window per axis (int or tuple of {n}); ``-1`` means the whole axis. Even windows are allowed.
        stride: 1 <= stride <= kernel_size; 1 is neighborhood attention, kernel_size blocked attention.
        dilation: per-axis dilation; kernel_size * dilation must not exceed the axis length.
        is_causal: per-axis causal masking.
        scale: softmax scale, default ``D ** -0.5``.
        additional_keys, additional_values: ``[B, S, heads, D]`` keys/values every query attends to (NATTEN's
            names; the old names ``extra_keys`` / ``extra_values`` still work and warn).
        additional_lengths: int ``[B]``; only the first ``additional_lengths[b]`` additional keys are valid in batch
            ``b`` (old name ``extra_lengths``).
        backend: ``"auto"``, ``"sdpa"`` (dense problems only), ``"triton"``, ``"flex"``, ``"masked_sdpa"`` (SDPA
            with the GNA mask: off the GPU, small grids) or ``"reference"``.
        return_lse: also return the fp32 natural-log logsumexp ``[B, {axes}, heads]``.
        precision: ``"bf16"`` (default: the inputs' own dtype, no quantization) or ``"fp8"``: 8-bit operands (Q/K
            int8 per block, K smoothed, P and V e4m3, V per channel, fp32 accumulation) in the Gluon kernel on Hopper,
            for sparse and dense windows; where that kernel cannot run the call (other GPUs, CPU, head dims,
            dtypes, other backends) it runs in the inputs' precision, the reason logged once and counted in
            ``na_accel.ops.precision.fp8_fallbacks()``.
    """


def na1d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple,
         stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False, scale: float | None = None,
         additional_keys: torch.Tensor | None = None, additional_values: torch.Tensor | None = None,
         additional_lengths: torch.Tensor | None = None, backend: str = "auto", return_lse: bool = False, *,
         extra_keys: torch.Tensor | None = None, extra_values: torch.Tensor | None = None,
         extra_lengths: torch.Tensor | None = None,
         precision: str = "bf16") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return _na_nd(1, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
                  additional_values, additional_lengths, backend, return_lse,
                  (extra_keys, extra_values, extra_lengths), precision)  # fmt: skip


def na2d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple,
         stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False, scale: float | None = None,
         additional_keys: torch.Tensor | None = None, additional_values: torch.Tensor | None = None,
         additional_lengths: torch.Tensor | None = None, backend: str = "auto", return_lse: bool = False, *,
         extra_keys: torch.Tensor | None = None, extra_values: torch.Tensor | None = None,
         extra_lengths: torch.Tensor | None = None,
         precision: str = "bf16") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return _na_nd(2, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
                  additional_values, additional_lengths, backend, return_lse,
                  (extra_keys, extra_values, extra_lengths), precision)  # fmt: skip


def na3d(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kernel_size: IntOrTuple,
         stride: IntOrTuple = 1, dilation: IntOrTuple = 1, is_causal: BoolOrTuple = False, scale: float | None = None,
         additional_keys: torch.Tensor | None = None, additional_values: torch.Tensor | None = None,
         additional_lengths: torch.Tensor | None = None, backend: str = "auto", return_lse: bool = False, *,
         extra_keys: torch.Tensor | None = None, extra_values: torch.Tensor | None = None,
         extra_lengths: torch.Tensor | None = None,
         precision: str = "bf16") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    return _na_nd(3, query, key, value, kernel_size, stride, dilation, is_causal, scale, additional_keys,
                  additional_values, additional_lengths, backend, return_lse,
                  (extra_keys, extra_values, extra_lengths), precision)  # fmt: skip


na1d.__doc__ = _ND_DOC.format(n=1, axes="L")
na2d.__doc__ = _ND_DOC.format(n=2, axes="H, W")
na3d.__doc__ = _ND_DOC.format(n=3, axes="T, H, W")
