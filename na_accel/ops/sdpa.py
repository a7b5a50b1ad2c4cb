"""Dense problems (windows covering the whole grid) as plain attention: PyTorch SDPA, cuDNN first where it runs."""

from __future__ import annotations

import torch

from .dispatch import Backend, Problem


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

    def forward(self, problem: Problem) -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        p = problem
        n = p.query.shape[1]
        q, k, v = p.query, p.key, p.value
        if p.extra_key is not None:
            k = torch.cat([k, p.extra_key], 1)
            v = torch.cat([v, p.extra_value], 1)
        if p.text_query is not None:
            q = torch.cat([q, p.text_query], 1)
        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        with sdpa_kernel(order + [SDPBackend.MATH], set_priority=True):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=p.scale
            ).transpose(1, 2)
        p.out.copy_(out[:, :n])
        if p.text_out is not None:
            p.text_out.copy_(out[:, n:])
