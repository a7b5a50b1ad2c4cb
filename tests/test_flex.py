"""The FlexAttention backend (eager on CPU) against the reference backend and the brute-force oracle."""

from __future__ import annotations

import itertools
import logging
import math
import warnings

import pytest
import torch

import na_accel
from na_accel.ops import dispatch, flex, semantics

try:
    import bruteforce as bf
except ImportError:  # pragma: no cover - tests/ made a package
    from tests import bruteforce as bf

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _lengths(p: bf.RandomProblem):
    return None if p.extra_lengths is None else torch.tensor(p.extra_lengths, dtype=torch.int64)


def _tol(dtype):
    return dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5)


# ----------------------------------------------------------------------------------------------------------------
# Tiled layout
# ----------------------------------------------------------------------------------------------------------------

GRIDS = [(1,), (5,), (128,), (131,), (1, 1), (16, 8), (17, 9), (3, 30), (2, 8, 8), (3, 9, 5), (1, 1, 1), (5, 17, 8)]


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_tiled_round_trip(grid):
    params = semantics.make_params(grid, 1)
    b, h, d = 2, 3, 2
    n = math.prod(grid)
    x = torch.randn(b, n, h, d, generator=torch.Generator().manual_seed(n))
    tiled = flex.to_tiled(x, params)
    pgrid = flex.padded_grid(params)
    tile = flex.tile_shape(params)
    assert math.prod(tile) == flex.BLOCK
    assert all(pn % t == 0 and n_ <= pn < n_ + t for pn, t, n_ in zip(pgrid, tile, grid, strict=True))
    n_pad = math.prod(pgrid)
    assert tiled.shape == (b, h, n_pad, d)
    assert torch.equal(flex.from_tiled(tiled, params), x)
    # Every tiled position holds the token at tiled_coords (raster index computed here), or zero padding;
    # each 128-token block of the tiled sequence is one tile of the grid.
    coords = flex.tiled_coords(torch.arange(n_pad), params)
    seen = set()
    for i in range(n_pad):
        c = tuple(int(a[i]) for a in coords)
        assert c not in seen
        seen.add(c)
        assert all(0 <= ci < pn for ci, pn in zip(c, pgrid, strict=True))
        block_tile = tuple(ci // t for ci, t in zip(c, tile, strict=True))
        first = tuple(int(a[(i // flex.BLOCK) * flex.BLOCK]) // t for a, t in zip(coords, tile, strict=True))
        assert block_tile == first
        if all(ci < gi for ci, gi in zip(c, grid, strict=True)):
            raster = 0
            for ci, gi in zip(c, grid, strict=True):
                raster = raster * gi + ci
            assert torch.equal(tiled[:, :, i], x[:, raster])
        else:
            assert (tiled[:, :, i] == 0).all()
    assert len(seen) == n_pad


# ----------------------------------------------------------------------------------------------------------------
# The mask_mod against the brute-force mask
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(100, 112))
def test_mask_mod_matches_bruteforce(seed):
    p = bf.random_problem(seed, extras=True)
    params = semantics.make_params(p.grid, p.kernel_size, p.stride, p.dilation, p.is_causal)
    t = p.num_extra
    lengths = _lengths(p)
    mask_mod = flex.make_mask_mod(params, t, lengths)
    n_pad = math.prod(flex.padded_grid(params))
    coords = flex.tiled_coords(torch.arange(n_pad), params)
    # tiled position -> raster index (or -1 for padding)
    raster = torch.full((n_pad,), -1, dtype=torch.long)
    inside = torch.ones(n_pad, dtype=torch.bool)
    idx = torch.zeros(n_pad, dtype=torch.long)
    for c, g in zip(coords, p.grid, strict=True):
        inside &= c < g
        idx = idx * g + c
    raster[inside] = idx[inside]
    expected = bf.full_mask(p.mask(), p.batch, t, p.extra_lengths, text_queries=True)  # [B, N+T, N+T]
    q_idx = torch.arange(n_pad + t)[:, None]
    kv_idx = torch.arange(n_pad + t)[None, :]
    # sequence position (grid raster then text) of each tiled index
    seq = torch.cat([raster, p.n + torch.arange(t)])
    for b in range(p.batch):
        got = mask_mod(torch.tensor(b), torch.tensor(0), q_idx, kv_idx)
        got = got.expand(n_pad + t, n_pad + t)
        valid_q = seq >= 0
        sub = got[valid_q][:, valid_q]
        order = seq[valid_q]
        want = expected[b][order][:, order]
        assert torch.equal(sub, want), f"batch {b}"
        # padded grid keys are never attended
        assert not got[:, ~valid_q].any()


# ----------------------------------------------------------------------------------------------------------------
# Flex vs reference
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(200, 228))
def test_flex_vs_reference(seed):
    p = bf.random_problem(seed)
    q, k, v, ek, ev = bf.make_inputs(p)
    args = (q, k, v, p.grid, p.kernel_size, p.stride, p.dilation, p.is_causal)
    kw = dict(scale=p.scale, additional_keys=ek, additional_values=ev, additional_lengths=_lengths(p), return_lse=True)
    out_f, lse_f = na_accel.na_flat(*args, backend="flex", **kw)
    out_r, lse_r = na_accel.na_flat(*args, backend="reference", **kw)
    assert out_f.dtype == p.dtype and lse_f.dtype == torch.float32
    torch.testing.assert_close(out_f, out_r, **_tol(p.dtype))
    torch.testing.assert_close(lse_f, lse_r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("text_first", [False, True], ids=["text_last", "text_first"])
@pytest.mark.parametrize("seed", range(300, 306))
def test_flex_joint_vs_reference(seed, text_first):
    p = bf.random_problem(seed, extras=True)
    t = p.num_extra
    q, k, v, _, _ = bf.make_inputs(p, tokens=p.n + t, extra=False)
    args = (q, k, v, p.grid, t, p.kernel_size, p.stride, p.dilation, p.is_causal)
    kw = dict(scale=p.scale, text_first=text_first, text_lengths=_lengths(p), return_lse=True)
    out_f, lse_f = na_accel.na_joint(*args, backend="flex", **kw)
    out_r, lse_r = na_accel.na_joint(*args, backend="reference", **kw)
    torch.testing.assert_close(out_f, out_r, **_tol(p.dtype))
    torch.testing.assert_close(lse_f, lse_r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "grid,kernel_size,stride,dilation,is_causal",
    [
        ((3, 17, 10), (2, 5, 4), (1, 3, 4), 1, False),  # ragged on every axis, GNA
        ((5, 9, 9), (3, 3, 3), (1, 1, 1), (1, 3, 2), (True, False, False)),  # dilation + causal time
        ((20, 9), (6, 4), (6, 2), (3, 1), False),  # 2-D ragged tiles, dilation
        ((131,), 8, 8, 1, False),  # 1-D, just over one tile
    ],
)
def test_flex_ragged_vs_bruteforce(grid, kernel_size, stride, dilation, is_causal):
    g = torch.Generator().manual_seed(sum(grid))
    b, h, d, t = 2, 2, 8, 3
    n = math.prod(grid)
    q, k, v = (torch.randn(b, n + t, h, d, generator=g) for _ in range(3))
    lengths = torch.tensor([0, 2])
    out, lse = na_accel.na_joint(
        q, k, v, grid, t, kernel_size, stride, dilation, is_causal, text_lengths=lengths, backend="flex",
        return_lse=True,
    )  # fmt: skip
    mask = bf.full_mask(bf.grid_mask_bruteforce(grid, kernel_size, stride, dilation, is_causal), b, t, [0, 2], True)
    ref_out, ref_lse = bf.masked_attention(q, k, v, mask)
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Backend choice on CPU
# ----------------------------------------------------------------------------------------------------------------


def _problem(q, k, v, params):
    return dispatch.Problem(
        query=q, key=k, value=v, params=params, scale=1.0, extra_key=None, extra_value=None, extra_lengths=None,
        text_query=None, out=torch.empty_like(q), lse=None, text_out=None, text_lse=None,
    )  # fmt: skip


def test_auto_on_cpu_picks_masked_sdpa_then_reference(caplog):
    """Off CUDA, auto passes over flex and triton, takes SDPA with the GNA mask, and the reference when the
    log-sum-exp is asked for (masked SDPA does not return it) or the mask would be too large."""
    q, k, v = (torch.randn(1, 5, 7, 2, 4) for _ in range(3))
    params = semantics.make_params((5, 7), 3)
    flat = [t.reshape(1, 35, 2, 4) for t in (q, k, v)]
    assert dispatch.select_backend("auto", _problem(*flat, params)).name == "masked_sdpa"
    with_lse = _problem(*flat, params)
    with_lse.lse = torch.empty(1, 35, 2)
    assert dispatch.select_backend("auto", with_lse).name == "reference"
    big = semantics.make_params((9000,), 3)
    flat_big = [torch.randn(1, 9000, 1, 4) for _ in range(3)]
    assert dispatch.select_backend("auto", _problem(*flat_big, big)).name == "reference"
    caplog.set_level(logging.DEBUG, logger="na_accel")
    with warnings.catch_warnings():
        # auto must not run flex eagerly on CPU (it would warn)
        warnings.filterwarnings("error", message="flex_attention called without torch.compile")
        out = na_accel.na2d(q, k, v, 3, backend="auto")
    messages = [r.getMessage() for r in caplog.records if r.name == "na_accel"]
    assert any("'flex'" in m and "rejected" in m for m in messages), messages
    if "triton" in dispatch.available_backends():
        assert any("'triton'" in m and "rejected" in m for m in messages), messages
    else:
        assert any("'triton'" in m and "not installed" in m for m in messages), messages
    torch.testing.assert_close(out, na_accel.na2d(q, k, v, 3, backend="reference"), rtol=1e-5, atol=1e-6)


def test_flex_explicit_on_cpu():
    q, k, v = (torch.randn(2, 3, 4, 5, 1, 8) for _ in range(3))
    params = semantics.make_params((3, 4, 5), (3, 2, 3))
    flat = [t.reshape(2, 60, 1, 8) for t in (q, k, v)]
    assert dispatch.select_backend("flex", _problem(*flat, params)).name == "flex"
    assert "flex" in dispatch.available_backends() and "reference" in dispatch.available_backends()
    out = na_accel.na3d(q, k, v, (3, 2, 3), backend="flex")
    ref = na_accel.na3d(q, k, v, (3, 2, 3), backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=2e-5)


def test_flex_block_mask_cache_distinguishes_lengths():
    """Two calls differing only in extra_lengths must not share a cached block mask."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 10, 1, 4, generator=g) for _ in range(3))
    ek, ev = (torch.randn(2, 3, 1, 4, generator=g) for _ in range(2))
    for lens in ([3, 0], [1, 2], [3, 0]):
        lengths = torch.tensor(lens)
        kw = dict(additional_keys=ek, additional_values=ev, additional_lengths=lengths)
        out_f = na_accel.na1d(q, k, v, 3, backend="flex", **kw)
        out_r = na_accel.na1d(q, k, v, 3, backend="reference", **kw)
        torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=2e-5)


def test_every_tiled_index_pair_consistent():
    """tiled_coords agrees with to_tiled for a coordinate-encoding tensor (3-D, ragged)."""
    grid = (3, 9, 10)
    params = semantics.make_params(grid, 1)
    coords = torch.tensor(list(itertools.product(*[range(n) for n in grid])), dtype=torch.float64)  # raster
    x = (coords + 1)[None, :, None, :]  # [1, N, 1, 3], +1 so padding (0) is distinguishable
    tiled = flex.to_tiled(x, params)[0, 0]  # [Np, 3]
    tc = torch.stack(flex.tiled_coords(torch.arange(tiled.shape[0]), params), -1).double()
    inside = (tiled != 0).all(-1)
    assert torch.equal(tiled[inside] - 1, tc[inside])
    assert int(inside.sum()) == math.prod(grid)
