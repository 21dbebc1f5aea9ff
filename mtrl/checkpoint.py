"""Atomic checkpoints: a run killed at any moment (SIGKILL included) leaves either the
previous or the new checkpoint, never a torn file."""

from __future__ import annotations

import os

import torch

from .run_files import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run."""


def save_atomic(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (:func:`mtrl.run_files.atomic_write`): the
    previous checkpoint survives any failure; a full disk is a ``DiskFullError``."""
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load(path: str | os.PathLike, mmap: bool = False) -> dict:
    """Read a checkpoint; a corrupt or foreign file raises :class:`CheckpointError` naming the fix.

    ``mmap=True`` maps the tensors instead of reading them (the evaluator needs the agent,
    not the replay buffer that makes up most of the file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as exc:  # torch raises several kinds for truncated / foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}); "
            "delete it to restart this run from scratch, or use a new run directory"
        ) from None
    if not isinstance(state, dict) or "format" not in state:
        raise CheckpointError(f"{path} is not a checkpoint of this trainer; use a new run directory")
    return state
