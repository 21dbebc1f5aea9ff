"""Small float64 solvers on the k x k Gram matrix.

Each algorithm is written once against a tiny array backend: on the CPU it runs in
NumPy (per-operation overhead of a few hundred nanoseconds matters for k x k problems)
and stops as soon as it has converged; on a GPU it runs in torch on the input's device
with a fixed iteration budget and no data-dependent branching on device values, so it
never synchronises with the host.
"""

from __future__ import annotations

import contextlib

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

__all__ = ["alpha_fair_weights", "device_form"]

#: relative ridge on the diagonal; keeps Pareto-stationary (singular) systems bounded
RIDGE = 1e-12
#: a task whose squared gradient norm is below ZERO_REL * max_j M_jj counts as zero
ZERO_REL = 1e-30


class _NumpyOps:
    """The few calls where NumPy and torch differ (operators and methods are shared)."""

    on_host = True
    where = staticmethod(np.where)
    log = staticmethod(np.log)

    @staticmethod
    def spd_solve(a, b):
        try:
            return scipy.linalg.cho_solve(scipy.linalg.cho_factor(a, check_finite=False), b, check_finite=False)
        except np.linalg.LinAlgError:  # numerically indefinite: least squares instead
            return np.linalg.lstsq(a, b, rcond=None)[0]

    @staticmethod
    def stack(xs):
        return np.stack(xs)

    @staticmethod
    def full(like, value):
        return np.full_like(like, value)

    @staticmethod
    def with_diag(m, diag):
        out = m.copy()
        out[np.diag_indices_from(out)] += diag
        return out

    @staticmethod
    def steps(n, like):
        return np.concatenate([2.0 ** -np.arange(n), [0.0]])

    @staticmethod
    def row(x, i):
        return x[i]


class _TorchOps:
    on_host = False
    where = staticmethod(torch.where)
    log = staticmethod(torch.log)

    @staticmethod
    def spd_solve(a, b):
        # LU with pivoting (_ex: no error check, so no host sync); a numerically
        # indefinite or singular system gives non-finite steps, which the line search drops
        lu, piv, _ = torch.linalg.lu_factor_ex(a)
        return torch.linalg.lu_solve(lu, piv, b[:, None])[:, 0]

    @staticmethod
    def stack(xs):
        return torch.stack(xs)

    @staticmethod
    def full(like, value):
        return torch.full_like(like, value)

    @staticmethod
    def with_diag(m, diag):
        return m + torch.diag(diag)

    @staticmethod
    def steps(n, like):
        s = torch.pow(2.0, -torch.arange(n, dtype=like.dtype, device=like.device))
        return torch.cat([s, torch.zeros(1, dtype=like.dtype, device=like.device)])

    @staticmethod
    def row(x, i):
        # x[i] with a 0-dim index tensor would read i on the host
        return x.index_select(0, i.reshape(1))[0]


_DEVICE_FORM_EVERYWHERE = False


@contextlib.contextmanager
def device_form():
    """Solve in the device form (torch, fixed iterations, no host reads) on the CPU too:
    what a GPU runs, checkable without one."""
    global _DEVICE_FORM_EVERYWHERE
    saved, _DEVICE_FORM_EVERYWHERE = _DEVICE_FORM_EVERYWHERE, True
    try:
        yield
    finally:
        _DEVICE_FORM_EVERYWHERE = saved


def _backend(x: Tensor):
    """(ops, array) for a float64 tensor: NumPy on the CPU, torch elsewhere (and inside
    :func:`device_form`)."""
    x = x.detach().to(torch.float64)
    if x.device.type == "cpu" and not _DEVICE_FORM_EVERYWHERE:
        return _NumpyOps, x.numpy()
    return _TorchOps, x


def _to_torch(x, like: Tensor) -> Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)).to(like.device)
    return x


def _stabilise(ops, m, ridge: float):
    diag = m.diagonal()
    zero = diag <= ZERO_REL * diag.max()
    fixed = ops.where(zero[:, None] | zero[None, :], 0.0 * m, m)
    return ops.with_diag(fixed, ops.where(zero, 1.0 + 0.0 * diag, ridge * diag)), zero


def _fair_objective(ops, w, m, p, a: float):
    """f(w) = 1/2 w^T M w - sum_i p_i h_a(w_i), batched over the rows of ``w``;
    h_1 = log, h_a(x) = x^(1 - 1/a) / (1 - 1/a); +inf outside w > 0."""
    quad = 0.5 * ((w @ m) * w).sum(-1)
    pos = w > 0
    safe = ops.where(pos, w, 1.0 + 0.0 * w)
    if a == 1.0:
        h = ops.log(safe)
    else:
        q = 1.0 - 1.0 / a
        h = safe ** q / q
    val = quad - (p * h).sum(-1)
    ok = pos.all(-1) & (val == val)  # val == val: not NaN
    return ops.where(ok, val, ops.full(val, float("inf")))


def alpha_fair_weights(
    gram: Tensor,
    a: float,
    priorities: Tensor | None = None,
    init: Tensor | None = None,
    max_iter: int = 40,
    tol: float = 1e-12,
    precision: float = 0.0,
) -> Tensor:
    """Solve ``(M w)_i = p_i w_i^(-1/a)``, ``w > 0``: the alpha-fair allocation.

    This one equation covers Nash-MTL (a = 1: ``alpha_i (M alpha)_i = p_i``, Nash-MTL
    eq. 6), FairGrad (``M w = w^(-1/a)``), PIVRG (a = 2 with ``p = sqrt(omega)``, i.e.
    ``(M alpha)^2 = omega / alpha``, PIVRG paper eq. 7) and ConsMTL's upper level (PIVRG
    with omega = 1, ConsMTL eq. 5).

    It is the stationarity condition of the strictly convex problem
    ``min_{w > 0} 1/2 w^T M w - sum_i p_i h_a(w_i)``, solved by Newton's method with a
    Jacobi-equilibrated Cholesky solve and a batched line search (all step sizes
    evaluated at once), from the better of the warm start ``init`` and the exact
    solution for orthogonal gradients, each rescaled optimally along its ray.  The
    global scale of ``M`` is divided out first (the solution scales as ``c^(-a/(a+1))``
    when ``M`` is multiplied by ``c``).  Zero-gradient tasks get weight 0.

    ``precision``: relative accuracy of the entries of ``M`` (``k * eps`` of the dtype it
    was computed in); it is added to the diagonal (relative to ``M_ii``) so that a Gram
    matrix rounded to slightly indefinite (dependent gradients in float32) is positive
    definite again.  The default ridge ``RIDGE`` applies when it is smaller.
    """
    if a <= 0:
        raise ValueError(f"alpha-fair exponent must be > 0, got {a}")
    ops, m = _backend(gram)
    k = m.shape[0]
    if priorities is None:
        p = 1.0 + 0.0 * m.diagonal()
    else:
        p = _backend(priorities)[1] if ops is _NumpyOps else priorities.to(m)
    m, zero = _stabilise(ops, m, max(RIDGE, precision))
    scale = m.diagonal().mean()
    m = m / scale
    expo = a / (a + 1.0)
    q = 1.0 - 1.0 / a

    def best_on_ray(w0):
        # argmin_g f(g * w0) in closed form (the quadratic form is > 0 for a PSD M + ridge;
        # the clamp only guards against a Gram matrix that is indefinite beyond rounding)
        lin = (p * w0 ** q).sum() if a != 1.0 else p.sum()
        quad = w0 @ m @ w0
        quad = ops.where(quad > 0, quad, 0.0 * quad + RIDGE * (w0 * w0 * m.diagonal()).sum())
        return w0 * (lin / quad) ** (1.0 / (1.0 + 1.0 / a))

    cands = [best_on_ray((p / m.diagonal()) ** expo)]
    if init is not None:
        w_init = (_backend(init)[1] if ops is _NumpyOps else init.to(m)) * scale ** expo
        cands.append(best_on_ray(ops.where(w_init > 0, w_init, 1.0 + 0.0 * w_init)))
    cands = ops.stack(cands)
    w = ops.row(cands, _fair_objective(ops, cands, m, p, a).argmin())

    steps = ops.steps(21, m)
    for _ in range(max_iter):
        wpow = w ** (-1.0 / a)
        mw = m @ w
        grad = mw - p * wpow
        hess = ops.with_diag(m, p * wpow / (a * w))
        d = hess.diagonal() ** -0.5
        delta = -d * ops.spd_solve(hess * d[:, None] * d[None, :], d * grad)
        trial = w + steps[:, None] * delta
        f = _fair_objective(ops, trial, m, p, a)
        # Near the solution f changes by less than its rounding error (its terms can span
        # many orders of magnitude): accept the full Newton step when it does not raise f
        # beyond that error, otherwise the best step of the line search (steps[-1] = 0).
        noise = 1e-10 * (abs(0.5 * (w @ mw)) + abs(f[-1]))
        w = ops.where(f[0] <= f[-1] + noise, trial[0], ops.row(trial, f.argmin()))
        if ops.on_host and not float(abs(delta / w).max()) >= tol:  # converged (or NaN step)
            break
    w = w * scale ** (-expo)
    return _to_torch(ops.where(zero, 0.0 * w, w), gram)
