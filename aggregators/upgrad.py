"""UPGrad: average of the projections onto the dual cone (torchjd's aggregator)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

from .base import GramWeighting
from .qp import dual_cone_projections, host_gram, to_device
from .registry import register

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

    No hyper-parameters; stateless.  Runs on the host in float64 (a k x k copy from the
    GPU); cost: one NNLS per task whose gradient conflicts with another one.
    """

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        m = host_gram(gram)
        k = self.num_tasks
        u = dual_cone_projections(m)
        w = (np.eye(k) + u).mean(axis=0)
        return to_device(w, gram)
