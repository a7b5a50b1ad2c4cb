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
