"""Pure-PyTorch reference backend: exact, any device, memory-bounded (queries in chunks, no N x N tensor).

Computes in fp32 (fp64 for fp64 inputs) and returns the input dtype. Slow by design; it is the ground truth the
other backends are tested against.
"""

from __future__ import annotations

import torch

from .dispatch import Backend, Problem
from .semantics import GNAParams, grid_mask

# Upper bound on the bytes of one chunk's score matrix (B x heads x chunk x keys, fp32).
_CHUNK_BYTES = 256 * 1024 * 1024


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _key_valid(
    extra_lengths: torch.Tensor | None, batch: int, num_grid: int, num_extra: int, device
) -> torch.Tensor | None:
    """``[B, 1, 1, N + T]`` mask of valid keys (grid keys always valid), or None if all are valid."""
    if num_extra == 0 or extra_lengths is None:
        return None
    t = torch.arange(num_grid + num_extra, device=device)
    return (t[None, :] < num_grid + extra_lengths.to(device)[:, None]).view(batch, 1, 1, -1)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of ``q [B, c, H, D]`` over ``k, v [B, M, H, D]`` with a mask broadcastable to
    ``[B, H, c, M]``; returns ``out [B, c, H, D]`` and the natural-log logsumexp ``[B, c, H]``."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None])
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v)
    return out, lse.transpose(1, 2)


def _chunk_size(batch: int, heads: int, num_keys: int) -> int:
    return max(1, _CHUNK_BYTES // (4 * batch * heads * max(num_keys, 1)))


def gna_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    params: GNAParams,
    scale: float,
    extra_key: torch.Tensor | None = None,
    extra_value: torch.Tensor | None = None,
    extra_lengths: torch.Tensor | None = None,
    text_query: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Reference GNA forward on flattened raster-order tensors.

    ``query/key/value``: ``[B, N, heads, D]`` grid tokens; ``extra_key/extra_value``: ``[B, T, heads, D]`` keys
    every query attends to (the first ``extra_lengths[b]`` of them in batch ``b``); ``text_query``:
    ``[B, Tq, heads, D]`` queries attending densely to all grid keys and all valid extra keys.
    Returns ``(out, lse, text_out, text_lse)``; lse is the natural-log logsumexp in fp32, ``[B, tokens, heads]``.
    """
    cdt = _compute_dtype(query.dtype)
    batch, n, heads, _ = query.shape
    q, k, v = query.to(cdt), key.to(cdt), value.to(cdt)
    num_extra = 0 if extra_key is None else extra_key.shape[1]
    if num_extra:
        k = torch.cat([k, extra_key.to(cdt)], dim=1)
        v = torch.cat([v, extra_value.to(cdt)], dim=1)
    key_valid = _key_valid(extra_lengths, batch, n, num_extra, query.device)

    out = torch.empty(query.shape, dtype=query.dtype, device=query.device)
    lse = torch.empty(batch, n, heads, dtype=torch.float32, device=query.device)
    step = _chunk_size(batch, heads, n + num_extra)
    for start in range(0, n, step):
        idx = torch.arange(start, min(start + step, n), device=query.device)
        mask = grid_mask(params, idx).view(1, 1, len(idx), n)
        if num_extra:
            mask = torch.cat([mask, mask.new_ones(1, 1, len(idx), num_extra)], dim=-1)
        if key_valid is not None:
            mask = mask & key_valid
        o, s = _attend(q[:, start : start + len(idx)], k, v, mask, scale)
        out[:, start : start + len(idx)] = o.to(query.dtype)
        lse[:, start : start + len(idx)] = s.float()

    text_out = text_lse = None
    if text_query is not None:
        tq = text_query.to(cdt)
        text_out = torch.empty(text_query.shape, dtype=query.dtype, device=query.device)
        text_lse = torch.empty(text_query.shape[:3], dtype=torch.float32, device=query.device)
        for start in range(0, tq.shape[1], step):
            o, s = _attend(tq[:, start : start + step], k, v, key_valid, scale)
            text_out[:, start : start + step] = o.to(query.dtype)
            text_lse[:, start : start + step] = s.float()
    return out, lse, text_out, text_lse


class ReferenceBackend(Backend):
    """:func:`gna_reference` as a backend: runs every problem, on any device."""

    name = "reference"

    def unavailable_reason(self, problem: Problem) -> str | None:
        return None

    def forward(self, problem: Problem) -> None:
        p = problem
        out, lse, text_out, text_lse = gna_reference(
            p.query, p.key, p.value, p.params, p.scale, p.extra_key, p.extra_value, p.extra_lengths, p.text_query
        )
        p.out.copy_(out)
        if p.lse is not None:
            p.lse.copy_(lse)
        if p.text_out is not None:
            p.text_out.copy_(text_out)
        if p.text_lse is not None:
            p.text_lse.copy_(text_lse)
