"""STCH: smooth Tchebycheff scalarisation (Lin, Zhang, Yang, Liu, Wang & Zhang, ICML 2024)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .base import LossWeighting, check_finite
from .loss_weighting import check_log_domain
from .registry import register

__all__ = ["STCH"]


@register("stch")
class STCH(LossWeighting):
    """STCH (Lin et al., "Smooth Tchebycheff Scalarization for Multi-Objective
    Optimization", ICML 2024, sec. 3, eq. 9): the log-sum-exp smoothing of the
    Tchebycheff scalarisation ``max_i lambda_i (l_i - z_i)``,

        g_mu(l | lambda) = mu log sum_i exp(lambda_i (l_i - z_i) / mu),

    applied, as in the paper's multi-task experiments (the authors' LibMTL code,
    ``STCH_MTL``), to log-normalised losses ``x_i = log(l_i / n_i + eps)``: the ideal
    point is then ``z = 0`` (``x_i = 0`` where a task's loss equals its normaliser) and
    ``n_i`` is task i's mean training loss over one epoch of a warm-up.

    Schedule, epochs counted from 0 and closed by :meth:`end_epoch`:

    * epochs ``0 .. warmup_epochs`` (``warmup_epochs + 1`` of them): the objective is
      ``sum_i log(l_i + eps)`` (SI, weights ``1 / (l_i + eps)``); during epoch
      ``warmup_epochs`` every step's losses are accumulated;
    * from the next epoch on, ``n`` is the mean of those losses and the objective is

        combine(l) = k mu log sum_i exp(k lambda_i x_i / mu),

      which with the default preference ``lambda_i = 1 / k`` is the reference code's
      ``k mu log sum_i exp(x_i / mu)`` exactly.  In the paper's form it is
      ``k^2 g_nu(x | lambda)`` with smoothing ``nu = mu / k``: the same direction, scaled
      so that the weights on the log-losses, ``k^2 lambda_i softmax(k lambda x / mu)_i``,
      sum to k as in LS (1 each for equal log-losses).  The update is ``sum_i w_i g_i``
      with ``w_i = k^2 lambda_i softmax(k lambda x / mu)_i / (l_i + eps n_i)``.

    ``mu = 1`` and ``warmup_epochs = 4`` are the reference's defaults (``STCH_mu``,
    ``STCH_warmup_epoch``); ``eps = 1e-20`` is its log guard.  Small ``mu`` approaches the
    Tchebycheff (worst normalised task) direction, large ``mu`` the plain sum of the
    log-losses.  The reference subtracts the (detached) largest term inside the
    log-sum-exp, which shifts the value by a constant and leaves the update unchanged;
    here ``torch.logsumexp`` gives the value itself.

    A recording epoch with no steps (``end_epoch`` called twice) keeps recording into the
    next one.  A task whose recorded mean loss is 0 is normalised by 1.
    :meth:`set_nadir` fixes ``n`` directly and skips the warm-up (a loop without epochs,
    MT10, never calls ``end_epoch``; without it, STCH stays SI there).  Losses must be
    non-negative (``ValueError`` otherwise, when ``check_inputs`` is on).
    """

    needs_positive_losses = True
    state_attributes = ("epoch", "recorded_steps", "has_nadir")

    def __init__(self, num_tasks: int, mu: float = 1.0, warmup_epochs: int = 4,
                 preference: Sequence[float] | None = None, eps: float = 1e-20):
        super().__init__(num_tasks)
        if not float(mu) > 0:
            raise ValueError(f"STCH mu (smoothing) must be > 0, got {mu}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"STCH warmup_epochs must be a non-negative int, got {warmup_epochs!r}")
        if not float(eps) > 0:
            raise ValueError(f"STCH eps must be > 0 (guards log(0)), got {eps}")
        self.mu = float(mu)
        self.warmup_epochs = warmup_epochs
        self.eps = float(eps)
        k = num_tasks
        f64 = torch.float64
        if preference is None:
            pref = torch.full((k,), 1.0 / k, dtype=f64)
        else:
            pref = torch.as_tensor(preference, dtype=f64).flatten()
            if pref.shape != (k,):
                raise ValueError(f"STCH preference must have {k} entries, got shape {tuple(pref.shape)}")
            if not bool(torch.isfinite(pref).all()) or bool((pref < 0).any()) or not float(pref.sum()) > 0:
                raise ValueError(f"STCH preference must be finite, >= 0 and not all 0, got {pref.tolist()}")
            pref = pref / pref.sum()  # a point of the simplex, as in the paper
        self.register_buffer("preference", pref)
        self.register_buffer("nadir", torch.ones(k, dtype=f64))
        self.register_buffer("loss_sum", torch.zeros(k, dtype=f64))
        # Python values (no device sync), saved through the extra state
        self.epoch = 0
        self.recorded_steps = 0
        self.has_nadir = False

    # -- the normaliser ---------------------------------------------------------------------
    @property
    def recording(self) -> bool:
        """Whether this epoch's losses are being accumulated into the normaliser."""
        return not self.has_nadir and self.epoch >= self.warmup_epochs

    def set_nadir(self, nadir: float | Sequence[float] | Tensor) -> None:
        """Fix the normalising losses ``n`` (a float: every task) and leave the warm-up."""
        n = torch.as_tensor(nadir, dtype=torch.float64)
        if n.dim() == 0:
            n = n.expand(self.num_tasks)
        if n.shape != (self.num_tasks,):
            raise ValueError(f"STCH nadir must be a float or {self.num_tasks} values, got shape {tuple(n.shape)}")
        check_finite("nadir", n)
        if not bool((n > 0).all()):
            raise ValueError(f"STCH nadir must be > 0 (it divides the losses), got {n.tolist()}")
        self.nadir.copy_(n.to(self.nadir.device))
        self.has_nadir = True

    # -- the step ---------------------------------------------------------------------------
    def begin_step(self, losses: Tensor) -> None:
        l = losses.detach().to(self.loss_sum)
        if self.check_inputs:
            check_log_domain(self.name, l + self.eps)
        if self.recording:
            self.loss_sum.add_(l)
            self.recorded_steps += 1

    def combine(self, losses: Tensor) -> Tensor:
        if not self.has_nadir:
            return torch.log(losses + self.eps).sum()
        n = self.nadir.to(losses)
        x = torch.log(losses + self.eps * n) - torch.log(n)  # log(l / n + eps)
        k = self.num_tasks
        scaled = k * self.preference.to(losses) * x / self.mu
        return k * self.mu * torch.logsumexp(scaled, dim=0)

    def end_epoch(self) -> None:
        """Close the epoch; closing a recording epoch that had steps sets the normaliser."""
        if self.recording and self.recorded_steps > 0:
            mean = self.loss_sum / self.recorded_steps
            self.nadir.copy_(torch.where(mean > 0, mean, torch.ones_like(mean)))
            self.has_nadir = True
        self.epoch += 1

    def reset(self) -> None:
        """Back to the start of the warm-up (the preference is kept)."""
        super().reset()
        self.nadir.fill_(1.0)
        self.loss_sum.zero_()
        self.epoch = self.recorded_steps = 0
        self.has_nadir = False

    def extra_repr(self) -> str:
        return (f"num_tasks={self.num_tasks}, mu={self.mu}, warmup_epochs={self.warmup_epochs}, "
                f"eps={self.eps}")
