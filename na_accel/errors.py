"""Exception hierarchy of na_accel.

Every error raised for user input derives from :class:`NAAccelError`, and also from the builtin exception a
PyTorch user would expect (``ValueError`` for a bad shape, ``TypeError`` for an unsupported model, ...), so both
``except na_accel.NAAccelError`` and ``except ValueError`` work.
"""

from __future__ import annotations


class NAAccelError(Exception):
    """Base class of every na_accel error."""


class ConfigError(NAAccelError, ValueError):
    """A configuration (YAML file, dict or object) is invalid."""


class ShapeError(NAAccelError, ValueError):
    """Tensors or attention parameters (kernel_size, stride, dilation, ...) do not fit together."""


class UnsupportedModelError(NAAccelError, TypeError):
    """The model (or pipeline) is not one na_accel knows how to patch."""


class BackendUnavailableError(NAAccelError, RuntimeError):
    """An explicitly requested attention backend cannot run this problem on this machine."""


class AlreadyPatchedError(NAAccelError, RuntimeError):
    """The model is already patched by na_accel; unpatch it first."""


class InputError(NAAccelError, ValueError):
    """Bad user input to a command or a generation helper (prompt file, size, option), found before anything runs or
    is written; the CLI prints it on one line and exits with code 2."""
