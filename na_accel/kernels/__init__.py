"""Triton and Gluon kernels for GNA. They know tensors and a token grid, nothing about models, and import only torch,
triton and their own layout helpers; the ``triton`` backend (:mod:`na_accel.ops.triton`) calls them.

Modules: ``triton_grid`` (grid queries: ``gna_forward``, every CUDA GPU and the interpreter), ``triton_text`` (dense
text queries and the split combine), ``triton_common`` (device helpers of both), ``gluon_hopper`` (a warp-specialised
Gluon kernel for the grid queries on Hopper: ``gna_forward_gluon``, ``unsupported_reason``), ``gluon_hopper_fp8`` (the
same kernel on 8-bit operands: ``gna_forward_fp8``) with its layout step ``fp8_layout`` (tiled order, quantization),
``configs`` (launch configurations, with what they were measured to give) and ``layout`` (host-side layout helpers).

Triton decides when it is imported whether kernels are compiled or interpreted (``TRITON_INTERPRET``): its own
library functions are decorated then, so a process is in one mode. :data:`INTERPRETED` records that mode once.
"""

import triton.language.standard as _standard
from triton.runtime.jit import JITFunction as _JITFunction

#: True when this process runs Triton kernels in the interpreter (TRITON_INTERPRET=1 was set before Triton's import)
INTERPRETED: bool = not isinstance(_standard.cdiv, _JITFunction)

__all__ = ["INTERPRETED"]
