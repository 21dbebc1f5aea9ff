"""CosReg (Suteu & Guo 2019, "Regularizing Deep Multi-Task Networks using Orthogonal
Gradients"); compared in Mao et al., arXiv 2024, sec. 6.4."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GramWeighting
from .common import safe_divide
from .registry import register

__all__ = ["CosReg"]


@register("cosreg")
class CosReg(GramWeighting):
    """CosReg: minimise ``sum_i l_i + c * mean_{i<j} cos^2(g_i, g_j)``.

    The regulariser pushes the task gradients on the shared parameters towards mutual
    orthogonality.  It depends on the parameters only through the gradients
    ``G(theta)``, so it has an effect only through second-order terms:

    * :meth:`aggregate` / ``agg(grads)`` return the first-order part ``sum_i g_i``
      (weights 1; the low-memory path ``gram_weights(M)`` gives the same ones);
    * :meth:`penalty` ``(grads)`` returns the differentiable regulariser
      ``c * mean_{i<j} M_ij^2 / (M_ii M_jj)`` computed from ``grads`` (which must carry
      a graph: compute them with ``torch.autograd.grad(..., create_graph=True)``).

    The complete update of the shared parameters is
    ``sum_i g_i + grad_theta penalty(G(theta))``; trainers get it by adding
    ``agg(G.detach())`` to the gradient of ``penalty(G)`` (``penalty(G).backward()`` or
    ``torch.autograd.grad(penalty(G), shared_params)``), which back-propagates through
    the k gradient computations (double backward).

    c = 10 is the value of the only public implementation (Mao et al. (arXiv 2024)'s benchmark); the
    mean over the k (k - 1) / 2 pairs keeps the scale independent of k.  A zero gradient
    has no cosine: its pairs count as 0 (and get no gradient).
    """

    needs_graph = True

    def __init__(self, num_tasks: int, c: float = 10.0):
        super().__init__(num_tasks)
        if not float(c) >= 0.0:
            raise ValueError(f"CosReg c (regulariser weight) must be >= 0, got {c}")
        self.c = float(c)

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return torch.ones(self.num_tasks, dtype=torch.float64, device=gram.device)

    def penalty(self, grads: Tensor) -> Tensor:
        """``c * mean_{i<j} cos^2(g_i, g_j)`` (float64 scalar), differentiable in ``grads``."""
        if grads.dim() != 2 or grads.shape[0] != self.num_tasks:
            raise ValueError(f"CosReg.penalty: grads must have shape ({self.num_tasks}, n), got {tuple(grads.shape)}")
        return self.penalty_from_gram((grads @ grads.T).to(torch.float64))

    def penalty_from_gram(self, gram: Tensor) -> Tensor:
        """The same regulariser from a (differentiable) Gram matrix ``M = G G^T``."""
        k = self.num_tasks
        if k < 2:
            return gram.sum() * 0.0
        diag = gram.diagonal()
        cos2 = safe_divide(gram * gram, diag[:, None] * diag[None, :])
        iu = torch.triu_indices(k, k, offset=1, device=gram.device)
        return self.c * cos2[iu[0], iu[1]].mean()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, c={self.c}"
