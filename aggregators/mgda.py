"""MGDA: the minimum-norm element of the convex hull of the task gradients."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import GramWeighting
from .qp import ZERO_REL, host_gram, min_norm_weights, to_device
from .registry import register
from .solvers import min_norm_weights_device, on_device

__all__ = ["MGDA"]

_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


@register("mgda")
class MGDA(GramWeighting):
    """MGDA (Desideri 2012; Sener & Koltun, NeurIPS 2018, sec. 3.1): the common descent
    direction ``d = argmin {||v|| : v in conv(g_1, ..., g_k)}``, i.e.
    ``w = argmin_{w in simplex} w^T M w``.  Either ``d = 0`` (the point is
    Pareto-stationary) or ``-d`` decreases every task: ``g_i . d >= ||d||^2``.

    The solve is exact (Lawson-Hanson active set on the Gram matrix, see
    :func:`aggregators.qp.min_norm_weights`): the KKT conditions ``(M w)_i >= w^T M w``,
    with equality where ``w_i > 0``, hold to rounding.  The references use Frank-Wolfe
    (Sener & Koltun's ``MinNormSolver``, at most 250 iterations) or projected gradient,
    which stop far from these conditions on ill-conditioned inputs.

    ``normalization`` (Sener & Koltun's ``gradient_normalizers``): the hull is built from
    ``g_i / n_i`` with ``n_i`` = 1 ("none", the default), ``||g_i||`` ("l2"), ``l_i``
    ("loss") or ``l_i ||g_i||`` ("loss+"); the last two need the losses (positive).
    ``d`` is that hull's min-norm element and ``weights`` express it in the original
    gradients, ``w_i = w~_i / n_i``.  (Sener & Koltun's training script instead applies the
    simplex weights ``w~`` to the unnormalised losses; this class follows the definition,
    the min-norm element of the normalised gradients, as LibMTL does.)  A task with
    ``n_i = 0`` (zero gradient or zero loss) makes the point Pareto-stationary: ``d = 0``.

    MGDA-UB (Sener & Koltun, sec. 3.3) is this class fed the gradients with respect to
    the shared representation; trainers back-propagate ``sum_i w_i l_i`` through it.

    Stateless.  On the CPU it runs on the host in float64.  On a GPU, with the
    normalisations "none" and "l2", it runs in the device form
    (:func:`aggregators.solvers.min_norm_weights_device`, an interior-point method with a
    fixed budget and no host read); the loss normalisations check the losses' sign on the
    host (a k x k copy from the GPU, see :mod:`aggregators.qp`).  With ``normalization="none"`` and a zero-gradient task the
    weight is spread evenly over the zero tasks (``d = 0``); with a normalisation such
    tasks give all-zero weights.
    """

    #: a zero gradient in the hull makes d = 0 (``tasks_per_step`` refuses MGDA)
    zero_gradient_stalls = True

    def __init__(self, num_tasks: int, normalization: str = "none"):
        super().__init__(num_tasks)
        if normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"MGDA normalization must be one of {', '.join(map(repr, _NORMALIZATIONS))}, "
                f"got {normalization!r}"
            )
        self.normalization = normalization
        # instance attribute: only the loss-based normalisations read the losses
        self.needs_losses = normalization in ("loss", "loss+")

    def _normalizers(self, diag: np.ndarray, losses: Tensor | None) -> np.ndarray:
        k = self.num_tasks
        n = np.ones(k)
        if self.normalization in ("l2", "loss+"):
            n = n * np.sqrt(np.maximum(diag, 0.0))
        if self.normalization in ("loss", "loss+"):
            l = losses.detach().to(device="cpu", dtype=torch.float64).numpy()
            if (l < 0).any():
                raise ValueError(
                    f"MGDA normalization={self.normalization!r} needs nonnegative losses, got "
                    f"{l.tolist()}; use 'none' or 'l2' for losses that can be negative"
                )
            n = n * l
        return n

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        if on_device(gram) and self.normalization in ("none", "l2"):
            return self._device_weights(gram)
        m = host_gram(gram)
        k = self.num_tasks
        if self.normalization == "none":
            return to_device(min_norm_weights(m)[0], gram)
        n = self._normalizers(np.diagonal(m).copy(), losses)
        diag = np.diagonal(m)
        zero = (n <= 0) | (diag <= ZERO_REL * max(float(diag.max()), 0.0))
        if zero.any():
            # hull of the normalised gradients contains 0: Pareto-stationary, d = 0
            return to_device(np.zeros(k), gram)
        # Gram matrix of g_i / n_i, up to a global factor, without overflow:
        # cos_ij * s_i s_j with s_i = ||g_i|| / n_i scaled to max 1
        norms = np.sqrt(diag)
        s = norms / n
        s = s / s.max()
        mn = m / norms[:, None] / norms[None, :] * s[:, None] * s[None, :]
        return to_device(min_norm_weights(mn)[0] / n, gram)

    def _device_weights(self, gram: Tensor) -> Tensor:
        """The same weights as the host form, in torch on ``gram``'s device (no host read)."""
        m = gram.detach().to(torch.float64)
        if self.normalization == "none":
            return min_norm_weights_device(m)
        diag = m.diagonal()
        norms = diag.clamp_min(0).sqrt()
        zero = diag <= ZERO_REL * diag.max().clamp_min(0)
        safe = torch.where(zero, torch.ones_like(norms), norms)
        w = min_norm_weights_device(m / safe[:, None] / safe[None, :]) / safe   # the hull of g_i / ||g_i||
        return torch.where(zero.any(), torch.zeros_like(w), w)
