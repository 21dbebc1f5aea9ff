"""Performance-informed weighting (PIVRG paper, sec. 3.2 and sec. 4.4).

The per-task performance drops ``dm_i`` (in percent, larger = worse; PIVRG eq. 3) are
turned into task priorities ``omega = k softmax(dm / tau)`` (eq. 5) with the temperature
``tau = max((max dm - min dm) / ln(bound), min_temperature)``.  With that temperature
``omega_max / omega_min <= bound`` and, because the omegas average to one, every
``omega_i`` lies in ``[1 / bound, bound]``: Property 3 through Proposition 1 with
``s = bound``.

:class:`PerformanceInformed` is the one wrapper that turns a method X into PI-X:

* methods with a native priority vector (Nash-MTL: ``alpha_i (M alpha)_i = omega_i``)
  get ``omega`` as their priorities;
* every other method sees the losses ``omega * l`` (sec. 4.4: L' = omega (.) L), hence
  the gradients ``omega_i g_i``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Aggregator, GramWeighting, LossWeighting, check_finite

__all__ = ["performance_weights", "PerformanceMixin", "PerformanceInformed"]


def performance_weights(delta_m: Tensor, bound: float = 2.0, min_temperature: float = 10.0) -> tuple[Tensor, Tensor]:
    """``(omega, tau)`` from the per-task drops ``delta_m`` (PIVRG eq. 5, Prop. 1)."""
    if bound <= 1.0:
        raise ValueError(f"bound must be > 1 (omega_max / omega_min <= bound), got {bound}")
    if min_temperature <= 0:
        raise ValueError(f"min_temperature must be > 0, got {min_temperature}")
    dm = delta_m.to(torch.float64)
    spread = dm.max() - dm.min()
    tau = torch.clamp(spread / math.log(bound), min=min_temperature)
    k = dm.shape[0]
    return k * torch.softmax(dm / tau, dim=0), tau


class PerformanceMixin:
    """State and API of performance-informed methods: ``update_performance(delta_m)``,
    ``omega``, ``temperature``.  ``delta_m`` starts at 0 (Alg. 1, line 1), so omega = 1."""

    uses_performance = True

    def _init_performance(self, num_tasks: int, bound: float, min_temperature: float) -> None:
        performance_weights(torch.zeros(num_tasks), bound, min_temperature)  # validates
        self.bound = float(bound)
        self.min_temperature = float(min_temperature)
        self.register_buffer("delta_m", torch.zeros(num_tasks, dtype=torch.float64))

    def update_performance(self, delta_m) -> None:
        """Set the per-task performance drops in percent (larger = worse)."""
        dm = torch.as_tensor(delta_m, dtype=torch.float64)
        if dm.shape != (self.num_tasks,):
            raise ValueError(
                f"{self.name}: delta_m must have one value per task, shape ({self.num_tasks},), "
                f"got {tuple(dm.shape)}"
            )
        check_finite("delta_m", dm)
        self.delta_m.copy_(dm.to(self.delta_m.device))

    @property
    def omega(self) -> Tensor:
        return performance_weights(self.delta_m, self.bound, self.min_temperature)[0]

    @property
    def temperature(self) -> float:
        return float(performance_weights(self.delta_m, self.bound, self.min_temperature)[1])

    def reset_performance(self) -> None:
        self.delta_m.zero_()


class PerformanceInformed(PerformanceMixin, Aggregator):
    """PI-X: method ``base`` driven by performance priorities (PIVRG paper sec. 4.4).

    Build it with :meth:`wrap`, which picks the subclass matching the base method's family
    so that trainers see the same kind of aggregator (Gram-matrix, loss-only or direction)
    as the base: PI-X runs at the cost of X.
    """

    def __init__(self, base: Aggregator, bound: float = 2.0, min_temperature: float = 10.0):
        super().__init__(base.num_tasks)
        self.base = base
        self.name = f"pi_{base.name}"
        # the wrapper is exactly as demanding as the method it wraps
        self.requires_grads = base.requires_grads
        self.needs_losses = base.needs_losses
        self.needs_graph = base.needs_graph
        self.needs_positive_losses = base.needs_positive_losses
        self._init_performance(base.num_tasks, bound, min_temperature)

    @staticmethod
    def wrap(base: Aggregator, bound: float = 2.0, min_temperature: float = 10.0) -> "PerformanceInformed":
        if isinstance(base, GramWeighting):
            return _PIGram(base, bound, min_temperature)
        if isinstance(base, LossWeighting):
            return _PILoss(base, bound, min_temperature)
        return _PIDirection(base, bound, min_temperature)

    @property
    def native(self) -> bool:
        """True when the base method takes the priorities itself (Nash-MTL)."""
        return hasattr(self.base, "priorities")

    def _omega_to(self, like: Tensor) -> Tensor:
        """The current omega (pushed into a native base first) in ``like``'s dtype/device."""
        omega = self.omega
        if self.native:
            self.base.priorities.copy_(omega.to(self.base.priorities))
        return omega.to(like)

    def after_step(self, losses: Tensor) -> None:
        self.base.after_step(losses * self.omega.to(losses))

    def end_epoch(self) -> None:
        self.base.end_epoch()

    def reset(self) -> None:
        super().reset()
        self.base.reset()
        self.reset_performance()


class _PIGram(PerformanceInformed, GramWeighting):
    """Gram-matrix bases: native priorities (Nash-MTL), or the base's weights for the
    gradients ``omega_i g_i`` (Gram matrix ``Omega M Omega``) mapped back to the ``g_i``."""

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        om = self._omega_to(gram)
        if self.native:
            return self.base.gram_weights(gram, losses)
        scaled = None if losses is None else losses * om.to(losses)
        return self.base.gram_weights(gram * om[:, None] * om[None, :], scaled) * om


class _PILoss(PerformanceInformed, LossWeighting):
    """Loss-only bases: the base objective on ``omega * l`` (sec. 4.4, L' = omega (.) L)."""

    def begin_step(self, losses: Tensor) -> None:
        self.base.begin_step(losses * self.omega.to(losses))

    def combine(self, losses: Tensor) -> Tensor:
        return self.base.combine(losses * self.omega.to(losses))


class _PIDirection(PerformanceInformed):
    """Other bases: the base applied to the gradients ``omega_i g_i`` and losses ``omega_i l_i``."""

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        om = self._omega_to(grads)
        return self.base(grads * om[:, None], None if losses is None else losses * om.to(losses))
