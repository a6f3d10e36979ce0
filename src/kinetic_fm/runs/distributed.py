"""Process-group plumbing for runs launched with ``torchrun`` (or any launcher that sets the env).

``torchrun --nproc-per-node P`` starts P processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set. :func:`world_session` initialises ``torch.distributed`` only when
``WORLD_SIZE > 1`` (gloo on CPU, NCCL when the device is CUDA), and offers the two collectives a
run needs: a barrier before rank 0 merges, and a broadcast of rank 0's setup verdict. Nothing
here is ever called inside a sampling loop: ranks integrate independently (adaptive solvers take
different numbers of steps per rank), so no rank can hang on another mid-run.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

# Rank 0 may wait at the final barrier for as long as the slowest rank samples; hours are normal.
DEFAULT_TIMEOUT_S = float(os.environ.get("KFM_DIST_TIMEOUT_S", 7 * 24 * 3600))


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` in [0, world_size), ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "World":
        """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (a single process when they are unset)."""
        try:
            world = cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
        except ValueError as err:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {err}") from None
        if world.world_size < 1 or not 0 <= world.rank < world.world_size:
            raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={world.rank} WORLD_SIZE={world.world_size}")
        return world

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0, the one that writes the manifest and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the run has more than one process (world_size > 1)."""
        return self.world_size > 1


class Coordinator:
    """The collectives a run uses outside its sampling loop; trivial for a single process."""

    def __init__(self, world: World, backend: str | None = None, device: Any = None):
        self.world = world
        self.backend = backend
        self._device_ids = [device.index] if backend == "nccl" and device is not None else None

    def barrier(self) -> None:
        """Wait until every rank has come here (``torch.distributed.barrier``); nothing for one process."""
        if self.world.distributed:
            import torch.distributed as dist

            if self._device_ids is not None:
                dist.barrier(device_ids=self._device_ids)
            else:
                dist.barrier()

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (a picklable object; others pass anything)."""
        if not self.world.distributed:
            return value
        import torch.distributed as dist

        box = [value if self.world.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_all(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if not self.world.distributed:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world.world_size
        dist.all_gather_object(values, value)
        return values


@contextlib.contextmanager
def warnings_of_rank_0() -> Iterator[None]:
    """The block's warnings shown by rank 0 alone and dropped on the other ranks: for the setup every
    rank does alike (the same flags, the same input files), whose warnings came once per rank, where
    rank 0 alone prints the run's report. Errors still rise on every rank. The rank is this
    process's (:meth:`World.from_env`); one process shows all, as without it."""
    import warnings

    if World.from_env().is_main:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def resolve_device(device: str | None, world: World):
    """``torch.device`` for this rank: ``"cuda"`` becomes ``cuda:<LOCAL_RANK>``; None means CPU."""
    import torch

    from ..checks import DEVICE_FORMS

    try:
        dev = torch.device(device or "cpu")
    except RuntimeError:
        raise ValueError(f"--device must be {DEVICE_FORMS}, got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):  # e.g. meta: accepted by torch.device, fails much later
        raise ValueError(f"--device must be {DEVICE_FORMS}, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device} was requested but torch sees no CUDA device")
        if dev.index is None:
            dev = torch.device("cuda", world.local_rank)
        count = torch.cuda.device_count()
        if dev.index >= count:  # torch's "invalid device ordinal" comes later, with a traceback
            where = (f"--device {device} was requested" if device != "cuda"
                     else f"LOCAL_RANK {world.local_rank} (--device cuda) asks for cuda:{dev.index}")
            have = "only cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise ValueError(f"{where}, but torch sees {count} CUDA device{'s' if count != 1 else ''} ({have})")
    return dev


def single_process_device(device: str | None, command: str):
    """``resolve_device`` for a command that runs as one process (``kfm train``, ``memorization``,
    ``reproduce``): refused under a launcher that started several ranks, where each would do the
    same whole job into the same outputs (and "cuda" would not be the rank's GPU). Only
    ``WORLD_SIZE`` is read: a stray ``RANK`` or ``LOCAL_RANK`` is no launch, and "cuda" is cuda:0."""
    size = os.environ.get("WORLD_SIZE", "").strip()
    if size.isdigit() and int(size) > 1:
        raise ValueError(f"kfm {command} runs as one process, but WORLD_SIZE is {int(size)} (torchrun?): "
                         f"every rank would do the whole job into the same outputs; launch it without "
                         f"torchrun (kfm sample is the command that shares its work over ranks)")
    return resolve_device(device, World())


@contextlib.contextmanager
def world_session(device: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S
                  ) -> Iterator[tuple[Coordinator, Any]]:
    """Yield ``(coordinator, torch_device)`` for this process, joining the process group if needed.

    The group is created only when ``WORLD_SIZE > 1`` and none exists yet, and destroyed on exit
    only if it was created here. Backend: NCCL for CUDA devices, gloo otherwise.
    """
    world = World.from_env()
    dev = resolve_device(device, world)
    if not world.distributed:
        yield Coordinator(world), dev
        return
    import torch
    import torch.distributed as dist

    created = False
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        created = True
    else:
        backend = dist.get_backend()
    try:
        yield Coordinator(world, backend, dev), dev
    finally:
        if created:
            dist.destroy_process_group()
