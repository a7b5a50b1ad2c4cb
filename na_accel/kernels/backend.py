"""The ``triton`` backend on top of :mod:`na_accel.kernels.gna_fwd`.

Triton decides at decoration time (``@triton.jit``) whether a kernel is compiled or interpreted, from the environment
variable ``TRITON_INTERPRET``; its own library functions (``tl.max``, ``tl.sum``, ...) are decorated when ``triton``
is imported, so the whole process is in one mode: the mode Triton was imported in. The kernel module is loaded in
that mode whatever the variable says later (it is executed with the variable set to match).

The interpreter runs only while ``TRITON_INTERPRET=1`` is set at call time (tests set it per test), so importing
Triton in interpreter mode does not make the backend take CPU tensors elsewhere in the process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path

import torch

from ..backends import Backend, Problem

logger = logging.getLogger("na_accel")
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
_MODULES: dict = {}
_LOCK = threading.Lock()


def interpret_mode() -> bool:
    """True when ``TRITON_INTERPRET`` asks for the Triton interpreter (read at every call)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_interpreted() -> bool:
    """True when Triton was imported in interpreter mode (its library functions are interpreted, process-wide)."""
    import triton.language.standard as standard
    from triton.runtime.jit import JITFunction

    return not isinstance(standard.cdiv, JITFunction)


def kernel_module(interpret: bool):
    """The kernel module compiled (``interpret=False``) or interpreted (``True``); loaded on first use."""
    mod = _MODULES.get(interpret)
    if mod is not None:
        return mod
    with _LOCK:
        if interpret not in _MODULES:
            name = f"{__package__}._gna_fwd_{'interpreted' if interpret else 'compiled'}"
            path = Path(__file__).with_name("gna_fwd.py")
            old = os.environ.get("TRITON_INTERPRET")
            os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
            try:
                spec = importlib.util.spec_from_file_location(name, path)
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod
                spec.loader.exec_module(mod)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            finally:
                if old is None:
                    os.environ.pop("TRITON_INTERPRET", None)
                else:
                    os.environ["TRITON_INTERPRET"] = old
            _MODULES[interpret] = mod
    return _MODULES[interpret]


def gna_forward(
    problem: Problem, config: dict | None = None, text_config: dict | None = None, grid_queries: bool = True
) -> None:
    """Run the Triton GNA forward on ``problem`` (interpreted when Triton was imported so); see ``gna_fwd``."""
    kernel_module(triton_interpreted()).gna_forward(
        problem, config=config, text_config=text_config, grid_queries=grid_queries
    )


def gluon_reason(problem: Problem) -> str | None:
    """Why the warp-specialised Gluon kernel (Hopper) does not take ``problem``'s grid queries, or None if it does.

    ``NA_ACCEL_GLUON=0`` (read at every call) turns it off; the Triton kernel then runs everything.
    """
    if os.environ.get("NA_ACCEL_GLUON", "1") == "0":
        return "turned off by NA_ACCEL_GLUON=0"
    if not problem.query.is_cuda:
        return "it needs CUDA tensors"
    try:
        from . import gna_gluon
    except Exception as exc:  # pragma: no cover - depends on the Triton install
        return f"the Gluon kernel does not import here ({type(exc).__name__}: {exc})"
    return gna_gluon.unsupported_reason(problem)


class TritonBackend(Backend):
    name = "triton"

    def unavailable_reason(self, problem: Problem) -> str | None:
        q = problem.query
        if not q.is_cuda and not interpret_mode():
            return "the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for the interpreter)"
        if not q.is_cuda and not triton_interpreted():
            return "TRITON_INTERPRET=1 was set after Triton was imported; set it before the first import of triton"
        if q.dtype not in _SUPPORTED_DTYPES:
            return f"the Triton kernels take float16, bfloat16 or float32, got {q.dtype}"
        head_dim = q.shape[-1]
        if head_dim > MAX_HEAD_DIM:
            return f"the Triton kernels take head dims up to {MAX_HEAD_DIM}, got {head_dim}"
        batch_heads = q.shape[0] * q.shape[2]
        if batch_heads > 65535:
            return f"batch * heads must be at most 65535 for the Triton launch grid, got {batch_heads}"
        tensors = [problem.key, problem.value, problem.out]
        tensors += [t for t in (problem.extra_key, problem.extra_value, problem.text_query) if t is not None]
        if any(t.device != q.device for t in tensors):
            return "all tensors must be on one device"
        return None

    #: which kernel ran the grid queries of the last call: "gluon" or "triton" (diagnostics, benchmarks)
    last_path: str | None = None

    def forward(self, problem: Problem) -> None:
        q = problem.query
        if not q.is_cuda:
            self.last_path = "triton"
            gna_forward(problem)
            return
        with torch.cuda.device(q.device):
            reason = gluon_reason(problem)
            if reason is None:
                from .gna_gluon import gna_forward_gluon

                self.last_path = "gluon"
                gna_forward_gluon(problem)
                gna_forward(problem, grid_queries=False)  # dense text queries, if any
            else:
                logger.debug("na_accel triton: Gluon kernel not used: %s", reason)
                self.last_path = "triton"
                gna_forward(problem)
