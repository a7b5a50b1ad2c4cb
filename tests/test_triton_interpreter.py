"""Triton GNA kernels under the Triton interpreter (CPU), against the fp32 reference, on tiny ragged grids.

Triton decides when it is imported whether kernels run compiled or interpreted, so these tests need a process
started with ``TRITON_INTERPRET=1``: ``make test`` runs them as their own pytest step
(``TRITON_INTERPRET=1 pytest -m interpreter``). In any other process they are skipped with that reason.
bf16 is computed in fp32 under the interpreter (its bf16 ``tl.dot`` is wrong).
"""

from __future__ import annotations

import math
import random

import pytest
import torch

pytest.importorskip("triton")

import na_accel  # noqa: E402
from na_accel.kernels import INTERPRETED  # noqa: E402
from na_accel.kernels.triton_grid import _tma_ok, gna_forward  # noqa: E402
from na_accel.ops.dispatch import Problem  # noqa: E402
from na_accel.ops.reference import gna_reference  # noqa: E402
from na_accel.ops.semantics import make_params  # noqa: E402
from na_accel.ops.triton import TritonBackend  # noqa: E402

pytestmark = [
    pytest.mark.interpreter,
    pytest.mark.skipif(
        not INTERPRETED,
        reason="needs a process started with TRITON_INTERPRET=1 (make test runs: TRITON_INTERPRET=1 pytest -m "
        "interpreter)",
    ),
]


def _make_problem(grid, kernel_size, stride=1, dilation=1, is_causal=False, *, batch=1, heads=2, head_dim=32,
                  dtype=torch.float32, num_extra=0, extra_lengths=None, num_text_queries=0, packed=True, lse=True,
                  seed=0):  # fmt: skip
    """A Problem with strided q/k/v views (packed [B, N, 3, H, D] like diffusers' fused QKV), NaN-poisoned outputs."""
    gen = torch.Generator().manual_seed(seed)
    params = make_params(grid, kernel_size, stride, dilation, is_causal)
    n = params.num_tokens

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(dtype)

    if packed:
        qkv = rnd(batch, n, 3, heads, head_dim)
        q, k, v = qkv.unbind(2)
    else:
        q, k, v = (rnd(batch, n, heads, head_dim) for _ in range(3))
    ek = ev = tq = None
    if num_extra:
        ekv = rnd(batch, num_extra, 2, heads, head_dim)
        ek, ev = ekv.unbind(2)
    if num_text_queries:
        tq = rnd(batch, num_text_queries, heads, head_dim)
    out = torch.full_like(q, float("nan"))
    lse_t = torch.full((batch, n, heads), float("nan")) if lse else None
    text_out = torch.full_like(tq, float("nan")) if tq is not None else None
    text_lse = torch.full((batch, num_text_queries, heads), float("nan")) if (tq is not None and lse) else None
    return Problem(q, k, v, params, head_dim**-0.5, ek, ev, extra_lengths, tq, out, lse_t, text_out, text_lse)


def _check(p: Problem, atol=None):
    ref_out, ref_lse, ref_tout, ref_tlse = gna_reference(
        p.query.float(), p.key.float(), p.value.float(), p.params, p.scale,
        None if p.extra_key is None else p.extra_key.float(), None if p.extra_value is None else p.extra_value.float(),
        p.extra_lengths, None if p.text_query is None else p.text_query.float(),
    )  # fmt: skip
    if atol is None:
        atol = 2e-5 if p.query.dtype == torch.float32 else (2e-3 if p.query.dtype == torch.float16 else 2e-2)
    assert not torch.isnan(p.out).any(), "some outputs were not written"
    torch.testing.assert_close(p.out.float(), ref_out, atol=atol, rtol=0)
    if p.lse is not None:
        assert not torch.isnan(p.lse).any(), "some lse entries were not written"
        torch.testing.assert_close(p.lse, ref_lse, atol=1e-4, rtol=1e-5)
    if p.text_query is not None:
        assert not torch.isnan(p.text_out).any(), "some text outputs were not written"
        torch.testing.assert_close(p.text_out.float(), ref_tout, atol=atol, rtol=0)
        if p.text_lse is not None:
            torch.testing.assert_close(p.text_lse, ref_tlse, atol=1e-4, rtol=1e-5)


# (grid, kernel_size, stride, dilation, is_causal)
CASES = [
    ((37,), 7, 1, 1, False),
    ((37,), 8, 3, 1, False),  # even window, GNA stride, ragged tiles
    ((37,), 5, 5, 2, False),  # blocked + dilation, group lengths 19 and 18
    ((37,), 6, 2, 1, True),  # causal with stride
    ((48,), 32, 16, 1, False),  # tile-aligned GNA: every key tile fully inside (unmasked loop only)
    ((8, 16), (4, 8), (4, 8), (1, 1), (False, False)),  # blocked, tile-aligned in 2-D
    ((9, 11), (3, 4), (1, 1), (1, 1), (False, False)),
    ((9, 11), (4, 5), (2, 5), (2, 1), (False, False)),
    ((9, 11), (3, 3), (1, 2), (1, 3), (True, False)),
    ((9, 11), (-1, 3), (1, 1), (1, 1), (False, True)),  # whole axis + causal axis
    ((4, 5, 7), (3, 3, 3), (1, 1, 1), (1, 1, 1), (False, False, False)),
    ((4, 5, 7), (2, 4, 3), (2, 2, 3), (1, 1, 1), (False, False, False)),  # even windows, blocked axis
    ((4, 5, 5), (2, 2, 2), (1, 1, 1), (2, 2, 2), (False, False, False)),  # dilation everywhere, ragged groups
    ((4, 6, 7), (3, 3, 4), (3, 1, 2), (1, 2, 1), (True, False, False)),  # video-style causal time axis
    ((3, 4, 5), (-1, -1, -1), (1, 1, 1), (1, 1, 1), (False, False, False)),  # dense
    ((1, 6, 7), (1, 3, 3), (1, 1, 1), (1, 1, 1), (False, False, False)),  # size-1 axis
]


def _case_id(c) -> str:
    return f"{c[0]}-k{c[1]}-s{c[2]}-d{c[3]}-c{c[4]}".replace(" ", "")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_reference_fp32(case):
    grid, ks, st, dil, causal = case
    # batch 2 on 1-D, 2 heads on 1-D and 2-D (3-D cases are the costly ones under the interpreter)
    p = _make_problem(grid, ks, st, dil, causal, batch=2 if len(grid) == 1 else 1, heads=1 if len(grid) == 3 else 2)
    gna_forward(p)
    _check(p)


@pytest.mark.parametrize(
    "tq,tk",
    [((1, 1, 16), (1, 4, 4)), ((4, 2, 2), (1, 1, 16)), ((2, 4, 4), (2, 2, 8)), ((8, 8, 8), (4, 4, 4))],
)
def test_tile_shapes(tq, tk):
    """Other query/key tile shapes (mismatched, larger than the grid) give the same result."""
    p = _make_problem((3, 5, 7), (3, 4, 3), (1, 2, 1), (1, 1, 2), (False, False, True), heads=1)
    gna_forward(p, config={"tq": tq, "tk": tk})
    _check(p)


def _random_case(ndim: int, trial: int):
    """A random valid (grid, kernel_size, stride, dilation, is_causal), seeded by ``ndim`` and ``trial``."""
    rng = random.Random(1000 * ndim + trial)
    grid = tuple(rng.randint(3, 6 if ndim == 3 else 14) for _ in range(ndim))
    ks, st, dil, causal = [], [], [], []
    for n in grid:
        d = rng.choice([1, 1, 2]) if n >= 4 else 1
        k = rng.randint(1, n // d)
        ks.append(k)
        st.append(rng.randint(1, k))
        dil.append(d)
        causal.append(rng.random() < 0.25)
    return grid, tuple(ks), tuple(st), tuple(dil), tuple(causal)


RANDOM_CASES = [(trial, _random_case(ndim, trial)) for ndim in (1, 2, 3) for trial in range(2)]


@pytest.mark.parametrize("trial,case", RANDOM_CASES, ids=lambda x: x if isinstance(x, int) else _case_id(x))
def test_random_problems(trial, case):
    """Random valid problems (seeded), packed and contiguous inputs."""
    p = _make_problem(*case, seed=trial, packed=trial % 2 == 0)
    gna_forward(p)
    _check(p)


@pytest.mark.parametrize("lengths", [None, [3, 0], [19, 7]])
def test_extra_keys_with_padding(lengths):
    extra_lengths = None if lengths is None else torch.tensor(lengths)
    p = _make_problem((3, 4, 5), (3, 3, 3), (1, 2, 1), batch=2, heads=1, num_extra=19, extra_lengths=extra_lengths)
    gna_forward(p)
    _check(p)


@pytest.mark.parametrize("splits", [None, 1, 3])
def test_text_queries(splits):
    """Dense text queries over all grid keys and the valid extra keys; split over the keys or not."""
    p = _make_problem((3, 4, 5), (3, 3, 3), (2, 2, 2), batch=2, heads=1, num_extra=21,
                      extra_lengths=torch.tensor([21, 9]), num_text_queries=21)  # fmt: skip
    text_config = None if splits is None else {"num_splits": splits}
    gna_forward(p, text_config=text_config)
    _check(p)


def test_text_queries_without_extra_keys_and_lse():
    p = _make_problem((9, 11), (3, 5), num_text_queries=5, lse=False)
    gna_forward(p, text_config={"num_splits": 2})
    _check(p)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    p = _make_problem((3, 4, 5), (3, 3, 3), (1, 1, 2), dtype=dtype, num_extra=8, num_text_queries=4)
    gna_forward(p)
    _check(p)


# Each case has full key tiles (the tile box F of the query tile is not empty under configs.INTERPRETER's tiles,
# query (2, 2, 4) and key (2, 4, 2) in 3-D, (4, 4) and (2, 8) in 2-D), so the full-tile loop runs.
DESCRIPTOR_CASES = {
    "gna-full-tiles-only-packed-batch2-fp16": ((2, 8, 8), (2, 4, 4), (2, 4, 4), 1, 2, True, torch.float16),
    "na-full-and-masked-tiles-bf16": ((4, 6, 8), (3, 5, 5), (1, 1, 1), 1, 1, False, torch.bfloat16),
    "2d-gna-contiguous-batch2-fp16": ((8, 16), (4, 8), (4, 8), 1, 2, False, torch.float16),
    "dilation-pointer-path-bf16": ((2, 10, 6), (2, 5, 5), (1, 1, 1), (1, 2, 1), 1, True, torch.bfloat16),
}


@pytest.mark.parametrize("case", list(DESCRIPTOR_CASES))
def test_descriptor_path(case):
    """16-bit inputs read the full key tiles through 5-D tensor descriptors where the layout allows (dilation 1,
    batch foldable into the token axis), else by pointers."""
    grid, ks, st, dil, batch, packed, dtype = DESCRIPTOR_CASES[case]
    p = _make_problem(grid, ks, st, dil, batch=batch, heads=1, packed=packed, dtype=dtype, lse=False)
    dl3 = (1,) * (3 - len(grid)) + ((dil,) * len(grid) if isinstance(dil, int) else tuple(dil))
    assert _tma_ok(p, dl3, 32) is (dil == 1)
    gna_forward(p)
    _check(p)


@pytest.mark.parametrize("batch", [1, 2])
def test_descriptor_needs_foldable_batch(batch):
    """A batch that does not fold into axis 0 (a view of a longer sequence) takes the pointer path; batch 1 always
    folds."""
    p = _make_problem((2, 8, 8), (2, 4, 4), (2, 4, 4), batch=batch, dtype=torch.float16, lse=False)
    assert _tma_ok(p, (1, 1, 1), 32)
    q2 = torch.cat([p.query, p.query[:, :3]], 1)[:, : p.query.shape[1]]
    p2 = Problem(q2, q2, q2, p.params, p.scale, None, None, None, None, p.out, None, None, None)
    assert _tma_ok(p2, (1, 1, 1), 32) is (batch == 1)


@pytest.mark.parametrize("head_dim", [8, 40])
def test_head_dims(head_dim):
    """Head dims that are not powers of two are padded (masked) to the next one (at least 16 for tl.dot)."""
    p = _make_problem((7, 9), (3, 4), (2, 1), head_dim=head_dim, num_extra=3, num_text_queries=3)
    gna_forward(p)
    _check(p)


def test_contiguous_inputs_and_strided_outputs():
    p = _make_problem((6, 7), (3, 3), packed=False)
    out_buf = torch.full((1, 42, 2, 2, 32), float("nan"))
    p.out = out_buf[:, :, :, 1]  # a strided output view
    gna_forward(p)
    _check(p)
    assert torch.isnan(out_buf[:, :, :, 0]).all(), "wrote outside the output view"


def test_functional_api_and_auto_choice():
    """Through na_accel's public API (custom op) with backend='triton' and 'auto' (picks triton when interpreting)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 5, 1, 16) for _ in range(3))
    ref = na_accel.na3d(q, k, v, (3, 3, 3), (1, 2, 1), backend="reference")
    out = na_accel.na3d(q, k, v, (3, 3, 3), (1, 2, 1), backend="triton")
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
    from na_accel.ops.dispatch import select_backend

    p = _make_problem((3, 4, 5), 3)
    assert select_backend("auto", p).name == "triton"


def test_joint_text_first_with_lengths():
    torch.manual_seed(1)
    grid, t = (3, 4, 5), 7
    x = [torch.randn(2, t + math.prod(grid), 1, 16) for _ in range(3)]
    lengths = torch.tensor([7, 2])
    kw = dict(text_first=True, text_lengths=lengths, return_lse=True)
    out, lse = na_accel.na_joint(*x, grid, t, (2, 3, 3), (1, 1, 2), backend="triton", **kw)
    ref, ref_lse = na_accel.na_joint(*x, grid, t, (2, 3, 3), (1, 1, 2), backend="reference", **kw)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=1e-4, rtol=1e-5)


def test_unavailable_reasons():
    backend = TritonBackend()
    assert backend.unavailable_reason(_make_problem((4, 5), 3)) is None
    p64 = _make_problem((4, 5), 3, dtype=torch.float64)
    assert "float16" in backend.unavailable_reason(p64)


@pytest.mark.parametrize("env,expected", [(None, "CUDA"), ("1", "before the process starts")])
def test_unavailable_without_interpreter(monkeypatch, env, expected):
    """In a compiled-mode process CPU tensors are refused, with a hint when TRITON_INTERPRET was set too late."""
    monkeypatch.setattr("na_accel.ops.triton.INTERPRETED", False)
    if env is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", env)
    assert expected in TritonBackend().unavailable_reason(_make_problem((4, 5), 3))
    x = torch.randn(1, 4, 5, 1, 16)
    with pytest.raises(na_accel.BackendUnavailableError, match=expected):
        na_accel.na2d(x, x, x, 3, backend="triton")


def test_text_queries_only():
    """grid_queries=False runs only the dense text queries (the Gluon kernel does the grid queries on Hopper)."""
    p = _make_problem((3, 4, 5), (3, 3, 3), (2, 2, 2), batch=2, heads=1, num_extra=7,
                      extra_lengths=torch.tensor([7, 2]), num_text_queries=5)  # fmt: skip
    gna_forward(p, grid_queries=False)
    assert torch.isnan(p.out).all() and torch.isnan(p.lse).all(), "grid queries must be left alone"
    p.out.zero_()
    p.lse.zero_()
    ref = gna_reference(p.query, p.key, p.value, p.params, p.scale, p.extra_key, p.extra_value, p.extra_lengths,
                        p.text_query)  # fmt: skip
    torch.testing.assert_close(p.text_out, ref[2], atol=2e-5, rtol=0)
    torch.testing.assert_close(p.text_lse, ref[3], atol=1e-4, rtol=1e-5)


def test_gluon_path_reasons(monkeypatch):
    """The Gluon kernel (Hopper, CUDA) never takes CPU problems; NA_ACCEL_GLUON=0 turns it off."""
    from na_accel.ops.triton import gluon_reason

    p = _make_problem((4, 5), 3)
    assert "CUDA" in gluon_reason(p)
    monkeypatch.setenv("NA_ACCEL_GLUON", "0")
    assert "NA_ACCEL_GLUON=0" in gluon_reason(p)
    backend = TritonBackend()
    backend.forward(p)
    assert backend.last_path == "triton"
    _check(p)
