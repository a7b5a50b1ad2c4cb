"""na_accel: fused generalized neighborhood attention for diffusers' video and image transformers.

Layers, each importing only the ones below it:

* :mod:`na_accel.kernels`: Triton and Gluon kernels (tensors and a token grid; no model knowledge);
* :mod:`na_accel.ops`: the attention operation: semantics, functional API, backend dispatch, reference, SDPA, Flex;
* :mod:`na_accel.patching`: ``patch`` / ``unpatch``, configs and presets, one adapter per model family;
* :mod:`na_accel.quality`: metrics and comparisons against dense;
* :mod:`na_accel.tools`: the ``na-accel`` command line, generation, A/B reports, media, benchmarks (never
  imported by the library); :mod:`na_accel.tiny`: the built-in models.

Public API: the attention functions (``na1d``, ``na2d``, ``na3d``, ``na_flat``, ``na_joint``), patching
(``patch``, ``unpatch``, ``patched``, ``is_patched``, ``PatchHandle``), context parallelism
(``context_parallel_plan``, ``enable_context_parallel``), configs (``load_config``, ``list_presets``,
``NAConfig``), tuning (``tune``, ``TuneResult``: per-layer windows from measured attention) and the errors.
Names are imported on first use, so ``import na_accel`` (and ``na-accel --help``) does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (
    AlreadyPatchedError,
    BackendUnavailableError,
    ConfigError,
    InputError,
    NAAccelError,
    ShapeError,
    UnsupportedModelError,
)

__version__ = "0.2.0"

_LAZY = {
    "na1d": "ops.functional",
    "na2d": "ops.functional",
    "na3d": "ops.functional",
    "na_flat": "ops.functional",
    "na_joint": "ops.functional",
    "PatchHandle": "patching.api",
    "context_parallel_plan": "patching.parallel",
    "enable_context_parallel": "patching.parallel",
    "is_patched": "patching.api",
    "patch": "patching.api",
    "patched": "patching.api",
    "unpatch": "patching.api",
    "NAConfig": "patching.config",
    "list_presets": "patching.config",
    "load_config": "patching.config",
    "TuneResult": "quality.tune",
    "tune": "quality.tune",
}

__all__ = [
    "AlreadyPatchedError",
    "BackendUnavailableError",
    "ConfigError",
    "InputError",
    "NAAccelError",
    "ShapeError",
    "UnsupportedModelError",
    *_LAZY,
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'na_accel' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover
    from .ops.functional import na1d, na2d, na3d, na_flat, na_joint  # noqa: F401
    from .patching.api import PatchHandle, is_patched, patch, patched, unpatch  # noqa: F401
    from .patching.config import NAConfig, list_presets, load_config  # noqa: F401
    from .patching.parallel import context_parallel_plan, enable_context_parallel  # noqa: F401
    from .quality.tune import TuneResult, tune  # noqa: F401
