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


def on_device(x: Tensor) -> bool:
    """Whether a solve of ``x`` runs in the device form (off the CPU, or inside
    :func:`device_form`)."""
    return x.device.type != "cpu" or _DEVICE_FORM_EVERYWHERE


def min_norm_weights_device(gram: Tensor, iters: int = 40) -> Tensor:
    """``argmin_{w in simplex} w^T M w`` (MGDA's min-norm element) in torch, on the
    input's device, with a fixed iteration budget and no host read: the device form of
    :func:`aggregators.qp.min_norm_weights` (which is exact, an active-set method on the
    host).

    A primal-dual interior-point method (Mehrotra's predictor-corrector, Nocedal & Wright,
    *Numerical Optimization*, 2nd ed., 2006, Alg. 16.4, for the convex QP
    ``min 1/2 w^T M w`` s.t. ``1^T w = 1``, ``w >= 0``): each iteration solves the
    k x k system ``(M + S W^-1) dw = r`` twice (LU without error check) and steps 0.99 of
    the way to the boundary.  ``M`` is scaled to unit maximum diagonal first.  Once the
    complementarity gap is below ``1e-30`` the iterate is frozen, so extra iterations
    change nothing.  A zero-gradient task (``M_ii <= ZERO_REL max_j M_jj``) puts 0 in
    the hull: the weight is then spread over those tasks, as the host form does.
    """
    m = gram.detach().to(torch.float64)
    k = m.shape[0]
    diag = m.diagonal()
    mx = diag.max()
    zero = diag <= ZERO_REL * mx
    m = m / torch.where(mx > 0, mx, torch.ones_like(mx))
    ones = torch.ones(k, dtype=m.dtype, device=m.device)
    w = ones / k
    s = ones.clone()
    lam = (m @ w).min() - 1.0

    def direction(w, s, r_d, r_p, r_c):
        # M dw - dlam 1 - ds = -r_d,  1^T dw = -r_p,  S dw + W ds = r_c
        h = m + torch.diag(s / w)
        lu, piv, _ = torch.linalg.lu_factor_ex(h)
        sol = torch.linalg.lu_solve(lu, piv, torch.stack([-r_d + r_c / w, ones], dim=1))
        a, b = sol[:, 0], sol[:, 1]
        dlam = (-r_p - a.sum()) / b.sum()
        dw = a + dlam * b
        return dw, (r_c - s * dw) / w, dlam

    def step(x, dx):   # the largest alpha in [0, 1] with x + alpha dx >= 0
        ratio = torch.where(dx < 0, -x / torch.where(dx < 0, dx, -ones), torch.full_like(x, torch.inf))
        return torch.clamp(ratio.min(), max=1.0)

    for _ in range(iters):
        mu = (w * s).sum() / k
        r_d = m @ w - lam - s
        r_p = w.sum() - 1.0
        dw_a, ds_a, _ = direction(w, s, r_d, r_p, -w * s)
        a_p, a_d = step(w, dw_a), step(s, ds_a)
        mu_aff = ((w + a_p * dw_a) * (s + a_d * ds_a)).sum() / k
        sigma = (mu_aff / mu) ** 3
        dw, ds, dlam = direction(w, s, r_d, r_p, -w * s - dw_a * ds_a + sigma * mu)
        live = (mu > 1e-30) & torch.isfinite(dw).all() & torch.isfinite(ds).all()
        a_p = torch.where(live, torch.clamp(0.99 * step(w, dw), max=1.0), torch.zeros_like(mu))
        a_d = torch.where(live, torch.clamp(0.99 * step(s, ds), max=1.0), torch.zeros_like(mu))
        w = w + a_p * torch.where(live, dw, torch.zeros_like(dw))
        s = s + a_d * torch.where(live, ds, torch.zeros_like(ds))
        lam = lam + a_d * torch.where(live, dlam, torch.zeros_like(dlam))
    w = w / w.sum()
    spread = zero.to(m.dtype) / zero.sum().clamp_min(1)
    return torch.where(zero.any() | ~(mx > 0), torch.where(mx > 0, spread, ones / k), w).to(gram.device)
