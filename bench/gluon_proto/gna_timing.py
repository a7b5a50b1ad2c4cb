"""Time the Gluon GNA forward (na_accel/kernels/gluon_hopper.py) against the Triton kernel
(na_accel/kernels/triton_grid.py) on realistic shapes.

bf16, B=1, D=128, 24 heads; triton.testing.do_bench (warmup 50, rep 400, median). Also reports the relative L2
difference between the two outputs. Usage: PYTHONPATH=. python3 bench/gluon_proto/gna_timing.py OUT.json

The schedule variants timed in results/gna_timing*.json (3 K/V stages, no intra-warpgroup overlap) were removed
from the kernel; their numbers are in bench/NOTES.md (v7).
"""

from __future__ import annotations

import json
import sys
import time

import torch
import triton

from na_accel.kernels import gluon_hopper
from na_accel.kernels.triton_grid import gna_forward
from na_accel.ops.dispatch import Problem
from na_accel.ops.semantics import make_params

CASES = {
    "hunyuan-gna": ((30, 48, 80), (18, 24, 24), (16, 8, 8), 0),
    "flux4k-gna": ((256, 256), (80, 80), (16, 16), 0),
    "hunyuan-na": ((30, 48, 80), (18, 24, 24), (1, 1, 1), 0),
    "hunyuan720-gna": ((33, 45, 80), (18, 24, 24), (16, 8, 8), 0),
    "hunyuan-gna-text256": ((30, 48, 80), (18, 24, 24), (16, 8, 8), 256),
}
TRITON_CFG = {
    3: {"tq": (2, 8, 8), "tk": (2, 8, 8), "num_warps": 8, "num_stages": 3},
    2: {"tq": (16, 8), "tk": (16, 8), "num_warps": 8, "num_stages": 3},
}


def _problem(grid, ks, st, t, heads=24, d=128, seed=0):
    params = make_params(grid, ks, st)
    n = params.num_tokens
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(1, n, heads, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    ek = ev = None
    if t:
        ek, ev = (torch.randn(1, t, heads, d, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(2))
    return Problem(q, k, v, params, d**-0.5, ek, ev, None, None, torch.empty_like(q), None, None, None)


def _clone_out(p):
    return Problem(p.query, p.key, p.value, p.params, p.scale, p.extra_key, p.extra_value, p.extra_lengths, None,
                   torch.empty_like(p.out), None, None, None)  # fmt: skip


def _flops(p):
    """Attended (query, key) pairs * 4 * D * heads (exact window sizes), grid and extra keys."""
    params = p.params
    pairs_per_query = params.density() * params.num_tokens
    n = params.num_tokens
    t = 0 if p.extra_key is None else p.extra_key.shape[1]
    _, _, heads, d = p.query.shape
    return 4.0 * d * heads * n * (pairs_per_query + t)


def main(path):
    results = {"device": torch.cuda.get_device_name(), "cases": {}}
    for name, (grid, ks, st, t) in CASES.items():
        t0 = time.time()
        p = _problem(grid, ks, st, t)
        reason = gluon_hopper.unsupported_reason(p)
        row = {"grid": grid, "kernel_size": ks, "stride": st, "extra": t}
        if reason is not None:
            row["error"] = reason
            results["cases"][name] = row
            continue
        pt = _clone_out(p)
        cfg = TRITON_CFG[len(grid)]
        try:
            gluon_hopper.gna_forward_gluon(p)
            gna_forward(pt, config=cfg)
            torch.cuda.synchronize()
            diff = float((p.out.double() - pt.out.double()).norm() / pt.out.double().norm())
            row["rel_l2_gluon_vs_triton"] = diff
            row["gluon_nan"] = bool(p.out.isnan().any())
            ms_g = triton.testing.do_bench(lambda p=p: gluon_hopper.gna_forward_gluon(p), warmup=50, rep=400,
                                           return_mode="median")  # fmt: skip
            ms_t = triton.testing.do_bench(lambda pt=pt, cfg=cfg: gna_forward(pt, config=cfg), warmup=50, rep=400,
                                           return_mode="median")  # fmt: skip
            fl = _flops(p)
            row.update(ms_gluon=ms_g, ms_triton=ms_t, ratio_triton_over_gluon=ms_t / ms_g,
                       tflops_gluon=fl / ms_g * 1e-9, tflops_triton=fl / ms_t * 1e-9)  # fmt: skip
        except Exception as exc:  # keep going: report what failed
            row["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        row["wall_s"] = time.time() - t0
        results["cases"][name] = row
        print(name, json.dumps(row), flush=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    print(f"{'case':22s} {'ms gluon':>9s} {'ms triton':>9s} {'ratio':>6s} {'rel diff':>9s}")
    for name, r in results["cases"].items():
        if "ms_gluon" in r:
            print(f"{name:22s} {r['ms_gluon']:9.3f} {r['ms_triton']:9.3f} {r['ratio_triton_over_gluon']:6.3f} "
                  f"{r['rel_l2_gluon_vs_triton']:9.2e}")  # fmt: skip
        else:
            print(name, r.get("error"))
    return results


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gna_timing.json")
