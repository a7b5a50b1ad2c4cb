"""Attention backends and the choice among them.

A backend answers one canonical problem (see :func:`Backend.forward`) on flattened raster-order tensors. The
``auto`` choice takes the first backend in :data:`AUTO_ORDER` that can run the problem and logs, at debug level,
why the others were passed over; an explicitly requested backend that cannot run raises
:class:`~na_accel.errors.BackendUnavailableError` with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from .errors import BackendUnavailableError
from .semantics import GNAParams

logger = logging.getLogger("na_accel")


@dataclass
class Problem:
    """One canonical attention call: grid tokens, optional extra keys, optional dense (text) queries.

    ``query/key/value`` ``[B, N, heads, D]`` (possibly strided views), ``extra_key/extra_value``
    ``[B, T, heads, D]``, ``extra_lengths`` int ``[B]`` or None, ``text_query`` ``[B, Tq, heads, D]`` or None.
    Outputs are written into ``out`` (like ``query``), ``text_out`` (like ``text_query``) and, when given,
    ``lse`` / ``text_lse`` (fp32 ``[B, tokens, heads]``, natural log).
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


class Backend:
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


class ReferenceBackend(Backend):
    name = "reference"

    def unavailable_reason(self, problem: Problem) -> str | None:
        return None

    def forward(self, problem: Problem) -> None:
        from .reference import gna_reference

        p = problem
        out, lse, text_out, text_lse = gna_reference(
            p.query, p.key, p.value, p.params, p.scale, p.extra_key, p.extra_value, p.extra_lengths, p.text_query
        )
        p.out.copy_(out)
        if p.lse is not None:
            p.lse.copy_(lse)
        if p.text_out is not None:
            p.text_out.copy_(text_out)
        if p.text_lse is not None:
            p.text_lse.copy_(text_lse)


class DenseSDPABackend(Backend):
    """Problems whose windows cover the whole grid are plain attention: PyTorch SDPA, cuDNN first where it runs.

    ``auto`` takes it for such problems (a layer configured dense, or a window clamped to a small grid): on H200 the
    Triton kernel runs dense attention at ~0.76x of cuDNN (bench/NOTES.md v4). Grid and text queries attend to all
    grid and text keys, so the call is one SDPA over the concatenated tokens.
    """

    name = "sdpa"

    def unavailable_reason(self, problem: Problem) -> str | None:
        p = problem.params
        if not p.is_dense:
            return (
                f"its windows do not cover the whole grid (grid {p.grid}, kernel_size {p.kernel_size}, "
                f"is_causal {p.is_causal}); it runs dense problems only"
            )
        if problem.lse is not None or problem.text_lse is not None:
            return "it does not return the log-sum-exp (return_lse=True)"
        if problem.extra_lengths is not None:
            return "per-batch text lengths would need an attention mask"
        return None

    def forward(self, problem: Problem) -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        p = problem
        n = p.query.shape[1]
        q, k, v = p.query, p.key, p.value
        if p.extra_key is not None:
            k = torch.cat([k, p.extra_key], 1)
            v = torch.cat([v, p.extra_value], 1)
        if p.text_query is not None:
            q = torch.cat([q, p.text_query], 1)
        order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        with sdpa_kernel(order + [SDPBackend.MATH], set_priority=True):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=p.scale
            ).transpose(1, 2)
        p.out.copy_(out[:, :n])
        if p.text_out is not None:
            p.text_out.copy_(out[:, n:])


_BACKENDS: dict[str, Backend] = {}
# Fastest first. "triton" is registered by na_accel.kernels when Triton imports.
AUTO_ORDER = ("sdpa", "triton", "flex", "reference")


def register_backend(backend: Backend) -> None:
    _BACKENDS[backend.name] = backend


def available_backends() -> tuple[str, ...]:
    """Names of the backends known to this install (each may still reject a given problem)."""
    return tuple(name for name in AUTO_ORDER if name in _BACKENDS) + tuple(
        name for name in _BACKENDS if name not in AUTO_ORDER
    )


def _ensure_registered() -> None:
    if "reference" in _BACKENDS:
        return
    register_backend(ReferenceBackend())
    register_backend(DenseSDPABackend())
    from . import flex  # noqa: F401  (registers "flex")

    try:
        from . import kernels  # noqa: F401  (registers "triton" when Triton is importable)
    except ImportError as exc:  # pragma: no cover - depends on the install
        logger.debug("na_accel: triton backend not registered: %s", exc)


def select_backend(name: str, problem: Problem) -> Backend:
    """Resolve ``name`` ("auto" or a backend name) to a backend that can run ``problem``."""
    _ensure_registered()
    if name != "auto":
        if name not in _BACKENDS:
            allowed = ", ".join(("auto",) + available_backends())
            raise BackendUnavailableError(f"unknown backend {name!r}; allowed: {allowed}.")
        backend = _BACKENDS[name]
        reason = backend.unavailable_reason(problem)
        if reason is not None:
            raise BackendUnavailableError(
                f"backend {name!r} cannot run this problem: {reason}. Use backend='auto' to pick one that can."
            )
        return backend
    for candidate in AUTO_ORDER:
        backend = _BACKENDS.get(candidate)
        if backend is None:
            logger.debug("na_accel auto: backend %r is not installed", candidate)
            continue
        reason = backend.auto_rejection(problem)
        if reason is None:
            return backend
        logger.debug("na_accel auto: backend %r rejected: %s", candidate, reason)
    raise BackendUnavailableError("no backend can run this problem")  # pragma: no cover - reference always can
