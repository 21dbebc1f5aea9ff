"""Atomic checkpoints: a run killed at any moment (SIGKILL included) leaves either the
previous or the new checkpoint, never a torn file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run."""


def save_atomic(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` through a temporary file in the same folder, fsync it,
    then rename over the old file (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
