"""What the 8-bit layout step (:func:`na_accel.kernels.fp8_layout.quantize_tiled`) must store, computed with PyTorch
from its definition (tiled token order, scaled and smoothed blocks, PyTorch's own float8 e4m3 rounding). Shared by
the GPU test (exact bytes) and the interpreter test."""

from __future__ import annotations

import math

import torch

from na_accel.kernels.fp8_layout import FP8_MAX, pv_column, smoothing_mean, value_scale


def tiled_index(grid3, tile, device) -> torch.Tensor:
    """Raster token index of every row of the tiled layout (-1: padding)."""
    nt = [-(-g // t) for g, t in zip(grid3, tile)]
    t0, t1, t2, i0, i1, i2 = torch.meshgrid(*(torch.arange(n) for n in (*nt, *tile)), indexing="ij")
    x = (t0 * tile[0] + i0, t1 * tile[1] + i1, t2 * tile[2] + i2)
    valid = (x[0] < grid3[0]) & (x[1] < grid3[1]) & (x[2] < grid3[2])
    idx = (x[0] * grid3[1] + x[1]) * grid3[2] + x[2]
    return torch.where(valid, idx, -1).flatten().to(device)


def expected_tiled(q, k, v, ek, ev, lengths, grid3, tile, qk_scale, qk_int8=False) -> dict[str, torch.Tensor]:
    """Expected ``q8``/``k8`` ``[BH, rows, D]`` (float8, or int8 with ``qk_int8``), ``vt8`` ``[BH, D, cols]`` (in
    stored column order, float8), and the fp32 scales ``q_scale``/``k_scale``/``v_scale``."""
    b, n, h, d = q.shape
    bt = math.prod(tile)
    idx = tiled_index(grid3, tile, q.device)
    valid = idx >= 0
    f8 = torch.float8_e4m3fn

    def tiled(x):  # [B, N, H, D] -> [B*H, rows, D], zero padding rows
        y = x.float().permute(0, 2, 1, 3).reshape(b * h, n, d)[:, idx.clamp(min=0)]
        return torch.where(valid[None, :, None], y, 0.0)

    def extra(x, mean):
        e = x.float().permute(0, 2, 1, 3).reshape(b * h, x.shape[1], d) - mean
        if lengths is not None:
            ok = torch.arange(x.shape[1], device=x.device)[None] < lengths.repeat_interleave(h)[:, None]
            e = torch.where(ok[..., None], e, 0.0)
        pad = -(-x.shape[1] // bt) * bt - x.shape[1]
        return torch.cat([e, e.new_zeros(b * h, pad, d)], 1)

    def blocks(x, rows):
        amax = x.abs().view(b * h, -1, rows, d).amax(dim=(2, 3))
        # tensor / tensor: CUDA divides by a Python scalar through its reciprocal, which is not correctly rounded
        scale = torch.where(amax > 0, amax / torch.full_like(amax, 127.0 if qk_int8 else FP8_MAX), 1.0)
        y = x / scale.repeat_interleave(rows, 1)[..., None]
        return (torch.floor(y + 0.5).to(torch.int8) if qk_int8 else y.to(f8)), scale

    qt = tiled(q) * qk_scale
    q8, q_scale = blocks(qt, bt // 2)
    mean = smoothing_mean(k).view(b * h, 1, d)
    kt = torch.where(valid[None, :, None], tiled(k) - mean, 0.0)
    vt = tiled(v)
    if ek is not None:
        kt = torch.cat([kt, extra(ek, mean)], 1)
        vt = torch.cat([vt, extra(ev, 0.0)], 1)
    k8, k_scale = blocks(kt, kt.shape[1])  # one scale per (batch, head)
    vs = value_scale(v, ev, lengths).view(b * h, 1, d)
    v8 = (vt / vs).to(f8).transpose(1, 2)
    cols = torch.arange(v8.shape[-1], device=q.device)
    vt8 = torch.empty_like(v8.contiguous())
    vt8[..., pv_column(cols)] = v8  # key r of each tile is stored at column pv_column(r)
    return {"q8": q8, "q_scale": q_scale, "k8": k8, "k_scale": k_scale.view(b * h), "vt8": vt8,
            "v_scale": vs.view(b * h, d)}
