"""Aligned-MTL: align the principal components of the gradient matrix (Senushkin et al., CVPR 2023)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import scipy.linalg
from scipy.linalg.lapack import dpstrf
from torch import Tensor

from .base import GramWeighting
from .qp import ZERO_REL, host_gram, to_device
from .registry import register
from .solvers import jacobi_eigh, on_device

__all__ = ["AlignedMTL", "balance_matrix", "balance_matrix_device"]


def balance_matrix(gram: np.ndarray, eps: float) -> tuple[np.ndarray, float, int]:
    """``(B, lambda_min, rank)`` of Alg. 1 for a float64 Gram matrix ``M`` (NumPy).

    ``B = sqrt(lambda_R) V_R diag(lambda_R)^(-1/2) V_R^T`` on the eigenspace of the
    ``rank`` nonzero eigenvalues, ``lambda_R = lambda_min`` the smallest of them.  ``B``
    has eigenvalues ``sqrt(lambda_R / lambda_j) <= 1`` (it never amplifies); an all-zero
    ``M`` gives ``B = 0``.

    The small eigenvalues of an ill-conditioned ``M`` (gradient norms over many orders of
    magnitude) are computed to high relative accuracy, which ``eigh(M)`` cannot do (its
    error is ``eps * lambda_max``): with ``M = D C D`` (``D = diag(||g_i||)``, ``C`` the
    cosines) a pivoted Cholesky ``C = (P L)(P L)^T`` gives ``M = F F^T`` with
    ``F = D P L``, and the SVD of ``F`` with its rows sorted by decreasing norm (LAPACK
    ``dgesvd``, accurate for such graded factors: ``B M B^T = lambda_min I`` holds to
    ~1e-13 relative to ``lambda_min`` even when the eigenvalues span 1e20) gives ``V`` and
    ``lambda = sigma^2``.  The rank is where the pivoted Cholesky of ``C`` stops, at a
    pivot (squared distance of a unit gradient to the span of the others) ``<= k * eps``:
    linear dependence is decided independently of the gradient norms.
    """
    k = gram.shape[0]
    b = np.zeros((k, k))
    diag = np.diagonal(gram)
    mx = float(diag.max()) if k else 0.0
    if mx <= 0.0:
        return b, 0.0, 0
    live = np.flatnonzero(diag > ZERO_REL * mx)
    s = np.sqrt(diag[live])
    cos = gram[live[:, None], live] / s[:, None] / s[None, :]
    np.fill_diagonal(cos, 1.0)
    c, piv, rank, info = dpstrf(cos, tol=k * eps, lower=1)
    if info < 0:
        raise RuntimeError(f"Aligned-MTL: LAPACK dpstrf rejected its input (info={info})")
    factor = np.empty((live.size, rank))
    factor[piv - 1] = np.tril(c)[:, :rank]
    factor *= s[:, None]
    # rows by decreasing norm: the bidiagonal QR SVD is then accurate for this grading
    order = np.argsort(-np.linalg.norm(factor, axis=1), kind="stable")
    u_sorted, sigma, _ = scipy.linalg.svd(factor[order], full_matrices=False, lapack_driver="gesvd")
    u = np.empty_like(u_sorted)
    u[order] = u_sorted
    keep = sigma > 0  # full column rank by construction; guards against underflow only
    u, sigma = u[:, keep], sigma[keep]
    sigma_min = float(sigma.min())
    b[live[:, None], live] = (u * (sigma_min / sigma)) @ u.T
    return b, sigma_min ** 2, int(keep.sum())


def _cosine_rank(cos: Tensor, live: Tensor, tol: float) -> Tensor:
    """The rank :func:`balance_matrix` finds: the number of pivots ``> tol`` of a
    diagonally pivoted Cholesky factorisation of the unit-diagonal cosine matrix of the
    ``live`` tasks (its lower triangle), in torch with k fixed steps and no host read
    (a 0-dim int64).  The steps follow LAPACK ``dpstf2`` (left-looking: the pivot is the
    largest ``C_ii - sum_t L_it^2``, the factorisation stops at the first pivot
    ``<= tol``), so that the decision at the rounding level agrees with the host's as
    often as rounding allows."""
    k = cos.shape[0]
    low = torch.tril(cos)
    sym = low + torch.tril(cos, -1).T
    diag = sym.diagonal()
    free = live.clone()
    going = torch.ones((), dtype=torch.bool, device=cos.device)
    rank = torch.zeros((), dtype=torch.int64, device=cos.device)
    idx = torch.arange(k, device=cos.device)
    fac = torch.zeros_like(cos)   # column t: the t-th column of L (rows: tasks)
    work = torch.zeros_like(diag)
    for t in range(k):
        left = torch.where(free, diag - work, torch.full_like(diag, -torch.inf))
        p = left.argmax()
        piv = left.max()
        going = going & (piv > tol)
        others = free & (idx != p)
        row_p = fac.index_select(0, p.reshape(1))[0]
        inv = 1.0 / torch.where(going, piv, torch.ones_like(piv)).sqrt()
        col = (sym.index_select(1, p.reshape(1))[:, 0] - fac @ row_p) * inv
        col = torch.where(others & going, col, torch.zeros_like(col))
        fac = fac + col[:, None] * (idx == t).to(cos.dtype)[None, :]
        work = work + col * col
        free = others
        rank = rank + going.to(torch.int64)
    return rank


def balance_matrix_device(gram: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(B, lambda_min)`` of :func:`balance_matrix` in torch on ``gram``'s device, with a
    fixed amount of work and no host read (``lambda_min`` a 0-dim tensor).

    The eigendecomposition ``M = V Lambda V^T`` comes from cyclic Jacobi
    (:func:`aggregators.solvers.jacobi_eigh`, a fixed number of sweeps) on ``M`` scaled to
    unit maximum diagonal, with the zero-gradient tasks' rows and columns set to 0 (their
    ``e_i`` stay eigenvectors with eigenvalue 0 and are dropped, so ``B`` is 0 on them).
    Jacobi keeps the relative accuracy of the small eigenvalues of a graded ``M = D C D``
    (Demmel & Veselic 1992), which the host form gets from its graded Cholesky factor:
    both resolve gradient norms over many orders of magnitude.

    Rank: decided as on the host, by the pivots of a pivoted Cholesky factorisation of the
    cosine matrix ``C`` with the tolerance ``k eps`` (:func:`_cosine_rank`), so that it
    does not depend on the gradient norms.  The ``k - rank`` eigenpairs dropped are those
    with the smallest ``lambda_j / sum_i V_ij^2 M_ii = ||sum_i V_ij g_i||^2 /
    sum_i V_ij^2 ||g_i||^2`` (how nearly that combination of the gradients cancels,
    independent of the norms).  A cut of that ratio (or of ``lambda_j / lambda_max``) at
    ``k eps`` does not work: on exactly dependent gradients with graded norms, Jacobi's
    rounding leaves the zero eigenvalues at ``~eps sqrt(M_ii M_jj)`` of the large and
    small tasks it rotated together, a ratio far above ``eps`` (1e-13 with norms over
    six orders of magnitude).  The two forms can then differ only in which directions
    they keep when a kept direction's ratio is at that rounding level, i.e. for a
    near-dependence just above the cut in a strongly graded ``M``.
    """
    m = gram.detach().to(torch.float64)
    k = m.shape[0]
    diag = m.diagonal()
    mx = diag.max()
    live = diag > ZERO_REL * mx  # none when mx <= 0
    both = live[:, None] & live[None, :]
    s = torch.where(live, diag, torch.ones_like(diag)).sqrt()
    eye = torch.eye(k, dtype=m.dtype, device=m.device) > 0
    cos = torch.where(eye, torch.ones_like(m), m / s[:, None] / s[None, :])
    rank = _cosine_rank(cos, live, k * eps)
    scale = torch.where(mx > 0, mx, torch.ones_like(mx))
    m = torch.where(both, m / scale, torch.zeros_like(m))
    lam, v = jacobi_eigh(0.5 * (m + m.T))
    weight = (v * v * m.diagonal()[:, None]).sum(0)
    score = torch.where(weight > 0, lam / torch.where(weight > 0, weight, torch.ones_like(weight)),
                        torch.full_like(lam, -torch.inf))
    order = torch.argsort(score, stable=True)
    place = torch.empty_like(order).scatter_(0, order, torch.arange(k, device=m.device))
    keep = (place >= k - rank) & (lam > 0)
    lam_min = torch.where(keep, lam, torch.full_like(lam, torch.inf)).min()
    ratio = torch.where(keep, (lam_min / torch.where(keep, lam, torch.ones_like(lam))).sqrt(),
                        torch.zeros_like(lam))
    lam_min = torch.where(keep.any(), lam_min * scale, torch.zeros_like(lam_min))
    return (v * ratio) @ v.T, lam_min


@register("aligned_mtl")
class AlignedMTL(GramWeighting):
    """Aligned-MTL (Senushkin et al., CVPR 2023, sec. 5, eq. 5, Alg. 1).

    The aligned gradients ``G^ = sigma_min U V^T = B G`` solve the Procrustes problem
    ``min ||G - G^||_F s.t. G^ G^^T = sigma^2 I`` (eq. 4) with the scale
    ``sigma = sigma_min(G)`` (sec. 5): they are mutually orthogonal with equal norms
    ``sqrt(lambda_min)``, so ``kappa(G^) = 1``.  In the task space (eq. 5)
    ``B = sqrt(lambda_min) V Lambda^(-1/2) V^T`` from the eigendecomposition
    ``M = V Lambda V^T``, and ``d = G^T alpha`` with ``alpha = B w``.

    ``preferences`` is Alg. 1's task-importance vector ``w``.  Default: all ones, i.e.
    ``d`` is the *sum* of the aligned gradients, as the authors' code does; the paper's
    text writes ``w_i = 1/T`` (sec. 3.1), the same direction scaled by ``1/k`` (pass
    ``preferences=[1/k] * k`` for that).

    Rank deficiency (Remark in sec. 5.1): ``lambda_min`` is the smallest *nonzero*
    eigenvalue and ``B`` acts on the span of the gradients only.  The reference drops the
    eigenvalues ``<= max(lambda) * k * eps``; here the rank is decided on the cosine
    matrix instead (:func:`balance_matrix`), at the same ``k * eps`` level, so that it
    does not depend on the gradient norms.  The two cuts essentially agree while the
    eigenvalues span less than ``1 / (k eps)``; beyond that (norms over ~7 orders of
    magnitude) the reference drops the directions of the smallest tasks as if they were
    dependent, and ``eigh(M)`` could not resolve them anyway, while this class keeps them
    with eigenvalues accurate to many digits.  ``eps=None`` (default) is the machine epsilon
    of the data: of the gradients' dtype when called as ``agg(grads)`` (float32: 1.19e-7,
    the reference's ``torch.finfo().eps``; float64: 2.2e-16), and of the Gram matrix's
    dtype on the ``gram_weights`` path.  Pass a number to fix it.

    Aligned-MTL-UB (sec. 5.2) is this same class fed the gradients with respect to the
    shared representation ``z`` (eqs. 6-7); trainers then back-propagate
    ``sum_i alpha_i l_i`` through ``z`` (one backward).  No separate registry entry.

    Stateless apart from ``preferences`` (a buffer).  On the CPU it runs on the host in
    float64 (:func:`balance_matrix`: LAPACK pivoted Cholesky and SVD).  On a GPU it runs
    in the device form (:func:`balance_matrix_device`: the host's pivoted-Cholesky rank
    test and a fixed number of cyclic Jacobi sweeps for the eigenvectors, in torch with
    no host read; see there for where the two can differ).
    """

    def __init__(
        self, num_tasks: int, preferences: Sequence[float] | None = None, eps: float | None = None
    ):
        super().__init__(num_tasks)
        if preferences is None:
            pref = torch.ones(num_tasks, dtype=torch.float64)
        else:
            pref = torch.as_tensor(preferences, dtype=torch.float64).flatten().clone()
            if pref.shape != (num_tasks,) or not bool(torch.isfinite(pref).all()) or bool((pref < 0).any()):
                raise ValueError(
                    f"Aligned-MTL preferences must be {num_tasks} finite nonnegative numbers, "
                    f"got {preferences!r}"
                )
        if eps is not None and not (isinstance(eps, (int, float)) and 0 < eps < 1):
            raise ValueError(f"Aligned-MTL eps must be None or a number in (0, 1), got {eps!r}")
        self.eps = None if eps is None else float(eps)
        self.register_buffer("preferences", pref)
        self._data_eps: float | None = None  # set while aggregate() runs

    def _eps(self, dtype: torch.dtype) -> float:
        if self.eps is not None:
            return self.eps
        if self._data_eps is not None:
            return self._data_eps
        return float(torch.finfo(dtype if dtype.is_floating_point else torch.float64).eps)

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        self._data_eps = float(torch.finfo(grads.dtype).eps)
        try:
            return super().aggregate(grads, losses)
        finally:
            self._data_eps = None

    def gram_weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        if self._data_eps is None:
            self._data_eps = self._eps(gram.dtype)
            try:
                return super().gram_weights(gram, losses)
            finally:
                self._data_eps = None
        return super().gram_weights(gram, losses)

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        if on_device(gram):
            b, _ = balance_matrix_device(gram, self._eps(gram.dtype))
            return b @ self.preferences.detach().to(b)
        b, _, _ = balance_matrix(host_gram(gram), self._eps(gram.dtype))
        return to_device(b @ self.preferences.detach().cpu().numpy(), gram)

    def balance_matrix(self, gram: Tensor) -> tuple[Tensor, float]:
        """``(B, lambda_min)`` for ``gram`` (the aligned gradients are ``B @ G``); in the
        device form where :meth:`weights_from_gram` uses it (``lambda_min`` is then read
        to the host once)."""
        if on_device(gram):
            b, lam_min = balance_matrix_device(gram, self._eps(gram.dtype))
            return b, float(lam_min)
        b, lam_min, _ = balance_matrix(host_gram(gram), self._eps(gram.dtype))
        return to_device(b, gram), lam_min
