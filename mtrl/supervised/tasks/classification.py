"""Metrics of classification tasks accumulated over a split."""

from __future__ import annotations

import torch
from torch import Tensor


class MultiLabelF1:
    """Per-label F1 at threshold 0.5 over a split (CelebA's metric): counts TP, FP, FN of the predictions
    ``logit > 0`` (sigmoid > 0.5) and returns F1 = 2 TP / (2 TP + FP + FN) per label
    (= 2 P R / (P + R)); F1 = 0 when TP + FP + FN = 0 (no positive predicted or present), as
    the reference code's epsilon-guarded formula gives. The error some tables use is 1 - F1."""

    def __init__(self, labels: list[str]):
        self.labels = list(labels)
        k = len(self.labels)
        self.tp, self.fp, self.fn = (torch.zeros(k, dtype=torch.int64) for _ in range(3))

    def update(self, outputs: list[Tensor], batch: tuple[Tensor, Tensor]) -> None:
        """Counts the logits ``outputs`` (one (B,) tensor per label) against the {0, 1}
        targets ``batch[1]`` (B, labels)."""
        pred = torch.stack(outputs, dim=1).detach() > 0
        truth = batch[1].detach() > 0.5
        self.tp = self.tp + (pred & truth).sum(0).cpu()
        self.fp = self.fp + (pred & ~truth).sum(0).cpu()
        self.fn = self.fn + (~pred & truth).sum(0).cpu()

    def compute(self) -> dict[str, float]:
        denom = (2 * self.tp + self.fp + self.fn).double()
        f1 = torch.where(denom > 0, 2 * self.tp.double() / denom.clamp(min=1), torch.zeros_like(denom))
        return {f"{a}_f1": float(v) for a, v in zip(self.labels, f1)}
