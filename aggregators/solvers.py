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

    w, s, lam = _mehrotra(m, w, s, lam, iters)
    w = w / w.sum()
    spread = zero.to(m.dtype) / zero.sum().clamp_min(1)
    return torch.where(zero.any() | ~(mx > 0), torch.where(mx > 0, spread, ones / k), w).to(gram.device)


def _mehrotra(m: Tensor, x: Tensor, s: Tensor, lam: Tensor | None, iters: int,
              q: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Mehrotra predictor-corrector iterations (Nocedal & Wright, *Numerical
    Optimization*, 2nd ed., 2006, sec. 16.6 and Alg. 16.4) for the convex QP

        min 1/2 x^T M x + q^T x   s.t.  x >= 0   (and 1^T x = 1 when ``lam`` is given),

    from the strictly positive ``(x, s)`` (``s``: the multipliers of ``x >= 0``; ``lam``:
    that of ``1^T x = 1``).  ``M`` (k x k, symmetric) is shared by a batch of problems
    along the leading dimensions of ``x``, ``s`` and ``q`` (absent: ``q = 0``).

    Each iteration factors ``M + S X^-1`` once (LU without error check, so no host read)
    and solves the Newton system twice, for the affine-scaling (predictor) step and for
    the centred, second-order-corrected one, with centring parameter
    ``sigma = (mu_aff / mu)^3`` (N&W sec. 14.2); primal and dual variables step 0.99 of the
    way to the boundary (at most 1).  A problem whose complementarity gap
    ``mu = x^T s / k`` is below ``1e-30``, or whose step is not finite, is frozen, so extra
    iterations change nothing.  Returns ``(x, s, lam)``.
    """
    k = x.shape[-1]
    ones = torch.ones_like(x)

    def step(v, dv):   # per problem, the largest alpha in [0, 1] with v + alpha dv >= 0
        ratio = torch.where(dv < 0, -v / torch.where(dv < 0, dv, -ones), torch.full_like(v, torch.inf))
        return torch.clamp(ratio.amin(-1, keepdim=True), max=1.0)

    for _ in range(iters):
        mu = (x * s).sum(-1, keepdim=True) / k
        r_d = (m @ x[..., None])[..., 0]   # M x for every problem of the batch
        if q is not None:
            r_d = r_d + q
        if lam is not None:
            r_d = r_d - lam
            r_p = x.sum(-1, keepdim=True) - 1.0
        r_d = r_d - s
        lu, piv, _ = torch.linalg.lu_factor_ex(m + torch.diag_embed(s / x))

        def direction(r_c):
            # M dx - dlam 1 - ds = -r_d,  1^T dx = -r_p,  S dx + X ds = r_c
            rhs = -r_d + r_c / x
            if lam is None:
                dx = torch.linalg.lu_solve(lu, piv, rhs[..., None])[..., 0]
                dlam = None
            else:
                sol = torch.linalg.lu_solve(lu, piv, torch.stack([rhs, ones], dim=-1))
                a, b = sol[..., 0], sol[..., 1]
                dlam = (-r_p - a.sum(-1, keepdim=True)) / b.sum(-1, keepdim=True)
                dx = a + dlam * b
            return dx, (r_c - s * dx) / x, dlam

        dx_a, ds_a, _ = direction(-x * s)
        a_p, a_d = step(x, dx_a), step(s, ds_a)
        mu_aff = ((x + a_p * dx_a) * (s + a_d * ds_a)).sum(-1, keepdim=True) / k
        sigma = (mu_aff / mu) ** 3
        dx, ds, dlam = direction(-x * s - dx_a * ds_a + sigma * mu)
        finite = torch.isfinite(dx).all(-1, keepdim=True) & torch.isfinite(ds).all(-1, keepdim=True)
        live = (mu > 1e-30) & finite
        a_p = torch.where(live, torch.clamp(0.99 * step(x, dx), max=1.0), torch.zeros_like(mu))
        a_d = torch.where(live, torch.clamp(0.99 * step(s, ds), max=1.0), torch.zeros_like(mu))
        x = x + a_p * torch.where(live, dx, torch.zeros_like(dx))
        s = s + a_d * torch.where(live, ds, torch.zeros_like(ds))
        if lam is not None:
            lam = lam + a_d * torch.where(live, dlam, torch.zeros_like(dlam))
    return x, s, lam


#: ridge on the unit diagonal of :func:`nonneg_qp_device`'s equilibrated problem: where
#: some ``u >= 0`` has ``G^T u = 0`` (0 in the hull of the gradients) the solution set is
#: unbounded and an interior-point method drifts out along it; the ridge bounds it, and
#: changes the solution by about its size relative to the gradients
NNQP_RIDGE = 1e-14


def nonneg_qp_device(gram: Tensor, q: Tensor, iters: int = 40) -> Tensor:
    """``argmin_{u >= 0} 1/2 u^T M u + q_b^T u`` for every row ``q_b`` of ``q`` (B x k),
    in torch on the input's device with a fixed iteration budget and no host read: the
    device form of the nonnegative QPs :func:`aggregators.qp.dual_cone_projections` solves
    exactly on the host (``q_b`` in the range of ``M``, as there).

    The primal-dual interior-point method of :func:`min_norm_weights_device` without the
    simplex constraint (:func:`_mehrotra`: Nocedal & Wright 2006, Alg. 16.4), all B
    problems in one batch (one batched k x k LU per iteration), from ``u = s = 1``.  ``M``
    is first scaled to unit diagonal (``u_j = v_j / sqrt(M_jj)``: the problem of the
    cosines, as the host solves it), which also makes its maximum diagonal 1, and each
    ``q_b`` to unit maximum magnitude (``u`` is linear in ``q_b``).  A zero-gradient task
    (``M_jj <= ZERO_REL max_i M_ii``) imposes no constraint: its ``u_j`` is 0.  Problems
    whose gap ``u^T s / k`` is below ``1e-30`` are frozen.  The unit diagonal carries the
    ridge ``NNQP_RIDGE``, which keeps the solution bounded where 0 is in the hull of the
    gradients (there ``u`` is not unique and ``G^T u`` is what matters).
    """
    m = gram.detach().to(torch.float64)
    q = q.detach().to(m)
    diag = m.diagonal()
    zero = diag <= ZERO_REL * diag.max()
    inv = torch.where(zero, torch.ones_like(diag), diag.clamp_min(torch.finfo(m.dtype).tiny).rsqrt())
    eye = torch.eye(m.shape[0], dtype=m.dtype, device=m.device)
    cos = m * inv[:, None] * inv[None, :]
    cos = torch.where(zero[:, None] | zero[None, :] | (eye > 0), eye, cos) + NNQP_RIDGE * eye
    qs = torch.where(zero, torch.zeros_like(q), q * inv)
    size = qs.abs().amax(-1, keepdim=True)
    size = torch.where(size > 0, size, torch.ones_like(size))
    # a zero task's u_j solves min 1/2 u_j^2 + u_j: 0, with multiplier 1
    qs = torch.where(zero, torch.ones_like(qs), qs / size)
    v, _, _ = _mehrotra(cos, torch.ones_like(qs), torch.ones_like(qs), None, iters, qs)
    return torch.where(zero, torch.zeros_like(v), v * size * inv)


def linear_plus_norm_weights_device(gram: Tensor, a: Tensor, r: Tensor, barrier_decades: int = 25,
                                    centring_steps: int = 5, final_steps: int = 6) -> tuple[Tensor, Tensor]:
    """``argmin_{w in simplex} (M a)^T w + r sqrt(w^T M w)`` and ``||G^T w||`` (both
    tensors) in torch on the input's device, with a fixed amount of work and no host read:
    the device form of :func:`aggregators.qp.linear_plus_norm_weights` (same contract,
    ``r`` a tensor; CAGrad's dual with ``a = 1/k``).

    The barrier method (Boyd & Vandenberghe, *Convex Optimization*, 2004, sec. 11.3) on
    the epigraph form ``min b^T w + r tau`` s.t. ``||G^T w|| <= tau``, ``w >= 0``,
    ``1^T w = 1`` (``b = M a``), with the logarithmic barriers ``-sum_i log w_i`` and
    ``-log(tau^2 - w^T M w)`` (the second-order cone's, B&V sec. 11.6.1).  For fixed ``w``
    the centring problem's minimiser over ``tau`` is ``(1 + q) / (t r)`` with
    ``q = sqrt(1 + t^2 r^2 w^T M w)``, which leaves

        psi_t(w) = t b^T w + q - log(1 + q) - sum_i log w_i,

    smooth and convex also where ``G^T w = 0``.  Each centring step is an
    equality-constrained Newton step (B&V sec. 10.2.1): its KKT system, Jacobi-equilibrated,
    solved with one (k + 1) x (k + 1) LU without error check (eliminating the multiplier
    by block elimination, B&V sec. 10.4.1, would lose the step to cancellation at large
    ``t``: the objective is homogeneous, so ``psi_t``'s Hessian is nearly singular along
    ``w``), then a line search over the step sizes ``2^-j`` (``j < 30``) and 0, all
    evaluated at once on the change of ``psi_t`` written without cancellation (``log1p``),
    among those that keep ``w > 0``.  ``M`` is scaled to unit maximum diagonal and the
    objective to unit size first; ``t`` runs over ``10^0 .. 10^barrier_decades`` with
    ``centring_steps`` Newton steps each and ``final_steps`` more at the end: a fixed
    ``(barrier_decades + 1) centring_steps + final_steps`` Newton steps.  An inactive
    task's weight ends near ``1 / (t s_i)``, ``s_i`` its multiplier, and the duality gap
    near ``(k + 2) / t``: the large final ``t`` is what tasks whose gradients are orders of
    magnitude shorter than the longest need.

    ``x* = G^T w* = 0``, where the objective is not differentiable, is decided as the host
    decides it: 0 lies in the hull (:func:`min_norm_weights_device`, whose point is
    shorter than ``aggregators.qp.ZERO_HULL * sum_i w_i ||g_i||``) and the projection of
    ``-G^T a`` onto the cone of the gradients (:func:`nonneg_qp_device`) is no longer than
    ``r (1 + 1e-9)``; the weights are then the min-norm ones and the norm 0.  ``r <= 0``:
    the linear objective's minimising vertices, evenly, as on the host.
    """
    from .qp import ZERO_HULL  # qp imports this module

    m = gram.detach().to(torch.float64)
    k = m.shape[0]
    dt, dev = m.dtype, m.device
    a = a.detach().to(m)
    r = torch.as_tensor(r).detach().to(m)
    mx = m.diagonal().max()
    unit = torch.where(mx > 0, mx, torch.ones_like(mx))
    ms = m / unit
    b = ms @ a
    size = torch.maximum(b.abs().max(), r / unit.sqrt())
    size = torch.where(size > 0, size, torch.ones_like(size))
    bs = b / size
    rs = r / unit.sqrt() / size
    rs = torch.where(rs > 0, rs, torch.ones_like(rs))   # r <= 0: solved, then not used

    ones = torch.ones(k, dtype=dt, device=dev)
    zero1 = torch.zeros(1, dtype=dt, device=dev)
    steps = torch.cat([torch.pow(2.0, -torch.arange(30, dtype=dt, device=dev)), zero1])
    w = ones / k
    schedule = [10.0 ** j for j in range(barrier_decades + 1) for _ in range(centring_steps)]
    for t in schedule + [10.0 ** barrier_decades] * final_steps:
        s = t * rs
        y = ms @ w
        u = (w @ y).clamp_min(0)
        q = torch.sqrt(1 + s * s * u)
        h1 = s * s / (2 * (1 + q))                          # d/du (q - log(1 + q))
        h2 = -(s * s) * (s * s) / (4 * q * (1 + q) ** 2)    # its second derivative
        grad = t * bs - 1 / w + 2 * h1 * y
        hess = 2 * h1 * ms + 4 * h2 * torch.outer(y, y) + torch.diag(1 / (w * w))
        # Jacobi scaling from the diagonal without the rank-one term: H_ii itself cancels
        # (to rounding noise of size eps * t) where w is near a vertex, H's null direction
        d = (2 * h1 * ms.diagonal() + 1 / (w * w)).rsqrt()
        e = d / d.max()
        kkt = torch.cat([torch.cat([hess * d[:, None] * d[None, :], e[:, None]], 1),
                         torch.cat([e, zero1])[None]], 0)
        lu, piv, _ = torch.linalg.lu_factor_ex(kkt)
        dw = d * torch.linalg.lu_solve(lu, piv, torch.cat([-d * grad, zero1])[:, None])[:k, 0]
        dw = torch.where(torch.isfinite(dw).all(), dw, torch.zeros_like(dw))   # a failed solve: no step
        # psi_t(w + alpha dw) - psi_t(w) for every step size at once
        du = steps * (2 * (y @ dw)) + steps * steps * (dw @ ms @ dw)
        ua = (u + du).clamp_min(0)
        dq = s * s * (ua - u) / (torch.sqrt(1 + s * s * ua) + q)
        ratio = steps[:, None] * (dw / w)
        inside = (w + steps[:, None] * dw > 0).all(-1) & (ratio > -1).all(-1)
        logs = torch.log1p(torch.where(inside[:, None], ratio, torch.zeros_like(ratio))).sum(-1)
        change = steps * (t * (bs @ dw)) + dq - torch.log1p(dq / (1 + q)) - logs
        change = torch.where(inside & (change == change), change, torch.full_like(change, torch.inf))
        w = w + steps.index_select(0, change.argmin().reshape(1)) * dw   # steps[-1] = 0: change 0
    w = w / w.sum()

    # x* = 0: 0 in the hull and the projection of -g0 onto cone{g_i} no longer than r
    w0 = min_norm_weights_device(m)
    n0 = (w0 @ m @ w0).clamp_min(0).sqrt()
    u0 = nonneg_qp_device(m, (m @ a)[None])[0]
    p = (u0 @ m @ u0).clamp_min(0).sqrt()
    at_zero = (n0 <= ZERO_HULL * (w0 * m.diagonal().clamp_min(0).sqrt()).sum()) & (p <= r * (1 + 1e-9))
    w = torch.where(at_zero, w0, w)
    # r <= 0: the linear objective's minimising vertices, evenly
    lowest = b <= b.min() + 1e-13 * b.abs().max()
    w = torch.where(r > 0, w, lowest.to(dt) / lowest.sum())
    norm = (w @ m @ w).clamp_min(0).sqrt()
    return w, torch.where((r > 0) & at_zero, torch.zeros_like(norm), norm)


#: sweeps of :func:`jacobi_eigh`; cyclic Jacobi converges quadratically once the
#: off-diagonal part is small: k = 40 Gram matrices reach it in about 8 sweeps
JACOBI_SWEEPS = 10


def jacobi_eigh(a: Tensor, sweeps: int = JACOBI_SWEEPS) -> tuple[Tensor, Tensor]:
    """``(lam, V)`` with ``a = V diag(lam) V^T`` for a symmetric float64 ``a`` (k x k),
    in torch on ``a``'s device with a fixed amount of work and no host read (unsorted).

    The cyclic Jacobi method (Golub & Van Loan, *Matrix Computations*, 4th ed., 2013,
    sec. 8.5: each rotation from the 2-by-2 symmetric Schur decomposition of Alg. 8.5.1,
    ``t = tan(theta)`` the smaller root of ``t^2 + 2 tau t - 1 = 0``) in the round-robin
    ("chess tournament") ordering of its parallel Jacobi discussion: k is padded to even
    ``n`` with a zero row; each
    of the ``n - 1`` rounds of a sweep rotates ``n / 2`` disjoint pairs at once, which is
    one n x n rotation ``J`` and ``A <- J^T A J``, ``V <- V J`` (three matmuls).  Every
    pair meets once per sweep.  A pair is left alone (``c = 1, s = 0``) where
    ``|a_pq| <= eps sqrt(|a_pp a_qq|)`` (Demmel & Veselic, "Jacobi's method is more
    accurate than QR", SIAM J. Matrix Anal. Appl. 13(4), 1992: with that threshold the
    eigenvalues of a positive (semi)definite ``a = D C D`` come out with relative error
    about ``eps kappa(C)`` however graded the diagonal ``D`` is); zero rows are never
    rotated, so their ``e_i`` stay eigenvectors.

    Cost: ``sweeps * (n - 1)`` rounds of ~20 small kernels and three n x n matmuls, i.e.
    ``O(sweeps * k^4)`` flops (k = 40, 10 sweeps: 390 rounds, ~1e8 flops, launch-bound on
    a GPU); k = 2 takes one rotation per sweep.
    """
    k = a.shape[0]
    n = k + k % 2
    h = n // 2
    dt, dev = a.dtype, a.device
    m = torch.zeros(n, n, dtype=dt, device=dev)
    m[:k, :k] = a
    v = torch.eye(n, dtype=dt, device=dev)
    rounds = n - 1
    # round r: position 0 holds player 0, position j >= 1 player 1 + (j - 1 + r) mod (n - 1);
    # positions j and n - 1 - j play each other
    r = torch.arange(rounds, device=dev)[:, None]
    j = torch.arange(n, device=dev)[None, :]
    seats = torch.where(j == 0, torch.zeros_like(j), 1 + (j - 1 + r) % rounds)
    ps, qs = seats[:, :h], seats.flip(1)[:, :h]
    # per round: the entries (p, p), (q, q), (p, q), (q, p) of the rotation
    rows, cols = torch.cat([ps, qs, ps, qs], 1), torch.cat([ps, qs, qs, ps], 1)
    eps = torch.finfo(dt).eps
    one = torch.ones((), dtype=dt, device=dev)
    blank = torch.zeros(n, n, dtype=dt, device=dev)
    nought = torch.zeros(2 * h, dtype=dt, device=dev)
    for _ in range(sweeps):
        for t in range(rounds):
            p, q = ps[t], qs[t]
            d = m.diagonal()
            app, aqq, apq = d[p], d[q], m[p, q]
            rot = apq.abs() > eps * (app * aqq).abs().sqrt()
            tau = (aqq - app) / (2.0 * torch.where(rot, apq, one))
            tan = torch.where(rot, torch.copysign(1.0 / (tau.abs() + torch.hypot(one, tau)), tau), 0.0)
            c = torch.rsqrt(1.0 + tan * tan)
            s = tan * c
            rot_m = blank.index_put((rows[t], cols[t]), torch.cat([c, c, s, -s]))
            m = rot_m.T @ (m @ rot_m)
            v = v @ rot_m
            m = m.index_put_((rows[t, : 2 * h], cols[t, 2 * h:]), nought)  # the rotated pairs: exactly 0
    return m.diagonal()[:k].clone(), v[:k, :k].clone()
