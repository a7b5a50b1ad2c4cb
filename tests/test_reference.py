"""The reference backend and the functional API against an independent brute-force oracle (tests/bruteforce.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import na_accel
import na_accel.ops.reference as reference
from na_accel.ops import semantics

try:
    import bruteforce as bf
except ImportError:  # pragma: no cover - tests/ made a package
    from tests import bruteforce as bf

NA_ND = {1: na_accel.na1d, 2: na_accel.na2d, 3: na_accel.na3d}


def _tol(dtype):
    return dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5)


def _lengths_tensor(p: bf.RandomProblem):
    if p.extra_lengths is None:
        return None
    dtype = torch.int32 if p.seed % 2 else torch.int64
    return torch.tensor(p.extra_lengths, dtype=dtype)


def _na_flat(p: bf.RandomProblem, q, k, v, ek, ev, **kw):
    """``na_flat`` (reference backend) on a random problem's inputs."""
    return na_accel.na_flat(
        q, k, v, p.grid, p.kernel_size, p.stride, p.dilation, p.is_causal, scale=p.scale, additional_keys=ek,
        additional_values=ev, additional_lengths=_lengths_tensor(p), backend="reference", **kw,
    )  # fmt: skip


def _expected(p: bf.RandomProblem, q, k, v, ek, ev):
    t = 0 if p.num_extra is None else p.num_extra
    mask = bf.full_mask(p.mask(), p.batch, t, p.extra_lengths, text_queries=False)
    if t:
        k, v = torch.cat([k, ek], 1), torch.cat([v, ev], 1)
    return bf.masked_attention(q, k, v, mask, p.scale)


def _check(out, lse, ref_out, ref_lse, dtype, out_shape):
    assert out.dtype == dtype and tuple(out.shape) == tuple(out_shape)
    assert lse.dtype == torch.float32 and tuple(lse.shape) == tuple(out_shape[:-1])
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(out.double().reshape(ref_out.shape), ref_out, **_tol(dtype))
    torch.testing.assert_close(lse.double().reshape(ref_lse.shape), ref_lse, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The oracle itself: a few windows worked out by hand from NATTEN's definition
# ----------------------------------------------------------------------------------------------------------------


def _window(length, k, s=1, d=1, causal=False, x=0):
    return [y for y in range(length) if bf.axis_attends(x, y, length, k, s, d, causal)]


@pytest.mark.parametrize(
    "length,k,s,d,causal,x,expected",
    [
        (7, 3, 1, 1, False, 0, [0, 1, 2]),  # clamped at the start
        (7, 3, 1, 1, False, 3, [2, 3, 4]),
        (7, 3, 1, 1, False, 6, [4, 5, 6]),  # clamped at the end
        (8, 4, 1, 1, False, 4, [2, 3, 4, 5]),  # even window: left 2, right 1
        (8, 4, 1, 1, False, 0, [0, 1, 2, 3]),
        (8, 4, 2, 1, False, 1, [0, 1, 2, 3]),  # stride group {0,1}: leader 1 -> center 2
        (8, 4, 2, 1, False, 2, [1, 2, 3, 4]),  # stride group {2,3}: leader 3
        (8, 4, 2, 1, False, 7, [4, 5, 6, 7]),  # leader 7 clamped to 6
        (9, 3, 3, 1, False, 4, [3, 4, 5]),  # blocked attention
        (10, 3, 3, 1, False, 9, [7, 8, 9]),  # ragged last block: leader min(10, 9) = 9 -> clamp 8
        (9, 3, 1, 2, False, 0, [0, 2, 4]),  # dilation: group 0 = {0,2,4,6,8}
        (9, 3, 1, 2, False, 7, [3, 5, 7]),  # group 1 = {1,3,5,7}, x'=3 -> center clamp to 2
        (7, 3, 1, 1, True, 0, [0]),  # causal
        (7, 3, 1, 1, True, 5, [3, 4, 5]),
        (8, 4, 2, 1, True, 2, [0, 1, 2]),  # causal, stride 2: leader 3, keys y<=2 with 3-y<4
        (8, 4, 2, 1, True, 3, [0, 1, 2, 3]),
        (8, 4, 4, 1, True, 5, [4, 5]),  # causal blocked: leader 7 -> 7-y<4 -> y>=4
        (6, -1, 1, 1, False, 2, [0, 1, 2, 3, 4, 5]),  # -1 = whole axis
    ],
)
def test_oracle_hand_windows(length, k, s, d, causal, x, expected):
    assert _window(length, k, s, d, causal, x) == expected


# ----------------------------------------------------------------------------------------------------------------
# Sweeps against brute force
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(220))
def test_nd_vs_bruteforce(seed):
    p = bf.random_problem(seed)
    q, k, v, ek, ev = bf.make_inputs(p)
    shape = (p.batch, *p.grid, p.heads, p.head_dim)
    fn = NA_ND[len(p.grid)]
    out, lse = fn(
        q.reshape(shape), k.reshape(shape), v.reshape(shape), p.kernel_size, p.stride, p.dilation, p.is_causal,
        scale=p.scale, additional_keys=ek, additional_values=ev, additional_lengths=_lengths_tensor(p),
        backend="reference", return_lse=True,
    )  # fmt: skip
    ref_out, ref_lse = _expected(p, q, k, v, ek, ev)
    _check(out, lse, ref_out, ref_lse, p.dtype, shape)


@pytest.mark.parametrize("seed", range(1000, 1030))
def test_na_flat_vs_bruteforce(seed):
    p = bf.random_problem(seed)
    q, k, v, ek, ev = bf.make_inputs(p)
    out, lse = _na_flat(p, q, k, v, ek, ev, return_lse=True)
    ref_out, ref_lse = _expected(p, q, k, v, ek, ev)
    _check(out, lse, ref_out, ref_lse, p.dtype, q.shape)
    # the non-lse form returns the same output
    out2 = _na_flat(p, q, k, v, ek, ev)
    assert torch.equal(out, out2)


@pytest.mark.parametrize("text_first", [False, True], ids=["text_last", "text_first"])
@pytest.mark.parametrize("seed", range(2000, 2024))
def test_na_joint_vs_bruteforce(seed, text_first):
    p = bf.random_problem(seed, extras=True)
    t = p.num_extra
    q, k, v, _, _ = bf.make_inputs(p, tokens=p.n + t, extra=False)
    lengths = _lengths_tensor(p)
    out, lse = na_accel.na_joint(
        q, k, v, p.grid, t, p.kernel_size, p.stride, p.dilation, p.is_causal, scale=p.scale, text_first=text_first,
        text_lengths=lengths, backend="reference", return_lse=True,
    )  # fmt: skip
    mask = bf.full_mask(p.mask(), p.batch, t, p.extra_lengths, text_queries=True, text_first=text_first)
    ref_out, ref_lse = bf.masked_attention(q, k, v, mask, p.scale)
    _check(out, lse, ref_out, ref_lse, p.dtype, q.shape)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", range(2500, 2504))
def test_half_precision_inputs(seed, dtype):
    """fp16/bf16 inputs: computed in fp32, returned in the input dtype (checked against fp64 on the rounded inputs)."""
    p = bf.random_problem(seed, extras=True)
    q, k, v, ek, ev = (None if t is None else t.to(dtype) for t in bf.make_inputs(p))
    out, lse = _na_flat(p, q, k, v, ek, ev, return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    ref_out, ref_lse = _expected(p, q, k, v, ek, ev)
    tol = 1e-2 if dtype == torch.float16 else 3e-2
    torch.testing.assert_close(out.double(), ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-4, atol=1e-4)


def test_joint_text_queries_are_dense_and_padding_masked():
    """Hand-checkable joint case: padded text keys get zero weight, text queries see every valid key."""
    g = torch.Generator().manual_seed(0)
    grid, t = (3, 4), 3
    n = 12
    q = torch.randn(2, n + t, 1, 4, generator=g, dtype=torch.float64)
    k = torch.randn(2, n + t, 1, 4, generator=g, dtype=torch.float64)
    v = torch.randn(2, n + t, 1, 4, generator=g, dtype=torch.float64)
    lengths = torch.tensor([1, 3])
    out = na_accel.na_joint(q, k, v, grid, t, 1, text_lengths=lengths, backend="reference")
    # Changing the padded text key/value of batch 0 (tokens n+1, n+2) changes nothing.
    k2, v2 = k.clone(), v.clone()
    k2[0, n + 1 :] += 100.0
    v2[0, n + 1 :] -= 100.0
    out2 = na_accel.na_joint(q, k2, v2, grid, t, 1, text_lengths=lengths, backend="reference")
    torch.testing.assert_close(out, out2, rtol=1e-12, atol=1e-12)
    # With kernel_size 1, a grid query attends to itself and the valid text keys only.
    scale = 0.5
    expected, _ = bf.masked_attention(
        q[:1, :1], torch.cat([k[:1, :1], k[:1, n : n + 1]], 1), torch.cat([v[:1, :1], v[:1, n : n + 1]], 1),
        torch.ones(1, 1, 2, dtype=torch.bool), scale,
    )  # fmt: skip
    out3 = na_accel.na_joint(q, k, v, grid, t, 1, scale=scale, text_lengths=lengths, backend="reference")
    torch.testing.assert_close(out3[:1, :1], expected, rtol=1e-12, atol=1e-12)
    # Text queries: dense over all grid keys and the valid text keys.
    expected_text, _ = bf.masked_attention(q[1:, n:], k[1:], v[1:], torch.ones(1, t, n + t, dtype=torch.bool), scale)
    torch.testing.assert_close(out3[1:, n:], expected_text, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(3000, 3006))
def test_nd_forms_agree(seed):
    """na1d on L equals na2d on (1, L) equals na3d on (1, 1, L) with window 1 on the singleton axes."""
    p = bf.random_problem(seed, ndim=1)
    q, k, v, ek, ev = bf.make_inputs(p)
    kw = dict(scale=p.scale, additional_keys=ek, additional_values=ev, additional_lengths=_lengths_tensor(p),
              backend="reference")  # fmt: skip
    (ks,), (st,), (dl,), (cz,) = p.kernel_size, p.stride, p.dilation, p.is_causal
    b, n, h, d = q.shape
    o1 = na_accel.na1d(q, k, v, ks, st, dl, cz, **kw)
    o2 = na_accel.na2d(*(t.view(b, 1, n, h, d) for t in (q, k, v)), (1, ks), (1, st), (1, dl), (False, cz), **kw)
    o3 = na_accel.na3d(
        *(t.view(b, 1, 1, n, h, d) for t in (q, k, v)), (-1, 1, ks), (1, 1, st), (1, 1, dl), (True, True, cz), **kw
    )
    torch.testing.assert_close(o2.view(o1.shape), o1, rtol=0, atol=0)
    torch.testing.assert_close(o3.view(o1.shape), o1, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------------
# Chunking is exact
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4000, 4008))
@pytest.mark.parametrize("chunk_queries", [1, 3, 7])
def test_chunking_is_exact(seed, chunk_queries, monkeypatch):
    p = bf.random_problem(seed, extras=True)
    t = p.num_extra
    q, k, v, _, _ = bf.make_inputs(p, tokens=p.n + t, extra=False)
    q, k, v = q.double(), k.double(), v.double()
    lengths = _lengths_tensor(p)
    args = (q, k, v, p.grid, t, p.kernel_size, p.stride, p.dilation, p.is_causal)
    kw = dict(scale=p.scale, text_lengths=lengths, backend="reference", return_lse=True, text_first=bool(seed % 2))
    out_full, lse_full = na_accel.na_joint(*args, **kw)
    # bytes so that one chunk holds exactly `chunk_queries` queries
    monkeypatch.setattr(reference, "_CHUNK_BYTES", 4 * p.batch * p.heads * (p.n + t) * chunk_queries)
    assert reference._chunk_size(p.batch, p.heads, p.n + t) == chunk_queries
    out_c, lse_c = na_accel.na_joint(*args, **kw)
    torch.testing.assert_close(out_c, out_full, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(lse_c, lse_full, rtol=1e-6, atol=1e-6)
    mask = bf.full_mask(p.mask(), p.batch, t, p.extra_lengths, text_queries=True, text_first=bool(seed % 2))
    ref_out, ref_lse = bf.masked_attention(q, k, v, mask, p.scale)
    _check(out_c, lse_c, ref_out, ref_lse, torch.float64, q.shape)


def test_tiny_chunk_bytes(monkeypatch):
    """Even a chunk budget below one query row gives a chunk of one query."""
    monkeypatch.setattr(reference, "_CHUNK_BYTES", 1)
    p = bf.random_problem(5, ndim=2, extras=True)
    q, k, v, ek, ev = bf.make_inputs(p)
    out, lse = _na_flat(p, q, k, v, ek, ev, return_lse=True)
    ref_out, ref_lse = _expected(p, q, k, v, ek, ev)
    _check(out, lse, ref_out, ref_lse, p.dtype, q.shape)


# ----------------------------------------------------------------------------------------------------------------
# Dense limit equals SDPA
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid,stride,whole",
    [
        ((13,), 1, True),
        ((13,), 5, False),
        ((13,), 13, False),
        ((5, 7), (2, 7), False),
        ((5, 7), 1, True),
        ((3, 4, 5), (3, 1, 2), False),
        ((3, 4, 5), (1, 4, 5), True),
        ((1, 2, 3), 1, False),
    ],
)
@pytest.mark.parametrize("with_extra", [False, True])
def test_whole_axis_is_sdpa(grid, stride, whole, with_extra):
    g = torch.Generator().manual_seed(sum(grid))
    b, h, d, t = 2, 3, 8, 4
    n = math.prod(grid)
    q, k, v = (torch.randn(b, n, h, d, generator=g, dtype=torch.float64) for _ in range(3))
    ek, ev = (torch.randn(b, t, h, d, generator=g, dtype=torch.float64) for _ in range(2))
    ks = -1 if whole else tuple(grid)
    params = semantics.make_params(grid, ks, stride)
    assert params.is_dense and params.density() == 1.0
    kw = dict(additional_keys=ek, additional_values=ev) if with_extra else {}
    out, lse = NA_ND[len(grid)](
        q.view(b, *grid, h, d), k.view(b, *grid, h, d), v.view(b, *grid, h, d), ks, stride, backend="reference",
        return_lse=True, **kw,
    )  # fmt: skip
    kk, vv = (torch.cat([k, ek], 1), torch.cat([v, ev], 1)) if with_extra else (k, v)
    expected = F.scaled_dot_product_attention(q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2))
    torch.testing.assert_close(out.view(b, n, h, d), expected.transpose(1, 2), rtol=1e-10, atol=1e-10)
    scores = torch.einsum("bqhd,bkhd->bqhk", q, kk) / math.sqrt(d)
    torch.testing.assert_close(lse.view(b, n, h).double(), torch.logsumexp(scores, -1), rtol=1e-6, atol=1e-6)


def test_whole_axis_fp32_matches_sdpa():
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 6, 5, 2, 16, generator=g) for _ in range(3))
    out = na_accel.na2d(q, k, v, (6, -1), (4, 2), backend="reference")
    flat = [t.reshape(1, 30, 2, 16).transpose(1, 2) for t in (q, k, v)]
    expected = F.scaled_dot_product_attention(*flat).transpose(1, 2).reshape(out.shape)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Mask properties: window size, agreement with semantics.grid_mask, density
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5000, 5060))
def test_mask_properties(seed):
    p = bf.random_problem(seed)
    mask = p.mask()
    params = semantics.make_params(p.grid, p.kernel_size, p.stride, p.dilation, p.is_causal)
    k_eff = tuple(n if k == -1 else k for k, n in zip(p.kernel_size, p.grid, strict=True))
    assert params.kernel_size == k_eff
    counts = mask.sum(-1)
    if not any(p.is_causal):
        # NATTEN property: every query sees exactly prod(kernel_size) grid keys.
        assert (counts == math.prod(k_eff)).all(), counts
    else:
        assert (counts >= 1).all() and (counts <= math.prod(k_eff)).all()
        # a query always sees itself under causal masking
        assert mask.diagonal().all()
    ours = semantics.grid_mask(params, torch.arange(p.n))
    assert ours.dtype == torch.bool and ours.shape == mask.shape
    assert torch.equal(ours, mask)
    assert params.density() == pytest.approx(mask.double().mean().item(), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", range(5100, 5130))
def test_non_causal_window_count_all_axes(seed):
    """Force everything non-causal (the random problem keeps its sizes, dilation, strides)."""
    p = bf.random_problem(seed)
    mask = bf.grid_mask_bruteforce(p.grid, p.kernel_size, p.stride, p.dilation, False)
    k_eff = [n if k == -1 else k for k, n in zip(p.kernel_size, p.grid, strict=True)]
    assert (mask.sum(-1) == math.prod(k_eff)).all()
    params = semantics.make_params(p.grid, p.kernel_size, p.stride, p.dilation, False)
    assert torch.equal(semantics.grid_mask(params, torch.arange(p.n)), mask)
    assert params.density() == pytest.approx(math.prod(k_eff) / p.n, rel=1e-12)
