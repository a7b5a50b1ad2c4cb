"""The ``sdpa`` backend: dense problems (windows covering the whole grid) go to PyTorch SDPA under ``auto``."""

from __future__ import annotations

import pytest
import torch

import na_accel
from na_accel.errors import BackendUnavailableError
from na_accel.ops import dispatch, semantics


def _qkv(shape, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype) for _ in range(3)]


def _problem(q, k, v, params, **kw):
    fields = dict(
        query=q, key=k, value=v, params=params, scale=0.5, extra_key=None, extra_value=None, extra_lengths=None,
        text_query=None, out=torch.empty_like(q), lse=None, text_out=None, text_lse=None,
    )  # fmt: skip
    fields.update(kw)
    return dispatch.Problem(**fields)


@pytest.mark.parametrize("grid", [(7,), (3, 5), (2, 3, 4)], ids=str)
def test_auto_routes_dense_to_sdpa_and_matches_reference(grid):
    n = 1
    for x in grid:
        n *= x
    q, k, v = _qkv((2, n, 3, 8), n)
    params = semantics.make_params(grid, -1)
    assert dispatch.select_backend("auto", _problem(q, k, v, params)).name == "sdpa"
    # window == axis length is dense too; so is a window clamped to the grid by the caller
    params2 = semantics.make_params(grid, list(grid))
    assert dispatch.select_backend("auto", _problem(q, k, v, params2)).name == "sdpa"
    out = na_accel.na_flat(q, k, v, grid, -1, scale=0.3)
    ref = na_accel.na_flat(q, k, v, grid, -1, scale=0.3, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # plain attention, independently
    expect = torch.softmax(torch.einsum("bnhd,bmhd->bhnm", q, k) * 0.3, -1)
    torch.testing.assert_close(out, torch.einsum("bhnm,bmhd->bnhd", expect, v), rtol=1e-5, atol=1e-5)


def test_sdpa_joint_text_matches_reference():
    grid, n_text = (3, 4), 5
    n = 12
    q, k, v = _qkv((2, n_text + n, 2, 8), 3)
    out = na_accel.na_joint(q, k, v, grid, n_text, -1, text_first=True)
    ref = na_accel.na_joint(q, k, v, grid, n_text, -1, text_first=True, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    extra = dict(additional_keys=k[:, n:], additional_values=v[:, n:])
    out2 = na_accel.na_flat(q[:, :n], k[:, :n], v[:, :n], grid, -1, **extra, backend="sdpa")
    ref2 = na_accel.na_flat(q[:, :n], k[:, :n], v[:, :n], grid, -1, **extra, backend="reference")
    torch.testing.assert_close(out2, ref2, rtol=1e-5, atol=1e-5)


def test_sdpa_rejections():
    q, k, v = _qkv((1, 12, 2, 8), 0)
    sparse = semantics.make_params((3, 4), 3)
    assert dispatch.select_backend("auto", _problem(q, k, v, sparse)).name != "sdpa"
    with pytest.raises(BackendUnavailableError, match="do not cover the whole grid"):
        na_accel.na_flat(q, k, v, (3, 4), 3, backend="sdpa")
    causal = semantics.make_params((12,), -1, is_causal=True)
    assert "do not cover" in dispatch.get_backend("sdpa").unavailable_reason(_problem(q, k, v, causal))
    dense = semantics.make_params((3, 4), -1)
    lse = torch.empty(1, 12, 2)
    assert dispatch.select_backend("auto", _problem(q, k, v, dense, lse=lse)).name != "sdpa"
    out, lse = na_accel.na_flat(q, k, v, (3, 4), -1, return_lse=True)  # auto passes sdpa over, still correct
    ref, lse_ref = na_accel.na_flat(q, k, v, (3, 4), -1, return_lse=True, backend="reference")
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    lengths = torch.tensor([2])
    ek, ev = k[:, :4], v[:, :4]
    p = _problem(q, k, v, dense, extra_key=ek, extra_value=ev, extra_lengths=lengths)
    assert dispatch.select_backend("auto", p).name != "sdpa"


# ----------------------------------------------------------------------------------------------------------------
# masked_sdpa: sparse problems as one SDPA call with the exact GNA mask (CPU)
# ----------------------------------------------------------------------------------------------------------------

try:
    import bruteforce as bf
except ImportError:  # pragma: no cover - tests/ made a package
    from tests import bruteforce as bf


@pytest.mark.parametrize("seed", range(400, 416))
def test_masked_sdpa_flat_matches_bruteforce(seed):
    p = bf.random_problem(seed)
    q, k, v, ek, ev = bf.make_inputs(p)
    lengths = None if p.extra_lengths is None else torch.tensor(p.extra_lengths)
    out = na_accel.na_flat(q, k, v, p.grid, p.kernel_size, p.stride, p.dilation, p.is_causal, scale=p.scale,
                           additional_keys=ek, additional_values=ev, additional_lengths=lengths,
                           backend="masked_sdpa")  # fmt: skip
    ref = na_accel.na_flat(q, k, v, p.grid, p.kernel_size, p.stride, p.dilation, p.is_causal, scale=p.scale,
                           additional_keys=ek, additional_values=ev, additional_lengths=lengths,
                           backend="reference")  # fmt: skip
    tol = dict(rtol=1e-9, atol=1e-9) if p.dtype == torch.float64 else dict(rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(out, ref, **tol)


@pytest.mark.parametrize("text_first", [False, True], ids=["text_last", "text_first"])
def test_masked_sdpa_joint_with_padding_matches_bruteforce(text_first):
    grid, ks, st, b, h, d, t = (3, 9, 5), (2, 3, 4), (1, 2, 4), 2, 2, 8, 3
    g = torch.Generator().manual_seed(7)
    n = 3 * 9 * 5
    q, k, v = (torch.randn(b, n + t, h, d, generator=g) for _ in range(3))
    lengths = torch.tensor([0, 2])
    out = na_accel.na_joint(q, k, v, grid, t, ks, st, text_first=text_first, text_lengths=lengths,
                            backend="masked_sdpa")  # fmt: skip
    ref = na_accel.na_joint(q, k, v, grid, t, ks, st, text_first=text_first, text_lengths=lengths,
                            backend="reference")  # fmt: skip
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=2e-5)
    if not text_first:  # the same against the brute-force mask (text after the grid)
        mask = bf.full_mask(bf.grid_mask_bruteforce(grid, ks, st), b, t, [0, 2], True)
        ref_out, _ = bf.masked_attention(q, k, v, mask)
        torch.testing.assert_close(out.double(), ref_out, rtol=1e-4, atol=2e-5)


def test_masked_sdpa_rejections():
    q, k, v = _qkv((1, 12, 2, 4), 0)
    params = semantics.make_params((3, 4), 2)
    with pytest.raises(BackendUnavailableError, match="log-sum-exp"):
        na_accel.na_flat(q, k, v, (3, 4), 2, backend="masked_sdpa", return_lse=True)
    backend = dispatch.get_backend("masked_sdpa")
    assert backend.unavailable_reason(_problem(q, k, v, params)) is None
    if torch.cuda.is_available():  # pragma: no cover - CPU CI
        qc = q.cuda()
        assert "CUDA" in backend.auto_rejection(_problem(qc, qc, qc, params))
