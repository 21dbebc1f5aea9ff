"""Loss-only weighting methods: SI, DWA and UW.

Each one defines a scalar objective ``combine(losses)`` for a single ordinary backward;
called with per-task gradients they return ``sum_i (d combine / d l_i) g_i``, the same
update (see :class:`aggregators.base.LossWeighting`).  LS lives in ``linear.py``, RLW in
``random_weighting.py`` and FAMO in ``famo.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import LossWeighting, log_safe, softmax_weights
from .registry import register

__all__ = ["ScaleInvariant", "DynamicWeightAverage", "UncertaintyWeighting", "check_log_domain"]


def check_log_domain(name: str, shifted: Tensor) -> None:
    """Raise ``ValueError`` unless every ``l_i - offset_i + eps`` is positive (the
    argument of the log of SI and FAMO); synchronises on a GPU, like the finiteness check."""
    if not bool((shifted > 0).all()):
        raise ValueError(
            f"{name} takes the log of the losses: every loss must be >= 0 (FAMO: >= min_losses); "
            f"got shifted losses {shifted.tolist()}"
        )


@register("si")
class ScaleInvariant(LossWeighting):
    """SI, the scale-invariant baseline (as defined among the baselines of Navon et al.
    2022, Nash-MTL): minimise ``sum_i log(l_i + eps)``.

    Rescaling a loss by a constant, ``l_i -> a_i l_i``, only adds ``log a_i``: the update
    ``sum_i g_i / (l_i + eps)`` (weights ``w_i = 1 / (l_i + eps)``) is unchanged up to eps.
    ``eps = 1e-8`` guards a zero loss (the guard FAMO uses).  One reference implementation
    minimises ``sum_i log(1 + l_i)`` instead, which is not scale invariant (it is LS for
    small losses); this class follows the definition.  Losses must be non-negative
    (``ValueError`` otherwise, when ``check_inputs`` is on).
    """

    needs_positive_losses = True

    def __init__(self, num_tasks: int, eps: float = 1e-8):
        super().__init__(num_tasks)
        if not eps > 0:
            raise ValueError(f"SI eps must be > 0 (guards log(0)), got {eps}")
        self.eps = float(eps)

    def begin_step(self, losses: Tensor) -> None:
        if self.check_inputs:
            check_log_domain(self.name, losses.to(torch.float64) + self.eps)

    def combine(self, losses: Tensor) -> Tensor:
        return log_safe(losses, self.eps).sum()

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, eps={self.eps}"


def dwa_weights(recent: Tensor, older: Tensor, temperature: float) -> Tensor:
    """``k softmax(r / T)`` with ``r_i = recent_i / older_i`` (DWA, MTAN sec. 3).

    A zero ``older_i`` gives ``r_i = 1`` and ratios are clipped to +-1e30, so the weights
    stay finite whatever the losses."""
    safe = torch.where(older != 0, older, torch.ones_like(older))
    ratio = torch.where(older != 0, recent / safe, torch.ones_like(recent)).clamp(-1e30, 1e30)
    return softmax_weights(ratio / temperature, recent.shape[0])


@register("dwa")
class DynamicWeightAverage(LossWeighting):
    """DWA (Liu et al. 2019, MTAN, sec. 3, the DWA equation): ``w_i = k softmax(r / T)_i`` with
    ``r_i = L_i(t-1) / L_i(t-2)``, objective ``sum_i w_i l_i``; ``T = 2``.

    ``mode="epoch"`` (the paper, for supervised training): ``L_i(t)`` is the mean training
    loss of epoch t, accumulated by :meth:`begin_step` and closed by :meth:`end_epoch`; the
    weights are 1 until two epochs have ended and change only at epoch ends.

    ``mode="iteration"`` (the references' RL / MT10 variant): ``L_i(t-1)`` and
    ``L_i(t-2)`` are the means of the last ``window`` steps (the current one included)
    and of the ``window`` steps before; the weights are 1 until ``2 * window`` steps have
    been seen.  The reference code instead starts after ``window + 1`` steps with a history
    padded with ones, and averages the weighted losses (a 1/k scale); here the windows
    hold real losses only and the objective is the paper's sum.
    """

    state_attributes = ("epoch_steps", "periods", "steps")

    def __init__(self, num_tasks: int, temperature: float = 2.0, mode: str = "epoch", window: int = 25):
        super().__init__(num_tasks)
        if not temperature > 0:
            raise ValueError(f"DWA temperature must be > 0, got {temperature}")
        if mode not in ("epoch", "iteration"):
            raise ValueError(f"DWA mode must be 'epoch' or 'iteration', got {mode!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"DWA window must be a positive int, got {window!r}")
        self.temperature = float(temperature)
        self.mode = mode
        self.window = window
        k = num_tasks
        self.register_buffer("current_weights", torch.ones(k, dtype=torch.float64))
        if mode == "epoch":
            self.register_buffer("epoch_sum", torch.zeros(k, dtype=torch.float64))
            # row 0: L(t-2), row 1: L(t-1)
            self.register_buffer("history", torch.zeros(2, k, dtype=torch.float64))
        else:
            # the last 2 * window step losses, oldest first
            self.register_buffer("recent", torch.zeros(2 * window, k, dtype=torch.float64))
        # Python ints (no device sync), saved through the extra state
        self.epoch_steps = 0
        self.periods = 0
        self.steps = 0

    def begin_step(self, losses: Tensor) -> None:
        l = losses.detach().to(self.current_weights)
        self.steps += 1
        if self.mode == "epoch":
            self.epoch_sum.add_(l)
            self.epoch_steps += 1
            return
        self.recent.copy_(torch.roll(self.recent, -1, dims=0))
        self.recent[-1].copy_(l)
        if self.steps >= 2 * self.window:
            w = self.window
            self.current_weights.copy_(
                dwa_weights(self.recent[w:].mean(0), self.recent[:w].mean(0), self.temperature)
            )

    def end_epoch(self) -> None:
        """Close the epoch (epoch mode; a no-op in iteration mode or for an empty epoch)."""
        if self.mode != "epoch" or self.epoch_steps == 0:
            return
        self.history[0].copy_(self.history[1])
        self.history[1].copy_(self.epoch_sum / self.epoch_steps)
        self.epoch_sum.zero_()
        self.epoch_steps = 0
        self.periods += 1
        if self.periods >= 2:
            self.current_weights.copy_(dwa_weights(self.history[1], self.history[0], self.temperature))

    def combine(self, losses: Tensor) -> Tensor:
        return (self.current_weights.to(losses) * losses).sum()

    def reset(self) -> None:
        super().reset()
        self.current_weights.fill_(1.0)
        for buf in ("epoch_sum", "history", "recent"):
            if hasattr(self, buf):
                getattr(self, buf).zero_()
        self.epoch_steps = self.periods = self.steps = 0

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, temperature={self.temperature}, mode={self.mode!r}, window={self.window}"


@register("uw")
class UncertaintyWeighting(LossWeighting):
    """UW (Kendall et al. 2018, eq. 7 with ``s_i = log sigma_i^2``): minimise
    ``sum_i 0.5 (exp(-s_i) l_i + s_i)`` jointly over the model and the learnable
    log-variances ``s`` (init 0).

    ``s`` is an ``nn.Parameter`` (float64): give ``agg.parameters()`` to the optimiser
    (lr 0.025 in the Nash-MTL code).  ``agg.loss(losses).backward()`` fills ``s.grad``;
    the matrix form ``agg(grads, losses)`` sets it.  For fixed losses the optimum is
    ``s_i = log l_i``.  As in the references, the regression form 0.5 exp(-s) l is used for
    every task (the paper's classification form drops the 0.5 on the loss term).
    """

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks, dtype=torch.float64))

    def combine(self, losses: Tensor) -> Tensor:
        s = self.log_vars
        return 0.5 * (torch.exp(-s) * losses + s).sum()

    def reset(self) -> None:
        super().reset()
        with torch.no_grad():
            self.log_vars.zero_()
        self.log_vars.grad = None
