"""GradVac (Wang et al. 2021, "Gradient Vaccine"), on the Gram matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from .common import RandomOrderGram, safe_divide
from .registry import register

__all__ = ["GradVac"]

#: the target cosine used in the lift is kept inside [-1 + TARGET_MARGIN, 1 - TARGET_MARGIN]:
#: lifting a cosine to exactly +-1 would need an infinite multiple of g_j
TARGET_MARGIN = 1e-8


@register("gradvac")
class GradVac(RandomOrderGram):
    """GradVac (Wang et al. 2021, Alg. 1 and eq. 3): lift pairwise cosines to an EMA target.

    State: a target cosine ``rho_hat_ij`` per ordered pair (buffer ``rho_hat``, k x k,
    starts 0).  For each task i and its partners j != i in a random order (as PCGrad),
    with ``rho = cos(g_i', g_j)`` (the CURRENT modified g_i' against the ORIGINAL g_j,
    as in the paper and the references)::

        if rho < rho_hat_ij:
            g_i' <- g_i' + ||g_i'|| (rho_hat sqrt(1 - rho^2) - rho sqrt(1 - rho_hat^2))
                            / (||g_j|| sqrt(1 - rho_hat^2)) * g_j            (eq. 3)
        rho_hat_ij <- (1 - beta) rho_hat_ij + beta rho                       (always)

    The added multiple of g_j makes ``cos(g_i', g_j)`` exactly ``rho_hat_ij``; then
    ``d = sum_i g_i'``.  With ``rho_hat = 0`` (the first step) the lift is PCGrad's
    projection, so the first call equals PCGrad with the same seed.

    beta = 0.5 is the value of the public implementations (LibMTL, the PIVRG authors'
    library).  The paper also applies the procedure per layer / parameter group; pass
    each group's gradients to its own GradVac instance for that.  Degenerate cases: a
    zero g_i' or g_j has no cosine: nothing is added and its EMA is left unchanged; the
    target in the lift is clipped to ``|rho_hat| <= 1 - 1e-8`` (a cosine of exactly +-1
    would need an infinite multiple).
    """

    def __init__(self, num_tasks: int, beta: float = 0.5, seed: int = 0):
        super().__init__(num_tasks, seed)
        if not 0.0 < float(beta) <= 1.0:
            raise ValueError(f"GradVac beta (EMA rate) must be in (0, 1], got {beta}")
        self.beta = float(beta)
        self.register_buffer("rho_hat", torch.zeros(num_tasks, num_tasks, dtype=torch.float64))

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        k, beta = self.num_tasks, self.beta
        device = gram.device
        orders = self.draw_orders(device)
        rho_hat = self.rho_hat.to(device=device, dtype=torch.float64).clone()
        coeffs = torch.eye(k, dtype=torch.float64, device=device)
        rows = torch.arange(k, device=device)
        norms_j = gram.diagonal().clamp(min=0).sqrt()
        for step in range(k - 1):
            partner = orders[:, step]
            dots = (coeffs * gram[partner]).sum(1)                            # <g_i', g_j>
            norm_i = ((coeffs @ gram) * coeffs).sum(1).clamp(min=0).sqrt()   # ||g_i'||
            norm_j = norms_j[partner]
            valid = (norm_i > 0) & (norm_j > 0)
            rho = safe_divide(dots, norm_i * norm_j).clamp(-1.0, 1.0)
            target = rho_hat[rows, partner]
            t = target.clamp(-1.0 + TARGET_MARGIN, 1.0 - TARGET_MARGIN)
            sin_t = (1.0 - t * t).sqrt()
            lift = norm_i * (t * (1.0 - rho * rho).sqrt() - rho * sin_t)
            lift = safe_divide(lift, norm_j * sin_t)
            apply = valid & (rho < target)
            coeffs[rows, partner] += torch.where(apply, lift, torch.zeros_like(lift))
            rho_hat[rows, partner] = torch.where(valid, (1.0 - beta) * target + beta * rho, target)
        self.rho_hat = rho_hat  # buffer follows the device of the data
        self.coefficients = coeffs
        return coeffs.sum(0)

    def reset(self) -> None:
        super().reset()
        self.rho_hat.zero_()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, beta={self.beta}"
