"""The small files of a run directory, read and written in one place.

``config.json`` (the resolved config; Hydra's ``.hydra/config.yaml`` is the fallback for
runs started elsewhere) and ``status.json`` (``finished`` with the step, or ``failed``
with the error).  Writes go through a temporary file and a rename, so a reader (a
summary on another machine, a relaunched sweep) never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def run_is_finished(run_dir: str | os.PathLike, steps: int) -> bool:
    """True when ``run_dir`` holds a run that completed ``steps`` (training steps or epochs):
    its ``status.json``, written after the final checkpoint, says so.  Sweeps skip such runs."""
    status = read_status(run_dir)
    return status is not None and status.get("state") == "finished" and int(status.get("step", -1)) >= int(steps)
