"""``precision="fp8"`` off Hopper: the 8-bit layout step under the Triton interpreter, and the fallback of the
functional API (the call runs in the inputs' precision, bit-identical, with the reason counted and logged once)."""

from __future__ import annotations

import math
import types

import pytest
import torch

import na_accel
from na_accel.errors import ShapeError
from na_accel.kernels import INTERPRETED, configs
from na_accel.ops.precision import fp8_fallbacks, reset_fp8_fallbacks

try:
    from fp8_expected import expected_tiled
except ImportError:  # pragma: no cover - tests/ made a package
    from tests.fp8_expected import expected_tiled


@pytest.mark.interpreter
@pytest.mark.skipif(not INTERPRETED, reason="needs a process started with TRITON_INTERPRET=1")
@pytest.mark.parametrize("qk_int8", [True, False], ids=["int8-qk", "e4m3-qk"])
@pytest.mark.parametrize("grid,extra,lengths", [((3, 10, 12), 0, None), ((2, 9, 17), 20, [20, 13])])
def test_layout_step_under_the_interpreter(grid, extra, lengths, qk_int8):
    """Positions, padding and scales exactly; int8 values exactly; the e4m3 values within one e4m3 step of PyTorch's
    rounding (the interpreter's float8 cast rounds ties away from zero), or half of it where PyTorch rounds up to a
    power of two (the interpreter's cast drops that carry into the exponent). Triton 3.x interpreter; on the GPU the
    bytes are equal (tests/test_gluon_fp8_gpu.py)."""
    from na_accel.kernels.fp8_layout import quantize_tiled

    torch.manual_seed(0)
    b, h, d = 2, 3, 32
    n = math.prod(grid)
    q, k, v = (torch.randn(b, n, h, d, dtype=torch.float16) for _ in range(3))
    k = k + 3.0
    ek = ev = el = None
    if extra:
        ek, ev = (torch.randn(b, extra, h, d, dtype=torch.float16) for _ in range(2))
        el = torch.tensor(lengths, dtype=torch.int32)
    p = types.SimpleNamespace(query=q, key=k, value=v, extra_key=ek, extra_value=ev, extra_lengths=el)
    tile = configs.GLUON[3].tq
    got = quantize_tiled(p, tile, grid, 0.5, qk_int8=qk_int8)
    want = expected_tiled(q, k, v, ek, ev, el, grid, tile, 0.5, qk_int8=qk_int8)
    for name in ("q_scale", "k_scale", "v_scale"):
        torch.testing.assert_close(getattr(got, name), want[name], rtol=0, atol=0)
    for name in ("q8", "k8", "vt8"):
        if qk_int8 and name != "vt8":  # int8: exact
            assert torch.equal(getattr(got, name).view(want[name].shape), want[name]), name
            continue
        g = getattr(got, name).view(want[name].shape).float()
        w = want[name].float()
        mantissa, exponent = torch.frexp(w.abs())
        step = torch.ldexp(torch.ones_like(w), exponent - 4).clamp(min=2.0**-9)  # 3 mantissa bits; subnormal step
        ok = ((g - w).abs() <= step) | ((mantissa == 0.5) & (g == w / 2))
        assert ok.all(), f"{name}: {(~ok).sum()} of {ok.numel()} values differ"
        assert (g == w).float().mean() > 0.95, name


def test_fp8_off_hopper_falls_back_bit_identical():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 6, 8, 5, 2, 16) for _ in range(3))
    reset_fp8_fallbacks()
    out = na_accel.na3d(q, k, v, (3, 3, 3), precision="fp8")
    assert torch.equal(out, na_accel.na3d(q, k, v, (3, 3, 3)))
    reasons = fp8_fallbacks()
    assert sum(reasons.values()) == 1 and "no 8-bit path" in next(iter(reasons)), reasons
    na_accel.na3d(q, k, v, (3, 3, 3), precision="fp8")
    assert sum(fp8_fallbacks().values()) == 2  # counted every call, logged once per reason


def test_fp8_dense_off_hopper_falls_back_through_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 48, 2, 16) for _ in range(3))
    reset_fp8_fallbacks()
    out = na_accel.na_flat(q, k, v, (6, 8), -1, precision="fp8")
    torch.testing.assert_close(out, na_accel.na_flat(q, k, v, (6, 8), -1), rtol=0, atol=0)
    assert any("'sdpa'" in r for r in fp8_fallbacks()), fp8_fallbacks()


def test_bad_precision_says_what_is_allowed():
    q = torch.randn(1, 16, 1, 8)
    with pytest.raises(ShapeError, match=r"precision must be one of 'bf16', 'fp8', got 'int4'"):
        na_accel.na_flat(q, q, q, (4, 4), 3, precision="int4")
