"""Device helpers shared by the Triton grid kernel (:mod:`.triton_grid`) and the dense text kernel
(:mod:`.triton_text`): row loads, online-softmax steps in the log2 domain, the masked step over a range of key rows
and the loop over the extra (text) keys; plus the host-side settings both wrappers derive from dtype and head dim.

Conventions: a program holds ``BLOCK_M`` query rows ``q`` ``[BLOCK_M, BLOCK_D]``, the running row maximum ``m_i``
and sum ``l_i`` (log2 domain, fp32) and the unnormalised output ``acc`` ``[BLOCK_M, BLOCK_D]`` (fp32). Scores are
scaled by ``qk_scale = scale * log2(e)`` so that ``exp2`` replaces ``exp``. ``m_i`` starts at -1e30, not -inf: a
row whose keys are all masked then stays finite (``exp2(-inf - -inf)`` would be NaN) and ends with ``l_i = 0``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import INTERPRETED

#: log2(e): scores are multiplied by ``scale * LOG2E`` and exponentiated with exp2
LOG2E = 1.4426950408889634
#: ln(2): converts the log2-domain log-sum-exp to the natural log the API returns
LN2 = tl.constexpr(0.6931471805599453)


def head_dim_block(head_dim: int) -> tuple[int, bool]:
    """``BLOCK_D`` (head dim rounded up to a power of two, at least 16 for ``tl.dot``) and whether it is padded."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    return block_d, block_d != head_dim


def dtype_settings(dtype: torch.dtype) -> tuple[bool, str]:
    """``CAST_F32`` and ``DOT_PREC`` for inputs of ``dtype``. The interpreter's bf16 ``tl.dot`` is wrong, so there
    bf16 is computed in fp32 (``CAST_F32``); fp32 inputs (and everything in the interpreter) get true fp32 dots
    ("ieee"), the compiled 16-bit dots ignore the setting ("tf32")."""
    cast_f32 = INTERPRETED and dtype == torch.bfloat16
    compute = torch.float32 if cast_f32 else dtype
    dot_prec = "ieee" if compute == torch.float32 or INTERPRETED else "tf32"
    return cast_f32, dot_prec


def strides(t: torch.Tensor | None, n: int) -> tuple:
    """Strides of ``t``, or ``n`` zeros when it is absent (the kernel never reads it then)."""
    return tuple(t.stride()) if t is not None else (0,) * n


@triton.jit
def softmax_step(q, k, v, m_i, l_i, acc, qk_scale, DOT_PREC: tl.constexpr):
    """One unmasked online-softmax step in the log2 domain."""
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
    qk = qk * qk_scale - m_ij[:, None]
    p = tl.math.exp2(qk)
    alpha = tl.math.exp2(m_i - m_ij)
    l_i, acc = accumulate(p, alpha, v, l_i, acc, DOT_PREC)
    return m_ij, l_i, acc


@triton.jit
def accumulate(p, alpha, v, l_i, acc, DOT_PREC: tl.constexpr):
    """Online-softmax update: rescale the running sum and output rows by ``alpha``, add ``p`` and ``p @ v``."""
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
    return l_i, acc


@triton.jit
def masked_softmax_step(q, k, v, mask, m_i, l_i, acc, qk_scale, DOT_PREC: tl.constexpr):
    """One online-softmax step where ``mask`` ([BLOCK_M, BLOCK_N]) says which scores count."""
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    qk = tl.where(mask, qk * qk_scale, float("-inf"))
    m_ij = tl.maximum(m_i, tl.max(qk, 1))  # m_i starts finite, so a fully masked row stays finite
    p = tl.math.exp2(qk - m_ij[:, None])
    alpha = tl.math.exp2(m_i - m_ij)
    l_i, acc = accumulate(p, alpha, v, l_i, acc, DOT_PREC)
    return m_ij, l_i, acc


@triton.jit
def load_rows(ptr, rows, offs_d, stride_d, HEAD_DIM, PAD_D: tl.constexpr, CAST_F32: tl.constexpr):
    """Load a [rows, BLOCK_D] tile: ``rows`` are int64 row offsets (elements), columns the head dim."""
    ptrs = ptr + rows[:, None] + offs_d[None, :] * stride_d
    if PAD_D:
        x = tl.load(ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0.0)
    else:
        x = tl.load(ptrs)
    if CAST_F32:
        x = x.to(tl.float32)
    return x


@triton.jit
def row_range_step(q, m_i, l_i, acc, k_base, v_base, n, n_end, n_last, skn, skd, svn, svd, HEAD_DIM, qk_scale,
                   offs_m, offs_d, PAD_D: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr):  # fmt: skip
    """Masked online-softmax step over the key rows ``n`` ([BLOCK_N] indices) of one sequence: rows ``>= n_end``
    do not count (they are loaded clamped to ``n_last``)."""
    rows = tl.minimum(n, n_last).to(tl.int64)
    k = load_rows(k_base, rows * skn, offs_d, skd, HEAD_DIM, PAD_D, CAST_F32)
    v = load_rows(v_base, rows * svn, offs_d, svd, HEAD_DIM, PAD_D, CAST_F32)
    mask = (n < n_end)[None, :] & (offs_m >= 0)[:, None]
    return masked_softmax_step(q, k, v, mask, m_i, l_i, acc, qk_scale, DOT_PREC)


@triton.jit
def extra_keys(q, m_i, l_i, acc, EK, EV, ELEN, b, b64, h64, sekb, sekt, sekh, sekd, sevb, sevt, sevh, sevd,
               T_EXTRA, HEAD_DIM, qk_scale, offs_m, offs_n, offs_d,
               HAS_ELEN: tl.constexpr, PAD_D: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
               BLOCK_N: tl.constexpr):  # fmt: skip
    """Online-softmax steps over the extra (text) keys of batch ``b``: the first ``ELEN[b]`` (or all) are valid."""
    if HAS_ELEN:
        n_valid = tl.load(ELEN + b).to(tl.int32)
    else:
        n_valid = T_EXTRA
    ek_base = EK + b64 * sekb + h64 * sekh
    ev_base = EV + b64 * sevb + h64 * sevh
    for t0 in range(0, n_valid, BLOCK_N):
        m_i, l_i, acc = row_range_step(q, m_i, l_i, acc, ek_base, ev_base, t0 + offs_n, n_valid, T_EXTRA - 1,
                                       sekt, sekd, sevt, sevd, HEAD_DIM, qk_scale, offs_m, offs_d,
                                       PAD_D, CAST_F32, DOT_PREC)  # fmt: skip
    return m_i, l_i, acc
