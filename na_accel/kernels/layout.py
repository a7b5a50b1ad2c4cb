"""Host-side layout helpers shared by the Triton kernels (:mod:`.triton_grid`) and the Gluon kernel
(:mod:`.gluon_hopper`): grids padded to 3-D, and the 5-D TMA view ``[B * L0, L1, L2, heads, D]`` of a
``[B, N, heads, D]`` tensor."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad3(values: Sequence, fill) -> tuple:
    """Per-axis values of a 1-, 2- or 3-D grid as three entries (leading axes of size 1 get ``fill``)."""
    values = tuple(values)
    return (fill,) * (3 - len(values)) + values


def params3(params) -> tuple[tuple, tuple, tuple, tuple, tuple]:
    """Grid, kernel size, stride, dilation and causal flags of ``params`` (:class:`na_accel.ops.semantics.GNAParams`)
    padded to three axes (size-1 leading axes: window 1, stride 1, dilation 1, non-causal)."""
    return (
        pad3(params.grid, 1),
        pad3(params.kernel_size, 1),
        pad3(params.stride, 1),
        pad3(params.dilation, 1),
        pad3(params.is_causal, False),
    )


def folded_5d(t: torch.Tensor, grid3: Sequence[int]) -> tuple[list[int], list[int]]:
    """Shape and strides of ``t`` ([B, N, heads, D], raster-ordered tokens of ``grid3``) as [B * L0, L1, L2, heads, D]:
    the batch is folded into axis 0 (valid when :func:`tma_reason` with ``fold=True`` is None)."""
    batch, _, heads, head_dim = t.shape
    _, sn, sh, _ = t.stride()
    shape = [batch * grid3[0], grid3[1], grid3[2], heads, head_dim]
    strides = [grid3[1] * grid3[2] * sn, grid3[2] * sn, sn, sh, 1]
    return shape, strides


def tma_reason(name: str, t: torch.Tensor, fold: bool) -> str | None:
    """Why ``t`` ([B, tokens, heads, D]) cannot be read through a TMA descriptor, or None: last dim contiguous,
    16-byte aligned pointer and strides, and with ``fold`` a batch that folds into the token axis."""
    es = t.element_size()
    sb, sn, sh, sd = t.stride()
    if sd != 1:
        return f"{name} has a non-contiguous last dim (stride {sd})"
    if t.data_ptr() % 16:
        return f"{name}'s data pointer is not 16-byte aligned"
    strides = (sn, sh) if fold else (sb, sn, sh)
    if any((x * es) % 16 for x in strides):
        return f"{name}'s strides {tuple(t.stride())} are not 16-byte multiples"
    if fold and t.shape[0] > 1 and sb != t.shape[1] * sn:
        return f"{name}'s batch cannot be folded into the token axis (batch stride {sb} != N * token stride)"
    return None
