"""The software versions every result records (torch-free, so the command line can import it cheaply)."""

from __future__ import annotations

import platform
from collections.abc import Sequence

__all__ = ["VERSIONED", "versions"]

#: Packages whose versions every result records (with Python's and na_accel's).
VERSIONED = ("torch", "diffusers", "transformers", "triton")


def versions(extra: Sequence[str] = ()) -> dict[str, str | None]:
    """Versions of Python, na_accel (the running source tree's), :data:`VERSIONED` and ``extra`` packages (None:
    not installed)."""
    import importlib.metadata as md

    from .. import __version__

    out: dict[str, str | None] = {"python": platform.python_version(), "na_accel": __version__}
    for pkg in (*VERSIONED, *extra):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out
