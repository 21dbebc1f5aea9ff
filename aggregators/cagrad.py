"""CAGrad: conflict-averse gradient descent."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .base import GramWeighting
from .qp import host_gram, linear_plus_norm_weights, to_device
from .registry import register
from .solvers import linear_plus_norm_weights_device, on_device

__all__ = ["CAGrad"]


@register("cagrad")
class CAGrad(GramWeighting):
    """CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021, sec. 3.1 and Alg. 1).

    Primal: ``max_d min_i g_i . d`` subject to ``||d - g0|| <= c ||g0||`` with
    ``g0 = (1/k) sum_i g_i``.  Dual (over the simplex):
    ``w* = argmin_w g_w . g0 + sqrt(phi) ||g_w||``, ``g_w = sum_i w_i g_i``,
    ``phi = c^2 ||g0||^2``; in Gram form ``w^T M 1/k + sqrt(phi) sqrt(w^T M w)``.
    The primal solution is ``d* = g0 + (sqrt(phi) / ||g_w*||) g_w*``, and by strong
    duality ``min_i g_i . d* = g_w* . g0 + sqrt(phi) ||g_w*||``.

    The update is ``d = d* / (1 + c^2)`` (the reference code's default ``rescale=1``),
    i.e. ``weights = (1/k + (sqrt(phi) / ||g_w*||) w*) / (1 + c^2)``.

    The dual is solved exactly (:func:`aggregators.qp.linear_plus_norm_weights`: a
    bracketed search whose steps are exact roots for the current active set, each
    evaluation an exact projection onto the hull); the reference uses SciPy's SLSQP from
    ``w = 1/k`` with ``1e-8`` guards in the square root and the division.

    ``c`` = 0.5 is the paper's default; the references use 0.4 on NYU-v2 / Cityscapes,
    0.9 on MT10 and 0.5 on MT50 (``aggregators.preset("cagrad", benchmark)``).  ``c = 0``
    is linear scalarisation with the mean, ``d = g0``.  When ``c >= 1`` the optimum can
    be ``g_w* = 0`` (0 in the hull and ``c ||g0||`` at least the length of the projection
    of ``-g0`` onto the cone of the gradients): then ``d = g0 / (1 + c^2)``, the limit
    the reference's guards produce.

    Stateless.  On the CPU it runs on the host in float64.  On a GPU it runs in the
    device form (:func:`aggregators.solvers.linear_plus_norm_weights_device`: a barrier
    method with a fixed schedule and no host read, on the Gram matrix's device), composed
    into the weights as above with ``torch.where``: the case ``g_w* = 0`` is the one the
    device solver reports with norm 0, decided by the host's test (0 in the hull to
    ``aggregators.qp.ZERO_HULL``, and ``c ||g0||`` at least the length of the projection
    of ``-g0`` onto the cone of the gradients, to a relative ``1e-9``).
    """

    def __init__(self, num_tasks: int, c: float = 0.5):
        super().__init__(num_tasks)
        try:
            value = float(c)
        except (TypeError, ValueError):
            value = float("nan")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"CAGrad c must be a finite number >= 0, got {c!r}")
        self.c = value

    def _problem(self, gram: Tensor):
        """``(M, a, r)`` of the dual, ``a = 1/k`` and ``r = sqrt(phi) = c ||g0||``: float64
        NumPy on the host, or torch on ``gram``'s device in the device form."""
        k = self.num_tasks
        if on_device(gram):
            m = gram.detach().to(torch.float64)
            a = torch.full((k,), 1.0 / k, dtype=m.dtype, device=m.device)
            return m, a, self.c * (a @ m @ a).clamp_min(0).sqrt()
        m = host_gram(gram)
        a = np.full(k, 1.0 / k)
        return m, a, self.c * math.sqrt(max(float(a @ m @ a), 0.0))

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        m, a, r = self._problem(gram)
        if on_device(gram):
            if self.c == 0:   # a hyper-parameter, not a tensor value: d = g0, no solve
                return a
            w, gw_norm = linear_plus_norm_weights_device(m, a, r)
            scaled = (r > 0) & (gw_norm > 0)
            safe = torch.where(scaled, gw_norm, torch.ones_like(gw_norm))
            coef = torch.where(scaled, r / safe, torch.zeros_like(r))
            return (a + coef * w) / (1.0 + self.c ** 2)
        weights = a.copy()
        if r > 0:
            w, gw_norm = linear_plus_norm_weights(m, a, r)
            if gw_norm > 0:
                weights = weights + (r / gw_norm) * w
        return to_device(weights / (1.0 + self.c ** 2), gram)

    def dual_weights(self, gram: Tensor) -> Tensor:
        """``w*`` of the dual problem (simplex weights of ``g_w*``), for diagnostics."""
        m, a, r = self._problem(gram)
        if on_device(gram):
            return linear_plus_norm_weights_device(m, a, r)[0]
        return to_device(linear_plus_norm_weights(m, a, r)[0], gram)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, c={self.c}"
