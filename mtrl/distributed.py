"""The processes of a data-parallel supervised run (``torchrun --nproc_per_node N``, or the
SLURM launcher's tasks): which one this is, the process group, and the few objects the
processes exchange outside the aggregated backward.

One process per device: on CUDA process r uses ``cuda:<LOCAL_RANK>`` and the ``nccl``
backend, on the CPU the ``gloo`` backend.  Process 0 alone claims the run directory and
writes logs, metrics and checkpoints; the others wait for its word (:func:`broadcast`) before
they read a checkpoint, so a refused or finished run stops every process with the same
exit code.  Without torchrun's environment (``WORLD_SIZE`` unset or 1) a run is one
process and nothing here opens a group.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist

__all__ = ["Process", "world_size", "launched", "start", "broadcast", "gather", "broadcast_state", "stop",
           "run_local", "free_port"]


@dataclass(frozen=True)
class Process:
    """This process's place in the run: ``rank`` of ``world``, ``local_rank`` on its node
    (its CUDA device)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes the run directory."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world > 1


def world_size() -> int:
    """The number of processes torchrun (or a launcher that sets its variables) started
    for this run: ``WORLD_SIZE``, 1 without it.  Under Hydra's submitit launcher with
    ``tasks_per_node`` (times ``nodes``) above 1, the SLURM tasks of the job are the
    processes: submitit's ``TorchDistributedEnvironment`` exports torchrun's variables
    from them first."""
    if "WORLD_SIZE" not in os.environ and os.environ.get("SUBMITIT_EXECUTOR") == "slurm" \
            and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)   # LOCAL_RANK picks the GPU
    return int(os.environ.get("WORLD_SIZE", "1"))


def under_torchrun() -> bool:
    """Whether torchrun's elastic agent started this process (it runs one run)."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def launched() -> bool:
    """Whether this run has several processes."""
    return world_size() > 1


def start(device: str = "auto") -> Process:
    """Open the process group of a launched run (``nccl`` where ``device`` resolves to
    CUDA, else ``gloo``) and return this process's place; a one-process run opens
    nothing.  ``device`` is the config's (``auto | cpu | cuda``)."""
    if not launched():
        return Process()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Process(dist.get_rank(), dist.get_world_size(), local_rank)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value: Any, process: Process) -> Any:
    """Process 0's ``value`` (any picklable object) on every process."""
    if not process.parallel:
        return value
    box = [value if process.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any, process: Process) -> list | None:
    """Every process's ``value`` (picklable, on the CPU), in rank order, on process 0;
    None on the others."""
    if not process.parallel:
        return [value]
    out = [None] * process.world if process.main else None
    dist.gather_object(value, out, dst=0)
    return out


@torch.no_grad()
def broadcast_state(module: torch.nn.Module, process: Process) -> None:
    """Process 0's parameters and buffers on every process (``DistributedDataParallel``
    does the same at its start): replicas start equal whatever each process built."""
    if not process.parallel:
        return
    for t in [*module.parameters(), *module.buffers()]:
        dist.broadcast(t.data, src=0)


def free_port() -> int:
    """A TCP port of this machine that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(fn: Callable[..., None], world: int, *args) -> None:
    """``fn(process, *args)`` in ``world`` processes on this machine, a ``gloo`` group among
    them and torchrun's variables set in each (the tests and ``scripts/bench_supervised.py``
    on a CPU); ``fn`` must be importable (a module-level function) and reports through
    files.  Raises when a process fails."""
    import torch.multiprocessing as mp

    mp.spawn(_local_process, args=(world, free_port(), fn, args), nprocs=world, join=True)


def _local_process(rank: int, world: int, port: int, fn: Callable[..., None], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(Process(rank, world, rank), *args)
    finally:
        dist.destroy_process_group()
