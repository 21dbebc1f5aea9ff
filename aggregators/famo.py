"""FAMO: Fast Adaptive Multitask Optimization (Liu, Liang, Liu, Stone & Liu, NeurIPS 2023)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torch.optim.adam import adam as adam_update

from .base import LossWeighting, check_finite
from .loss_weighting import check_log_domain
from .registry import register

__all__ = ["FAMO"]

_BETAS = (0.9, 0.999)  # torch.optim.Adam defaults, as in the reference
_ADAM_EPS = 1e-8


@register("famo")
class FAMO(LossWeighting):
    """FAMO (Liu et al. 2023, sec. 3, Alg. 1): one backward per step, with task logits
    ``xi`` (init 0) updated from the observed decrease of the log-losses.

    Step objective, with ``z = softmax(xi)`` and ``D_i = l_i - m_i + eps``::

        combine(l) = sum_i z_i log D_i / c,     c = sum_i z_i / D_i  (detached)

    so the update is ``sum_i w_i g_i`` with ``w_i = z_i / (D_i c)`` (the weights sum to
    1; equal losses give ``w = z``).  ``m`` is the per-task minimum loss (``min_losses``,
    default 0, as in the reference); ``eps = 1e-8``.

    After the optimiser step the trainer calls :meth:`after_step` with the losses of the
    updated model on the same batch.  With ``delta_i = log D_i(old) - log D_i(new)`` the
    logits' gradient is the vector-Jacobian product of softmax at ``xi`` with ``delta``,
    ``z * (delta - z . delta)``, and ``xi`` takes one Adam step (lr ``w_lr`` = 0.025,
    L2 weight decay ``gamma``, betas (0.9, 0.999), eps 1e-8): the reference's
    ``torch.optim.Adam(weight_decay=gamma)``; the paper writes the same regularised update
    with a plain gradient step.  Tasks that improved less than average gain weight.
    ``gamma``: 0.001 (NYU-v2, CelebA, QM9), 0.01 (Cityscapes, MT10).  The reference also
    clips the shared gradient to norm 1 in its training loop (a trainer concern).

    Logits, Adam moments and the stored losses are buffers (not parameters: the trainer's
    optimiser must not touch ``xi``), so the state dict restores them exactly.
    """

    state_attributes = ("has_prev",)

    needs_positive_losses = True

    def __init__(
        self,
        num_tasks: int,
        w_lr: float = 0.025,
        gamma: float = 0.001,
        eps: float = 1e-8,
        min_losses: float | Sequence[float] = 0.0,
    ):
        super().__init__(num_tasks)
        if not w_lr > 0:
            raise ValueError(f"FAMO w_lr must be > 0, got {w_lr}")
        if not gamma >= 0:
            raise ValueError(f"FAMO gamma (weight decay) must be >= 0, got {gamma}")
        if not eps > 0:
            raise ValueError(f"FAMO eps must be > 0 (guards log(0)), got {eps}")
        self.w_lr = float(w_lr)
        self.gamma = float(gamma)
        self.eps = float(eps)
        k = num_tasks
        f64 = torch.float64
        self.register_buffer("min_losses", torch.zeros(k, dtype=f64))
        self.set_min_losses(min_losses)
        self.register_buffer("logits", torch.zeros(k, dtype=f64))
        self.register_buffer("exp_avg", torch.zeros(k, dtype=f64))
        self.register_buffer("exp_avg_sq", torch.zeros(k, dtype=f64))
        self.register_buffer("adam_step", torch.zeros((), dtype=f64))
        self.register_buffer("prev_losses", torch.zeros(k, dtype=f64))
        self.has_prev = False  # a Python bool (no device sync), saved as extra state

    def set_min_losses(self, min_losses: float | Sequence[float] | Tensor) -> None:
        """Per-task lower bounds ``m`` subtracted before the log (a float: every task)."""
        m = torch.as_tensor(min_losses, dtype=torch.float64)
        if m.dim() == 0:
            m = m.expand(self.num_tasks)
        if m.shape != (self.num_tasks,):
            raise ValueError(f"FAMO min_losses must be a float or {self.num_tasks} values, got shape {tuple(m.shape)}")
        check_finite("min_losses", m)
        self.min_losses.copy_(m.to(self.min_losses.device))

    def _shifted(self, losses: Tensor) -> Tensor:
        return losses - self.min_losses.to(losses) + self.eps

    @property
    def task_weights(self) -> Tensor:
        """``z = softmax(xi)``, float64."""
        return torch.softmax(self.logits, dim=0)

    def begin_step(self, losses: Tensor) -> None:
        l = losses.detach().to(self.prev_losses)
        if self.check_inputs:
            check_log_domain(self.name, self._shifted(l))
        self.prev_losses.copy_(l)
        self.has_prev = True

    def combine(self, losses: Tensor) -> Tensor:
        z = self.task_weights.to(losses)
        shifted = self._shifted(losses)
        c = (z / shifted).sum().detach()
        return (z * torch.log(shifted)).sum() / c

    def after_step(self, losses: Tensor) -> None:
        """One Adam step on the logits from the losses after the optimiser step (same batch)."""
        if not self.has_prev:
            raise RuntimeError("FAMO.after_step: no stored losses; call agg.loss(losses) or agg(grads, losses) first")
        losses = torch.as_tensor(losses).detach()
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"famo: losses must have shape ({self.num_tasks},), got {tuple(losses.shape)}")
        new = self._shifted(losses.to(self.prev_losses))
        if self.check_inputs:
            check_finite("losses", new)
            check_log_domain(self.name, new)
        delta = torch.log(self._shifted(self.prev_losses)) - torch.log(new)
        z = self.task_weights
        grad = z * (delta - (z * delta).sum())  # J_softmax(xi)^T delta
        self._adam_step(grad)

    def _adam_step(self, grad: Tensor) -> None:
        """torch's own Adam update (``torch.optim.Adam(weight_decay=gamma)``) on the logits,
        with its moments kept in this module's buffers."""
        adam_update(
            [self.logits], [grad.to(self.logits)], [self.exp_avg], [self.exp_avg_sq], [], [self.adam_step],
            amsgrad=False, beta1=_BETAS[0], beta2=_BETAS[1], lr=self.w_lr, weight_decay=self.gamma,
            eps=_ADAM_EPS, maximize=False, foreach=False, capturable=self.logits.device.type != "cpu",
        )

    def reset(self) -> None:
        """Logits, Adam state and stored losses back to the start (``min_losses`` kept)."""
        super().reset()
        for buf in (self.logits, self.exp_avg, self.exp_avg_sq, self.adam_step, self.prev_losses):
            buf.zero_()
        self.has_prev = False

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, w_lr={self.w_lr}, gamma={self.gamma}, eps={self.eps}"
