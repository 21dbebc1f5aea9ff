"""Run outputs: ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON object
per evaluation), ``status.json`` (``finished`` / ``failed``) and TensorBoard scalars.

Every number a run produces lands in its run directory; summaries are computed from
``metrics.jsonl`` and ``config.json`` alone.  On resume the file is truncated to the evaluations up to the
checkpoint's step, so a run killed between a checkpoint and the next one never reports
an evaluation twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from .run_files import write_json_atomic, write_status


class RunLogger:
    def __init__(self, run_dir: str | os.PathLike, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        (self.run_dir / "status.json").unlink(missing_ok=True)  # running again
        self.tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=resume_step)

    def _truncate_after(self, step: int) -> None:
        if not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError):
                break  # a torn last line from a killed run
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(l + "\n" for l in keep))
        os.replace(tmp, self.metrics_path)

    def save_config(self, cfg: dict) -> None:
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
