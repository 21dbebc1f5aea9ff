"""The count of skipped (non-finite) updates, on the host or on the device.

A host-side skip hands a bool per update and is counted at once.  A device-side skip
(``agents.sac``, ``nonfinite_skip="device"``) hands a 0-dim bool tensor: the counts are
summed on the device and read by :meth:`SkipCount.read`, which the trainer calls every
``train.log_every`` steps and before a checkpoint, so the update loop never waits for the
device.  The longest run of consecutive skips since the last read is kept, so a run of
``max_nonfinite`` skips that ended before the read is still caught.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SkipCount"]


class SkipCount:
    """``total`` skipped updates, the current run ``in_row`` and its ``peak`` since the
    last read (host ints, up to date after :meth:`read`)."""

    def __init__(self, limit: int, total: int = 0):
        self.limit = int(limit)
        self.total, self.in_row, self.peak = int(total), 0, 0
        self._device: Tensor | None = None   # (total, in_row, peak) not read yet

    def add(self, skipped: bool | Tensor) -> None:
        if not torch.is_tensor(skipped):
            self.in_row = self.in_row + 1 if skipped else 0
            self.total += int(skipped)
            self.peak = max(self.peak, self.in_row)
            return
        if self._device is None:
            self._device = torch.tensor([self.total, self.in_row, self.peak], device=skipped.device)
        s = skipped.to(torch.int64)
        in_row = (self._device[1] + 1) * s
        self._device = torch.stack([self._device[0] + s, in_row, torch.maximum(self._device[2], in_row)])

    def read(self) -> None:
        """Bring the device counts to the host (one sync; nothing to do after host flags)."""
        if self._device is not None:
            self.total, self.in_row, self.peak = self._device.tolist()
            self._device = None

    @property
    def exceeded(self) -> bool:
        """``limit`` consecutive skips or more since the last :meth:`reset_peak`."""
        return self.peak >= self.limit

    def reset_peak(self) -> None:
        self.peak = self.in_row
