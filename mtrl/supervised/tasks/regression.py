"""Metrics of regression tasks accumulated over a split."""

from __future__ import annotations

import torch
from torch import Tensor


class TargetMAE:
    """Per-target MAE over a split of z-scored regression targets, in the original units:
    ``|prediction - target| * std * unit_scale`` (QM9: eV targets in meV)."""

    def __init__(self, metric_names: list[str], std: Tensor, unit_scale: Tensor):
        self.names, self.std, self.unit_scale = metric_names, std, unit_scale
        self.abs_error = torch.zeros(len(metric_names), dtype=torch.float64)
        self.count = 0

    def update(self, outputs: list[Tensor], batch) -> None:
        """Adds sum_samples |prediction - target| * std over ``batch.y`` (scaled errors back in units)."""
        err = (torch.cat(outputs, dim=1).detach() - batch.y).abs()
        self.abs_error += (err.double().sum(0).cpu() * self.std.double())
        self.count += batch.y.size(0)

    def compute(self) -> dict[str, float]:
        if self.count == 0:
            raise ValueError("no batches were passed to update(); evaluate a non-empty split")
        mae = self.abs_error / self.count * self.unit_scale.double()
        return {name: float(v) for name, v in zip(self.names, mae)}
