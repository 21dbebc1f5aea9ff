"""SDMGrad: stochastic direction-oriented multi-objective gradient descent."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import GramWeighting
from .registry import register

__all__ = ["SDMGrad", "project_to_simplex"]


def project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` (k,) onto the probability simplex.

    The sort-based rule (Duchi et al., ICML 2008; Wang & Carreira-Perpinan, arXiv 2013),
    the projection both SDMGrad references call after every inner step: with ``u`` the
    entries sorted in decreasing order, ``rho`` the last index j (1-based) with
    ``u_j > (sum_{i<=j} u_i - 1) / j`` and ``theta = (sum_{i<=rho} u_i - 1) / rho``, the
    projection is ``max(v - theta, 0)``.
    Vectorised in torch (no host read), so it runs on the Gram matrix's device.
    """
    k = v.shape[0]
    u = torch.sort(v, descending=True).values
    css = torch.cumsum(u, 0) - 1.0
    ranks = torch.arange(1, k + 1, device=v.device, dtype=v.dtype)
    # the last rank where the condition holds (it holds at rank 1: u_1 > u_1 - 1)
    rho = torch.where(u * ranks > css, ranks, torch.zeros_like(ranks)).max()
    theta = css.gather(0, (rho - 1).long().reshape(1)) / rho
    return torch.clamp(v - theta, min=0.0)


def _number(name: str, value, low: float, strict: bool = False) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if not math.isfinite(x) or x < low or (strict and x == low):
        bound = f"> {low:g}" if strict else f">= {low:g}"
        raise ValueError(f"SDMGrad {name} must be a finite number {bound}, got {value!r}")
    return x


@register("sdmgrad")
class SDMGrad(GramWeighting):
    """SDMGrad (Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and
    Provable Stochastic Algorithms", NeurIPS 2023; the paper's direction-oriented problem
    and its SDMGrad algorithm, in the form of the authors' released code,
    github.com/OptMN-Lab/sdmgrad, ``methods/weight_methods.py``).

    The direction-oriented problem keeps MGDA's common descent direction close to the
    average gradient ``g0 = (1/k) sum_i g_i``; on the simplex its dual is

        ``w* = argmin_{w in simplex} 1/2 ||G^T w||^2 + lam g0 . (G^T w)``
        ``      = argmin 1/2 ||G^T w + lam g0||^2``  (up to a constant),

    a function of the Gram matrix ``M = G G^T`` only: the objective's gradient in ``w`` is
    ``M w + lam M 1/k``.  The update is ``d = (G^T w* + lam g0) / (1 + lam)``, i.e. the
    weights ``(w* + lam / k) / (1 + lam)`` (they sum to 1).  ``lam = 0`` is MGDA (here
    solved inexactly, as SDMGrad does); ``lam -> inf`` is the mean gradient.

    The inner solver is the references' projected SGD: ``niter`` = 20 steps of SGD with
    ``lr`` = 10 and ``momentum`` = 0.5 (torch's heavy ball: ``b <- momentum b + grad``,
    ``w <- P(w - lr b)``, ``b`` fresh at every call) on the Gram matrix normalised by
    ``s^2``, ``s = mean_i sqrt(M_ii + scale_eps)``, each step followed by the Euclidean
    projection ``P`` onto the simplex (:func:`project_to_simplex`).  ``w`` is warm-started:
    it starts at ``1/k`` and each call continues from the previous call's ``w`` (the
    ``simplex_weights`` buffer, in the state dict), as both references keep it on the
    method object.  The references add ``scale_eps = 1e-4`` inside the square root (a
    guard against zero gradients); the default here is 0, which makes the normalised
    Gram matrix, hence ``w*``, exactly invariant to a global scale of the gradients
    (``d`` is linear in ``G``): with ``1e-4`` the inner solve slows down for gradient
    norms below about 0.01.  A zero Gram matrix leaves ``w`` where it is (``d = 0``).

    Not reproduced (trainer concerns or other methods): the references multiply ``d`` by
    k ("to match the sum loss") and clip it to norm 1; their supervised training scripts
    draw three independent mini-batches per step and use ``A = G_xi1 G_xi2^T`` for the
    inner solve and a third batch for ``d`` (the stochastic estimator of the paper's
    analysis), while their MT10 code, like this class, uses one batch's ``M``;
    SDMGrad-OS (objective sampling) is a separate knob.

    ``lam`` = 0.3 is the supervised references' default (their NYU-v2 ``run.sh`` and the
    Cityscapes trainer's default); their MT10 / MT50 scripts use 0.6
    (``aggregators.preset("sdmgrad", benchmark)``).  LibMTL's port uses ``lr`` = 5.

    Stateful (the warm start).  Runs in torch on the Gram matrix's device, in float64,
    with no host read.
    """

    def __init__(self, num_tasks: int, lam: float = 0.3, niter: int = 20, lr: float = 10.0,
                 momentum: float = 0.5, scale_eps: float = 0.0):
        super().__init__(num_tasks)
        self.lam = _number("lam", lam, 0.0)
        if isinstance(niter, bool) or not isinstance(niter, int) or niter < 1:
            raise ValueError(f"SDMGrad niter must be a positive int, got {niter!r}")
        self.niter = niter
        self.lr = _number("lr", lr, 0.0, strict=True)
        self.momentum = _number("momentum", momentum, 0.0)
        if self.momentum >= 1.0:
            raise ValueError(f"SDMGrad momentum must be in [0, 1), got {momentum!r}")
        self.scale_eps = _number("scale_eps", scale_eps, 0.0)
        #: the inner problem's iterate w (on the simplex), warm-started across calls
        start = torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        self.register_buffer("simplex_weights", start)

    def normalized_gram(self, gram: Tensor) -> Tensor:
        """``M / s^2`` with ``s = mean_i sqrt(M_ii + scale_eps)`` (zeros where ``s = 0``)."""
        m = gram.to(torch.float64)
        s = torch.sqrt(m.diagonal().clamp_min(0.0) + self.scale_eps).mean()
        safe = torch.where(s > 0, s, torch.ones_like(s))
        return torch.where(s > 0, m / (safe * safe), torch.zeros_like(m))

    def inner_solve(self, gram: Tensor, start: Tensor) -> Tensor:
        """``niter`` projected heavy-ball steps on ``1/2 w^T A w + lam w^T A 1/k`` from
        ``start``, ``A`` the normalised Gram matrix."""
        a = self.normalized_gram(gram)
        k = self.num_tasks
        pull = self.lam * (a @ torch.full((k,), 1.0 / k, dtype=a.dtype, device=a.device))
        w = start.to(a)
        buf = torch.zeros_like(w)
        for step in range(self.niter):
            grad = a @ w + pull
            buf = grad if step == 0 else self.momentum * buf + grad
            w = project_to_simplex(w - self.lr * buf)
        return w

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        w = self.inner_solve(gram, self.simplex_weights)
        self.simplex_weights.copy_(w.to(self.simplex_weights))
        return (w + self.lam / self.num_tasks) / (1.0 + self.lam)

    def reset(self) -> None:
        super().reset()
        self.simplex_weights.fill_(1.0 / self.num_tasks)

    def extra_repr(self) -> str:
        return (f"num_tasks={self.num_tasks}, lam={self.lam}, niter={self.niter}, lr={self.lr}, "
                f"momentum={self.momentum}, scale_eps={self.scale_eps}")
