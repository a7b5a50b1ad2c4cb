"""Triton GNA kernels on a CUDA GPU at realistic shapes (HunyuanVideo-sized grids, 24 heads, head dim 128).

Outputs are checked on a subsample of queries against an fp32 (fp64 for fp32 inputs) reference; the error must be at
most twice PyTorch SDPA's own error in the same dtype on the same queries and mask (plus a tiny floor for fp32).
"""

from __future__ import annotations

import math

import pytest
import torch

import na_accel
from na_accel.ops.semantics import grid_mask, make_params

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEV = "cuda"


@pytest.fixture(autouse=True)
def _no_autotune(monkeypatch):
    # Correctness does not depend on the tuned config; the default one keeps this suite fast.
    monkeypatch.setenv("NA_ACCEL_AUTOTUNE", "0")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _sample(n: int, count: int, gen) -> torch.Tensor:
    idx = torch.randperm(n, generator=gen)[: count - 4]
    return torch.cat([idx, torch.tensor([0, 1, n - 2, n - 1])]).sort().values.to(DEV)


def _reference_subset(q, k, v, params, idx, scale, ek=None, ev=None, lengths=None, cdt=torch.float32):
    """Reference outputs and lse of grid queries ``idx`` ([B, n, H, D] -> [B, len(idx), H, D])."""
    mask = grid_mask(params, idx)  # [n_idx, N]
    keys, vals = k.to(cdt), v.to(cdt)
    b, t = q.shape[0], 0 if ek is None else ek.shape[1]
    if t:
        keys = torch.cat([keys, ek.to(cdt)], 1)
        vals = torch.cat([vals, ev.to(cdt)], 1)
    full = mask[None].expand(b, -1, -1)
    if t:
        ext = torch.ones(b, len(idx), t, dtype=torch.bool, device=DEV)
        if lengths is not None:
            ext = ext & (torch.arange(t, device=DEV)[None, None] < lengths[:, None, None])
        full = torch.cat([full, ext], -1)
    qs = q[:, idx].to(cdt)
    s = torch.einsum("bqhd,bkhd->bhqk", qs, keys) * scale
    s = s.masked_fill(~full[:, None], float("-inf"))
    lse = torch.logsumexp(s, -1)
    o = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), vals)
    return o, lse.transpose(1, 2), full


def _sdpa_subset(q, k, v, idx, full, scale, ek=None, ev=None):
    keys, vals = (k, v) if ek is None else (torch.cat([k, ek], 1), torch.cat([v, ev], 1))
    out = torch.nn.functional.scaled_dot_product_attention(
        q[:, idx].transpose(1, 2), keys.transpose(1, 2), vals.transpose(1, 2), attn_mask=full[:, None], scale=scale
    )
    return out.transpose(1, 2)


def _check_against_sdpa(out, ref, sdpa_out, dtype, what):
    err, sdpa_err = _rel(out, ref), _rel(sdpa_out, ref)
    floor = 2e-6 if dtype == torch.float32 else 0.0
    assert err <= 2 * sdpa_err + floor, f"{what}: error {err:.3e} vs SDPA {sdpa_err:.3e} ({dtype})"


CASES = {
    "hunyuan-gna": ((30, 48, 80), (18, 24, 24), (16, 8, 8)),
    "hunyuan-na": ((30, 48, 80), (18, 24, 24), (1, 1, 1)),
    "hunyuan720-gna": ((33, 45, 80), (18, 24, 24), (16, 8, 8)),
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("case", list(CASES))
def test_realistic_shapes(case, dtype):
    if dtype == torch.float32 and case != "hunyuan-gna":
        pytest.skip("fp32 checked on one case (it runs without tensor cores)")
    grid, ks, st = CASES[case]
    params = make_params(grid, ks, st)
    n, heads, d = params.num_tokens, 24, 128
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, n, heads, d, generator=gen).to(DEV, dtype) for _ in range(3))
    out, lse = na_accel.na_flat(q, k, v, grid, ks, st, backend="triton", return_lse=True)
    torch.cuda.synchronize()
    assert not out.isnan().any() and not lse.isnan().any()
    idx = _sample(n, 256, gen)
    cdt = torch.float64 if dtype == torch.float32 else torch.float32
    ref, ref_lse, full = _reference_subset(q, k, v, params, idx, d**-0.5, cdt=cdt)
    sdpa = _sdpa_subset(q, k, v, idx, full, d**-0.5)
    _check_against_sdpa(out[:, idx], ref, sdpa, dtype, case)
    torch.testing.assert_close(lse[:, idx].double(), ref_lse.double(), atol=2e-2, rtol=0)


def test_text_tokens_with_padding_bf16():
    """HunyuanVideo-style joint attention: video first, 256 text tokens of which only some are valid."""
    grid, ks, st, t = (30, 48, 80), (18, 24, 24), (16, 8, 8), 256
    params = make_params(grid, ks, st)
    n, heads, d, dtype = params.num_tokens, 24, 128, torch.bfloat16
    gen = torch.Generator().manual_seed(1)
    x = [torch.randn(2, n + t, heads, d, generator=gen).to(DEV, dtype) for _ in range(3)]
    lengths = torch.tensor([256, 77], device=DEV)
    out = na_accel.na_joint(*x, grid, t, ks, st, text_lengths=lengths, backend="triton")
    torch.cuda.synchronize()
    assert not out.isnan().any()
    q, k, v = (y[:, :n] for y in x)
    ek, ev = x[1][:, n:], x[2][:, n:]
    idx = _sample(n, 128, gen)
    ref, _, full = _reference_subset(q, k, v, params, idx, d**-0.5, ek, ev, lengths)
    sdpa = _sdpa_subset(q, k, v, idx, full, d**-0.5, ek, ev)
    _check_against_sdpa(out[:, idx], ref, sdpa, dtype, "video queries")
    # text queries: dense over all grid keys and the valid text keys
    tq = x[0][:, n:]
    keys, vals = x[1].float(), x[2].float()
    valid = torch.arange(n + t, device=DEV)[None] < (n + lengths)[:, None]  # [B, N + T]
    s = torch.einsum("bqhd,bkhd->bhqk", tq.float(), keys) * d**-0.5
    s = s.masked_fill(~valid[:, None, None], float("-inf"))
    ref_t = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), vals)
    sdpa_t = torch.nn.functional.scaled_dot_product_attention(
        tq.transpose(1, 2), x[1].transpose(1, 2), x[2].transpose(1, 2), attn_mask=valid[:, None, None]
    ).transpose(1, 2)
    _check_against_sdpa(out[:, n:], ref_t, sdpa_t, dtype, "text queries")


def test_flux_2d_and_autotune(monkeypatch):
    """2-D (FLUX 1024^2 tokens) through the autotuner, fp16, text first."""
    monkeypatch.setenv("NA_ACCEL_AUTOTUNE", "1")
    grid, ks, st, t = (64, 64), (33, 33), (8, 8), 512
    params = make_params(grid, ks, st)
    n, heads, d, dtype = params.num_tokens, 24, 128, torch.float16
    gen = torch.Generator().manual_seed(2)
    x = [torch.randn(1, t + n, heads, d, generator=gen).to(DEV, dtype) for _ in range(3)]
    out = na_accel.na_joint(*x, grid, t, ks, st, text_first=True, backend="triton")
    q, k, v = (y[:, t:] for y in x)
    idx = _sample(n, 256, gen)
    ref, _, full = _reference_subset(q, k, v, params, idx, d**-0.5, x[1][:, :t], x[2][:, :t])
    sdpa = _sdpa_subset(q, k, v, idx, full, d**-0.5, x[1][:, :t], x[2][:, :t])
    _check_against_sdpa(out[:, t:][:, idx], ref, sdpa, dtype, "flux")


def test_large_grid_int64_offsets():
    """Element offsets beyond 2**31 (packed QKV, 262,144 tokens x 3 x 24 heads x 128), dilation and causal time."""
    grid, ks, st, dil, causal = (64, 64, 64), (4, 8, 8), (2, 8, 8), (2, 1, 1), (True, False, False)
    params = make_params(grid, ks, st, dil, causal)
    n, heads, d, dtype = params.num_tokens, 24, 128, torch.bfloat16
    assert n * 3 * heads * d > 2**31
    gen = torch.Generator(device=DEV).manual_seed(3)
    qkv = torch.randn(1, n, 3, heads, d, generator=gen, device=DEV, dtype=dtype)
    q, k, v = qkv.unbind(2)
    out = na_accel.na_flat(q, k, v, grid, ks, st, dil, causal, backend="triton")
    torch.cuda.synchronize()
    assert not out.isnan().any()
    idx = _sample(n, 128, torch.Generator().manual_seed(3))
    ref, _, full = _reference_subset(q, k, v, params, idx, d**-0.5)
    sdpa = _sdpa_subset(q, k, v, idx, full, d**-0.5)
    _check_against_sdpa(out[:, idx], ref, sdpa, dtype, "large grid")


@pytest.mark.parametrize("head_dim", [32, 64, 96, 256])
def test_other_head_dims(head_dim):
    grid, ks, st = (8, 24, 40), (4, 8, 8), (2, 4, 8)
    params = make_params(grid, ks, st)
    n, heads = params.num_tokens, 4
    gen = torch.Generator().manual_seed(head_dim)
    q, k, v = (torch.randn(2, n, heads, head_dim, generator=gen).to(DEV, torch.bfloat16) for _ in range(3))
    out = na_accel.na_flat(q, k, v, grid, ks, st, backend="triton")
    idx = _sample(n, 256, gen)
    ref, _, full = _reference_subset(q, k, v, params, idx, head_dim**-0.5)
    sdpa = _sdpa_subset(q, k, v, idx, full, head_dim**-0.5)
    _check_against_sdpa(out[:, idx], ref, sdpa, torch.bfloat16, f"head dim {head_dim}")


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    q, k, v = (torch.randn(1, 8, 16, 24, 4, 64, device=DEV, dtype=torch.bfloat16) for _ in range(3))

    @torch.compile(fullgraph=True)
    def f(q, k, v):
        return na_accel.na3d(q, k, v, (4, 8, 8), (2, 4, 4), backend="triton") * 2

    out = f(q, k, v)
    ref = na_accel.na3d(q, k, v, (4, 8, 8), (2, 4, 4), backend="triton") * 2
    torch.testing.assert_close(out, ref)


def test_auto_picks_triton():
    from na_accel.ops.dispatch import Problem, select_backend

    q = torch.randn(1, 64, 2, 64, device=DEV, dtype=torch.bfloat16)
    p = Problem(q, q, q, make_params((8, 8), 3), 0.125, None, None, None, None, torch.empty_like(q), None, None,
                None)  # fmt: skip
    assert select_backend("auto", p).name == "triton"
    assert math.isfinite(float(na_accel.na2d(q.view(1, 8, 8, 2, 64), q.view(1, 8, 8, 2, 64),
                                             q.view(1, 8, 8, 2, 64), 3).float().sum()))  # fmt: skip
