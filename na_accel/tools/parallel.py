"""Multi-process generation with diffusers' context parallelism: ``torchrun --nproc-per-node N na-accel generate
... --ulysses N``.

Every rank (one process per GPU, or per CPU process with gloo) loads the same pipeline and runs the same calls with
the same seeds; the transformer's tokens are split across the ranks by diffusers' Ulysses attention
(:func:`na_accel.enable_context_parallel`), everything else (text encoders, VAE) runs whole on every rank. Rank 0
alone prints and writes outputs. torch is imported inside the functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..errors import InputError

__all__ = ["DistributedRun", "ParallelSession", "init_distributed", "parallelize", "quiet_rank", "shutdown"]

_QUIET = False  # this process is a non-zero rank of a ParallelSession: rank 0 alone prints


def quiet_rank() -> bool:
    """True in a non-zero rank of an open :class:`ParallelSession` (its messages are left to rank 0)."""
    return _QUIET


@dataclass
class DistributedRun:
    """This process's place in a ``torchrun`` launch."""

    rank: int
    world_size: int
    local_rank: int
    device: str  # "cuda:<local rank>" or "cpu"
    backend: str  # "nccl" or "gloo"
    ulysses_degree: int
    owns_group: bool = True  # the process group was initialised here (and is destroyed by shutdown)

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints and writes outputs."""
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """For output sidecars."""
        return {"ulysses_degree": self.ulysses_degree, "world_size": self.world_size, "backend": self.backend}


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def init_distributed(ulysses: int, device: str | None = None) -> DistributedRun:
    """Join the process group of a ``torchrun --nproc-per-node N`` launch (its ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) for ``--ulysses N``.

    The device is ``cuda:<LOCAL_RANK>`` with NCCL when CUDA is available (or ``device`` is ``cuda``), else the CPU
    with gloo (also when ``device`` is ``cpu``). A process group the caller already initialised is used as is.

    Raises:
        InputError: ``ulysses`` < 2, not launched by torchrun, a world size other than ``ulysses``, an explicit
            ``cuda:K`` device, or fewer GPUs than local ranks.
    """
    import torch
    import torch.distributed as dist

    if ulysses < 2:
        raise InputError(f"--ulysses must be at least 2 (the number of processes), got {ulysses}; omit it for one")
    rank, world, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if rank is None or world is None:
        raise InputError(
            f"--ulysses {ulysses} needs {ulysses} processes: launch with torchrun --nproc-per-node {ulysses} "
            "na-accel generate ... (RANK and WORLD_SIZE are not set)"
        )
    if world != ulysses:
        raise InputError(
            f"--ulysses {ulysses} needs {ulysses} processes, but this launch has WORLD_SIZE={world}; use torchrun "
            f"--nproc-per-node {ulysses} (one process per GPU)"
        )
    local_rank = rank if local_rank is None else local_rank
    if device not in (None, "", "auto", "cpu", "cuda"):
        raise InputError(
            f"--device {device} with --ulysses: each rank uses cuda:<LOCAL_RANK> (or the CPU); pass --device cuda, "
            "--device cpu or omit it"
        )
    use_cuda = device == "cuda" or (device in (None, "", "auto") and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise InputError("--device cuda: CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise InputError(
                f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; use "
                "--nproc-per-node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        dev, backend = f"cuda:{local_rank}", "nccl"
    else:
        dev, backend = "cpu", "gloo"
    owns = not dist.is_initialized()
    if owns:
        kwargs = {"device_id": torch.device(dev)} if use_cuda else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world, **kwargs)
    elif dist.get_world_size() != world:
        raise InputError(f"the initialised process group has {dist.get_world_size()} ranks, not {world}")
    return DistributedRun(rank, world, local_rank, dev, backend, ulysses, owns)


def parallelize(pipe: Any, run: DistributedRun) -> None:
    """Enable Ulysses context parallelism of degree ``run.ulysses_degree`` on the pipeline's transformer(s)."""
    from diffusers import ContextParallelConfig

    import na_accel

    na_accel.enable_context_parallel(pipe, ContextParallelConfig(ulysses_degree=run.ulysses_degree))


def shutdown(run: DistributedRun | None) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if run is None or not run.owns_group:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


class ParallelSession:
    """The ``--ulysses N`` part of a command, as a context manager: inert until :meth:`start` is given a degree;
    on exit the process group is destroyed (if :meth:`start` created it) and printing is back to normal."""

    def __init__(self) -> None:
        self.run: DistributedRun | None = None

    def start(self, ulysses: int | None, device: str | None) -> str | None:
        """Join torchrun's process group for ``--ulysses`` (nothing for None); returns the device to load on."""
        global _QUIET
        if ulysses is None:
            return device
        self.run = init_distributed(ulysses, device)
        _QUIET = not self.run.is_main
        return self.run.device

    def enable(self, pipe: Any, echo: Any = None) -> None:
        """Enable Ulysses context parallelism on the pipeline's transformer(s) (nothing without :meth:`start`)."""
        if self.run is None:
            return
        parallelize(pipe, self.run)
        if echo is not None:
            echo(f"context parallel: Ulysses over {self.run.world_size} ranks ({self.run.backend}; rank 0 on "
                 f"{self.run.device})")  # fmt: skip

    @property
    def is_main(self) -> bool:
        """True on rank 0 and in a single-process run: the process that writes outputs."""
        return self.run is None or self.run.is_main

    def describe(self) -> dict[str, Any] | None:
        return None if self.run is None else self.run.describe()

    def __enter__(self) -> ParallelSession:
        return self

    def __exit__(self, *exc: Any) -> None:
        global _QUIET
        shutdown(self.run)
        self.run = None
        _QUIET = False
