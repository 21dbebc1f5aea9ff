"""Saliency, edge, depth-RMSE and mean-angle normal tasks of Guo et al. (arXiv 2025)'s NYUD-v2 four-task and
PASCAL-Context five-task benchmarks (``shared/docs/dense_suites.md``), with the task protocol
of :mod:`mtrl.supervised.tasks.dense` (``kind``, ``out_channels``, ``activate``, ``loss``,
``metrics``, ``metric_state``).

The definitions follow the public reference code of those benchmarks,
SimonVandenhende/Multi-Task-Learning-PyTorch ("MTL"; its losses and meters come from
facebookresearch/astmt), and, for the edge metric, the SEISM MATLAB package it calls:

* **Class-balanced BCE** (MTL ``losses/loss_functions.py``, ``BalancedCrossEntropyLoss``):
  labels binarised at ``>= 0.5``; per pixel ``-w y log p - (1 - w)(1 - y) log(1 - p)`` with
  ``p = sigmoid(logit)``; ``w`` the fraction of negative pixels of the *batch's* target
  (``num_neg / num_total``) for saliency, the constant 0.95 for edges (the configs'
  ``edge_w``); the per-pixel losses are **summed and divided by the number of elements**
  (``size_average=True``, i.e. a mean over the batch's pixels, not a per-image mean).  MTL has
  no ignore label for saliency or edges; the later ATRC / InvPT code pads images with 255 and
  drops those pixels (then counts and means run over the kept pixels), which is what
  ``ignore_index=255`` does here; on unpadded data the two are identical.
* **Saliency maxF** (MTL ``evaluation/eval_sal.py``, ``SaliencyMeter``): the probability map
  thresholded with ``p > t`` for t in ``np.linspace(0.2, 0.9, 15)``; precision and recall
  ``tp / (tp + fp + 1e-12)``, ``tp / (tp + fn + 1e-12)`` **per image**, then averaged over the
  split's images; F = 2 P R / (P + R + 1e-12) from the averaged P and R (beta^2 = 1); maxF the
  largest F over the thresholds, in %.  ``average="pixel"`` gives the pooled variant
  (tp/fp/fn summed over the split before P and R).
* **Edge odsF** (MTL ``evaluation/eval_edge.py`` -> SEISM ``read_one_cont_png.m``,
  ``edgesEvalImg.m``, ``gather_measure.m``, ``general_ods.m``): the prediction is saved as an
  8-bit PNG of ``255 sigmoid`` (``astype(uint8)`` truncates), read back as ``png / 255``,
  binarised with ``> t`` for t = 0.01 .. 0.99 (99 values), thinned with MATLAB's
  ``bwmorph(.., 'thin', Inf)`` and matched to the ground-truth boundary with
  ``correspondPixels`` at ``max_dist`` times the image diagonal (0.011 NYUD, 0.0075 PASCAL);
  cntR / sumR / cntP / sumP are **summed over the split** per threshold, P = cntP / sumP,
  R = cntR / sumR, F = 2 P R / (P + R), and the ODS F is the maximum over the thresholds
  (no interpolation between thresholds, unlike the BSDS500 / pyEdgeEval summary).  The
  matching is pyEdgeEval's ``correspond_pixels`` (a port of the BSDS ``correspondPixels``);
  the thinning is :func:`~mtrl.supervised.tasks.morphology.thin`, the Lam-Lee-Suen / Guo-Hall algorithm that ``bwmorph``
  'thin' implements, repeated until the image no longer changes (pyEdgeEval's
  ``binary_thin`` uses the same lookup tables but stops as soon as a first subiteration
  changes nothing, which can leave pixels that ``bwmorph`` removes, and its package imports
  OpenCV on the way, so it is not used).  ``quantize=False`` thresholds the float
  probabilities instead of the 8-bit values.  The reference thresholds 99 values; the
  default here is 19 for speed (see :class:`EdgeTask`).
* **Depth RMSE** (MTL ``evaluation/eval_depth.py``, ``DepthMeter``): predictions clamped to
  ``>= 1e-9`` (the reference's "only positive depth values"), sqrt of the mean squared error
  over every valid pixel (target != 0) of the split.  Loss: L1 mean over the valid pixels
  (MTL ``DepthLoss``).
* **Normals** (MTL ``NormalsLoss(normalize=True, size_average=True, norm=1)`` and
  ``NormalsMeter``): output L2-normalised; loss the L1 distance summed over the valid pixels'
  three components and divided by the number of valid *components* (3 per valid pixel; the
  ATRC / InvPT ``L1Loss`` divides by valid pixels instead, 3 times larger); metric the mean
  angle in degrees pooled over the valid pixels (ground truth not the zero vector).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .dense import DepthTask, normal_angles, valid_mask
from .morphology import thin

IGNORE_LABEL = 255
SALIENCY_THRESHOLDS = tuple(np.linspace(0.2, 0.9, 15).tolist())
EDGE_POS_WEIGHT = 0.95
EDGE_MAX_DIST = {"nyud": 0.011, "pascal": 0.0075}   # fraction of the image diagonal
EDGE_THRESHOLDS_REFERENCE = 99   # the MTL reference's SEISM call: 0.01, 0.02, ..., 0.99
EDGE_THRESHOLDS = 19             # default here: 0.05, 0.10, ..., 0.95 (a subset of the above)
DEPTH_FLOOR = 1e-9
_EPS = 1e-12
_VISION_HINT = "pip install -e '.[vision]' (or pip install pyEdgeEval)"


def _binary_map(target: Tensor) -> Tensor:
    """(B, H, W) or (B, 1, H, W) -> (B, H, W) float target of a one-channel task."""
    if target.dim() == 4:
        if target.shape[1] != 1:
            raise ValueError(f"a binary-map target has 1 channel, got shape {tuple(target.shape)}")
        target = target[:, 0]
    if target.dim() != 3:
        raise ValueError(f"a binary-map target is (B, H, W) or (B, 1, H, W), got shape {tuple(target.shape)}")
    return target.float()


def _logit_map(pred: Tensor, target: Tensor) -> Tensor:
    """The one-channel prediction as (B, H, W), checked against the (B, H, W) target."""
    if pred.dim() == 4:
        if pred.shape[1] != 1:
            raise ValueError(f"a binary-map prediction has 1 channel, got shape {tuple(pred.shape)}")
        pred = pred[:, 0]
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return pred


def balanced_bce(logits: Tensor, target: Tensor, pos_weight: float | None = None,
                 ignore_index: float | None = IGNORE_LABEL) -> Tensor:
    """Class-balanced binary cross-entropy on logits (MTL ``BalancedCrossEntropyLoss``).

    ``sum_valid [w y softplus(-x) + (1 - w)(1 - y) softplus(x)] / n_valid`` with y = target >= 0.5
    and ``w = pos_weight`` or, when None, the fraction of negatives among the valid pixels of
    the whole batch.  Pixels equal to ``ignore_index`` are dropped (None: none are)."""
    target = _binary_map(target)
    x = _logit_map(logits, target)
    keep = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    n_valid = keep.sum()
    if n_valid == 0:
        return x.sum() * 0.0
    y = (target >= 0.5) & keep
    neg = ~y & keep
    if pos_weight is None:
        w = neg.sum().to(x.dtype) / n_valid
    else:
        if not 0.0 <= pos_weight <= 1.0:
            raise ValueError(f"pos_weight must lie in [0, 1], got {pos_weight}")
        w = torch.tensor(float(pos_weight), dtype=x.dtype, device=x.device)
    loss_pos = (F.softplus(-x) * y).sum()   # -log sigmoid(x) on the positives
    loss_neg = (F.softplus(x) * neg).sum()  # -log(1 - sigmoid(x)) on the negatives
    return (w * loss_pos + (1 - w) * loss_neg) / n_valid


class SaliencyTask:
    """Binary saliency; target (B, 1, H, W) or (B, H, W) in {0, 1} (``ignore_index`` = ignore).
    One logit channel (no activation); class-balanced BCE; maxF in %."""

    kind = "saliency"
    out_channels = 1
    metrics = (("maxf", True),)

    def __init__(self, ignore_index: float | None = IGNORE_LABEL, average: str = "image",
                 thresholds: tuple[float, ...] = SALIENCY_THRESHOLDS):
        if average not in ("image", "pixel"):
            raise ValueError(f"saliency average must be 'image' (the MTL reference) or 'pixel', got {average!r}")
        self.ignore_index, self.average, self.thresholds = ignore_index, average, tuple(thresholds)

    def activate(self, raw: Tensor) -> Tensor:
        return raw

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return balanced_bce(pred, target, None, self.ignore_index)

    def metric_state(self) -> "SaliencyMaxF":
        return SaliencyMaxF(self.thresholds, self.average, self.ignore_index)


class SaliencyMaxF:
    """Per-threshold tp / fp / fn sums and per-image precision / recall sums over a split."""

    def __init__(self, thresholds=SALIENCY_THRESHOLDS, average: str = "image",
                 ignore_index: float | None = IGNORE_LABEL):
        self.thresholds = torch.tensor(thresholds, dtype=torch.float64)
        self.average, self.ignore_index = average, ignore_index
        k = len(thresholds)
        self.tp, self.fp, self.fn = (torch.zeros(k, dtype=torch.float64) for _ in range(3))
        self.prec_sum = torch.zeros(k, dtype=torch.float64)
        self.rec_sum = torch.zeros(k, dtype=torch.float64)
        self.images = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: logits (B, 1, H, W); ``target``: (B, 1, H, W) or (B, H, W)."""
        target = _binary_map(target).detach().cpu()
        prob = torch.sigmoid(_logit_map(pred, target).detach().double()).cpu().flatten(1)
        target = target.flatten(1)
        keep = torch.ones_like(target, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        gt = (target >= 0.5) & keep
        above = prob[:, None, :] > self.thresholds[None, :, None]          # (B, K, N)
        tp = (above & gt[:, None]).sum(-1).double()
        fp = (above & ~gt[:, None] & keep[:, None]).sum(-1).double()
        fn = (~above & gt[:, None]).sum(-1).double()
        self.tp += tp.sum(0)
        self.fp += fp.sum(0)
        self.fn += fn.sum(0)
        self.prec_sum += (tp / (tp + fp + _EPS)).sum(0)
        self.rec_sum += (tp / (tp + fn + _EPS)).sum(0)
        self.images += target.shape[0]

    def compute(self) -> dict[str, float]:
        if self.images == 0:
            return {"maxf": math.nan}
        if self.average == "image":
            prec, rec = self.prec_sum / self.images, self.rec_sum / self.images
        else:
            prec, rec = self.tp / (self.tp + self.fp + _EPS), self.tp / (self.tp + self.fn + _EPS)
        f = 2 * prec * rec / (prec + rec + _EPS)
        return {"maxf": 100 * float(f.max())}


class EdgeTask:
    """Binary edges; target (B, 1, H, W) or (B, H, W) in {0, 1} (``ignore_index`` = ignore).
    One logit channel (no activation); BCE with positive weight 0.95; BSDS/SEISM odsF in %.

    ``max_dist`` is the matching tolerance as a fraction of the image diagonal
    (``EDGE_MAX_DIST``: 0.011 NYUD, 0.0075 PASCAL).  ``num_thresholds`` K gives the thresholds
    1/(K+1) .. K/(K+1); the reference uses 99 (0.01 .. 0.99, ``EDGE_THRESHOLDS_REFERENCE``).
    Each threshold costs one thinning and one bipartite matching per image, about 0.1 s at
    480 x 640 for a clean edge map (and up to ~1 s for a noisy one at low thresholds), i.e.
    ~10 s per image and ~1.5 h per NYUD test pass with 99 on one core.  The default is
    therefore K = 19 (0.05 .. 0.95, a subset of the reference grid, so its odsF is never above
    the 99-threshold value and typically within a few tenths); pass
    ``num_thresholds=EDGE_THRESHOLDS_REFERENCE`` for the final, reported evaluation."""

    kind = "edge"
    out_channels = 1
    metrics = (("odsf", True),)

    def __init__(self, max_dist: float, pos_weight: float = EDGE_POS_WEIGHT,
                 ignore_index: float | None = IGNORE_LABEL, num_thresholds: int = EDGE_THRESHOLDS,
                 quantize: bool = True):
        if not 0 < max_dist < 1:
            raise ValueError(f"edge max_dist is a fraction of the image diagonal (0.011 NYUD, 0.0075 PASCAL), "
                             f"got {max_dist}")
        if num_thresholds < 1:
            raise ValueError(f"edge num_thresholds must be >= 1, got {num_thresholds}")
        if not 0.0 <= pos_weight <= 1.0:
            raise ValueError(f"edge pos_weight must lie in [0, 1], got {pos_weight}")
        self.max_dist, self.pos_weight, self.ignore_index = max_dist, pos_weight, ignore_index
        self.num_thresholds, self.quantize = num_thresholds, quantize

    def activate(self, raw: Tensor) -> Tensor:
        return raw

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return balanced_bce(pred, target, self.pos_weight, self.ignore_index)

    def metric_state(self) -> "EdgeODSF":
        return EdgeODSF(self.max_dist, self.num_thresholds, self.quantize, self.ignore_index)

    def train_metric_state(self) -> "EdgeODSF":
        """The odsF accumulated during a training epoch (what PIVRG's dm_i and the selection
        read on these sets): the first image of each batch at no more than 5 thresholds, so
        that the matching does not dominate the step (a full 480 x 640 batch of 8 at 19
        thresholds costs about 15 s on one core)."""
        return EdgeODSF(self.max_dist, min(self.num_thresholds, 5), self.quantize, self.ignore_index,
                        images_per_batch=1)


def _correspond_pixels():
    try:
        from pyEdgeEval import correspond_pixels
    except ImportError as err:
        raise ImportError(f"the edge odsF metric needs pyEdgeEval's boundary matching: {_VISION_HINT}") from err
    return correspond_pixels


def boundary_counts(prob: np.ndarray, gt: np.ndarray, thresholds, max_dist: float,
                    apply_thinning: bool = True) -> np.ndarray:
    """(4, K) counts cntR, sumR, cntP, sumP of one image (SEISM ``edgesEvalImg`` with the
    reference's thresholding ``> t`` and ``bwmorph`` thinning): for each threshold t the map
    ``prob > t``, thinned, is matched to the boolean boundary ``gt`` by ``correspondPixels``
    (tolerance ``max_dist`` x diagonal); cntR = matched gt pixels, sumR = gt pixels, cntP =
    matched predicted pixels, sumP = predicted pixels."""
    correspond_pixels = _correspond_pixels()
    gt = np.asarray(gt) != 0
    counts = np.zeros((4, len(thresholds)))
    previous, previous_counts = None, None
    for k, t in enumerate(thresholds):
        binary = prob > t
        if previous is not None and np.array_equal(binary, previous):
            counts[:, k] = previous_counts
            continue
        pred = thin(binary) if apply_thinning else binary
        n_pred, n_gt = int(pred.sum()), int(gt.sum())
        if n_pred and n_gt:
            match_pred, match_gt, _, _ = correspond_pixels(pred.astype(np.float64), gt.astype(np.float64),
                                                           max_dist=max_dist)
            counts[:, k] = ((match_gt > 0).sum(), n_gt, (match_pred > 0).sum(), n_pred)
        else:   # nothing to match: every gt pixel missed, every predicted pixel a false positive
            counts[:, k] = (0, n_gt, 0, n_pred)
        previous, previous_counts = binary, counts[:, k].copy()
    return counts


class EdgeODSF:
    """Per-threshold boundary counts summed over a split; odsF = max over thresholds of F (%).

    BSDS's ``correspondPixels`` (pyEdgeEval's port, as SEISM's) matches on a randomised
    sparse graph seeded from the clock, so matched counts can differ by a pixel or so
    between runs on the same maps, as with the reference evaluation."""

    def __init__(self, max_dist: float, num_thresholds: int = EDGE_THRESHOLDS, quantize: bool = True,
                 ignore_index: float | None = IGNORE_LABEL, images_per_batch: int | None = None):
        _correspond_pixels()   # fail at construction, not after a validation pass
        if images_per_batch is not None and images_per_batch < 1:
            raise ValueError(f"images_per_batch must be >= 1 or None, got {images_per_batch}")
        self.max_dist, self.quantize, self.ignore_index = max_dist, quantize, ignore_index
        self.images_per_batch = images_per_batch
        self.thresholds = np.arange(1, num_thresholds + 1) / (num_thresholds + 1)
        self.counts = np.zeros((4, num_thresholds))
        self.images = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: logits (B, 1, H, W); ``target``: (B, 1, H, W) or (B, H, W).  Ignored pixels
        count as neither predicted nor ground-truth edges.  With ``images_per_batch`` only
        the first images of each batch are matched (a cheaper estimate)."""
        if self.images_per_batch is not None:
            pred, target = pred[:self.images_per_batch], target[:self.images_per_batch]
        target = _binary_map(target).detach().cpu()
        prob = torch.sigmoid(_logit_map(pred, target).detach().double()).cpu().numpy()
        if self.quantize:   # the reference's PNG: uint8(255 sigmoid) / 255
            prob = np.floor(255 * prob) / 255
        target = target.numpy()
        for b in range(target.shape[0]):
            keep = np.ones(target[b].shape, bool) if self.ignore_index is None else target[b] != self.ignore_index
            self.counts += boundary_counts(np.where(keep, prob[b], 0.0), (target[b] >= 0.5) & keep,
                                           self.thresholds, self.max_dist)
        self.images += target.shape[0]

    def compute(self) -> dict[str, float]:
        if self.images == 0:
            return {"odsf": math.nan}
        cnt_r, sum_r, cnt_p, sum_p = self.counts
        rec = np.divide(cnt_r, sum_r, out=np.zeros_like(cnt_r), where=sum_r > 0)
        prec = np.divide(cnt_p, sum_p, out=np.zeros_like(cnt_p), where=sum_p > 0)
        f = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(prec), where=prec + rec > 0)
        return {"odsf": 100 * float(f.max())}


class DepthRMSETask(DepthTask):
    """Per-pixel depth as :class:`~mtrl.supervised.dense_tasks.DepthTask` (L1 loss over the
    valid pixels), reported as the RMSE pooled over every valid pixel of the split."""

    metrics = (("rmse", False),)

    def metric_state(self) -> "DepthRMSE":
        return DepthRMSE()


class DepthRMSE:
    """Sum of squared errors (predictions floored at 1e-9 as in the reference) and the
    valid-pixel count over a split."""

    def __init__(self):
        self.sq_sum = 0.0
        self.count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"depth prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        mask = valid_mask(target).bool().expand_as(target)
        p, g = pred.detach()[mask].double().clamp(min=DEPTH_FLOOR), target[mask].double()
        self.sq_sum += float(((p - g) ** 2).sum())
        self.count += int(mask.sum())

    def compute(self) -> dict[str, float]:
        return {"rmse": math.sqrt(self.sq_sum / self.count) if self.count else math.nan}


class NormalL1Task:
    """Per-pixel unit surface normal; target (B, 3, H, W), the zero vector = invalid.  Output
    L2-normalised; L1 loss per valid component; metric the mean angle (degrees) pooled over
    the split's valid pixels."""

    kind = "normal"
    out_channels = 3
    metrics = (("mean_angle", False),)

    def activate(self, raw: Tensor) -> Tensor:
        return raw / raw.norm(p=2, dim=1, keepdim=True).clamp(min=_EPS)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 3:
            raise ValueError(f"normal prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
                             f"must both be (B, 3, H, W)")
        mask = valid_mask(target)
        return ((pred - target).abs() * mask).sum() / (3 * mask.sum()).clamp(min=1)

    def metric_state(self) -> "MeanAngle":
        return MeanAngle()


class MeanAngle:
    """Sum of the angles between predicted and true normals and the valid-pixel count."""

    def __init__(self):
        self.total = 0.0
        self.count = 0

    def update(self, pred: Tensor, target: Tensor) -> None:
        angles = normal_angles(pred.detach(), target)
        self.total += float(angles.sum())
        self.count += angles.numel()

    def compute(self) -> dict[str, float]:
        return {"mean_angle": self.total / self.count if self.count else math.nan}
