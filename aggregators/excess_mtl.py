"""ExcessMTL: Robust Multi-Task Learning with Excess Risks (He, Zhou, Zhang, Yun, Xu, Zeng,
Chilimbi & Zhao, ICML 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Aggregator
from .registry import register

__all__ = ["ExcessMTL"]

_RATIO_CAP = 1e30  # keeps eta * ratio finite when a first-step excess risk is tiny


@register("excess_mtl")
class ExcessMTL(Aggregator):
    """ExcessMTL (He et al., ICML 2024): task weights moved by exponentiated gradient ascent
    on each task's estimated excess risk, ``d = sum_i alpha_i g_i``.  Equation numbers below
    are the paper's as cited by the torchjd documentation of this method (eqs. 6-7: the
    estimate, eq. 9: the weight step, appendix C.1: the baseline); the update itself follows
    the authors' code (``LibMTL/weighting/ExcessMTL.py`` in yifei-he/ExcessMTL).

    Excess-risk estimate (the second-order Taylor expansion around the task optimum with a
    diagonal Hessian approximation, the paper's eqs. 6-7).  The diagonal is the AdaGrad
    preconditioner of the task's own gradients, accumulated over every call::

        A_i  <- A_i + g_i * g_i                      (elementwise, one accumulator per task)
        h_i   = sqrt(A_i + eps)                        (eps = 1e-7, as in the reference)
        e_i   = sum_j g_ij^2 / h_ij                    (= g_i^T diag(h_i)^-1 g_i)

    The Taylor expansion carries a factor 1/2 that the reference code drops; it cancels in
    the normalisation below, so the weights do not depend on it.

    Scale normalisation: the first call records ``e_i^0`` and leaves the weights at their
    initial value; every later call divides by it, ``r_i = e_i / e_i^0`` (a task whose first
    gradient was zero, ``e_i^0 = 0``, gets ``r_i = 0``: it has no scale to compare with;
    the reference divides by zero there).  Exponentiated-gradient step (eq. 9) with step
    size ``eta`` (``robust_step_size``)::

        alpha_i <- alpha_i exp(eta r_i),      alpha <- k alpha / sum_j alpha_j

    computed as ``k softmax(log alpha + eta r)`` (the same numbers, no overflow).  The
    weights start at 1 and sum to k, as in the reference (LibMTL's ``loss_weight``), so the
    first call is linear scalarisation; the paper states the same update on the simplex
    (weights summing to 1), which only rescales ``d`` by k.  Tasks further from
    convergence relative to their start gain weight.  ``eta`` = 1e-2: the reference's
    ``--robust_step_size`` default (LibMTL ``config.py`` of the authors' repository).

    The reference estimates the excess risk once per step from the step's task gradients
    (with ``rep_grad`` from the representation gradients summed over the batch); the paper's
    appendix (C.1) also describes collecting the statistics for a few epochs before the
    baseline is fixed, which the reference does not do and neither does this class.

    State: the accumulator ``A`` (buffer ``grad_sq_sum``, k x n, created at the first call
    in the gradients' dtype and device), the baseline ``e^0`` (``initial_excess``), the
    weights ``alpha`` (``alphas``, float64) and the call counter ``step`` (extra state);
    :meth:`reset` clears all of them.
    """

    state_attributes = ("step",)
    lazy_buffers = ("grad_sq_sum",)
    coordinate_state = True

    def __init__(self, num_tasks: int, robust_step_size: float = 1e-2, eps: float = 1e-7):
        super().__init__(num_tasks)
        if not float(robust_step_size) > 0:
            raise ValueError(f"ExcessMTL robust_step_size must be > 0, got {robust_step_size}")
        if not float(eps) > 0:
            raise ValueError(f"ExcessMTL eps must be > 0 (guards sqrt(0) in the Hessian estimate), got {eps}")
        self.robust_step_size = float(robust_step_size)
        self.eps = float(eps)
        k = num_tasks
        self.register_buffer("grad_sq_sum", torch.zeros(0))
        self.register_buffer("initial_excess", torch.zeros(k, dtype=torch.float64))
        self.register_buffer("alphas", torch.ones(k, dtype=torch.float64))
        #: calls so far (a Python int: no device sync to read it), saved as extra state
        self.step = 0
        self.last_excess: Tensor | None = None

    # -- the update -----------------------------------------------------------------------
    def excess_risks(self, grads: Tensor) -> Tensor:
        """``e_i = g_i^T diag(sqrt(A_i + eps))^-1 g_i`` with the current accumulator (float64)."""
        h = (self.grad_sq_sum + self.eps).sqrt()
        # |g / h| <= 1 entrywise once g^2 is in A, so the product cannot overflow
        return (grads * (grads / h)).sum(dim=1, dtype=torch.float64)

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        acc = self.lazy_buffer("grad_sq_sum", grads)
        acc.addcmul_(grads, grads)
        excess = self.excess_risks(grads)
        init = self.initial_excess.to(excess.device)
        alphas = self.alphas.to(excess.device)
        if self.step == 0:
            init = excess.clone()
        else:
            positive = init > 0
            ratio = torch.where(positive, excess / torch.where(positive, init, torch.ones_like(init)),
                                torch.zeros_like(excess)).clamp(max=_RATIO_CAP)
            alphas = self.num_tasks * torch.softmax(torch.log(alphas) + self.robust_step_size * ratio, dim=0)
        self.initial_excess = init
        self.alphas = alphas
        #: the excess-risk estimates e of the last call (float64, (k,))
        self.last_excess = excess
        self.step += 1
        self.weights = alphas.clone()
        return alphas.to(grads.dtype) @ grads

    # -- state ----------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self.grad_sq_sum = torch.zeros(0, device=self.grad_sq_sum.device)
        self.initial_excess = torch.zeros_like(self.initial_excess)
        self.alphas = torch.ones_like(self.alphas)
        self.step = 0
        self.last_excess = None

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, robust_step_size={self.robust_step_size}, eps={self.eps}"
