"""Pixel-level tasks of the dense-vision benchmarks: output activation, training loss and
split-level metrics of semantic segmentation, depth and surface-normal estimation.

The definitions are those of the MTAN protocol that PIVRG (Qin et al., CVPR 2025, sec. 5.1), ConsMTL,
Nash-MTL and FAMO follow (``shared/docs/supervised_benchmarks.md``):

* segmentation: the head's C channels go through ``log_softmax``; loss NLL with ignore
  index -1; mIoU and pixel accuracy (in %) from a C x C confusion matrix accumulated over
  the whole split, IoU_c = TP_c / (TP_c + FP_c + FN_c), mIoU the mean over the classes
  that occur in the labels or the predictions;
* depth: one channel, no activation; valid pixels are those whose ground truth is not 0;
  loss L1 over the valid pixels; metrics absolute error |p - g| and relative error
  |p - g| / g, means over every valid pixel of the split;
* normals: three channels normalised to unit length; valid pixels are those whose ground
  truth is not the zero vector; loss 1 - mean cos(p, g) over the valid pixels; metrics
  the angle arccos(p . g) in degrees: mean and median over every valid pixel of the
  split, and the % of pixels within 11.25, 22.5 and 30 degrees.

The reference code averages the depth errors per batch and then over batches; here they
are pixel means over the split (the same up to the weight of each batch's valid-pixel
count).  The normal median comes from a histogram of 0.001-degree bins (exact to a
bin), so the split's angles never have to be held in memory.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -1
NORMAL_THRESHOLDS = (11.25, 22.5, 30.0)
ANGLE_BIN = 1e-3   # degrees per bin of the normal-angle histogram


class DenseTask(Protocol):
    """What a dense benchmark needs of a task (this module's and ``boundary_tasks``')."""

    kind: str
    out_channels: int
    metrics: tuple[tuple[str, bool], ...]    # (name, higher is better) of metric_state().compute()

    def activate(self, raw: Tensor) -> Tensor: ...

    def loss(self, pred: Tensor, target: Tensor) -> Tensor: ...

    def metric_state(self) -> Any: ...


class SegmentationTask:
    """C-class semantic segmentation; target (B, H, W) long, ``ignore_index`` (-1 in the
    MTAN data) = ignore.

    Every task class here has: ``kind``; ``out_channels`` (the head's output channels);
    ``activate(raw)`` (the head's output activation); ``loss(pred, target)`` (a scalar);
    ``metrics``, the (name, higher is better) pairs that ``metric_state()`` reports; and
    ``metric_state()``, a split-level accumulator with ``update(pred, target)`` and
    ``compute() -> {name: value}``."""

    kind = "segmentation"
    metrics = (("miou", True), ("pix_acc", True))

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 2:
            raise ValueError(f"segmentation needs at least 2 classes, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.out_channels = num_classes

    def activate(self, raw: Tensor) -> Tensor:
        return F.log_softmax(raw, dim=1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(pred, target, ignore_index=self.ignore_index)

    def metric_state(self) -> "ConfusionMatrix":
        return ConfusionMatrix(self.num_classes, self.ignore_index)


class DepthTask:
    """Per-pixel depth; target (B, 1, H, W), 0 = invalid."""

    kind = "depth"
    out_channels = 1
    metrics = (("abs_err", False), ("rel_err", False))

    def activate(self, raw: Tensor) -> Tensor:
        return raw

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        mask = valid_mask(target)
        return ((pred - target).abs() * mask).sum() / mask.sum().clamp(min=1)

    def metric_state(self) -> "DepthErrors":
        return DepthErrors()


class NormalTask:
    """Per-pixel unit surface normal; target (B, 3, H, W), the zero vector = invalid."""

    kind = "normal"
    out_channels = 3
    metrics = (("mean_angle", False), ("median_angle", False), ("within_11.25", True), ("within_22.5", True),
               ("within_30", True))

    def activate(self, raw: Tensor) -> Tensor:
        return raw / raw.norm(p=2, dim=1, keepdim=True).clamp(min=1e-12)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        mask = valid_mask(target)
        return 1 - (pred * target * mask).sum() / mask.sum().clamp(min=1)

    def metric_state(self) -> "NormalAngles":
        return NormalAngles()




def valid_mask(target: Tensor) -> Tensor:
    """(B, 1, H, W) float: 1 where the target's channels are not all zero."""
    return (target.sum(dim=1, keepdim=True) != 0).to(target.dtype)


class ConfusionMatrix:
    """C x C counts (row: label, column: prediction) over a split; ignored pixels skipped."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: (B, C, H, W) scores (log-probabilities) or (B, H, W) class indices."""
        labels = pred.argmax(dim=1) if pred.dim() == target.dim() + 1 else pred
        keep = target != self.ignore_index
        if (target[keep] >= self.num_classes).any() or (target[keep] < 0).any():
            bad = target[keep][(target[keep] >= self.num_classes) | (target[keep] < 0)][0]
            raise ValueError(f"segmentation label {int(bad)} outside 0..{self.num_classes - 1} "
                             f"(and {self.ignore_index} = ignore)")
        index = target[keep].long() * self.num_classes + labels[keep].long()
        self.counts += torch.bincount(index, minlength=self.num_classes ** 2).view(
            self.num_classes, self.num_classes).cpu()

    def compute(self) -> dict[str, float]:
        m = self.counts.double()
        tp = m.diagonal()
        union = m.sum(0) + m.sum(1) - tp
        present = union > 0
        miou = float((tp[present] / union[present]).mean()) if present.any() else math.nan
        total = m.sum()
        acc = float(tp.sum() / total) if total > 0 else math.nan
        return {"miou": 100 * miou, "pix_acc": 100 * acc}


class DepthErrors:
    """Sums of |p - g| and |p - g| / g and the valid-pixel count over a split."""

    def __init__(self):
        self.abs_sum = self.rel_sum = 0.0
        self.count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        mask = valid_mask(target).bool().expand_as(target)
        p, g = pred[mask].double(), target[mask].double()
        err = (p - g).abs()
        self.abs_sum += float(err.sum())
        self.rel_sum += float((err / g.abs()).sum())
        self.count += int(mask.sum())

    def compute(self) -> dict[str, float]:
        n = self.count
        return {"abs_err": self.abs_sum / n if n else math.nan, "rel_err": self.rel_sum / n if n else math.nan}


def normal_angles(pred: Tensor, target: Tensor) -> Tensor:
    """The angles (degrees) between predicted and true unit normals at the valid pixels."""
    mask = valid_mask(target)[:, 0].bool()
    cos = (pred.double() * target.double()).sum(dim=1)[mask].clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


class NormalAngles:
    """Angle sum, threshold counts and a 0.001-degree histogram over a split."""

    def __init__(self):
        self.bins = round(180 / ANGLE_BIN)
        self.hist = torch.zeros(self.bins, dtype=torch.int64)
        self.total = 0.0
        self.count = 0
        self.within = torch.zeros(len(NORMAL_THRESHOLDS), dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        angles = normal_angles(pred, target)
        self.total += float(angles.sum())
        self.count += angles.numel()
        self.within += torch.stack([(angles < t).sum() for t in NORMAL_THRESHOLDS]).cpu()
        index = (angles / ANGLE_BIN).long().clamp(max=self.bins - 1)
        self.hist += torch.bincount(index, minlength=self.bins).cpu()

    def order_statistic(self, rank: int) -> float:
        """The value of 0-based ``rank`` among the split's angles, to within one bin
        (placed evenly inside its bin)."""
        cum = self.hist.cumsum(0)
        b = int(torch.searchsorted(cum, torch.tensor(rank, dtype=cum.dtype), right=True))
        before = int(cum[b - 1]) if b > 0 else 0
        return (b + (rank - before + 0.5) / int(self.hist[b])) * ANGLE_BIN

    def median(self) -> float:
        """The split's median angle (the mean of the two middle values for an even count,
        as ``numpy.median``), to within one 0.001-degree bin."""
        if self.count == 0:
            return math.nan
        lo, hi = (self.count - 1) // 2, self.count // 2
        return (self.order_statistic(lo) + self.order_statistic(hi)) / 2

    def compute(self) -> dict[str, float]:
        n = self.count
        values = {"mean_angle": self.total / n if n else math.nan, "median_angle": self.median()}
        for t, c in zip(NORMAL_THRESHOLDS, self.within.tolist()):
            values[f"within_{t:g}"] = 100 * c / n if n else math.nan
        return values


class InstanceOffsetTask:
    """Instance segmentation as offset regression (Senushkin et al., CVPR 2023, Cityscapes three-task): two
    channels, each pixel's (dy, dx) to its instance's centre; target (B, 2, H, W) with
    ``ignore_value`` (250) on stuff and void pixels.  Loss L1 over the valid entries;
    metric ``l1`` = mean |pred - target| over them.  ``faithful=True`` casts both sides
    to int32 before the difference, as the reference metric does (the published numbers
    depend on it); False keeps the float values."""

    kind = "instance"
    out_channels = 2
    metrics = (("l1", False),)

    def __init__(self, ignore_value: float = 250.0, faithful: bool = True):
        self.ignore_value, self.faithful = ignore_value, faithful

    def activate(self, raw: Tensor) -> Tensor:
        return raw

    def valid(self, target: Tensor) -> Tensor:
        return target != self.ignore_value

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        mask = self.valid(target)
        return (pred - target).abs()[mask].sum() / mask.sum().clamp(min=1)

    def metric_state(self) -> "MeanError":
        return MeanError("l1", self.valid, absolute=True, as_int32=self.faithful)


class DisparityTask:
    """Disparity (Senushkin et al., CVPR 2023, Cityscapes three-task): one channel; target (B, 1, H, W),
    valid where > 0.  Loss L1 over the valid pixels; metric ``mse`` over them."""

    kind = "disparity"
    out_channels = 1
    metrics = (("mse", False),)

    def activate(self, raw: Tensor) -> Tensor:
        return raw

    @staticmethod
    def valid(target: Tensor) -> Tensor:
        return target > 0

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        mask = self.valid(target)
        return (pred - target).abs()[mask].sum() / mask.sum().clamp(min=1)

    def metric_state(self) -> "MeanError":
        return MeanError("mse", self.valid, absolute=False)


class MeanError:
    """Mean |pred - target| (``absolute``) or squared error over the entries that
    ``valid(target)`` keeps, pooled over a split; ``as_int32`` truncates both sides to
    int32 first."""

    def __init__(self, name: str, valid, absolute: bool, as_int32: bool = False):
        self.name, self.valid, self.absolute, self.as_int32 = name, valid, absolute, as_int32
        self.total, self.count = 0.0, 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        mask = self.valid(target)
        p, g = pred[mask], target[mask]
        if self.as_int32:
            p, g = p.to(torch.int32), g.to(torch.int32)
        err = (p.double() - g.double())
        self.total += float(err.abs().sum() if self.absolute else (err ** 2).sum())
        self.count += int(mask.sum())

    def compute(self) -> dict[str, float]:
        return {self.name: self.total / self.count if self.count else math.nan}

