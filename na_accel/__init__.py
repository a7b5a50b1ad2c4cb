"""na_accel: fused generalized neighborhood attention for diffusers' video and image transformers.

Public API: the attention functions (``na1d``, ``na2d``, ``na3d``, ``na_flat``, ``na_joint``), patching
(``patch``, ``unpatch``, ``patched``, ``is_patched``) and config loading (``load_config``, ``list_presets``).
Names are imported on first use, so ``import na_accel`` (and ``na-accel --help``) does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import BackendUnavailableError, ConfigError, NAAccelError, ShapeError, UnsupportedModelError

__version__ = "0.1.0"

_LAZY = {
    "na1d": "functional",
    "na2d": "functional",
    "na3d": "functional",
    "na_flat": "functional",
    "na_joint": "functional",
    "PatchHandle": "api",
    "is_patched": "api",
    "patch": "api",
    "patched": "api",
    "unpatch": "api",
    "NAConfig": "config",
    "list_presets": "config",
    "load_config": "config",
}

__all__ = [
    "BackendUnavailableError",
    "ConfigError",
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
    from .api import PatchHandle, is_patched, patch, patched, unpatch  # noqa: F401
    from .config import NAConfig, list_presets, load_config  # noqa: F401
    from .functional import na1d, na2d, na3d, na_flat, na_joint  # noqa: F401
