"""A run directory's files, read and written in one place: every write goes through
:func:`atomic_write`.

Checkpoints (``checkpoints/latest.pt``, :func:`save_checkpoint` / :func:`load_checkpoint`):
a run killed at any moment (SIGKILL included) leaves either the previous or the new
checkpoint, never a torn file.  ``config.json`` (the resolved config; Hydra's ``.hydra/config.yaml`` is the fallback for
runs started elsewhere) and ``status.json`` (``finished`` with the step, or ``failed``
with the error).  Every write of a run goes through :func:`atomic_write` (a temporary
file, fsync, a rename), so a reader (a summary on another machine, a relaunched sweep)
never sees half a file, and a full disk is reported as such.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, IO

import torch

TEMP_SUFFIX = ".tmp"


class DiskFullError(OSError):
    """A write that failed because the disk (or the quota) is full; the old file is kept."""


def _disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it came from is ENOSPC / EDQUOT (torch.save reports a
    full disk as an ``inline_container.cc`` RuntimeError whose context is the OSError)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write ``path`` through a temporary file in the same folder (``write(f)`` fills it),
    fsync it, rename it over the old file and fsync the folder: a reader or a process killed
    at any moment sees the old or the new file, never half of one.  A full disk raises
    :class:`DiskFullError` saying so; the temporary file is removed on any failure (and by
    :func:`remove_temp_files` after a SIGKILL)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _disk_full(exc):
            free = shutil.disk_usage(path.parent).free / 2**20
            raise DiskFullError(errno.ENOSPC, f"no space left on the device writing {path} ({free:.0f} MiB free); "
                                "free some space and run the same command again (the previous file is kept)") from None
        raise


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    def write(f):
        json.dump(obj, f, indent=1)
        f.write("\n")

    atomic_write(path, write)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of a text (a Markdown table, a CSV file)."""
    atomic_write(path, lambda f: f.write(text))


def remove_temp_files(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed atomic writes left in ``run_dir`` and its
    ``checkpoints/`` (call it only while holding the run's lock); returns them."""
    run_dir = Path(run_dir)
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        for p in folder.glob(f"*{TEMP_SUFFIX}") if folder.is_dir() else ():
            if p.is_file():
                p.unlink()
                removed.append(p)
    return removed


def read_config(run_dir: str | os.PathLike) -> dict:
    """The run's resolved config; a ValueError naming the file when there is none or it is unreadable."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    elif (run_dir / ".hydra" / "config.yaml").is_file():
        from omegaconf import OmegaConf

        path = run_dir / ".hydra" / "config.yaml"
        try:
            config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except Exception as exc:  # omegaconf / yaml raise many types for unreadable files
            raise ValueError(f"{path}: unreadable config ({type(exc).__name__}: {exc})") from None
    else:
        raise ValueError(f"{run_dir} is not a run directory (no config.json or .hydra/config.yaml); "
                         "pass a directory that scripts/train.py wrote")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the config is not a mapping")
    return config


def write_status(run_dir: str | os.PathLike, state: str, **fields) -> None:
    """``finished`` (after the final checkpoint, with ``step``) or ``failed`` (with ``error``)."""
    write_json_atomic(Path(run_dir) / "status.json", {"state": state, **fields})


def read_status(run_dir: str | os.PathLike) -> dict | None:
    try:
        status = json.loads((Path(run_dir) / "status.json").read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def last_record_step(run_dir: str | os.PathLike) -> int | None:
    """The ``step`` of the last intact line of ``metrics.jsonl`` (None without one)."""
    try:
        lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def run_is_finished(run_dir: str | os.PathLike, steps: int) -> bool:
    """True when ``run_dir`` holds a run that completed ``steps`` (training steps or epochs):
    its ``status.json``, written after the final checkpoint, says so and its ``metrics.jsonl``
    reaches that step (a deleted or truncated file makes the run continue from its final
    checkpoint, which restores the file).  Sweeps skip such runs."""
    status = read_status(run_dir)
    if status is None or status.get("state") != "finished" or int(status.get("step", -1)) < int(steps):
        return False
    last = last_record_step(run_dir)
    return last is not None and last >= int(steps)


# -- checkpoints ------------------------------------------------------------------------

class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the run."""


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (:func:`atomic_write`): the
    previous checkpoint survives any failure; a full disk is a ``DiskFullError``."""
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def load_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict:
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
