"""Gradient-norm balancing: GradNorm and AvgNorm.

Both only need the per-task gradient norms ``||g_i|| = sqrt(M_ii)`` (and AvgNorm
``||sum_j g_j|| = sqrt(1^T M 1)``), so they run on the k x k Gram matrix.  The papers
take the gradients on the last shared layer; which parameters produce ``grads`` is the
trainer's choice.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import GramWeighting, softmax_weights
from .registry import register

__all__ = ["GradNorm", "AvgNorm"]


@register("gradnorm")
class GradNorm(GramWeighting):
    """GradNorm (Chen et al. 2018, eqs. 1-2): weights ``w = k softmax(s)`` with learnable
    logits ``s`` (init 0), trained to balance the weighted gradient norms.

    At each call, with ``n_i = w_i ||g_i||`` (``||g_i|| = sqrt(M_ii)``), the relative
    inverse training rates ``r_i = (l_i / l_i(0)) / mean_j (l_j / l_j(0))`` (``l(0)``: the
    losses of the first call, kept in a buffer) and the target
    ``mean(n).detach() * r_i^alpha`` (eq. 1), the gradient-norm loss
    ``L_grad = sum_i |n_i - target_i|`` (eq. 2) is differentiated w.r.t. ``s`` and the
    result written to ``s.grad``; the trainer's optimiser (given ``agg.parameters()``)
    then updates ``s``.  The returned weights are the current ``w`` (before that update).
    ``alpha = 1.5``.

    The paper renormalises the raw weights to sum k after each step; ``k softmax(s)`` keeps
    them positive and summing to k by construction (as LibMTL does).  Losses must be
    positive; a task whose initial loss is 0 gets the loss ratio 1, and ratios are
    clipped at 0.
    """

    needs_losses = True
    state_attributes = ("initialized",)

    def __init__(self, num_tasks: int, alpha: float = 1.5):
        super().__init__(num_tasks)
        if not alpha >= 0:
            raise ValueError(f"GradNorm alpha must be >= 0, got {alpha}")
        self.alpha = float(alpha)
        self.logits = nn.Parameter(torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("initial_losses", torch.zeros(num_tasks, dtype=torch.float64))
        self.initialized = False  # Python bool (no device sync), saved in the extra state

    def inverse_rates(self, losses: Tensor) -> Tensor:
        """``r_i = (l_i / l_i(0)) / mean_j (l_j / l_j(0))`` (float64)."""
        l0 = self.initial_losses
        ratio = torch.where(l0 != 0, losses / torch.where(l0 != 0, l0, torch.ones_like(l0)), torch.ones_like(l0))
        ratio = ratio.clamp_min(0)
        return ratio / ratio.mean().clamp_min(torch.finfo(ratio.dtype).tiny)

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        l = losses.to(device=gram.device, dtype=torch.float64)
        if not self.initialized:
            self.initial_losses.copy_(l)
            self.initialized = True
        norms = gram.diagonal().clamp_min(0).sqrt()
        target_shape = self.inverse_rates(l).pow(self.alpha)
        with torch.enable_grad():
            w = softmax_weights(self.logits, self.num_tasks)
            weighted = w * norms
            target = weighted.mean().detach() * target_shape
            gn_loss = (weighted - target).abs().sum()
            (grad,) = torch.autograd.grad(gn_loss, self.logits)
        self.logits.grad = grad.to(self.logits.dtype)
        return w.detach().to(torch.float64)

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            self.logits.zero_()
        self.logits.grad = None
        self.initial_losses.zero_()
        self.initialized = False

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, alpha={self.alpha}"


@register("avgnorm")
class AvgNorm(GramWeighting):
    """AvgNorm (Guo et al., arXiv 2025, eq. 6): ``w_i = S / ||g_i||`` with ``S = ||sum_j g_j||``.

    Every weighted gradient ``w_i g_i`` has norm ``S``; from the Gram matrix
    ``||g_i|| = sqrt(M_ii)`` and ``S^2 = 1^T M 1``.  A task with a zero gradient (or one so
    small that ``S / ||g_i||`` overflows) gets weight 0, so the direction stays finite.
    The weights are homogeneous of degree 0 in a global rescaling of the gradients, so
    ``d`` scales linearly with it.
    """

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        norms = gram.diagonal().clamp_min(0).sqrt()
        total = gram.sum().clamp_min(0).sqrt()
        w = total / norms
        return torch.where((norms > 0) & torch.isfinite(w), w, torch.zeros_like(w))
