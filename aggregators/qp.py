"""Exact small QP solvers on the k x k Gram matrix (MGDA, CAGrad, UPGrad).

All three problems reduce to one primitive, a nonnegative quadratic program in Gram form

    min_{u >= 0}  1/2 u^T Q u - b^T u,        Q = Z^T Z  (PSD),  b = Z^T y,

i.e. the nonnegative least-squares problem ``min_{u >= 0} ||Z u - y||`` seen through its
normal equations.  :func:`nnls_gram` solves it with the Lawson-Hanson active-set method
(Lawson & Hanson 1974, ch. 23; the Gram-form bookkeeping of Bro & de Jong 1997): it
keeps a "passive" set on which the columns are linearly independent, solves the
unconstrained problem there exactly (Cholesky with one step of iterative refinement) and
moves one variable at a time.  It terminates after finitely many steps at a point that
satisfies the KKT conditions up to rounding, copes with a singular ``Q`` (duplicate
tasks) and is made insensitive to the scale of each variable by a Jacobi equilibration
(``Q_jj = 1`` after scaling), so gradient norms spanning ten orders of magnitude cost
no accuracy.

* :func:`min_norm_weights`: the min-norm point of the convex hull of the rows of G
  (MGDA).  With ``Z = [G^T; sqrt(c) 1^T]`` and ``y = [0; sqrt(c)]`` the NNLS solution
  ``u`` gives ``w = u / sum(u)`` exactly (for fixed ``s = sum u`` the objective is
  ``s^2 ||d*||^2 + c (s - 1)^2``), for any ``c > 0``; ``c`` is set to the scale of the
  answer ``||d*||^2`` by a second warm-started pass.
* :func:`linear_plus_norm_weights`: ``min_{w in simplex} (M a)^T w + r sqrt(w^T M w)``
  (CAGrad's dual), by a bracketed one-dimensional search whose every evaluation is a
  projection onto the convex hull (an MGDA problem on shifted points) and whose steps
  are the exact root for the current support.
* :func:`dual_cone_projections`: the projection of every ``g_i`` onto the dual cone
  ``{v : G v >= 0}`` (UPGrad), each one NNLS problem ``min_{u >= 0} ||G^T u + g_i||``.

These are active-set methods with data-dependent branching: they run in NumPy on the
host (float64).  Callers with the Gram matrix on a GPU move the k x k matrix to the host
(one small copy and one synchronisation per call), except where a device form exists
(torch on the Gram matrix's device, a fixed amount of work, no host read).  MGDA's is an
interior-point method with a fixed budget
(:func:`aggregators.solvers.min_norm_weights_device`), UPGrad's the same method for its
k nonnegative QPs at once (:func:`aggregators.solvers.nonneg_qp_device`) and CAGrad's a
barrier method with a fixed schedule
(:func:`aggregators.solvers.linear_plus_norm_weights_device`).  IMTL-G and Aligned-MTL,
which solve no QP, have device forms of their own (:func:`aggregators.imtl._device_weights`,
:func:`aggregators.aligned.balance_matrix_device`).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from .solvers import ZERO_REL  # a task with M_ii <= ZERO_REL * max_j M_jj counts as zero

__all__ = [
    "nnls_gram",
    "min_norm_weights",
    "linear_plus_norm_weights",
    "dual_cone_projections",
    "host_gram",
    "to_device",
    "ZERO_REL",
]

EPS = float(np.finfo(np.float64).eps)
#: pivot (squared distance to the span of the other passive columns, in units of the
#: column's own squared norm) below which a passive system counts as singular
PIVOT_TOL = 1e-13
#: a hull whose min-norm point sum_i w_i g_i is shorter than ZERO_HULL * sum_i w_i ||g_i||
#: contains 0 as far as a Gram-matrix solve can tell (such norms are accurate to ~sqrt(eps))
ZERO_HULL = 1e-7


def host_gram(gram: Tensor) -> np.ndarray:
    """The Gram matrix as a float64 NumPy array on the host (a copy when on a GPU)."""
    return gram.detach().to(device="cpu", dtype=torch.float64).numpy()


def to_device(x: np.ndarray, like: Tensor) -> Tensor:
    """A float64 tensor on ``like``'s device."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).to(like.device)


# --------------------------------------------------------------------------------------
# the primitive
# --------------------------------------------------------------------------------------
_POTRF, _POTRS = scipy.linalg.lapack.get_lapack_funcs(("potrf", "potrs"), (np.zeros(1),))


def _solve_passive(a: np.ndarray, r: np.ndarray) -> np.ndarray | None:
    """Solve ``a x = r`` for a symmetric PSD ``a`` with unit diagonal, or None when ``a``
    is numerically singular (a squared Cholesky pivot below ``PIVOT_TOL``: some column
    lies within ~3e-7 rad of the span of the others).

    Cholesky (LAPACK directly: the SciPy wrappers cost more than the factorisation at
    this size) plus one step of iterative refinement."""
    c, info = _POTRF(a, lower=1, clean=0)
    if info != 0 or float(np.abs(np.diagonal(c)).min()) ** 2 <= PIVOT_TOL:
        return None
    x, _ = _POTRS(c, r, lower=1)
    dx, _ = _POTRS(c, r - a @ x, lower=1)
    return x + dx


def nnls_gram(
    q: np.ndarray,
    b: np.ndarray,
    passive: np.ndarray | None = None,
    max_iter: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``argmin_{u >= 0} 1/2 u^T q u - b^T u`` for a PSD ``q`` (Lawson-Hanson, Gram form).

    ``b`` must lie in the range of ``q`` (true whenever ``q = Z^T Z`` and ``b = Z^T y``).
    ``passive`` is an optional warm start (a boolean mask, e.g. the one returned by the
    previous call on a similar problem).  Returns ``(u, passive_mask)``.

    At the returned point ``u >= 0``, ``(b - q u)_j = 0`` on the passive set and
    ``(b - q u)_j <= tol_j`` elsewhere, with ``tol_j`` a rounding-error bound of that
    component.  Variables with ``q_jj = 0`` stay at 0.
    """
    diag = np.diagonal(q)
    live = diag > 0
    inv = np.zeros(b.shape[0])
    inv[live] = 1.0 / np.sqrt(diag[live])
    qs = q * inv[:, None] * inv[None, :]
    np.fill_diagonal(qs, np.where(live, 1.0, 0.0))
    u, p = _nnls_unit(qs, np.abs(qs), b * inv, live, passive, max_iter)
    return u * inv, p


def _nnls_unit(qs, aqs, bs, live, passive=None, max_iter=None):
    """:func:`nnls_gram` on an equilibrated problem (``qs`` has unit diagonal where
    ``live``, zero rows and columns elsewhere; ``aqs = |qs|``)."""
    k = bs.shape[0]
    abs_bs = np.abs(bs)
    tol_factor = 16.0 * k * EPS
    if max_iter is None:
        max_iter = 4 * k + 20

    u = np.zeros(k)
    p = np.zeros(k, dtype=bool)
    if passive is not None:
        # warm start: shrink the guessed passive set until its solution is positive;
        # abandon it if its columns are dependent
        p = passive & live
        while p.any():
            idx = np.flatnonzero(p)
            s = _solve_passive(qs[idx[:, None], idx], bs[idx])
            if s is None:
                p[:] = False
                break
            if (s > 0).all():
                u[idx] = s
                break
            p[idx[s <= 0]] = False

    excluded = ~live
    for _ in range(max_iter):
        w = bs - qs @ u
        tol = tol_factor * (abs_bs + aqs @ np.abs(u))
        cand = ~p & ~excluded & (w > tol)
        if not cand.any():
            break
        j = int(np.argmax(np.where(cand, w, -np.inf)))
        p[j] = True
        first = True
        for _inner in range(k + 1):
            idx = np.flatnonzero(p)
            sol = _solve_passive(qs[idx[:, None], idx], bs[idx])
            if first and (sol is None or sol[np.searchsorted(idx, j)] <= 0):
                # the entering column is (numerically) in the span of the passive ones,
                # or rounding made it look useful: leave it out (Lawson-Hanson's guard)
                p[j] = False
                excluded[j] = True
                break
            first = False
            s = np.zeros(k)
            if sol is None:  # cannot happen in exact arithmetic (subsets of independent sets)
                sol = scipy.linalg.lstsq(qs[idx[:, None], idx], bs[idx], cond=1e-12, check_finite=False)[0]
            s[idx] = sol
            if (sol > 0).all():
                u = s
                excluded = ~live
                break
            neg = idx[sol <= 0]
            ratios = u[neg] / (u[neg] - s[neg])
            alpha = float(ratios.min())
            u = u + alpha * (s - u)
            u[neg[np.argmin(ratios)]] = 0.0
            u[~p] = 0.0
            p &= u > 0
            u[~p] = 0.0
    return u, p


# --------------------------------------------------------------------------------------
# MGDA: min-norm point of the convex hull
# --------------------------------------------------------------------------------------
def min_norm_weights(m: np.ndarray, passive: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``argmin_{w in simplex} w^T M w`` (MGDA's min-norm element), ``(w, passive)``.

    KKT at the result: ``(M w)_i >= w^T M w`` for all i, with equality where ``w_i > 0``,
    up to rounding in ``M``.  Zero-gradient tasks (``M_ii <= ZERO_REL max M``) make the
    hull contain 0: the weight is then spread evenly over them and ``d = 0``.
    """
    k = m.shape[0]
    diag = np.diagonal(m)
    mx = float(diag.max()) if k else 0.0
    if mx <= 0.0:
        return np.full(k, 1.0 / k), np.ones(k, dtype=bool)
    zero = diag <= ZERO_REL * mx
    if zero.any():
        return zero / zero.sum(), zero.copy()
    mn = m / mx
    c = float(np.diagonal(mn).min())  # >= ||d*||^2
    w = np.full(k, 1.0 / k)
    for attempt in range(2):
        u, passive = nnls_gram(mn + c, np.full(k, c), passive)
        total = u.sum()
        if total > 0:
            w = u / total
        nu = max(float(w @ mn @ w), 0.0)
        # the constraint row sqrt(c) 1^T is best scaled like the answer; re-solve once
        # (warm-started, usually no pivot) when the first guess was far off
        if attempt == 0 and nu < 1e-2 * c:
            c = max(nu, 1e-8 * c)
            continue
        break
    return w, passive


# --------------------------------------------------------------------------------------
# CAGrad's dual: linear term plus a norm over the simplex
# --------------------------------------------------------------------------------------
def _shifted_gram(m, b, beta, t):
    """Gram matrix of the points ``g_i + t g0`` (``b = G g0``, ``beta = ||g0||^2``)."""
    return m + t * (b[:, None] + b[None, :]) + (t * t * beta)


def _support_path(mt: np.ndarray, b: np.ndarray, supp: np.ndarray):
    """On the support ``supp`` of the projection at the current shift, the affine KKT
    system ``M_t,FF w + delta b_F = mu 1, 1^T w = 1`` has the solution ``w0 + delta w1``;
    returns ``(w0, w1)`` as full-length vectors (None when the system is singular)."""
    idx = np.flatnonzero(supp)
    n = idx.size
    k = b.shape[0]
    w0, w1 = np.zeros(k), np.zeros(k)
    if n == 1:
        w0[idx] = 1.0
        return w0, w1
    a = mt[np.ix_(idx, idx)]
    d = 1.0 / np.sqrt(np.maximum(np.diagonal(a), 1e-300))
    s = float(d.max())
    kk = np.zeros((n + 1, n + 1))
    kk[:n, :n] = a * d[:, None] * d[None, :]
    kk[:n, n] = -d / s
    kk[n, :n] = d / s
    rhs = np.zeros((n + 1, 2))
    rhs[n, 0] = 1.0 / s
    rhs[:n, 1] = -d * b[idx]
    try:
        sol = np.linalg.solve(kk, rhs)
    except np.linalg.LinAlgError:
        sol = scipy.linalg.lstsq(kk, rhs, cond=1e-13, check_finite=False)[0]
    if not np.isfinite(sol).all():
        return None
    w0[idx] = d * sol[:n, 0]
    w1[idx] = d * sol[:n, 1]
    return w0, w1


def linear_plus_norm_weights(
    m: np.ndarray, a: np.ndarray, r: float, max_iter: int = 100
) -> tuple[np.ndarray, float]:
    """``argmin_{w in simplex} (M a)^T w + r sqrt(w^T M w)``; returns ``(w, ||G^T w||)``.

    With ``g0 = G^T a`` this is ``min_{x in conv{g_i}} g0.x + r ||x||`` (CAGrad's dual
    with ``a = 1/k``).  Its KKT conditions say that ``x*`` is the projection of ``-t g0``
    onto the hull with ``||x*|| = r t``.  ``psi(t) = ||proj(-t g0)|| - r t`` is positive
    below the root and negative above it (the root is unique because every root is a KKT
    point of the convex problem), so the root is bracketed by ``[0, max_i ||g_i|| / r]``;
    each step jumps to the exact root of ``psi`` for the current support (a quadratic
    equation) when that lies inside the bracket, and bisects otherwise.  Every
    evaluation is one warm-started :func:`min_norm_weights` on the shifted points.

    When ``x* = 0`` (0 in the hull and ``r`` at least the length of the projection of
    ``-g0`` onto ``cone{g_i}``, e.g. ``r >= ||g0||``) the returned norm is 0.
    """
    k = m.shape[0]
    diag = np.diagonal(m)
    mx = float(diag.max())
    if mx <= 0.0:
        return np.full(k, 1.0 / k), 0.0
    if r <= 0.0:
        # a linear objective: spread the weight evenly over its minimising vertices
        ba = m @ a
        sel = ba <= ba.min() + 1e-13 * float(np.abs(ba).max())
        w = sel / sel.sum()
        return w, float(np.sqrt(max(w @ m @ w, 0.0)))
    mn = m / mx
    r = r / np.sqrt(mx)
    b = mn @ a
    beta = max(float(a @ b), 0.0)
    lo, hi = 0.0, 1.0 / r * (1.0 + 1e-12)  # max ||g_i|| = 1 after scaling: psi(hi) < 0
    t = t_floor = 0.0
    passive = None
    w_best, x_best, gap_best = np.full(k, 1.0 / k), 0.0, np.inf
    for it in range(max_iter):
        mt = _shifted_gram(mn, b, beta, t)
        w, passive = min_norm_weights(mt, passive)
        xn = float(np.sqrt(max(w @ mn @ w, 0.0)))
        psi = xn - r * t
        gap = abs(psi) / (xn + r * t) if xn + r * t > 0 else np.inf
        if gap < gap_best:
            w_best, x_best, gap_best = w, xn, gap
        if it == 0 and xn <= ZERO_HULL * float(w @ np.sqrt(np.diagonal(mn))):
            # 0 is in the hull (to the resolution of a Gram-matrix solve, ~sqrt(eps)):
            # x* = 0 exactly when the projection of -g0 onto the tangent cone there,
            # cone{g_i}, is no longer than r; otherwise psi(t) ~ t (p - r) > 0 for small t
            # and the search starts where that exceeds the noise
            u, _ = nnls_gram(mn, -b)
            p = float(np.sqrt(max(u @ mn @ u, 0.0)))
            if p <= r * (1.0 + 1e-9):
                return w, 0.0
            t_floor = min(10.0 * ZERO_HULL * float(w @ np.sqrt(np.diagonal(mn))) / (p - r), 0.5 * hi)
            t = t_floor
            continue
        if gap <= 1e-13:
            break
        if psi > 0:
            lo = t
        else:
            hi = t
            if hi <= t_floor:
                # the root lies where ||x*|| <= r t_floor: below the noise, x* = 0
                return w, 0.0
        if hi - lo <= 1e-15 * hi:
            break
        # exact root for the current support: ||x(t')||^2 = r^2 t'^2, x(t') = G^T w(t')
        t_new = None
        path = _support_path(mt, b, w > 0)
        if path is not None:
            w0, w1 = path  # w(t') = w0 + (t' - t) w1
            p0 = w0 - t * w1
            qa = float(w1 @ mn @ w1) - r * r
            qb = 2.0 * float(p0 @ mn @ w1)
            qc = float(p0 @ mn @ p0)
            roots = np.roots([qa, qb, qc]) if (qa != 0 or qb != 0) else np.array([])
            roots = [float(z.real) for z in np.atleast_1d(roots)
                     if abs(z.imag) <= 1e-12 * (abs(z.real) + 1e-300)]
            inside = [z for z in roots if max(lo, t_floor) < z < hi]
            if inside:
                t_new = min(inside, key=lambda z: abs(z - t))
                if abs(t_new - t) <= 1e-15 * t:
                    break
        t = t_new if t_new is not None else 0.5 * (lo + hi)
    return w_best, x_best * np.sqrt(mx)


# --------------------------------------------------------------------------------------
# UPGrad: projections onto the dual cone
# --------------------------------------------------------------------------------------
def dual_cone_projections(m: np.ndarray) -> np.ndarray:
    """``U`` (k x k) with row i the multipliers of the projection of ``g_i`` onto the
    dual cone ``{v : G v >= 0}``: ``v_i = g_i + G^T U_i``, ``U_i >= 0``.

    Each row solves the dual ``min_{u >= 0} 1/2 u^T M u + u^T M e_i`` (NNLS
    ``min ||G^T u + g_i||``); KKT: ``M (e_i + u) >= 0`` with ``u_j (M (e_i + u))_j = 0``.
    Rows without conflict (``M e_i >= 0``) need no solve (``u = 0``); zero-gradient tasks
    impose no constraint and get ``u_j = 0``.
    """
    k = m.shape[0]
    out = np.zeros((k, k))
    diag = np.diagonal(m)
    mx = float(diag.max()) if k else 0.0
    if mx <= 0.0:
        return out
    live = diag > ZERO_REL * mx
    idx = np.flatnonzero(live)
    n = idx.size
    norms = np.sqrt(diag[idx])
    cos = m[idx[:, None], idx] / norms[:, None] / norms[None, :]
    np.fill_diagonal(cos, 1.0)
    acos = np.abs(cos)
    ones = np.ones(n, dtype=bool)
    for pos in range(n):
        col = cos[:, pos]
        if (col >= 0).all():
            continue
        # equilibrated NNLS on the cosines: b = -cos_i, u_j = v_j ||g_i|| / ||g_j||;
        # warm start: the tasks that conflict with g_i
        v, _ = _nnls_unit(cos, acos, -col, ones, passive=col < 0)
        out[idx[pos], idx] = v * norms[pos] / norms
    return out
