#!/usr/bin/env python3
"""Launch one kernel of the hunyuan-gna anchor twice (for ``ncu --launch-skip 1 --launch-count 1``).

    ncu --clock-control none -k regex:_gna_gluon_kernel --launch-skip 1 --launch-count 1 \\
        --section SpeedOfLight --section WarpStateStats python3 bench/profile_kernel.py ours
    NA_ACCEL_GLUON=0 ncu ... -k regex:_gna_fwd_kernel ... python3 bench/profile_kernel.py ours   # Triton kernel
    ncu ... -k regex:'sdpa|fmha|flash|cudnn' ... python3 bench/profile_kernel.py cudnn
    ncu ... -k regex:'_gna_fp8_kernel|_fp8_layout_kernel' ... python3 bench/profile_kernel.py fp8 [dense]

On Hopper ``ours`` runs the Gluon kernel (na_accel/kernels/gluon_hopper.py); with ``NA_ACCEL_GLUON=0``, and on
other GPUs, the Triton kernel (na_accel/kernels/triton_grid.py). ``fp8`` runs the 8-bit kernel and its layout step
(na_accel/kernels/gluon_hopper_fp8.py, fp8_layout.py); ``dense`` makes the window the whole grid (the dense case of
bench/kernels.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NA_ACCEL_AUTOTUNE", "0")

import na_accel  # noqa: E402

GRID, KS, ST, HEADS, D = (30, 48, 80), (18, 24, 24), (16, 8, 8), 24, 128


def main(which: str, dense: bool = False) -> None:
    n = GRID[0] * GRID[1] * GRID[2]
    x = [torch.randn(1, n, HEADS, D, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    ks, st = (GRID, 1) if dense else (KS, ST)
    if which in ("ours", "fp8"):
        precision = "fp8" if which == "fp8" else "bf16"
        for _ in range(2):
            na_accel.na_flat(*x, GRID, ks, st, backend="triton", precision=precision)
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        xd = [t.transpose(1, 2).contiguous() for t in x]
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            for _ in range(2):
                torch.nn.functional.scaled_dot_product_attention(*xd)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ours", dense="dense" in sys.argv[2:])
