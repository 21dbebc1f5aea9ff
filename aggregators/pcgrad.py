"""PCGrad (Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"), on the Gram matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import RandomOrderGram, safe_divide
from .registry import register

__all__ = ["PCGrad"]


@register("pcgrad")
class PCGrad(RandomOrderGram):
    """PCGrad (Yu et al. 2020, Alg. 1): project away conflicting components.

    For each task i, the partners j != i are visited in a random order (drawn per i
    from the aggregator's seeded generator); whenever ``<g_i', g_j> < 0``::

        g_i' <- g_i' - <g_i', g_j> / ||g_j||^2 * g_j          (projection on the ORIGINAL g_j)

    and ``d = sum_i g_i'`` (the sum, as in the paper and the references, not the mean).

    Every g_i' is a combination of the original gradients, ``g_i' = sum_j C_ij g_j``, so
    the whole procedure runs on the Gram matrix: ``<g_i', g_j> = (C M)_ij`` and
    ``w = 1^T C`` (column sums).  The k sequences are independent of each other, so the
    k - 1 projection rounds are vectorised across tasks (no host sync on a GPU: the
    conflict test is a ``min(., 0)``, not a branch).  The author's code also visits
    j = i (a no-op whenever <g_i', g_i> >= 0); here j ranges over the other tasks only.

    A zero g_j is never projected on.  With k = 2 the result is deterministic; for
    k > 2 it depends on the generator, seeded by ``seed`` (the draws happen on the
    device of the Gram matrix, so CPU and GPU give different, each reproducible, orders).
    """

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        k = self.num_tasks
        orders = self.draw_orders(gram.device)
        coeffs = torch.eye(k, dtype=torch.float64, device=gram.device)
        rows = torch.arange(k, device=gram.device)
        sq_norms = gram.diagonal()
        for step in range(k - 1):
            partner = orders[:, step]
            dots = (coeffs * gram[partner]).sum(1)  # <g_i', g_partner(i)>
            coef = safe_divide(dots.clamp(max=0.0), sq_norms[partner])
            coeffs[rows, partner] -= coef
        self.coefficients = coeffs
        return coeffs.sum(0)
