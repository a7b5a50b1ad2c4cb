"""Triton kernels. They know tensors and a token grid, nothing about models (no diffusers import here).

``gna_fwd``: the Triton kernels (every GPU, and the interpreter); ``gna_gluon``: a warp-specialised Gluon kernel
for the grid queries on Hopper, used by the ``triton`` backend where :func:`backend.gluon_reason` allows.

Importing this package registers the ``triton`` backend (raises ImportError when Triton is not installed, which
:func:`na_accel.backends._ensure_registered` treats as "backend not available").
"""

import triton  # noqa: F401  (ImportError here means: no triton backend)

from ..backends import register_backend
from .backend import TritonBackend, gna_forward, interpret_mode, kernel_module, triton_interpreted

register_backend(TritonBackend())

__all__ = ["TritonBackend", "gna_forward", "interpret_mode", "kernel_module", "triton_interpreted"]
