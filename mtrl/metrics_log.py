"""Run outputs: ``config.json`` (the resolved config and the run's history),
``metrics.jsonl`` (one JSON object per evaluation), ``status.json`` (``finished`` /
``failed``) and TensorBoard scalars.

Every number a run produces lands in its run directory; summaries are computed from
``metrics.jsonl`` and ``config.json`` alone.  The evaluations are also kept in every
checkpoint: on resume ``metrics.jsonl`` is rewritten to exactly the checkpoint's
evaluations, so a run killed between two checkpoints never reports an evaluation twice,
and a deleted, truncated or doubly written file is restored (and reported) rather than
continued.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from .run_files import atomic_write, read_config, write_json_atomic, write_status
from .run_identity import META_KEY


def _step(line: str) -> float:
    """The ``step`` of a metrics line (-inf for a torn or foreign one)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("-inf")


class RunLogger:
    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None,
                 evaluations: list[dict] | None = None):
        """``resume_step`` and ``evaluations`` (the checkpoint's) when the run continues;
        ``notes`` lists what was repaired, for the caller to print."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.notes: list[str] = []
        self._restore(evaluations if resume_step is not None else [], resume_step or 0)
        (self.run_dir / "status.json").unlink(missing_ok=True)  # running again
        self.tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=resume_step)

    def _restore(self, evaluations: list[dict], step: int) -> None:
        """Make ``metrics.jsonl`` hold exactly ``evaluations`` (those of the checkpoint at
        ``step``); lines after them are dropped silently only when they are later than ``step``
        (written after the checkpoint by the killed run, and written again now)."""
        want = [json.dumps(r) for r in evaluations]
        have = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else None
        if have == want or (have is None and not want):
            return
        if have is None:
            self.notes.append(f"{self.metrics_path} was missing: restored its {len(want)} evaluations from the checkpoint")
        elif have[:len(want)] != want or (want and not all(_step(line) > step for line in have[len(want):])):
            self.notes.append(f"{self.metrics_path} did not match the checkpoint's evaluations ({len(have)} lines, "
                              f"{len(want)} in the checkpoint; lost, edited or written by another process): "
                              "rewritten from the checkpoint")
        elif not want:
            self.notes.append(f"no checkpoint: starting over; the {len(have)} evaluation(s) in {self.metrics_path} "
                              "from before the first checkpoint are replaced")
        atomic_write(self.metrics_path, lambda f: f.write("".join(line + "\n" for line in want)))

    def save_config(self, cfg: dict, start_step: int = 0, changed=()) -> None:
        """``config.json``: the config this segment runs with and, under ``_run.segments``, every
        segment of the run (its start, overrides and the values changed at that resume)."""
        segments = []
        if start_step > 0 and (self.run_dir / "config.json").is_file():
            try:
                segments = list(read_config(self.run_dir).get(META_KEY, {}).get("segments", []))
            except ValueError:
                segments = []
        cfg = copy.deepcopy(cfg)
        meta = cfg.setdefault(META_KEY, {})
        segments.append({"start": int(start_step), "overrides": list(meta.get("overrides", [])),
                         "changed": {k: [a, b] for k, a, b in changed},
                         "host": socket.gethostname(), "pid": os.getpid(),
                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        meta["segments"] = segments
        write_json_atomic(self.run_dir / "config.json", cfg)

    def save_status(self, state: str, step: int, **extra) -> None:
        write_status(self.run_dir, state, step=int(step), **extra)

    def evaluation(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def scalars(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.tb.add_scalar(key, value, step)

    def flush(self) -> None:
        self.tb.flush()

    def close(self) -> None:
        self.tb.flush()
        self.tb.close()
