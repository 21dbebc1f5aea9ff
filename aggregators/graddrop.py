"""GradDrop (Chen et al. 2020, "Just Pick a Sign: Optimizing Deep Multitask Models with
Gradient Sign Dropout")."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Aggregator
from .common import DeviceGenerator, safe_divide
from .registry import register

__all__ = ["GradDrop"]


@register("graddrop")
class GradDrop(Aggregator):
    """GradDrop (Chen et al. 2020, eqs. 1-3): keep one sign per coordinate, at random.

    Per coordinate c, the gradient positive sign purity (eq. 1)::

        P_c = 0.5 (1 + sum_i g_ic / sum_i |g_ic|)

    and ``U_c ~ U(0, 1)`` (one draw per coordinate, from the aggregator's seeded
    generator on the gradients' device).  Task i keeps its entry where it is positive and
    ``P_c > U_c``, or negative and ``P_c < U_c`` (eq. 2); ``d = sum_i`` of the masked
    gradients.  So each d_c is the sum of all positive entries (with probability P_c),
    or of all negative entries (probability 1 - P_c): a coordinate where every task
    agrees in sign keeps the plain sum.  Where every ``g_ic = 0`` the purity is undefined;
    it is taken as 0.5 here (the entries are zero, so d_c = 0 either way).

    The direction is not a combination of the task gradients, so ``weights`` stays None
    and there is no Gram-matrix path.  The paper applies GradDrop to the gradients at the
    shared representation (the activations the task heads read), back-propagating the
    masked gradient through the trunk: pass those representation gradients (flattened,
    one row per task) and back-propagate ``d`` from the representation.  The paper's
    sign-of-input correction for batch-separated activations and its leak parameters
    (for transfer learning, 0 in the multi-task setting) are not part of this class.
    """

    def __init__(self, num_tasks: int, seed: int = 0):
        super().__init__(num_tasks)
        self.rng = DeviceGenerator(seed)
        self.seed = seed
        #: the purity P of the last call (n,), for inspection
        self.purity: Tensor | None = None

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        positive = torch.zeros_like(grads[0])
        negative = torch.zeros_like(grads[0])
        for g in grads:  # a loop over tasks: no k x n temporary
            positive.add_(g.clamp(min=0))
            negative.add_(g.clamp(max=0))
        purity = 0.5 * (1.0 + safe_divide(positive + negative, positive - negative))
        u = torch.rand(
            grads.shape[1], generator=self.rng.get(grads.device), device=grads.device, dtype=grads.dtype
        )
        self.purity = purity
        zero = torch.zeros_like(positive)
        return torch.where(purity > u, positive, zero) + torch.where(purity < u, negative, zero)

    def reset(self) -> None:
        super().reset()
        self.rng.reset()
        self.purity = None
