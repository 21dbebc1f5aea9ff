"""DB-MTL: dual-balancing multi-task learning (Lin, Jiang, Ye, Zhang, Chen, Chen, Liu,
Tsang & Kwok, "Dual-Balancing for Multi-Task Learning", arXiv 2308.12029, 2023)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Aggregator
from .common import safe_divide
from .loss_weighting import check_log_domain
from .registry import register

__all__ = ["DBMTL"]


@register("db_mtl")
class DBMTL(Aggregator):
    """DB-MTL (Lin et al., arXiv 2023, Alg. 1, eqs. 1-2): loss-scale balancing by the log
    transform, then gradient-magnitude balancing of EMA-tracked log-loss gradients.

    Each call, with the step counter t (from 1) and ``beta_t = beta / t^beta_sigma``::

        g_i     = grad log(l_i + eps) = grads_i / (l_i + eps)       (Alg. 1 step 6)
        ghat_i <- beta_t ghat_i + (1 - beta_t) g_i                  (eq. 1; ghat starts at 0)
        d       = alpha sum_i ghat_i / ||ghat_i||,  alpha = max_j ||ghat_j||   (eq. 2)

    so every task contributes a vector of the same norm, the largest tracked norm.  The
    log transform is applied to the given per-task gradients of the losses (the chain
    rule), so no second backward is needed.  ``beta = 0.9``, ``beta_sigma = 0`` (a constant
    rate) are LibMTL's defaults (``DB_beta``, ``DB_beta_sigma``); the paper grid-searches
    ``beta`` over {0.1, 0.5, 0.9} and the decaying ``beta / t^0.5`` per data set
    (``beta_sigma = 0.5``) without listing the chosen values.  ``eps = 1e-8`` (Alg. 1).

    Where this differs from the references: Alg. 1 and LibMTL add ``eps`` to each norm in
    the normalisation; here (eq. 2 as printed) only a zero tracked gradient is guarded
    (its task contributes 0; all zero gives ``d = 0``), which keeps ``d`` exactly linear
    in a global rescaling of the gradients.  Alg. 1 also trains each task head on the
    gradient of ``log(l_t + eps)``; :func:`aggregators.backward` gives the heads of a
    direction method the gradient of ``sum_t l_t`` (``loss_scales`` holds the factors
    ``1 / (l_t + eps)`` for a loop that weights the heads itself).

    ``d`` is a combination of the current gradients only when ``beta_t = 0`` (``beta = 0``):
    then ``weights`` holds ``w_i = alpha / (||g_i|| (l_i + eps))``; otherwise it stays None
    and ``scales`` holds ``alpha / ||ghat_i||``, the coefficients on the tracked gradients
    (buffer ``tracking``, k x n in the gradients' dtype, created at the first call).
    """

    needs_losses = True
    needs_positive_losses = True
    state_attributes = ("step",)
    lazy_buffers = ("tracking",)
    coordinate_state = True

    def __init__(self, num_tasks: int, beta: float = 0.9, beta_sigma: float = 0.0, eps: float = 1e-8):
        super().__init__(num_tasks)
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"DB-MTL beta (EMA forgetting rate) must be in [0, 1), got {beta}")
        if not float(beta_sigma) >= 0.0:
            raise ValueError(f"DB-MTL beta_sigma (decay exponent) must be >= 0, got {beta_sigma}")
        if not float(eps) > 0.0:
            raise ValueError(f"DB-MTL eps must be > 0 (guards log(0)), got {eps}")
        self.beta, self.beta_sigma, self.eps = float(beta), float(beta_sigma), float(eps)
        self.register_buffer("tracking", torch.zeros(0))
        self.step = 0  # a Python int (no device sync); saved through the extra state
        #: alpha / ||ghat_i|| of the last call (float64, (k,))
        self.scales: Tensor | None = None
        #: 1 / (l_i + eps) of the last call (float64, (k,)): d log(l_i + eps) / d l_i
        self.loss_scales: Tensor | None = None

    def beta_at(self, step: int) -> float:
        """``beta_t = beta / t^beta_sigma``, the weight of the old estimate at step t."""
        return self.beta / float(step) ** self.beta_sigma

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        l = losses.to(device=grads.device, dtype=torch.float64)
        if self.check_inputs:
            check_log_domain(self.name, l + self.eps)
        self.step += 1
        beta_t = self.beta_at(self.step)
        y = self.lazy_buffer("tracking", grads)
        inv = 1.0 / (l + self.eps)
        # ghat <- beta_t ghat + (1 - beta_t) grads / (l + eps), in place (no k x n temporary)
        y.mul_(beta_t).addcmul_(grads, ((1.0 - beta_t) * inv).to(grads.dtype)[:, None])
        norms = torch.linalg.vector_norm(y, dim=1).to(torch.float64)
        scales = safe_divide(norms.max().expand_as(norms), norms)
        self.scales, self.loss_scales = scales, inv
        self.weights = scales * inv if beta_t == 0.0 else None
        return scales.to(y.dtype) @ y

    # -- state ----------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self.tracking = torch.zeros(0, device=self.tracking.device)
        self.step = 0
        self.scales = self.loss_scales = None

    def extra_repr(self) -> str:
        return (f"num_tasks={self.num_tasks}, beta={self.beta}, beta_sigma={self.beta_sigma}, "
                f"eps={self.eps}")
