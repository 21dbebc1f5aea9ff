"""The two-task toy problem of CAGrad (Liu et al. 2021), used by Nash-MTL, Aligned-MTL
(Senushkin et al., CVPR 2023, Fig. 1) and PIVRG to show how aggregators move in loss space.

Parameters ``x = (x1, x2)``; with ``c1 = max(tanh(x2 / 2), 0)`` and
``c2 = max(tanh(-x2 / 2), 0)``::

    f1 = log(max(|(-x1 - 7) / 2 - tanh(-x2)|, 5e-6)) + 6
    f2 = log(max(|(-x1 + 3) / 2 + tanh(-x2) + 2|, 5e-6)) + 6
    g1 = ((-x1 + 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
    g2 = ((-x1 - 7)^2 + 0.1 (-x2 - 8)^2) / 10 - 20
    L1 = c1 f1 + c2 g1,   L2 = c1 f2 + c2 g2

``scale`` multiplies L1 (Nash-MTL and Aligned-MTL use 0.1 to make one task dominate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

import aggregators

#: the five starting points of the Nash-MTL / Aligned-MTL figures
INITS: tuple[tuple[float, float], ...] = ((-8.5, 7.5), (0.0, 0.0), (9.0, 9.0), (-7.5, -0.5), (9.0, -1.0))
_FLOOR = 5e-6
#: both losses are >= -20; methods that take logs or ratios of losses (SI, FAMO, GradNorm,
#: DWA) see ``L_i + LOSS_SHIFT`` > 0, which leaves every gradient unchanged
LOSS_SHIFT = 21.0


def _positive_part(t: Tensor) -> Tensor:
    """``max(t, 0)`` with gradient 1 at ``t = 0``: the references' ``clamp(t, min=0)`` under
    the torch versions they used.  Torch 2.15 gives clamp a zero gradient at the boundary,
    which would freeze a run started on ``x2 = 0`` (the figures' start point (0, 0))."""
    return torch.where(t >= 0, t, torch.zeros_like(t))


def toy_losses(x: Tensor, scale: float = 1.0) -> Tensor:
    """The two losses at ``x`` (..., 2) -> (..., 2); differentiable."""
    x1, x2 = x[..., 0], x[..., 1]
    c1 = _positive_part(torch.tanh(0.5 * x2))
    c2 = _positive_part(torch.tanh(-0.5 * x2))
    f1 = torch.log(torch.clamp((0.5 * (-x1 - 7) - torch.tanh(-x2)).abs(), min=_FLOOR)) + 6
    f2 = torch.log(torch.clamp((0.5 * (-x1 + 3) + torch.tanh(-x2) + 2).abs(), min=_FLOOR)) + 6
    g1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    g2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    return torch.stack([scale * (c1 * f1 + c2 * g1), c1 * f2 + c2 * g2], dim=-1)


def pareto_front(scale: float = 1.0, resolution: int = 600) -> Tensor:
    """Non-dominated loss pairs over a dense grid of ``[-10, 10]^2``, sorted by L1."""
    axis = torch.linspace(-10, 10, resolution, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    losses = toy_losses(grid, scale)
    losses = losses[torch.argsort(losses[:, 0])]
    # sorted by L1: a point is non-dominated iff its L2 is below every earlier L2
    best_before = torch.cummin(torch.cat([torch.tensor([float("inf")], dtype=losses.dtype), losses[:-1, 1]]), 0).values
    return losses[losses[:, 1] < best_before]


def task_minima(scale: float = 1.0, resolution: int = 600) -> Tensor:
    """Each task's own minimum over the grid (the single-task reference)."""
    front = pareto_front(scale, resolution)
    return front.min(0).values


@dataclass
class Trajectory:
    method: str
    init: tuple[float, float]
    params: list[list[float]] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)


def run(method: str, init: tuple[float, float], steps: int = 2000, lr: float = 0.01,
        scale: float = 1.0, record_every: int = 10, **hparams) -> Trajectory:
    """Optimise the toy with ``method`` from ``init`` with Adam; returns the path.

    Performance-informed methods get ``dm_i = 100 (L_i - L_i^*) / |L_i^*|``-style drops
    against each task's own minimum ``L_i^*`` (normalised by the initial gap), refreshed
    every ``record_every`` steps.
    """
    agg = aggregators.make(method, 2, **hparams)
    x = torch.tensor(init, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([x, *agg.parameters()], lr=lr)
    traj = Trajectory(method, init)
    ref = task_minima(scale) if agg.uses_performance else None
    start_gap = None
    for step in range(steps + 1):
        opt.zero_grad()
        losses = toy_losses(x, scale)
        if step % record_every == 0 or step == steps:
            traj.params.append(x.detach().tolist())
            traj.losses.append(losses.detach().tolist())
            if ref is not None:
                gap = losses.detach() - ref
                start_gap = gap.clamp_min(1e-6) if start_gap is None else start_gap
                agg.update_performance(100 * gap / start_gap)
        if step == steps:
            break
        positive = losses + LOSS_SHIFT
        if not agg.requires_grads:
            agg.loss(positive).backward()
        else:
            grads = torch.stack([
                torch.autograd.grad(losses[i], x, create_graph=agg.needs_graph, retain_graph=True)[0]
                for i in range(2)
            ])
            d = agg(grads.detach(), positive.detach())
            if agg.needs_graph:
                d = d + torch.autograd.grad(agg.penalty(grads), x)[0]
            x.grad = d.detach()
        opt.step()
        agg.after_step(toy_losses(x.detach(), scale) + LOSS_SHIFT)
    return traj
