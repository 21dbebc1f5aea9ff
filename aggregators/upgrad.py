"""UPGrad: average of the projections onto the dual cone (torchjd's aggregator)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .base import GramWeighting
from .qp import ZERO_REL, dual_cone_projections, host_gram, to_device
from .registry import register
from .solvers import nonneg_qp_device, on_device

__all__ = ["UPGrad"]


@register("upgrad")
class UPGrad(GramWeighting):
    """UPGrad (Quinton & Rey, "Jacobian descent for multi-objective optimization", 2024;
    torchjd's ``UPGrad``): project every ``g_i`` onto the dual cone of the gradients,
    ``v_i = argmin {||v - g_i||^2 : G v >= 0}``, and average, ``d = (1/k) sum_i v_i``.

    Each projection is solved in its dual over the Gram matrix:
    ``v_i = g_i + G^T u^(i)`` with ``u^(i) = argmin_{u >= 0} 1/2 u^T M u + u^T M e_i``
    (exact Lawson-Hanson NNLS, :func:`aggregators.qp.dual_cone_projections`), so
    ``weights = (1/k) sum_i (e_i + u^(i))``.  The result never conflicts with a task,
    ``G d >= 0``, and equals the mean gradient when no pair of gradients conflicts
    (no projection moves).

    torchjd solves the same dual with ``quadprog`` after normalising the Gramian and adding
    a small ridge to it (its ``norm_eps`` / ``reg_eps`` options); this class solves the
    unregularised problem exactly.  Zero-gradient tasks impose no constraint.

    No hyper-parameters; stateless.  On the CPU it runs on the host in float64; cost: one
    NNLS per task whose gradient conflicts with another one.  On a GPU it runs in the
    device form (:func:`aggregators.solvers.nonneg_qp_device`: the k problems in one
    batched interior-point method with a fixed budget and no host read, on the Gram
    matrix's device); rows without conflict keep ``u = 0`` exactly, as on the host.
    """

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        if on_device(gram):
            return self._device_weights(gram)
        m = host_gram(gram)
        k = self.num_tasks
        u = dual_cone_projections(m)
        w = (np.eye(k) + u).mean(axis=0)
        return to_device(w, gram)

    def _device_weights(self, gram: Tensor) -> Tensor:
        """The host form's weights in torch on ``gram``'s device (no host read)."""
        m = gram.detach().to(torch.float64)
        diag = m.diagonal()
        live = diag > ZERO_REL * diag.max()
        # u^(i) = 0 without a solve where g_i conflicts with no (nonzero) gradient
        conflict = live & ((m < 0) & live[None, :]).any(-1)
        u = nonneg_qp_device(m, m)   # row i: q = M e_i
        u = torch.where(conflict[:, None], u, torch.zeros_like(u))
        return (torch.eye(self.num_tasks, dtype=m.dtype, device=m.device) + u).mean(0)
