"""Dense (text) queries: every query attends all grid keys and the valid extra keys.

:func:`text_forward` runs :func:`_text_fwd_kernel` on ``problem.text_query``; with few query blocks (a few hundred
text queries against ~10^5 grid keys) the keys are split over ``num_splits`` programs per query block
(flash-decoding): each split writes its partial output, normalised over its keys, and its log-sum-exp in fp32, and
:func:`_combine_splits_kernel` merges them into ``problem.text_out`` (and ``problem.text_lse``). The grid queries are
:mod:`.triton_grid`'s; on Hopper the Gluon kernel runs those and this wrapper is called for the text queries alone.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import triton
import triton.language as tl

from . import INTERPRETED
from . import configs as cfgs
from .triton_common import (
    LN2,
    LOG2E,
    dtype_settings,
    extra_keys,
    head_dim_block,
    load_rows,
    row_range_step,
    softmax_step,
    strides,
)


@triton.jit
def _text_fwd_kernel(
    Q, K, V, EK, EV, ELEN, Out, LSE,
    sqb, sqt, sqh, sqd,
    skb, skn, skh, skd,
    svb, svn, svh, svd,
    sekb, sekt, sekh, sekd,
    sevb, sevt, sevh, sevd,
    sos, sob, sot, soh, sod,
    sls, slb, slt, slh,
    H, N, TQ, T_EXTRA, HEAD_DIM, qk_scale, CHUNKS_PER_SPLIT,
    HAS_EXTRA: tl.constexpr, HAS_ELEN: tl.constexpr, WRITE_LSE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PAD_D: tl.constexpr,
    CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
):  # fmt: skip
    """Dense queries over all grid keys and the valid extra keys; program (query block, batch*head, split)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)
    b = bh // H
    h = bh % H
    b64 = b.to(tl.int64)
    h64 = h.to(tl.int64)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q_valid = offs_m < TQ
    q_rows = tl.minimum(offs_m, TQ - 1).to(tl.int64)
    q = load_rows(Q + b64 * sqb + h64 * sqh, q_rows * sqt, offs_d, sqd, HEAD_DIM, PAD_D, CAST_F32)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    k_base = K + b64 * skb + h64 * skh
    v_base = V + b64 * svb + h64 * svh
    start = split * CHUNKS_PER_SPLIT * BLOCK_N
    end = tl.minimum(start + CHUNKS_PER_SPLIT * BLOCK_N, N)
    full_end = start + ((end - start) // BLOCK_N) * BLOCK_N
    for n0 in range(start, full_end, BLOCK_N):
        rows = (n0 + offs_n).to(tl.int64)
        k = load_rows(k_base, rows * skn, offs_d, skd, HEAD_DIM, PAD_D, CAST_F32)
        v = load_rows(v_base, rows * svn, offs_d, svd, HEAD_DIM, PAD_D, CAST_F32)
        m_i, l_i, acc = softmax_step(q, k, v, m_i, l_i, acc, qk_scale, DOT_PREC)
    if full_end < end:
        m_i, l_i, acc = row_range_step(q, m_i, l_i, acc, k_base, v_base, full_end + offs_n, end, N - 1,
                                       skn, skd, svn, svd, HEAD_DIM, qk_scale, offs_m, offs_d,
                                       PAD_D, CAST_F32, DOT_PREC)  # fmt: skip

    if HAS_EXTRA:
        if split == num_splits - 1:
            m_i, l_i, acc = extra_keys(q, m_i, l_i, acc, EK, EV, ELEN, b, b64, h64,
                                       sekb, sekt, sekh, sekd, sevb, sevt, sevh, sevd, T_EXTRA,
                                       HEAD_DIM, qk_scale, offs_m, offs_n, offs_d,
                                       HAS_ELEN, PAD_D, CAST_F32, DOT_PREC, BLOCK_N)  # fmt: skip

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    split64 = split.to(tl.int64)
    o_ptrs = Out + split64 * sos + b64 * sob + h64 * soh + q_rows[:, None] * sot + offs_d[None, :] * sod
    o_mask = q_valid[:, None]
    if PAD_D:
        o_mask = o_mask & (offs_d[None, :] < HEAD_DIM)
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=o_mask)
    if WRITE_LSE:
        lse = tl.where(l_i > 0.0, (m_i + tl.math.log2(l_safe)) * LN2, float("-inf"))
        tl.store(LSE + split64 * sls + b64 * slb + h64 * slh + q_rows * slt, lse, mask=q_valid)


@triton.jit
def _combine_splits_kernel(
    Part, PLSE, Out, LSE, R, T, H, SPLITS, HEAD_DIM,
    sob, sot, soh, sod, slb, slt, slh,
    WRITE_LSE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Flash-decoding combine: rows ``r = (b * T + t) * H + h`` of the split partials ``Part`` [SPLITS, R, HEAD_DIM]
    (each normalised over its keys) and their log-sum-exps ``PLSE`` [SPLITS, R], weighted by ``exp(lse_s - max)``."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    r_valid = rows < R
    rows64 = tl.minimum(rows, R - 1).to(tl.int64)
    m = tl.full([BLOCK_R], float("-inf"), dtype=tl.float32)
    for s in range(SPLITS):
        m = tl.maximum(m, tl.load(PLSE + s * R + rows64))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    total = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    d_valid = offs_d < HEAD_DIM
    for s in range(SPLITS):
        w = tl.exp(tl.load(PLSE + s * R + rows64) - m_safe)
        part = tl.load(Part + (s * R + rows64)[:, None] * HEAD_DIM + offs_d[None, :], mask=d_valid[None, :], other=0.0)
        acc += w[:, None] * part
        total += w
    out = acc / tl.where(total > 0.0, total, 1.0)[:, None]
    b = rows64 // (T * H)
    t = (rows64 // H) % T
    h = rows64 % H
    o_ptrs = Out + (b * sob + t * sot + h * soh)[:, None] + offs_d[None, :] * sod
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=r_valid[:, None] & d_valid[None, :])
    if WRITE_LSE:
        lse = tl.where(total > 0.0, m_safe + tl.log(tl.where(total > 0.0, total, 1.0)), float("-inf"))
        tl.store(LSE + b * slb + t * slt + h * slh, lse, mask=r_valid)


def text_forward(problem, text_config: dict | None = None) -> None:
    """Write ``problem.text_out`` (and ``problem.text_lse``): dense attention of the text queries over all grid keys
    and the valid extra keys. No-op without text queries.

    ``text_config``: ``{"block_m", "block_n", "num_warps", "num_stages", "num_splits"}``, each optional; defaults
    from :mod:`.configs` (``TEXT_*``), splits from the SM count.
    """
    p = problem
    tq = p.text_query
    if tq is None or tq.shape[1] == 0:
        return
    batch, n_text, heads, head_dim = tq.shape
    n = p.key.shape[1]
    block_d, pad_d = head_dim_block(head_dim)
    cast_f32, dot_prec = dtype_settings(tq.dtype)
    qk_scale = float(p.scale) * LOG2E
    has_extra = p.extra_key is not None and p.extra_key.shape[1] > 0
    t_extra = p.extra_key.shape[1] if has_extra else 0
    has_elen = has_extra and p.extra_lengths is not None

    if INTERPRETED:
        default = cfgs.TEXT_INTERPRETER
    elif block_d > 128 or tq.dtype == torch.float32:
        default = cfgs.TEXT_WIDE
    else:
        default = cfgs.TEXT_FAST
    cfg = {**default._asdict(), **(text_config or {})}
    block_m, block_n = cfg["block_m"], cfg["block_n"]
    q_blocks = triton.cdiv(n_text, block_m)
    chunks = triton.cdiv(n, block_n)
    if "num_splits" in cfg:
        splits = cfg["num_splits"]
    else:
        programs = q_blocks * batch * heads
        splits = max(1, min(triton.cdiv(cfgs.TEXT_PROGRAMS_PER_SM * _num_sms(tq.device), programs),
                            chunks // cfgs.TEXT_MIN_BLOCKS_PER_SPLIT or 1))  # fmt: skip
    chunks_per_split = triton.cdiv(chunks, max(1, min(splits, chunks)))
    splits = triton.cdiv(chunks, chunks_per_split)
    write_lse = p.text_lse is not None
    if splits == 1:
        out, lse = p.text_out, p.text_lse if write_lse else p.text_out
        o_strides = (0, *out.stride())
        l_strides = (0, *lse.stride()) if write_lse else (0, 0, 0, 0)
    else:  # fp32 partials [splits, B, T, heads, D] and their log-sum-exps, merged below
        out = torch.empty((splits, batch, n_text, heads, head_dim), device=tq.device, dtype=torch.float32)
        lse = torch.empty((splits, batch, n_text, heads), device=tq.device, dtype=torch.float32)
        o_strides, l_strides = out.stride(), lse.stride()
        write_lse = True
    ek = p.extra_key if has_extra else tq  # dummy pointers when unused
    ev = p.extra_value if has_extra else tq
    elen = p.extra_lengths if has_elen else tq
    launch = (q_blocks, batch * heads, splits)
    _text_fwd_kernel[launch](
        tq, p.key, p.value, ek, ev, elen, out, lse,
        *tq.stride(), *p.key.stride(), *p.value.stride(),
        *strides(p.extra_key if has_extra else None, 4), *strides(p.extra_value if has_extra else None, 4),
        *o_strides, *l_strides,
        heads, n, n_text, t_extra, head_dim, qk_scale, chunks_per_split,
        HAS_EXTRA=has_extra, HAS_ELEN=has_elen, WRITE_LSE=write_lse,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PAD_D=pad_d, CAST_F32=cast_f32, DOT_PREC=dot_prec,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    if splits > 1:
        rows = batch * n_text * heads
        block_r = cfgs.COMBINE_BLOCK_ROWS_INTERPRETER if INTERPRETED else cfgs.COMBINE_BLOCK_ROWS
        text_lse = p.text_lse if p.text_lse is not None else lse  # dummy pointer when unused
        _combine_splits_kernel[(triton.cdiv(rows, block_r),)](
            out, lse, p.text_out, text_lse, rows, n_text, heads, splits, head_dim,
            *p.text_out.stride(), *(p.text_lse.stride() if p.text_lse is not None else (0, 0, 0)),
            WRITE_LSE=p.text_lse is not None, BLOCK_R=block_r, BLOCK_D=block_d, num_warps=cfgs.COMBINE_WARPS,
        )  # fmt: skip


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return cfgs.INTERPRETER_SMS
    return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())


@lru_cache(maxsize=16)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
