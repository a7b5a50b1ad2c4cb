"""Triton kernels. They know tensors and a token grid, nothing about models (no diffusers import here).

Importing this package registers the ``triton`` backend (raises ImportError when Triton is not installed, which
:func:`na_accel.backends._ensure_registered` treats as "backend not available").
"""

import triton  # noqa: F401  (ImportError here means: no triton backend)

from ..backends import register_backend
from .backend import TritonBackend, gna_forward, interpret_mode, kernel_module, triton_interpreted

register_backend(TritonBackend())

__all__ = ["TritonBackend", "gna_forward", "interpret_mode", "kernel_module", "triton_interpreted"]
