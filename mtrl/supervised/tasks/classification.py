"""Metrics of classification tasks accumulated over a split: multi-label F1 (CelebA) and
per-task accuracy (multidigits)."""

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


class Accuracy:
    """Per-task top-1 accuracy over a split (the multi-class tasks' metric, as MultiMNIST's
    in Sener & Koltun, NeurIPS 2018): task i's prediction is the arg-max of its logits, and
    ``{name}_acc`` = correct / seen, from integer counts summed over the batches (so a
    split gives the same value however it is batched); 0 before any sample."""

    def __init__(self, tasks: list[str]):
        self.tasks = list(tasks)
        self.correct = torch.zeros(len(self.tasks), dtype=torch.int64)
        self.seen = 0

    def update(self, outputs: list[Tensor], batch: tuple[Tensor, Tensor]) -> None:
        """Counts the logits ``outputs`` (one (B, C_i) tensor per task) against the class
        indices ``batch[1]`` (B, tasks), column i for task i."""
        labels = batch[1].detach()
        if len(outputs) != len(self.tasks) or labels.shape[1:] != (len(self.tasks),):
            raise ValueError(f"{len(self.tasks)} tasks, got {len(outputs)} outputs and labels of shape "
                             f"{tuple(labels.shape)}")
        hits = torch.stack([(o.detach().argmax(dim=1) == labels[:, i]).sum() for i, o in enumerate(outputs)])
        self.correct = self.correct + hits.cpu()
        self.seen += int(labels.shape[0])

    def compute(self) -> dict[str, float]:
        acc = self.correct.double() / max(self.seen, 1)
        return {f"{t}_acc": float(v) for t, v in zip(self.tasks, acc)}
