"""Dense problems (windows covering the whole grid) as plain attention: PyTorch SDPA, cuDNN first where it runs."""

from __future__ import annotations

from collections import OrderedDict

import torch

from .dispatch import Backend, Problem
from .precision import fp8_device_reason


def _one_sequence(p: Problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries (grid, then text), keys and values (grid, then extra) of a problem as single ``[B, S, heads, D]``
    sequences for one SDPA call; grid outputs are the first ``N`` rows of its result, text outputs the rest."""
    q, k, v = p.query, p.key, p.value
    if p.extra_key is not None:
        k = torch.cat([k, p.extra_key], 1)
        v = torch.cat([v, p.extra_value], 1)
    if p.text_query is not None:
        q = torch.cat([q, p.text_query], 1)
    return q, k, v


class DenseSDPABackend(Backend):
    """Problems whose windows cover the whole grid are plain attention: PyTorch SDPA, cuDNN first where it runs.

    ``auto`` takes it for such problems (a layer configured dense, or a window clamped to a small grid): on H200 the
    Triton kernel runs dense attention at ~0.76x of cuDNN and the Gluon kernel at 1.00x (bench/NOTES.md). Grid and
    text queries attend to all grid and text keys, so the call is one SDPA over the concatenated tokens.
    """

    name = "sdpa"

    def unavailable_reason(self, problem: Problem) -> str | None:
        p = problem.params
        if not p.is_dense:
            return (
                f"its windows do not cover the whole grid (grid {p.grid}, kernel_size {p.kernel_size}, "
                f"is_causal {p.is_causal}); it runs dense problems only"
            )
        if problem.lse is not None or problem.text_lse is not None:
            return "it does not return the log-sum-exp (return_lse=True)"
        if problem.extra_lengths is not None:
            return "per-batch text lengths would need an attention mask"
        return None

    def auto_rejection(self, problem: Problem) -> str | None:
        if problem.precision == "fp8" and fp8_device_reason(problem.query) is None:
            from .triton import fp8_reason  # imports Triton: only where the 8-bit kernel can run at all

            if fp8_reason(problem) is None:
                return "precision='fp8': the 8-bit Gluon kernel runs this dense problem"
        return self.unavailable_reason(problem)

    def forward(self, problem: Problem) -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        p = problem
        n = p.query.shape[1]
        q, k, v = _one_sequence(p)
        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        with sdpa_kernel(order + [SDPBackend.MATH], set_priority=True):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=p.scale
            ).transpose(1, 2)
        p.out.copy_(out[:, :n])
        if p.text_out is not None:
            p.text_out.copy_(out[:, n:])


#: Largest query x key count the masked backend builds a boolean mask for (64 MiB of mask; larger problems go on to
#: the reference backend, which never holds an N x N tensor).
MASKED_SDPA_MAX_PAIRS = 64 * 2**20
#: Bytes of additive masks :class:`MaskedSDPABackend` keeps (least recently used dropped first): every (window,
#: text lengths) of a generation, e.g. six per-layer windows x cond / uncond text lengths of a tuned config.
MASKED_SDPA_CACHE_BYTES = 2**30


class MaskedSDPABackend(Backend):
    """Sparse problems off the GPU as one PyTorch SDPA call with the exact GNA mask (a boolean ``[M, M]`` mask over
    grid + text tokens, ``M = N + T``, cached per problem shape).

    It computes every score and masks most of them away, so it saves no FLOPs; it exists because on a CPU the fused
    SDPA kernel with a mask is about 5x faster than the reference backend's chunked einsum (2 heads x 2368 tokens x
    head dim 64 on 2 cores: 0.054 s against 0.26 s; dense SDPA 0.023 s), which makes a sparse generation of the
    embedded model take about as long as a dense one. ``auto`` takes it only off CUDA (on a GPU the fused kernels
    and FlexAttention skip the masked tiles) and only for masks up to :data:`MASKED_SDPA_MAX_PAIRS` entries.
    """

    name = "masked_sdpa"

    def __init__(self) -> None:
        self._masks: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def unavailable_reason(self, problem: Problem) -> str | None:
        if problem.lse is not None or problem.text_lse is not None:
            return "it does not return the log-sum-exp (return_lse=True)"
        m = self._tokens(problem)
        if m * m > MASKED_SDPA_MAX_PAIRS:
            return f"its {m} x {m} mask would exceed {MASKED_SDPA_MAX_PAIRS} entries"
        return None

    def auto_rejection(self, problem: Problem) -> str | None:
        if problem.query.is_cuda:
            return "on CUDA the fused kernels and FlexAttention skip masked tiles; a full mask is slower"
        return self.unavailable_reason(problem)

    @staticmethod
    def _tokens(problem: Problem) -> int:
        n = problem.query.shape[1]
        t = 0 if problem.extra_key is None else problem.extra_key.shape[1]
        tq = 0 if problem.text_query is None else problem.text_query.shape[1]
        return max(n + tq, n + t)

    def _mask(self, problem: Problem, dtype: torch.dtype) -> torch.Tensor:
        """Additive mask ``[B or 1, 1, N + Tq, N + T]`` (0 attended, -inf not): grid queries see their window and
        the valid extra keys, text queries every valid key. Built once per shape, text lengths and dtype (SDPA
        would otherwise turn a boolean mask into an additive one on every call), kept up to
        :data:`MASKED_SDPA_CACHE_BYTES` (a generation with per-layer windows uses one per window and text lengths;
        rebuilding one costs more than the attention call)."""
        from .reference import _key_valid
        from .semantics import grid_mask

        p = problem
        n = p.query.shape[1]
        t = 0 if p.extra_key is None else p.extra_key.shape[1]
        tq = 0 if p.text_query is None else p.text_query.shape[1]
        lengths = None if p.extra_lengths is None or not t else tuple(int(x) for x in p.extra_lengths.tolist())
        key = (p.params, t, tq, lengths, dtype, p.query.device)
        mask = self._masks.get(key)
        if mask is not None:
            self._masks.move_to_end(key)
        else:
            dev = p.query.device
            allowed = torch.ones(n + tq, n + t, dtype=torch.bool, device=dev)
            allowed[:n, :n] = grid_mask(p.params, torch.arange(n, device=dev))
            allowed = allowed[None, None]
            valid = _key_valid(p.extra_lengths, len(lengths), n, t, dev) if lengths is not None else None
            if valid is not None:
                allowed = allowed & valid
            mask = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill_(~allowed, float("-inf"))
            self._masks[key] = mask
            total = sum(m.numel() * m.element_size() for m in self._masks.values())
            while total > MASKED_SDPA_CACHE_BYTES and len(self._masks) > 1:  # keep memory bounded
                _, old = self._masks.popitem(last=False)
                total -= old.numel() * old.element_size()
        return mask

    def forward(self, problem: Problem) -> None:
        p = problem
        n = p.query.shape[1]
        q, k, v = _one_sequence(p)
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=self._mask(p, q.dtype), scale=p.scale
        ).transpose(1, 2)
        p.out.copy_(out[:, :n])
        if p.text_out is not None:
            p.text_out.copy_(out[:, n:])
