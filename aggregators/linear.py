"""Linear scalarisation: ``d = sum_i lambda_i g_i``; lambda_i = 1 (as in every reference)
unless fixed loss weights are given (the "Grid Search" baseline of Guo et al. (arXiv 2025): weights tuned by
hand per benchmark, e.g. NYUD-v2 seg/depth/normals/edge = 1, 1, 2, 50)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import LossWeighting
from .registry import register


@register("ls")
class LinearScalarization(LossWeighting):
    """LS: minimise ``sum_i lambda_i l_i`` (one backward); ``loss_weights`` = the fixed
    lambda_i (default all 1)."""

    def __init__(self, num_tasks: int, loss_weights: Sequence[float] | None = None):
        super().__init__(num_tasks)
        if loss_weights is None:
            lam = torch.ones(num_tasks, dtype=torch.float64)
        else:
            lam = torch.as_tensor([float(w) for w in loss_weights], dtype=torch.float64)
            if lam.shape != (num_tasks,):
                raise ValueError(f"ls: loss_weights needs one weight per task ({num_tasks}), got {len(lam)}")
            if not (torch.isfinite(lam).all() and (lam >= 0).all()):
                raise ValueError(f"ls: loss_weights must be finite and >= 0, got {lam.tolist()}")
        self.unit_weights = bool((lam == 1).all())
        self.register_buffer("loss_weights", lam, persistent=False)   # from the config, not the run

    def combine(self, losses: Tensor) -> Tensor:
        return (self.loss_weights.to(losses.dtype) * losses).sum()
