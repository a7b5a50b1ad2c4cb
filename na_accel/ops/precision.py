"""Operand precision of the attention kernels: ``"bf16"`` (the inputs' own 16- or 32-bit dtype, no quantization) or
``"fp8"`` (8-bit operands on Hopper: :mod:`na_accel.kernels.gluon_hopper_fp8`).

``fp8`` runs where the 8-bit kernel can run the problem (CUDA, compute capability 9.x, float16 / bfloat16, head dim
64 or 128, dilation 1, non-causal, no log-sum-exp) on the ``triton`` backend (``auto`` picks it for such problems,
dense ones included). Anywhere else the call runs in the inputs' precision: never silently, the reason is logged
once per reason (warning) and counted in :func:`fp8_fallbacks`, which the patch summary reports.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter

import torch

logger = logging.getLogger("na_accel")

#: The allowed values of ``precision`` (functional API, config ``precision:`` key)
PRECISIONS = ("bf16", "fp8")

_FALLBACKS: Counter[str] = Counter()
_LOCK = threading.Lock()
_DEVICE_REASONS: dict[tuple, str | None] = {}


def fp8_device_reason(t: torch.Tensor) -> str | None:
    """Why the 8-bit kernel cannot run on tensors like ``t`` (``[..., head dim]``: its device, dtype and head dim),
    or None if it can; cached per (device, dtype, head dim). ``NA_ACCEL_GLUON=0`` turns it off."""
    if os.environ.get("NA_ACCEL_GLUON", "1") == "0":
        return "the Gluon kernels are turned off by NA_ACCEL_GLUON=0"
    key = (t.device, t.dtype, t.shape[-1])
    if key not in _DEVICE_REASONS:
        try:
            from ..kernels.gluon_hopper import device_reason
        except ImportError as exc:  # no Triton
            _DEVICE_REASONS[key] = f"Triton is not importable ({exc})"
        else:
            _DEVICE_REASONS[key] = device_reason(t.device, t.dtype, t.shape[-1])
    return _DEVICE_REASONS[key]


def record_fp8_fallback(reason: str) -> None:
    """Count one call that asked for ``fp8`` and ran in its inputs' precision; the first of each reason is logged."""
    with _LOCK:
        first = reason not in _FALLBACKS
        _FALLBACKS[reason] += 1
    if first:
        logger.warning("na_accel: precision='fp8' falls back to the inputs' precision: %s", reason)


def fp8_fallbacks() -> dict[str, int]:
    """Calls that asked for ``fp8`` and ran in their inputs' precision, by reason, since the process started (or
    :func:`reset_fp8_fallbacks`)."""
    with _LOCK:
        return dict(_FALLBACKS)


def reset_fp8_fallbacks() -> None:
    """Forget the counted fallbacks (the next one of each reason is logged again)."""
    with _LOCK:
        _FALLBACKS.clear()
