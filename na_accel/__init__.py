"""na_accel: fused generalized neighborhood attention for diffusers' video and image transformers."""

from .errors import BackendUnavailableError, ConfigError, NAAccelError, ShapeError, UnsupportedModelError
from .functional import na1d, na2d, na3d, na_flat, na_joint

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "ConfigError",
    "NAAccelError",
    "ShapeError",
    "UnsupportedModelError",
    "na1d",
    "na2d",
    "na3d",
    "na_flat",
    "na_joint",
]

# Patching API (issue 4)
from .api import PatchHandle, is_patched, patch, patched, unpatch  # noqa: E402
from .config import NAConfig, list_presets, load_config  # noqa: E402

__all__ += ["NAConfig", "PatchHandle", "is_patched", "list_presets", "load_config", "patch", "patched", "unpatch"]
