"""IMTL-G: impartial multi-task learning, gradient part."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from .base import GramWeighting
from .qp import ZERO_REL, host_gram, to_device
from .registry import register
from .solvers import on_device

__all__ = ["IMTLG"]

#: relative singular-value cut of the least-squares solve (duplicate / dependent tasks)
RCOND = 1e-13
#: device form: Tikhonov parameter, relative to the mean squared column norm of the
#: bordered matrix, and the number of iterated-Tikhonov steps
DEVICE_RIDGE = 1e-12
DEVICE_STEPS = 12


def _device_weights(gram: Tensor) -> Tensor:
    """The weights of :class:`IMTLG` in torch on ``gram``'s device: a fixed amount of work
    and no host read.

    The bordered system of the host form is built on all k tasks with masks: a zero task
    gets an identity row and column (its ``beta_i`` decouples and is 0), a 0 in the sum
    row and in the ``mu`` column.  It is then solved as a ridge-regularised least-squares
    problem, ``(K^T K + eps I) x = K^T rhs``, written as the equivalent augmented system
    ``[[delta I, K], [K^T, -delta I]] [r / delta; x] = [rhs; 0]`` with ``delta^2 = eps``
    (the augmented-system form of least squares, Bjorck, *Numerical Methods for Least
    Squares Problems*, SIAM 1996; for this square ``K`` its eigenvalues are
    ``+-sqrt(sigma_i^2 + eps)``, so its condition number is about ``kappa(K)`` where the
    normal equations would square it), factorised once by ``lu_factor_ex``.
    ``DEVICE_STEPS`` steps of iterated Tikhonov (``x <- x + T(rhs - K x)``, ``T`` that
    solve; stationary iterated Tikhonov, see Hanke & Groetsch, J. Optim. Theory Appl.
    98(1), 1998) take every direction with ``sigma^2 >~ 10 eps`` to the
    minimum-norm least-squares solution to rounding (error factor
    ``(eps / (sigma^2 + eps))^steps``) and damp those with ``sigma^2 << eps``.

    ``eps = DEVICE_RIDGE * ||K||_F^2 / (k + 1)`` (the mean squared column norm; ``K`` has
    unit-diagonal cosines, so this is O(1) whatever the gradient norms): far above the
    rounding-level singular values (~1e-16) that stand for exactly dependent gradients,
    so those directions stay bounded (duplicates share their weight, ``g_2 = -g_1``
    gives ``d = 0``, as on the host), and far below the squared singular values of
    bordered systems of independent gradients (``kappa(K)`` up to ~1e6 here with
    k = 40).  Where the two forms can differ: singular values between the host's cut
    (``RCOND sigma_max``) and ``~sqrt(eps)`` (unit gradients within ~1e-6 of a
    dependence) are kept by the host and damped here; and an exactly dependent,
    inconsistent system (e.g. ``g_3 = (g_1 + g_2) / 2``) leaves a component of relative
    size ~``steps * 1e-16 / eps`` along a null vector of ``K``, a combination whose
    gradients cancel, so ``d`` is the same to rounding while the weights differ by that.
    """
    m = gram.detach().to(torch.float64)
    k = m.shape[0]
    diag = m.diagonal()
    mx = diag.max()
    zero = diag <= ZERO_REL * mx  # all tasks where mx <= 0
    one = torch.ones_like(diag)
    s = torch.where(zero, one, diag).sqrt()
    eye = torch.eye(k, dtype=m.dtype, device=m.device)
    cos = torch.where(zero[:, None] | zero[None, :] | (eye > 0), eye, m / s[:, None] / s[None, :])
    s_min = torch.where(zero, torch.full_like(s, torch.inf), s).min()
    s_min = torch.where(torch.isfinite(s_min), s_min, s_min.new_ones(()))
    a = torch.where(zero, 0.0 * s, s_min / s)
    live = (~zero).to(m.dtype)
    kk = torch.cat([torch.cat([cos, -live[:, None]], 1), torch.cat([a, a.new_zeros(1)])[None, :]], 0)
    rhs = torch.cat([0.0 * s, s_min.reshape(1)])
    n = k + 1
    eps = DEVICE_RIDGE * (kk * kk).sum() / n
    delta = eps.sqrt()
    ident = torch.eye(n, dtype=m.dtype, device=m.device)
    aug = torch.cat([torch.cat([delta * ident, kk], 1), torch.cat([kk.T, -delta * ident], 1)], 0)
    lu, piv, _ = torch.linalg.lu_factor_ex(aug)
    x = 0.0 * rhs
    pad = 0.0 * rhs
    for _ in range(DEVICE_STEPS):
        x = x + torch.linalg.lu_solve(lu, piv, torch.cat([rhs - kk @ x, pad])[:, None])[n:, 0]
    alpha = torch.where(zero, 0.0 * s, x[:k] / s)
    total = alpha.sum()
    normed = total > 1e-6 * alpha.abs().sum()  # removes rounding; an inconsistent system is left as is
    alpha = torch.where(normed, alpha / torch.where(normed, total, total.new_ones(())), alpha)
    return torch.where(mx > 0, alpha, one / k)


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

    No hyper-parameters; stateless.  On the CPU it runs on the host in float64 (least
    squares by SVD).  On a GPU it runs in the device form (:func:`_device_weights`: the
    same bordered system solved as an iterated ridge least-squares problem by LU in
    torch, a fixed amount of work and no host read); the two agree to rounding except
    for nearly dependent gradients (see there).
    """

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        if on_device(gram):
            return _device_weights(gram)
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
