"""The canonical attention problem and the choice of backend that computes it.

A backend answers one :class:`Problem` (flattened raster-order tensors, see its docstring) and writes the outputs
in place. Backends are built on first use from the factories in :data:`_FACTORIES` (nothing registers itself on
import, so the kernels stay below this module and importing it is cheap). ``auto`` takes the first backend in
:data:`AUTO_ORDER` that accepts the problem and logs, at debug level, why the others were passed over; an
explicitly requested backend that cannot run raises :class:`~na_accel.errors.BackendUnavailableError` with the
reason.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import BackendUnavailableError
from .semantics import GNAParams

logger = logging.getLogger("na_accel")

__all__ = ["AUTO_ORDER", "Backend", "Problem", "available_backends", "get_backend", "register_backend",
           "select_backend"]  # fmt: skip


@dataclass
class Problem:
    """One canonical attention call: grid tokens, optional extra keys, optional dense (text) queries.

    ``query/key/value`` ``[B, N, heads, D]`` (possibly strided views), ``extra_key/extra_value``
    ``[B, T, heads, D]``, ``extra_lengths`` int ``[B]`` or None, ``text_query`` ``[B, Tq, heads, D]`` or None.
    Outputs are written into ``out`` (like ``query``), ``text_out`` (like ``text_query``) and, when given,
    ``lse`` / ``text_lse`` (fp32 ``[B, tokens, heads]``, natural log). ``precision``: ``"bf16"`` or ``"fp8"``
    (:mod:`.precision`; only the ``triton`` backend has an 8-bit path).
    """

    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    params: GNAParams
    scale: float
    extra_key: torch.Tensor | None
    extra_value: torch.Tensor | None
    extra_lengths: torch.Tensor | None
    text_query: torch.Tensor | None
    out: torch.Tensor
    lse: torch.Tensor | None
    text_out: torch.Tensor | None
    text_lse: torch.Tensor | None
    precision: str = "bf16"


class Backend:
    """One way of computing a :class:`Problem`. Subclasses set :attr:`name` and implement the three methods."""

    name: str = ""

    def unavailable_reason(self, problem: Problem) -> str | None:
        """Why this backend cannot run ``problem`` here, or None if it can."""
        raise NotImplementedError

    def auto_rejection(self, problem: Problem) -> str | None:
        """Why ``auto`` should pass this backend over for ``problem`` (by default: only if it cannot run it)."""
        return self.unavailable_reason(problem)

    def forward(self, problem: Problem) -> None:
        """Compute ``problem`` and write its outputs in place."""
        raise NotImplementedError


def _factory(module: str, cls: str) -> Callable[[], Backend]:
    def build() -> Backend:
        return getattr(importlib.import_module(module, __package__), cls)()

    return build


# Fastest first: dense problems go to SDPA (cuDNN), the rest to the fused kernels on CUDA, FlexAttention, SDPA with
# the GNA mask off the GPU, and the reference, which runs anything.
AUTO_ORDER = ("sdpa", "triton", "flex", "masked_sdpa", "reference")
_FACTORIES: dict[str, Callable[[], Backend]] = {
    "sdpa": _factory(".sdpa", "DenseSDPABackend"),
    "triton": _factory(".triton", "TritonBackend"),  # ImportError without Triton: not available
    "flex": _factory(".flex", "FlexBackend"),
    "masked_sdpa": _factory(".sdpa", "MaskedSDPABackend"),
    "reference": _factory(".reference", "ReferenceBackend"),
}
_INSTANCES: dict[str, Backend] = {}
_MISSING: dict[str, str] = {}  # backends whose factory failed to import, with the reason
_LOCK = threading.Lock()


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend instance under ``backend.name``; ``auto`` tries it after :data:`AUTO_ORDER`."""
    with _LOCK:
        _INSTANCES[backend.name] = backend
        _MISSING.pop(backend.name, None)


def get_backend(name: str) -> Backend | None:
    """The backend called ``name``, built on first use; None if unknown or not importable here."""
    backend = _INSTANCES.get(name)
    if backend is not None or name in _MISSING:
        return backend
    factory = _FACTORIES.get(name)
    if factory is None:
        return None
    with _LOCK:
        if name not in _INSTANCES and name not in _MISSING:
            try:
                _INSTANCES[name] = factory()
            except ImportError as exc:  # depends on the install (e.g. no Triton)
                _MISSING[name] = f"{type(exc).__name__}: {exc}"
                logger.debug("na_accel: backend %r not available: %s", name, _MISSING[name])
    return _INSTANCES.get(name)


def _known_names() -> tuple[str, ...]:
    return AUTO_ORDER + tuple(n for n in (*_FACTORIES, *_INSTANCES) if n not in AUTO_ORDER)


def available_backends() -> tuple[str, ...]:
    """Names of the backends this install can build (each may still reject a given problem)."""
    return tuple(dict.fromkeys(n for n in _known_names() if get_backend(n) is not None))


def select_backend(name: str, problem: Problem) -> Backend:
    """Resolve ``name`` ("auto" or a backend name) to a backend that can run ``problem``."""
    if name != "auto":
        backend = get_backend(name)
        if backend is None:
            allowed = ", ".join(("auto",) + available_backends())
            if name in _MISSING:
                raise BackendUnavailableError(
                    f"backend {name!r} is not available in this install ({_MISSING[name]}); allowed: {allowed}."
                )
            raise BackendUnavailableError(f"unknown backend {name!r}; allowed: {allowed}.")
        reason = backend.unavailable_reason(problem)
        if reason is not None:
            raise BackendUnavailableError(
                f"backend {name!r} cannot run this problem: {reason}. Use backend='auto' to pick one that can."
            )
        return backend
    for candidate in dict.fromkeys(_known_names()):
        backend = get_backend(candidate)
        if backend is None:
            logger.debug("na_accel auto: backend %r is not installed", candidate)
            continue
        reason = backend.auto_rejection(problem)
        if reason is None:
            return backend
        logger.debug("na_accel auto: backend %r rejected: %s", candidate, reason)
    raise BackendUnavailableError("no backend can run this problem")  # pragma: no cover - reference always can
