"""Cost knobs of the Gram-matrix methods: the per-task gradients and the weight solve every
``every`` steps only.

A Gram-matrix method (:class:`~aggregators.base.GramWeighting`) costs k backward passes, or
one task-split pass, per step, plus its solve.  ``every=N`` solves on the steps 0, N, 2N,
... and, in between, reuses the last weights: the engine then runs one ordinary backward of
``sum_i w_i l_i``, as Nash-MTL's reference does with its ``update_weights_every``
(Navon et al., ICML 2022, sec. 5.4 and its code).  :class:`Periodic` is the one wrapper that
does this for every Gram-matrix method; ``aggregators.make(name, k, every=N)`` builds it,
so both trainers and :func:`aggregators.backward` take ``aggregator.every``.

The wrapped method sees only the solve steps, so its state (Nash-MTL's warm start and step
counter, FairGrad's last weights, PIVRG's temperature) advances once per solve; the
wrapper's own state, the call counter and the last weights, is in its ``state_dict``.
Methods whose update needs more than the weights each step are refused: ConsMTL (its lower
level needs the per-task gradients every step) and CosReg (second-order terms).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GramWeighting


def periodic_support(agg: GramWeighting | object) -> str | None:
    """Why ``every`` cannot wrap ``agg`` (None when it can)."""
    if not isinstance(agg, GramWeighting):
        return "it is not a Gram-matrix method (its update is not sum_i w_i g_i with weights from G G^T)"
    if agg.has_lower_level:
        return "its lower level needs the per-task gradients at every step"
    if agg.needs_graph:
        return "its update has second-order terms through the gradients"
    return None


class Periodic(GramWeighting):
    """``inner`` solved every ``every`` calls; in between, ``sum_i w_i l_i`` with the last
    weights as a loss-only step (``requires_grads`` is False on those calls, so
    :func:`aggregators.backward` computes no per-task gradient)."""

    state_attributes = ("calls",)

    def __init__(self, inner: GramWeighting, every: int):
        why = periodic_support(inner)
        if why is not None:
            raise ValueError(f"{inner.name}: every={every} is not available: {why}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        super().__init__(inner.num_tasks)
        self.inner, self.every = inner, every
        self.name = inner.name
        self.needs_losses = inner.needs_losses
        self.needs_positive_losses = inner.needs_positive_losses
        self.uses_performance = inner.uses_performance
        #: backward calls so far (a host int: reading it costs no device sync)
        self.calls = 0
        self.register_buffer("last_weights", torch.zeros(0, dtype=torch.float64))

    @property
    def requires_grads(self) -> bool:  # type: ignore[override]
        """True on the solve steps (``calls % every == 0``)."""
        return self.calls % self.every == 0

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        self.inner.gram_eps = self.gram_eps
        w = self.inner.weights_from_gram(gram, losses)
        self.inner.weights = w
        self.last_weights = w.detach().clone()
        self.calls += 1
        return w

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        """The matrix form: a solve on the solve steps, the last weights on ``grads`` between."""
        if self.requires_grads:
            return super().aggregate(grads, losses)
        self.calls += 1
        self.weights = self.last_weights
        return self.last_weights.to(grads.dtype) @ grads

    def loss(self, losses: Tensor) -> Tensor:
        """The step between two solves: ``sum_i w_i l_i`` with the last solve's weights."""
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"{self.name}: losses must have shape ({self.num_tasks},), got {tuple(losses.shape)}")
        if self.last_weights.numel() != self.num_tasks:
            raise RuntimeError(f"{self.name}: every={self.every} reuses the last weights, but no step has solved yet")
        self.weights = self.last_weights
        self.calls += 1
        return (self.last_weights.to(device=losses.device, dtype=losses.dtype) * losses).sum()

    # the performance-informed API (PIVRG, PI-X) is the wrapped method's
    def update_performance(self, delta_m) -> None:
        self.inner.update_performance(delta_m)

    @property
    def omega(self) -> Tensor:
        return self.inner.omega

    @property
    def temperature(self) -> float:
        return self.inner.temperature

    def reset(self) -> None:
        super().reset()
        self.inner.reset()
        self.calls = 0
        self.last_weights = torch.zeros(0, dtype=torch.float64, device=self.last_weights.device)

    def end_epoch(self) -> None:
        self.inner.end_epoch()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the last weights are empty until the first solve: take the saved size
        key = prefix + "last_weights"
        if key in state_dict:
            self.last_weights = torch.empty_like(state_dict[key], device=self.last_weights.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"every={self.every}"
