"""Linear scalarisation: ``d = sum_i g_i`` (weights 1, as in every reference)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import LossWeighting
from .registry import register


@register("ls")
class LinearScalarization(LossWeighting):
    """LS: minimise ``sum_i l_i`` (one backward)."""

    def combine(self, losses: Tensor) -> Tensor:
        return losses.sum()
