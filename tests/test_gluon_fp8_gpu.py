"""The 8-bit Gluon kernel (``precision="fp8"``, Hopper) against the inputs' precision.

* The layout step stores exactly what its definition says: every tile's bytes equal PyTorch's own int8 / float8
  e4m3 rounding of the scaled, smoothed inputs in tiled order, and padding rows are zero; it reads strided inputs
  (the grid part of a batched joint sequence) without a 16-bit fallback.
* Accuracy of the 8-bit path on fresh random inputs (odd grids with ragged tiles, 1-/2-/3-D, GNA, NA, dense,
  extra keys with per-batch lengths, head dims 64 and 128, fp16 and bf16, keys with a large common offset) against
  the fp32 reference, and per layer on Q/K/V captured from the embedded trained model (sparse and dense steps);
  ``out`` is filled with NaN first, so every valid position must be written. Two bounds: a regression bound
  (cosine >= 0.997, rel. L2 <= 0.08: far below what a wrong tile, scale or layout gives) and issue 15's gates
  (cosine >= 0.999, rel. L2 <= 0.03). With int8 Q/K (``configs.FP8_QK_INT8``) the trained model's layers meet the
  gates (H200: worst 0.99988 / 0.023); on iid inputs the e4m3 P and V keep ~0.04 (bench/fp8_design.py): a strict
  xfail, so the day a design meets it the test says so.
* Where the 8-bit kernel cannot run (fp32 inputs, head dim 96, dilation), the call runs in the inputs' precision,
  bit-identical to ``precision="bf16"``, with the reason counted.
"""

from __future__ import annotations

import math

import pytest
import torch

import na_accel
from na_accel.kernels import configs
from na_accel.ops.dispatch import Problem
from na_accel.ops.precision import fp8_fallbacks, reset_fp8_fallbacks
from na_accel.ops.semantics import make_params

try:
    from fp8_expected import expected_tiled
except ImportError:  # pragma: no cover - tests/ made a package
    from tests.fp8_expected import expected_tiled

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DEV = "cuda"
MIN_COS = 0.999  # issue 15's gates
MAX_REL_L2 = 0.03
MEASURED_MIN_COS = 0.997  # regression bounds: what the all-e4m3 kernel measured on H200, with a margin
MEASURED_MAX_REL_L2 = 0.08
GATES_MISSED = ("e4m3 P and V: rel. L2 ~0.04 on iid Gaussian inputs whatever Q/K's format (bench/fp8_design.py); "
                "on the trained model's layers int8 Q/K meets the gates")


def _problem(q, k, v, grid, ks, st=1, ek=None, ev=None, lengths=None):
    params = make_params(grid, ks, st)
    return Problem(q, k, v, params, q.shape[-1] ** -0.5, ek, ev, lengths, None, torch.full_like(q, float("nan")),
                   None, None, None)  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def _needs_fp8():
    from na_accel.kernels import gluon_hopper_fp8

    q = torch.zeros(1, 64, 1, 128, device=DEV, dtype=torch.bfloat16)
    reason = gluon_hopper_fp8.unsupported_reason(_problem(q, q, q, (8, 8), 3))
    if reason is not None:
        pytest.skip(f"8-bit Gluon path unavailable here: {reason}")


def _gates(out: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    o, r = out.double().flatten(), ref.double().flatten()
    cos = float(torch.nn.functional.cosine_similarity(o, r, dim=0))
    rel = float((o - r).norm() / r.norm())
    return cos, rel


@pytest.mark.parametrize("qk_int8", [True, False], ids=["int8-qk", "e4m3-qk"])
@pytest.mark.parametrize("grid,extra,lengths", [((9, 16, 16), 0, None), ((5, 11, 13), 40, [40, 17])])
def test_layout_step_is_torch_rounding(grid, extra, lengths, qk_int8):
    from na_accel.kernels.fp8_layout import quantize_tiled

    torch.manual_seed(0)
    b, h, d = 2, 3, 128
    n = math.prod(grid)
    q, k, v = (torch.randn(b, n, h, d, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    k = k + 4.0
    ek = ev = el = None
    if extra:
        ek, ev = (torch.randn(b, extra, h, d, device=DEV, dtype=torch.bfloat16) for _ in range(2))
        el = torch.tensor(lengths, device=DEV, dtype=torch.int32)
    tile = configs.GLUON[3].tq
    got = quantize_tiled(_problem(q, k, v, grid, 3, ek=ek, ev=ev, lengths=el), tile, grid, 0.7, qk_int8=qk_int8)
    want = expected_tiled(q, k, v, ek, ev, el, grid, tile, 0.7, qk_int8=qk_int8)
    for name in ("q_scale", "k_scale", "v_scale"):
        torch.testing.assert_close(getattr(got, name), want[name], rtol=0, atol=0)
    for name in ("q8", "k8", "vt8"):
        assert torch.equal(getattr(got, name).view(want[name].shape).view(torch.uint8), want[name].view(torch.uint8))


CASES = [
    # grid, kernel_size, stride, extra keys, lengths, head dim, dtype, key offset
    ((9, 16, 16), (4, 12, 12), 1, 0, None, 64, torch.bfloat16, 0.0),  # the embedded model's grid and window
    ((17, 24, 40), (8, 16, 16), (4, 8, 8), 0, None, 128, torch.bfloat16, 0.0),  # GNA, ragged first axis
    ((13, 21, 19), (5, 9, 7), 1, 0, None, 128, torch.float16, 3.0),  # NA, ragged everywhere, key offset
    ((7, 20, 24), (7, 20, 24), 1, 77, [77, 30], 128, torch.bfloat16, 0.0),  # dense, text keys with lengths
    ((9, 16, 16), (5, 8, 8), (2, 4, 4), 200, None, 64, torch.bfloat16, 2.0),  # extra keys, no lengths
    ((96, 80), (33, 33), (16, 16), 0, None, 128, torch.bfloat16, 0.0),  # 2-D
    ((3000,), (511,), (64,), 0, None, 128, torch.float16, 0.0),  # 1-D
]


@pytest.mark.parametrize("grid,ks,st,extra,lengths,d,dtype,k_offset", CASES)
def test_fp8_accuracy_gates(grid, ks, st, extra, lengths, d, dtype, k_offset):
    torch.manual_seed(1)
    b, h = 2, 2
    n = math.prod(grid)
    q, k, v = (torch.randn(b, n, h, d, device=DEV, dtype=dtype) for _ in range(3))
    k = k + k_offset
    kw = {}
    if extra:
        kw["additional_keys"] = torch.randn(b, extra, h, d, device=DEV, dtype=dtype)
        kw["additional_values"] = torch.randn(b, extra, h, d, device=DEV, dtype=dtype)
        if lengths is not None:
            kw["additional_lengths"] = torch.tensor(lengths, device=DEV, dtype=torch.int32)
    reset_fp8_fallbacks()
    out = na_accel.na_flat(q, k, v, grid, ks, st, backend="triton", precision="fp8", **kw)
    assert fp8_fallbacks() == {}
    from na_accel.ops.dispatch import get_backend

    assert get_backend("triton").last_path == "gluon-fp8"
    assert torch.isfinite(out).all()
    ref = na_accel.na_flat(q.float(), k.float(), v.float(), grid, ks, st, backend="triton",
                           **{a: (x.float() if x.is_floating_point() else x) for a, x in kw.items()})  # fmt: skip
    cos, rel = _gates(out, ref)
    assert cos >= MEASURED_MIN_COS and rel <= MEASURED_MAX_REL_L2, (cos, rel)


def test_fp8_runs_on_the_grid_part_of_a_batched_joint_sequence():
    """Batch 2, the grid queries a slice of a joint text + video sequence (what a batched HunyuanVideo call passes:
    the batch stride is not N times the token stride): the 8-bit kernel runs (the layout step reads through the
    strides), no fallback, and the output is close to the fp32 reference."""
    torch.manual_seed(3)
    grid, ks, st, text, h, d = (9, 16, 16), (4, 12, 12), (2, 8, 8), 64, 2, 64
    n = math.prod(grid)
    joint = [torch.randn(2, n + text, h, d, device=DEV, dtype=torch.bfloat16) for _ in range(3)]
    q, k, v = (t[:, :n] for t in joint)
    ek, ev = (t[:, n:] for t in joint[1:])
    assert q.stride(0) != n * q.stride(1)
    reset_fp8_fallbacks()
    out = na_accel.na_flat(q, k, v, grid, ks, st, backend="triton", precision="fp8", additional_keys=ek,
                           additional_values=ev)  # fmt: skip
    assert fp8_fallbacks() == {}
    from na_accel.ops.dispatch import get_backend

    assert get_backend("triton").last_path == "gluon-fp8"
    ref = na_accel.na_flat(q.float(), k.float(), v.float(), grid, ks, st, backend="triton",
                           additional_keys=ek.float(), additional_values=ev.float())  # fmt: skip
    cos, rel = _gates(out, ref)
    assert cos >= MEASURED_MIN_COS and rel <= MEASURED_MAX_REL_L2, (cos, rel)


@pytest.mark.xfail(strict=True, reason=GATES_MISSED)
def test_fp8_meets_the_issue_gates_on_random_inputs():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 9 * 16 * 16, 2, 64, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    out = na_accel.na_flat(q, k, v, (9, 16, 16), (4, 12, 12), backend="triton", precision="fp8")
    ref = na_accel.na_flat(q.float(), k.float(), v.float(), (9, 16, 16), (4, 12, 12), backend="triton")
    cos, rel = _gates(out, ref)
    assert cos >= MIN_COS and rel <= MAX_REL_L2, (cos, rel)


@pytest.mark.parametrize("grid,ks,st,extra,lengths", [
    ((16, 24, 24), (8, 8, 8), (8, 8, 8), 0, None),  # GNA on aligned tiles: the mask-free loop
    ((13, 21, 19), (5, 9, 7), 1, 77, [77, 30]),  # NA, ragged tiles, text keys with lengths: the masked loop
    ((2, 8, 8), (2, 8, 8), 1, 0, None),  # one key tile: the shortest schedule
])  # fmt: skip
def test_fp8_schedules_give_the_same_bits(monkeypatch, grid, ks, st, extra, lengths):
    """The consumers' schedules (configs.FP8_PINGPONG: wgmmas issued in turns; FP8_JOINT_RELEASE: K and V stages
    freed together; GLUON_FP8_STAGES: ring depth) change when things happen, not what is computed: the outputs are
    bit-identical to the default build's (and the kernel finishes: a wrong turn or arrive count would hang)."""
    from na_accel.kernels.gluon_hopper_fp8 import gna_forward_fp8

    torch.manual_seed(3)
    n = math.prod(grid)
    q, k, v = (torch.randn(2, n, 2, 128, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    ek = ev = el = None
    if extra:
        ek, ev = (torch.randn(2, extra, 2, 128, device=DEV, dtype=torch.bfloat16) for _ in range(2))
        el = torch.tensor(lengths, device=DEV, dtype=torch.int32)
    builds = [
        {},
        {"FP8_PINGPONG": True},
        {"FP8_JOINT_RELEASE": True, "GLUON_FP8_STAGES": 3},
        {"FP8_JOINT_RELEASE": True, "GLUON_FP8_STAGES": 4, "FP8_PINGPONG": True},
    ]
    outs = []
    for build in builds:
        with monkeypatch.context() as m:
            for name, value in build.items():
                m.setattr(configs, name, value)
            p = _problem(q, k, v, grid, ks, st, ek, ev, el)
            gna_forward_fp8(p)
            torch.cuda.synchronize()
        outs.append(p.out)
    assert torch.isfinite(outs[0]).all()
    for build, out in zip(builds[1:], outs[1:]):
        assert torch.equal(outs[0], out), build


def test_fp8_writes_every_grid_row_of_ragged_tiles():
    """Poisoned output through the kernel's own entry point: every grid row is written, nothing else is."""
    from na_accel.kernels.gluon_hopper_fp8 import gna_forward_fp8

    torch.manual_seed(2)
    grid = (5, 11, 13)
    n = math.prod(grid)
    q, k, v = (torch.randn(1, n, 2, 128, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    buf = torch.full((1, n + 7, 2, 128), float("nan"), device=DEV, dtype=torch.bfloat16)
    p = _problem(q, k, v, grid, (3, 5, 5))
    p.out = buf[:, :n]
    gna_forward_fp8(p)
    assert torch.isfinite(buf[:, :n]).all()
    assert torch.isnan(buf[:, n:]).all()


@pytest.mark.parametrize("case", ["fp32", "head_dim_96", "dilation"])
def test_fp8_falls_back_with_reason(case):
    torch.manual_seed(3)
    dtype = torch.float32 if case == "fp32" else torch.bfloat16
    d = 96 if case == "head_dim_96" else 64
    q, k, v = (torch.randn(1, 8, 12, 16, 2, d, device=DEV, dtype=dtype) for _ in range(3))
    dil = (1, 2, 2) if case == "dilation" else 1
    reset_fp8_fallbacks()
    out = na_accel.na3d(q, k, v, (3, 5, 5), dilation=dil, backend="triton", precision="fp8")
    reasons = fp8_fallbacks()
    assert sum(reasons.values()) == 1, reasons
    want = {"fp32": "dtype", "head_dim_96": "head dim", "dilation": "dilation"}[case]
    assert want in next(iter(reasons)), reasons
    assert torch.equal(out, na_accel.na3d(q, k, v, (3, 5, 5), dilation=dil, backend="triton"))


@pytest.mark.parametrize("bounds", ["measured", "issue"])
def test_fp8_on_the_trained_model_layers(monkeypatch, bounds):
    """Q/K/V of every attention call of a generation of the embedded trained model (tiny_fast: dense then sparse
    steps): the 8-bit output of each call's sparse window and of the whole grid (dense) against bf16."""
    import na_accel.patching.plan as plan
    from na_accel.tiny.trained import trained_generation_kwargs, trained_pipeline

    pipe = trained_pipeline(dtype=torch.bfloat16, device=DEV)
    calls = []
    orig = plan.na_joint

    def capture(q, k, v, grid, num_text, **kw):
        calls.append((q.clone(), k.clone(), v.clone(), grid, num_text, dict(kw)))
        return orig(q, k, v, grid, num_text, **kw)

    monkeypatch.setattr(plan, "na_joint", capture)
    na_accel.patch(pipe, config="tiny_fast")
    gen = dict(trained_generation_kwargs(), num_inference_steps=7)
    with torch.no_grad():
        pipe("a red circle moves to the right on a plain blue background", output_type="latent",
             generator=torch.Generator("cpu").manual_seed(0), **gen)  # fmt: skip
    na_accel.unpatch(pipe)
    assert calls, "the patched model made no sparse attention calls"
    worst = (1.0, 0.0)
    reset_fp8_fallbacks()
    for q, k, v, grid, num_text, kw in calls[:: max(1, len(calls) // 12)]:
        for ks in (kw["kernel_size"], (-1,) * len(grid)):
            args = dict(kw, kernel_size=ks, stride=kw["stride"] if ks == kw["kernel_size"] else 1, backend="triton")
            args.pop("precision", None)
            ref = orig(q, k, v, grid, num_text, **args)
            out = orig(q, k, v, grid, num_text, precision="fp8", **args)
            cos, rel = _gates(out, ref)
            worst = (min(worst[0], cos), max(worst[1], rel))
    assert fp8_fallbacks() == {}, "some calls ran in 16 bits: the gates would not measure the 8-bit kernel"
    min_cos, max_rel = (MIN_COS, MAX_REL_L2) if bounds == "issue" else (MEASURED_MIN_COS, MEASURED_MAX_REL_L2)
    assert worst[0] >= min_cos and worst[1] <= max_rel, worst
    print(f"trained model layers: worst cos {worst[0]:.5f}, worst rel L2 {worst[1]:.4f}")
