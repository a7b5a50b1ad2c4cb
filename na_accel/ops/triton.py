"""The ``triton`` backend: the fused kernels of :mod:`na_accel.kernels` (Gluon on Hopper where it applies, Triton
otherwise and for the dense text queries).

Off CUDA the kernels run only in a process started with ``TRITON_INTERPRET=1`` (the Triton interpreter; see
:data:`na_accel.kernels.INTERPRETED`). Importing this module raises ImportError when Triton is not installed, which
the dispatcher reports as "backend not available".
"""

from __future__ import annotations

import logging
import os

import torch

from ..kernels import INTERPRETED
from ..kernels.triton_grid import gna_forward
from ..kernels.triton_text import text_forward
from .dispatch import Backend, Problem
from .precision import fp8_device_reason, record_fp8_fallback

logger = logging.getLogger("na_accel")
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
# Triton's launch grid: axis 1 of every kernel is batch * heads, at most 65535 programs.
MAX_BATCH_HEADS = 65535


def gluon_reason(problem: Problem) -> str | None:
    """Why the warp-specialised Gluon kernel (Hopper) does not take ``problem``'s grid queries, or None if it does.

    ``NA_ACCEL_GLUON=0`` (read at every call) turns it off; the Triton kernel then runs everything.
    """
    if os.environ.get("NA_ACCEL_GLUON", "1") == "0":
        return "turned off by NA_ACCEL_GLUON=0"
    if not problem.query.is_cuda:
        return "it needs CUDA tensors"
    from ..kernels import gluon_hopper

    return gluon_hopper.unsupported_reason(problem)


def fp8_reason(problem: Problem) -> str | None:
    """Why the 8-bit Gluon kernel (Hopper) does not take ``problem``'s grid queries, or None if it does: its device,
    dtype and head dim (:func:`.precision.fp8_device_reason`, which also honours ``NA_ACCEL_GLUON=0``), then the
    problem (:func:`na_accel.kernels.gluon_hopper_fp8.unsupported_reason`)."""
    reason = fp8_device_reason(problem.query)
    if reason is not None:
        return reason
    from ..kernels import gluon_hopper_fp8

    return gluon_hopper_fp8.unsupported_reason(problem)


class TritonBackend(Backend):
    name = "triton"

    #: which kernel ran the grid queries of the last call: "gluon-fp8", "gluon" or "triton" (diagnostics, benchmarks)
    last_path: str | None = None

    def unavailable_reason(self, problem: Problem) -> str | None:
        q = problem.query
        if not q.is_cuda and not INTERPRETED:
            if os.environ.get("TRITON_INTERPRET", "0") == "1":
                return "TRITON_INTERPRET=1 was set after Triton was imported; set it before the process starts"
            return "the Triton kernels need CUDA tensors (or a process started with TRITON_INTERPRET=1)"
        if q.dtype not in _SUPPORTED_DTYPES:
            return f"the Triton kernels take float16, bfloat16 or float32, got {q.dtype}"
        head_dim = q.shape[-1]
        if head_dim > MAX_HEAD_DIM:
            return f"the Triton kernels take head dims up to {MAX_HEAD_DIM}, got {head_dim}"
        batch_heads = q.shape[0] * q.shape[2]
        if batch_heads > MAX_BATCH_HEADS:
            return f"batch * heads must be at most {MAX_BATCH_HEADS} for the Triton launch grid, got {batch_heads}"
        tensors = [problem.key, problem.value, problem.out]
        tensors += [t for t in (problem.extra_key, problem.extra_value, problem.text_query) if t is not None]
        if any(t.device != q.device for t in tensors):
            return "all tensors must be on one device"
        return None

    def forward(self, problem: Problem) -> None:
        q = problem.query
        if problem.precision == "fp8":
            reason = fp8_reason(problem)
            if reason is None:
                from ..kernels.gluon_hopper_fp8 import gna_forward_fp8

                with torch.cuda.device(q.device):
                    self.last_path = "gluon-fp8"
                    gna_forward_fp8(problem)
                    text_forward(problem)  # dense text queries, if any, in the inputs' precision
                return
            record_fp8_fallback(reason)
        if not q.is_cuda:
            self.last_path = "triton"
            gna_forward(problem)
            return
        with torch.cuda.device(q.device):
            reason = gluon_reason(problem)
            if reason is None:
                from ..kernels.gluon_hopper import gna_forward_gluon

                self.last_path = "gluon"
                gna_forward_gluon(problem)
                text_forward(problem)  # dense text queries, if any
            else:
                logger.debug("na_accel triton: Gluon kernel not used: %s", reason)
                self.last_path = "triton"
                gna_forward(problem)
