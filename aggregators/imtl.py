"""IMTL-G: impartial multi-task learning, gradient part."""

from __future__ import annotations

import numpy as np
import scipy.linalg
from torch import Tensor

from .base import GramWeighting
from .qp import ZERO_REL, host_gram, to_device
from .registry import register

__all__ = ["IMTLG"]

#: relative singular-value cut of the least-squares solve (duplicate / dependent tasks)
RCOND = 1e-13


@register("imtl_g")
class IMTLG(GramWeighting):
    """IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021, sec. 3.2,
    gradient balance): ``d = sum_i alpha_i g_i`` with
    ``sum_i alpha_i = 1`` and equal projections ``d . u_i`` on every unit gradient
    ``u_i = g_i / ||g_i||``.

    The paper's closed form ``alpha_{2:k} = g_1 U^T (D U^T)^(-1)`` (``D``, ``U`` the
    differences ``g_1 - g_i`` and ``u_1 - u_i``) equals ``alpha = M^(-1) s / (1^T M^(-1) s)``
    with ``s = sqrt(diag M)``, since ``G d = M alpha`` must be proportional to ``s``.
    Here the bordered system ``M alpha = mu s, 1^T alpha = 1`` is solved after Jacobi
    equilibration (``C beta = mu 1`` with the cosine matrix ``C`` and ``beta = s alpha``)
    by least squares with a relative singular-value cut ``RCOND``.  On invertible ``M``
    that is the paper's solution; for dependent gradients it stays finite where
    ``inverse(D U^T)`` (the reference) fails: duplicates share their weight, and where
    the unit gradients are dependent with a nonzero coefficient sum (``g_2 = -g_1``) the
    only equal projection is 0, reached with ``d = 0``.  Zero-gradient tasks get weight 0
    (all zero: uniform weights).

    No hyper-parameters; stateless.  Runs on the host in float64 (a k x k copy from the GPU).
    """

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        m = host_gram(gram)
        k = self.num_tasks
        diag = np.diagonal(m)
        mx = float(diag.max())
        if mx <= 0.0:
            return to_device(np.full(k, 1.0 / k), gram)
        live = np.flatnonzero(diag > ZERO_REL * mx)
        n = live.size
        s = np.sqrt(diag[live])
        cos = m[live[:, None], live] / s[:, None] / s[None, :]
        np.fill_diagonal(cos, 1.0)
        a = s.min() / s  # sum alpha = 1 as (s_min / s)^T beta = s_min, entries in (0, 1]
        kk = np.zeros((n + 1, n + 1))
        kk[:n, :n] = cos
        kk[:n, n] = -1.0
        kk[n, :n] = a
        rhs = np.zeros(n + 1)
        rhs[n] = s.min()
        sol = scipy.linalg.lstsq(kk, rhs, cond=RCOND, check_finite=False)[0]
        alpha = sol[:n] / s
        total = alpha.sum()
        if total > 1e-6 * np.abs(alpha).sum():
            alpha = alpha / total  # removes rounding; an inconsistent system is left as is
        w = np.zeros(k)
        w[live] = alpha
        return to_device(w, gram)
