"""Gradient diagnostics as plain functions of the gradient matrix ``G`` (k, n) or the
Gram matrix ``M = G G^T`` (k, k).  Functions named ``*_from_gram`` take ``M``; the
others accept ``G`` and compute ``M`` themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import gram_matrix
from .common import safe_divide

__all__ = [
    "task_norms",
    "condition_number",
    "gds",
    "gms",
    "cosine_matrix",
    "direction_cosines",
    "direction_cosines_from_gram",
    "feature_entropy",
    "summary",
]


def _gram(x: Tensor, is_gram: bool) -> Tensor:
    return x.to(torch.float64) if is_gram else gram_matrix(x)


def task_norms(x: Tensor, is_gram: bool = False) -> Tensor:
    """Per-task gradient norms ``||g_i||`` (the imbalance signal of Guo et al., arXiv 2025)."""
    return torch.diagonal(_gram(x, is_gram)).clamp_min(0).sqrt()


def condition_number(x: Tensor, is_gram: bool = False) -> Tensor:
    """``kappa(G) = sigma_max / sigma_min`` (Senushkin et al., CVPR 2023, eq. 2), from the eigenvalues of
    ``M`` (``sigma^2``).  ``inf`` when the gradients are linearly dependent."""
    ev = torch.linalg.eigvalsh(_gram(x, is_gram)).clamp_min(0)
    smax, smin = ev[-1].sqrt(), ev[0].sqrt()
    tol = smax * torch.finfo(torch.float64).eps * ev.numel()
    return torch.where(smin > tol, smax / torch.where(smin > tol, smin, torch.ones_like(smin)),
                       torch.full_like(smax, float("inf")))


def cosine_matrix(x: Tensor, is_gram: bool = False) -> Tensor:
    """Pairwise cosines ``alpha_ij`` (Mao et al., arXiv 2024, eq. 6a); 0 where a gradient is zero."""
    m = _gram(x, is_gram)
    n = torch.diagonal(m).clamp_min(0).sqrt()
    denom = n[:, None] * n[None, :]
    return torch.where(denom > 0, m / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(m))


def direction_cosines(grads: Tensor, direction: Tensor) -> Tensor:
    """``cos(g_i, d) = (G d)_i / (||g_i|| ||d||)`` per task (float64, (k,)): how far the
    applied direction ``d`` (n,) serves each task (figs. 7-9 of Guo et al. (arXiv 2025) track it against
    task imbalance); 0 where ``g_i`` or ``d`` is zero."""
    g = grads.detach()
    gd = (g @ direction.detach().to(g.dtype)).to(torch.float64)
    norms = torch.linalg.vector_norm(g, dim=1).to(torch.float64)
    dn = torch.linalg.vector_norm(direction.detach()).to(torch.float64)
    return safe_divide(gd, norms * dn)


def direction_cosines_from_gram(gram: Tensor, weights: Tensor) -> Tensor:
    """The same cosines for ``d = sum_j w_j g_j`` from ``M`` and ``w`` alone:
    ``G d = M w`` and ``||d||^2 = w^T M w`` (clamped to [-1, 1] against rounding)."""
    m = gram.detach().to(torch.float64)
    gd = m @ weights.detach().to(m)
    dn = (weights.detach().to(m) @ gd).clamp_min(0).sqrt()
    norms = torch.diagonal(m).clamp_min(0).sqrt()
    return safe_divide(gd, norms * dn).clamp(-1.0, 1.0)


def _off_diagonal_mean(a: Tensor) -> Tensor:
    k = a.shape[0]
    if k < 2:
        raise ValueError("pairwise diagnostics need at least 2 tasks")
    return (a.sum() - torch.diagonal(a).sum()) / (k * (k - 1))


def gds(x: Tensor, is_gram: bool = False) -> Tensor:
    """Gradient direction similarity: mean pairwise cosine (Mao et al., arXiv 2024, eq. 6b)."""
    return _off_diagonal_mean(cosine_matrix(x, is_gram))


def gms(x: Tensor, is_gram: bool = False) -> Tensor:
    """Gradient magnitude similarity: mean over pairs of
    ``2 ||g_i|| ||g_j|| / (||g_i||^2 + ||g_j||^2)`` (Mao et al., arXiv 2024, eq. 7)."""
    n = task_norms(x, is_gram)
    num = 2 * n[:, None] * n[None, :]
    den = n[:, None] ** 2 + n[None, :] ** 2
    beta = torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))
    return _off_diagonal_mean(beta)


def feature_entropy(rep_grads: Tensor, eps: float = 1e-12) -> Tensor:
    """Feature-disentanglement entropy (Mao et al., arXiv 2024, eqs. 8-9).

    ``rep_grads`` (k, ...) holds ``d L_i / d Z`` for every task over the shared
    representation ``Z`` (any shape after the task axis).  For each position j,
    ``p_ij = |dL_i/dZ_j| / sum_t |dL_t/dZ_j|`` and ``E_j = -sum_i p_ij log p_ij``;
    the result is the mean of ``E_j`` over positions (0: every feature serves one task;
    ``log k``: every feature is shared equally).  Positions no task touches are skipped.
    """
    a = rep_grads.detach().to(torch.float64).flatten(1).abs()
    tot = a.sum(0)
    used = tot > 0
    p = a[:, used] / tot[used]
    ent = -(p * torch.log(p.clamp_min(eps))).sum(0)
    return ent.mean() if ent.numel() else torch.zeros((), dtype=torch.float64)


def summary(x: Tensor, is_gram: bool = False) -> dict[str, float]:
    """All Gram-based diagnostics as floats (for logging every N steps)."""
    m = _gram(x, is_gram)
    out = {"kappa": float(condition_number(m, True))}
    if m.shape[0] > 1:
        out.update(gds=float(gds(m, True)), gms=float(gms(m, True)))
    for i, n in enumerate(task_norms(m, True).tolist()):
        out[f"grad_norm/{i}"] = n
    return out
