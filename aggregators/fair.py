"""The alpha-fair family: Nash-MTL, FairGrad, PIVRG and ConsMTL's upper level.

All four choose ``d = sum_i w_i g_i`` with ``w`` solving ``(M w)_i = p_i w_i^(-1/a)``
(see :func:`aggregators.solvers.alpha_fair_weights`), and differ only in the exponent
``a`` and the priorities ``p``:

=============  ====  ====================  ==========================================
method         a     p                     paper
=============  ====  ====================  ==========================================
nash_mtl       1     omega (1 by default)  Nash-MTL eq. 6, alpha_i (M alpha)_i = 1
fairgrad       alpha 1                     FairGrad: M w = w^(-1/alpha)
pivrg          2     sqrt(omega)           PIVRG eqs. 4-7: (M alpha)^2 = omega / alpha
consmtl        2     1                     ConsMTL eq. 5: M alpha = sqrt(1 / alpha)
=============  ====  ====================  ==========================================

The solver warm-starts from the previous step's weights (kept in the state dict).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GramWeighting
from .performance import PerformanceMixin
from .registry import register
from .solvers import alpha_fair_weights, on_device

__all__ = ["AlphaFair", "NashMTL", "FairGrad", "PIVRG", "ConsMTL"]


class AlphaFair(GramWeighting):
    """Weights solving ``(M w)_i = p_i w_i^(-1/a)`` with a warm start across steps."""

    exponent: float = 2.0

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.register_buffer("last_weights", torch.zeros(num_tasks, dtype=torch.float64))

    def task_priorities(self) -> Tensor | None:
        """``p`` of the equation (None: all ones)."""
        return None

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        # a zero warm start (first step) is ignored by the solver, without a host sync
        w = alpha_fair_weights(gram, self.exponent, self.task_priorities(), init=self.last_weights,
                               precision=self.num_tasks * self.gram_eps)
        self.last_weights.copy_(w.to(self.last_weights))
        return w

    def reset(self) -> None:
        super().reset()
        self.last_weights.zero_()


def _step_from_extra_state(state_dict, prefix, *args) -> None:
    """Checkpoints before the counter became a buffer kept it in the extra state."""
    extra = state_dict.get(prefix + "_extra_state")
    if prefix + "step" not in state_dict and isinstance(extra, dict) and "step" in extra:
        state_dict[prefix + "step"] = torch.tensor(int(extra.pop("step")), dtype=torch.int64)


@register("nash_mtl")
class NashMTL(AlphaFair):
    """Nash-MTL (Navon et al. 2022): the Nash bargaining solution ``alpha_i (M alpha)_i = 1``.

    The reference code approximates the solution with a sequence of convex problems
    (cvxpy/ECOS, at most 20 CCP steps) on ``M / ||M||`` and clips the shared gradient to
    norm 1 in its training loop; this implementation solves the defining equation to
    machine precision (the CCP's fixed point) and applies no clip (a trainer concern).
    ``d`` is invariant to positive rescaling of any task's gradient.

    ``update_weights_every`` > 1 reuses the last weights between solves (the paper's
    cheaper MT10 variant, 50 or 100).  ``priorities`` (1 by default) are the utility
    weights of PI-Nash-MTL (PIVRG paper sec. 4.4): ``alpha_i (M alpha)_i = omega_i``.
    """

    exponent = 1.0

    def __init__(self, num_tasks: int, update_weights_every: int = 1):
        super().__init__(num_tasks)
        if int(update_weights_every) < 1:
            raise ValueError(f"update_weights_every must be >= 1, got {update_weights_every}")
        self.update_weights_every = int(update_weights_every)
        self.register_buffer("priorities", torch.ones(num_tasks, dtype=torch.float64))
        # a tensor, so that a device-side skip restores it; read on the host only on the CPU
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._register_load_state_dict_pre_hook(_step_from_extra_state)

    def task_priorities(self) -> Tensor:
        return self.priorities

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        if self.update_weights_every == 1:
            self.step.add_(1)
            return super().weights_from_gram(gram, losses)
        due = self.step % self.update_weights_every == 0
        self.step.add_(1)
        if not on_device(gram):   # the CPU: reading the counter is free, skip the solve
            return super().weights_from_gram(gram, losses) if bool(due) else self.last_weights.clone()
        # the device form: solve every step and keep the last weights where not due
        last = self.last_weights.clone()
        w = torch.where(due.to(gram.device), super().weights_from_gram(gram, losses), last.to(gram.device))
        self.last_weights.copy_(w.to(self.last_weights))
        return w

    def reset(self) -> None:
        super().reset()
        self.step.zero_()


@register("fairgrad")
class FairGrad(AlphaFair):
    """FairGrad (Ban & Ji 2024): alpha-fair utilities, ``M w = w^(-1/alpha)``.

    alpha = 2 is the value of the references on CelebA, QM9 and MT10; alpha = 1 is
    Nash-MTL.  The reference solves with ``scipy.optimize.least_squares`` from
    ``w = 1/k``; this is the exact solution of the same equation.
    """

    def __init__(self, num_tasks: int, alpha: float = 2.0):
        super().__init__(num_tasks)
        if alpha <= 0:
            raise ValueError(f"FairGrad alpha must be > 0, got {alpha}")
        self.exponent = float(alpha)


@register("pivrg")
class PIVRG(PerformanceMixin, AlphaFair):
    """PIVRG (Qin et al., CVPR 2025, eqs. 4-7, Alg. 1).

    ``d = G^T alpha`` minimises ``(1/k) sum_i omega_i / (g_i^T d)`` subject to
    ``g_i^T d > 0`` (eq. 4); the optimum satisfies ``(M alpha)_i^2 = omega_i / alpha_i``
    (eq. 7).  ``omega = k softmax(dm / tau)`` (eq. 5) from the drops passed to
    :meth:`update_performance`, with ``tau = max((max dm - min dm) / ln(bound),
    min_temperature)`` so that ``omega_i`` stays in ``[1/bound, bound]`` (Prop. 1).
    With ``dm = 0`` (the start of Alg. 1) this is exactly FairGrad with alpha = 2.

    The authors' code multiplies ``d`` by k and clips the shared gradient to norm 1;
    here ``d`` is eq. 7's direction (a learning-rate / trainer concern).
    Per-benchmark (bound, min_temperature): NYU-v2 (2, 10), Cityscapes (1.8, 20),
    CelebA (2, 10), QM9 (1.8, 100).
    """

    exponent = 2.0

    def __init__(self, num_tasks: int, bound: float = 2.0, min_temperature: float = 10.0):
        super().__init__(num_tasks)
        self._init_performance(num_tasks, bound, min_temperature)

    def task_priorities(self) -> Tensor:
        return self.omega.sqrt()

    def reset(self) -> None:
        super().reset()
        self.reset_performance()


@register("consmtl")
class ConsMTL(AlphaFair):
    """ConsMTL (Qin et al., CVPR 2025), upper level: ``M alpha = sqrt(1 / alpha)`` (eq. 5), i.e. PIVRG
    with omega = 1.  ``weights`` are the alpha the lower level needs.

    The lower level (eqs. 6-8, Alg. 1) is built by the trainers from
    :meth:`representation_target` and :meth:`extra_losses`: each head gets the extra
    loss ``-lam <d l_i / d z, d_z>`` with ``d_z = sum_j alpha_j d l_j / d z`` detached,
    and the authors clip that loss's gradient on the head to ``clip_ratio`` times the norm
    of the task loss's own head gradient (:meth:`clip_extra_grad`).
    lam per benchmark: NYU-v2 1, Cityscapes 50, CelebA 50, QM9 1e-3.
    """

    has_lower_level = True
    exponent = 2.0

    def __init__(self, num_tasks: int, lam: float = 1.0, clip_ratio: float = 0.1):
        super().__init__(num_tasks)
        if lam < 0 or clip_ratio <= 0:
            raise ValueError(f"ConsMTL needs lam >= 0 and clip_ratio > 0, got {lam}, {clip_ratio}")
        self.lam = float(lam)
        self.clip_ratio = float(clip_ratio)

    def representation_target(self, rep_grads: Tensor) -> Tensor:
        """``d_z = sum_j alpha_j delta_j`` (Prop. 3.1), detached; ``rep_grads`` is (k, ...)
        with ``delta_j = d l_j / d z``.  Uses the weights of the last upper-level solve."""
        if self.weights is None:
            raise RuntimeError("ConsMTL: run the upper level (agg(grads) or gram_weights) first")
        w = self.weights.to(rep_grads.dtype)
        return torch.tensordot(w, rep_grads.detach(), dims=1)

    def extra_losses(self, rep_grads: Tensor) -> Tensor:
        """The k lower-level losses ``-lam <delta_i, d_z>`` (eq. 7); differentiable through
        ``rep_grads`` when it was computed with ``create_graph=True``."""
        target = self.representation_target(rep_grads)
        return -self.lam * (rep_grads.flatten(1) * target.flatten()[None, :]).sum(1)

    def clip_extra_grad(self, extra_grad: Tensor, task_grad: Tensor) -> Tensor:
        """Scale ``extra_grad`` so its norm is at most ``clip_ratio * ||task_grad||``."""
        limit = self.clip_ratio * task_grad.norm()
        norm = extra_grad.norm()
        return extra_grad * torch.clamp(limit / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0)
