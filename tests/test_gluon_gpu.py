"""Gluon (sm_90) GNA forward for grid queries against the fp32 reference.

Each case fills ``out`` with NaN first (every grid position must be written) and compares the Gluon output with
the fp32 reference (``na_flat(..., backend="reference")`` on ``.float()`` inputs, or the same math on a sample of
queries for large grids). As in tests/test_triton_gpu.py, the error must be at most twice the error of PyTorch SDPA
in the same dtype on the same queries and mask (with a small floor).
"""

from __future__ import annotations

import pytest
import torch

import na_accel
from na_accel.ops.dispatch import Problem
from na_accel.ops.semantics import grid_mask, make_params

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEV = "cuda"
_FULL_REF_MAX_TOKENS = 20000  # above this, check a sample of queries


def _gluon():
    from na_accel.kernels import gluon_hopper

    return gluon_hopper


def _problem(q, k, v, grid, ks, st, ek=None, ev=None, lengths=None, out=None, **params_kw):
    params = make_params(grid, ks, st, **params_kw)
    if out is None:
        out = torch.full_like(q, float("nan"))
    return Problem(q, k, v, params, q.shape[-1] ** -0.5, ek, ev, lengths, None, out, None, None, None)


@pytest.fixture(scope="module", autouse=True)
def _needs_gluon():
    q = torch.zeros(1, 64, 1, 128, device=DEV, dtype=torch.bfloat16)
    reason = _gluon().unsupported_reason(_problem(q, q, q, (8, 8), 3, 1))
    if reason is not None:
        pytest.skip(f"Gluon GNA path unavailable here: {reason}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _masks(params, idx, batch, t, lengths):
    full = grid_mask(params, idx)[None].expand(batch, -1, -1)
    if t:
        ext = torch.ones(batch, len(idx), t, dtype=torch.bool, device=DEV)
        if lengths is not None:
            ext = ext & (torch.arange(t, device=DEV)[None, None] < lengths[:, None, None])
        full = torch.cat([full, ext], -1)
    return full


def _subset_reference(q, k, v, params, idx, scale, ek, ev, lengths):
    keys, vals = k.float(), v.float()
    t = 0 if ek is None else ek.shape[1]
    if t:
        keys = torch.cat([keys, ek.float()], 1)
        vals = torch.cat([vals, ev.float()], 1)
    full = _masks(params, idx, q.shape[0], t, lengths)
    s = torch.einsum("bqhd,bkhd->bhqk", q[:, idx].float(), keys) * scale
    s = s.masked_fill(~full[:, None], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, -1), vals)


def _check(problem, gen, what):
    p = problem
    _gluon().gna_forward_gluon(p)
    torch.cuda.synchronize()
    out = p.out
    assert not out.isnan().any(), f"{what}: some grid outputs were not written (NaN left)"
    assert out.isfinite().all(), f"{what}: non-finite outputs"
    params, n = p.params, p.params.num_tokens
    t = 0 if p.extra_key is None else p.extra_key.shape[1]
    if n <= _FULL_REF_MAX_TOKENS:
        idx = torch.arange(n, device=DEV)
        ref = na_accel.na_flat(
            p.query.float(), p.key.float(), p.value.float(), params.grid, params.kernel_size, params.stride,
            additional_keys=None if t == 0 else p.extra_key.float(),
            additional_values=None if t == 0 else p.extra_value.float(),
            additional_lengths=p.extra_lengths, backend="reference",
        )  # fmt: skip
    else:
        perm = torch.randperm(n, generator=gen)[:508]
        idx = torch.cat([perm, torch.tensor([0, 1, n - 2, n - 1])]).sort().values.to(DEV)
        ref = _subset_reference(p.query, p.key, p.value, params, idx, p.scale, p.extra_key, p.extra_value,
                                p.extra_lengths)  # fmt: skip
    # SDPA in the same dtype on the same queries and mask: the error budget
    keys, vals = p.key, p.value
    if t:
        keys, vals = torch.cat([keys, p.extra_key], 1), torch.cat([vals, p.extra_value], 1)
    full = _masks(params, idx, p.query.shape[0], t, p.extra_lengths)
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        p.query[:, idx].transpose(1, 2),
        keys.transpose(1, 2),
        vals.transpose(1, 2),
        attn_mask=full[:, None],
        scale=p.scale,
    ).transpose(1, 2)
    err, sdpa_err = _rel(out[:, idx], ref), _rel(sdpa, ref)
    assert err <= max(2 * sdpa_err, 4e-3), f"{what}: error {err:.3e} vs SDPA {sdpa_err:.3e}"
    return err


def _qkv(batch, n, heads, d, gen, dtype=torch.bfloat16):
    return [torch.randn(batch, n, heads, d, generator=gen).to(DEV, dtype) for _ in range(3)]


# (grid, kernel_size, stride, batch, heads)
CASES = {
    "1d-na": ((1000,), 301, 1, 2, 2),
    "1d-gna-even": ((777,), 128, 32, 1, 2),
    "1d-short": ((50,), 17, 4, 2, 1),
    "2d-na-even": ((45, 70), (13, 16), (1, 1), 2, 2),
    "2d-gna": ((64, 64), (20, 20), (4, 4), 1, 2),
    "2d-whole-axis": ((40, 72), (40, 9), (1, 3), 1, 2),
    "3d-ragged-na": ((5, 13, 19), (3, 5, 7), (1, 1, 1), 2, 2),
    "3d-whole-axes": ((5, 13, 19), (5, 4, 19), (2, 2, 1), 1, 2),
    "3d-gna": ((3, 45, 40), (3, 16, 11), (1, 8, 3), 1, 2),
    "3d-na-mid": ((12, 24, 40), (6, 12, 12), (1, 1, 1), 1, 2),
    "3d-hunyuan720-gna": ((33, 45, 80), (18, 24, 24), (16, 8, 8), 1, 2),
    "3d-hunyuan-na": ((30, 48, 80), (18, 24, 24), (1, 1, 1), 1, 1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_grid_cases(case):
    grid, ks, st, batch, heads = CASES[case]
    gen = torch.Generator().manual_seed(sum(map(ord, case)))
    n = make_params(grid, ks, st).num_tokens
    q, k, v = _qkv(batch, n, heads, 128, gen)
    _check(_problem(q, k, v, grid, ks, st), gen, case)


# (grid, kernel_size, stride, batch, T, lengths)
EXTRA_CASES = {
    "1d-lengths": ((1000,), 301, 1, 2, 77, [5, 77]),
    "2d-all-valid": ((45, 70), (13, 16), (2, 3), 1, 300, None),
    "3d-lengths-with-zero": ((5, 13, 19), (3, 5, 7), (1, 2, 3), 2, 100, [100, 0]),
    "3d-lengths-partial": ((3, 45, 40), (3, 16, 11), (1, 8, 3), 2, 256, [0, 129]),
    "3d-hunyuan720-text": ((33, 45, 80), (18, 24, 24), (16, 8, 8), 2, 256, [256, 77]),
    # ragged tiles on every axis, 50 extra keys (one partial extra-key tile), batch 1
    "3d-ragged-all-valid": ((7, 20, 36), (5, 9, 16), (2, 3, 8), 1, 50, None),
}


@pytest.mark.parametrize("case", list(EXTRA_CASES))
def test_extra_keys(case):
    grid, ks, st, batch, t, lengths = EXTRA_CASES[case]
    gen = torch.Generator().manual_seed(7)
    n = make_params(grid, ks, st).num_tokens
    heads = 2
    q, k, v = _qkv(batch, n, heads, 128, gen)
    ek, ev = (torch.randn(batch, t, heads, 128, generator=gen).to(DEV, torch.bfloat16) for _ in range(2))
    lens = None if lengths is None else torch.tensor(lengths, device=DEV)
    _check(_problem(q, k, v, grid, ks, st, ek, ev, lens), gen, case)


def test_packed_qkv_strided_views_and_strided_out():
    """q/k/v as views of one packed [B, N, 3, heads, D] tensor; out a strided view too; batch 2."""
    grid, ks, st, batch, heads = (6, 20, 24), (3, 7, 9), (1, 2, 3), 2, 3
    gen = torch.Generator().manual_seed(3)
    n = make_params(grid, ks, st).num_tokens
    qkv = torch.randn(batch, n, 3, heads, 128, generator=gen).to(DEV, torch.bfloat16)
    q, k, v = qkv.unbind(2)
    out_buf = torch.full((batch, n, heads + 1, 128), float("nan"), device=DEV, dtype=torch.bfloat16)
    out = out_buf[:, :, 1:]
    ek, ev = (torch.randn(batch, 40, heads, 128, generator=gen).to(DEV, torch.bfloat16) for _ in range(2))
    p = _problem(q, k, v, grid, ks, st, ek, ev, torch.tensor([40, 13], device=DEV), out=out)
    assert _gluon().unsupported_reason(p) is None
    _check(p, gen, "packed qkv")
    assert out_buf[:, :, 0].isnan().all(), "wrote outside the output view"


@pytest.mark.parametrize("dtype,d", [(torch.float16, 128), (torch.bfloat16, 64)], ids=["fp16-d128", "bf16-d64"])
def test_dtype_and_head_dim(dtype, d):
    grid, ks, st = (5, 13, 19), (3, 5, 7), (1, 2, 3)
    gen = torch.Generator().manual_seed(5)
    n = make_params(grid, ks, st).num_tokens
    q, k, v = _qkv(2, n, 2, d, gen, dtype)
    p = _problem(q, k, v, grid, ks, st)
    assert _gluon().unsupported_reason(p) is None
    _check(p, gen, f"{dtype} d={d}")


def test_unsupported_reasons():
    g = _gluon()
    q = torch.zeros(1, 8 * 8 * 8, 1, 128, device=DEV, dtype=torch.bfloat16)
    assert g.unsupported_reason(_problem(q, q, q, (8, 8, 8), 3, 1)) is None
    r = g.unsupported_reason(_problem(q, q, q, (8, 8, 8), 3, 1, is_causal=(True, False, False)))
    assert r is not None and "causal" in r
    r = g.unsupported_reason(_problem(q, q, q, (8, 8, 8), 3, 1, dilation=(1, 2, 1)))
    assert r is not None and "dilation" in r
    p = _problem(q, q, q, (8, 8, 8), 3, 1)
    p.lse = torch.empty(1, 512, 1, device=DEV)
    r = g.unsupported_reason(p)
    assert r is not None and "log-sum-exp" in r
    r = g.unsupported_reason(_problem(q.float(), q.float(), q.float(), (8, 8, 8), 3, 1))
    assert r is not None and "dtype" in r
    q96 = torch.zeros(1, 512, 1, 96, device=DEV, dtype=torch.bfloat16)
    assert g.unsupported_reason(_problem(q96, q96, q96, (8, 8, 8), 3, 1)) is not None
    qc = q.cpu()
    assert g.unsupported_reason(_problem(qc, qc, qc, (8, 8, 8), 3, 1)) is not None
    # a data pointer off 16 bytes: no TMA descriptor
    x = torch.zeros(512 * 128 + 8, device=DEV, dtype=torch.bfloat16)[1 : 1 + 512 * 128].view(1, 512, 1, 128)
    r = g.unsupported_reason(_problem(x, x, x, (8, 8, 8), 3, 1))
    assert r is not None and "aligned" in r


def test_batches_that_do_not_fold_run_one_element_per_launch():
    """[B, heads, N, D] storage viewed as [B, N, heads, D], and the grid part of a batched joint text + video
    sequence: the batch does not fold into the token axis, so each batch element gets its own launch; every grid row
    is written (NaN-poisoned output) and as accurate as SDPA; through the backend the Gluon kernel runs them."""
    g = _gluon()
    gen = torch.Generator().manual_seed(7)
    grid, ks, st = (5, 13, 19), (3, 5, 7), (1, 2, 3)
    n = make_params(grid, ks, st).num_tokens
    x = [torch.randn(2, 2, n, 128, generator=gen).to(DEV, torch.bfloat16).transpose(1, 2) for _ in range(3)]
    p = _problem(*x, grid, ks, st)
    assert not g._folds(p) and g.unsupported_reason(p) is None
    _check(p, gen, "heads-major storage")
    joint = [torch.randn(2, n + 40, 2, 128, generator=gen).to(DEV, torch.bfloat16) for _ in range(3)]
    q, k, v = (t[:, :n] for t in joint)
    ek, ev = (t[:, n:] for t in joint[1:])
    p = _problem(q, k, v, grid, ks, st, ek, ev, torch.tensor([40, 17], device=DEV))
    assert not g._folds(p) and g.unsupported_reason(p) is None
    _check(p, gen, "batched joint sequence")
    from na_accel.ops.dispatch import get_backend

    na_accel.na_flat(q, k, v, grid, ks, st, backend="triton", additional_keys=ek, additional_values=ev)
    assert get_backend("triton").last_path == "gluon"
