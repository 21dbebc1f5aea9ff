"""Random weighting (Lin et al. 2022, "Reasonable Effectiveness of Random Weighting: A
Litmus Test for Multi-Task Learning", TMLR): RLW on the losses, RGW on the gradients.

Both draw ``w = softmax(z)``, ``z ~ N(0, I_k)``, once per step (the paper's normal
distribution followed by softmax, sec. 3; the default of every reference) from the
package's seeded generator (:class:`~aggregators.common.DeviceGenerator`, seeded by the
``seed`` hyper-parameter).  The generator's state is part of the state dict (extra
state), so a restored aggregator draws the same next weights.  The k numbers are drawn on
the device of the data (RLW: the losses, RGW: the Gram matrix), so there is no host round
trip; with the same seed, CPU and GPU give different (each reproducible) weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GramWeighting, LossWeighting
from .common import DeviceGenerator
from .registry import register

__all__ = ["random_simplex_weights", "RandomLossWeighting", "RandomGradientWeighting"]


def random_simplex_weights(generator: torch.Generator, k: int) -> Tensor:
    """``softmax(z)`` with ``z ~ N(0, I_k)`` drawn from ``generator`` (float64, on the
    generator's device).

    The one drawing routine shared by RLW and RGW (same seed and device -> same weights)."""
    z = torch.randn(k, generator=generator, dtype=torch.float64, device=generator.device)
    return torch.softmax(z, dim=0)


@register("rlw")
class RandomLossWeighting(LossWeighting):
    """RLW (Lin et al. 2022, sec. 3, Alg. 1): minimise ``sum_i w_i l_i`` with
    ``w = softmax(z)``, ``z ~ N(0, I)`` drawn once per step in :meth:`begin_step`.

    The weights sum to 1 (as in the paper and LibMTL), not k.  Before the first step the
    weights are ``1/k``.
    """

    def __init__(self, num_tasks: int, seed: int = 0):
        super().__init__(num_tasks)
        self.rng = DeviceGenerator(seed)
        self.seed = seed
        self.register_buffer("current_weights", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))

    def begin_step(self, losses: Tensor) -> None:
        # the buffer follows the device of the losses
        self.current_weights = random_simplex_weights(self.rng.get(losses.device), self.num_tasks)

    def combine(self, losses: Tensor) -> Tensor:
        return (self.current_weights.to(losses) * losses).sum()

    def reset(self) -> None:
        super().reset()
        self.rng.reset()
        self.current_weights = torch.full_like(self.current_weights, 1.0 / self.num_tasks)


@register("rgw")
class RandomGradientWeighting(GramWeighting):
    """RGW (Lin et al. 2022; used as a gradient-manipulation baseline in Mao et al., arXiv 2024,
    sec. 2): ``d = sum_i w_i g_i`` with ``w = softmax(z)``, ``z ~ N(0, I)`` drawn at each
    call.  The Gram matrix is ignored; with the same seed (and device) RGW draws exactly
    RLW's weights, so the two differ only in where they are applied (Mao et al. (arXiv 2024) also
    applies RGW to feature-level gradients).
    """

    def __init__(self, num_tasks: int, seed: int = 0):
        super().__init__(num_tasks)
        self.rng = DeviceGenerator(seed)
        self.seed = seed

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return random_simplex_weights(self.rng.get(gram.device), self.num_tasks)

    def reset(self) -> None:
        super().reset()
        self.rng.reset()
