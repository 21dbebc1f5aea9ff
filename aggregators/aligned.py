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

__all__ = ["AlignedMTL", "balance_matrix"]


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

    Stateless apart from ``preferences`` (a buffer).  Runs on the host in float64 (a k x k
    copy from the GPU: a pivoted Cholesky has no torch counterpart).
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
        b, _, _ = balance_matrix(host_gram(gram), self._eps(gram.dtype))
        return to_device(b @ self.preferences.detach().cpu().numpy(), gram)

    def balance_matrix(self, gram: Tensor) -> tuple[Tensor, float]:
        """``(B, lambda_min)`` for ``gram`` (the aligned gradients are ``B @ G``)."""
        b, lam_min, _ = balance_matrix(host_gram(gram), self._eps(gram.dtype))
        return to_device(b, gram), lam_min
