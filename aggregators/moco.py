"""MoCo (Fernando et al. 2023, "Mitigating Gradient Bias in Multi-objective Learning: A
Provably Convergent Approach")."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Aggregator
from .common import safe_divide
from .registry import register

__all__ = ["MoCo", "project_to_simplex"]

_LAMBDA_MAPS = ("projection", "softmax")


def project_to_simplex(z: Tensor) -> Tensor:
    """Euclidean projection of ``z`` (k,) onto the probability simplex (sort-based, no
    host sync)."""
    k = z.shape[0]
    u = torch.sort(z, descending=True).values
    css = torch.cumsum(u, 0) - 1.0
    idx = torch.arange(1, k + 1, dtype=z.dtype, device=z.device)
    count = (u - css / idx > 0).sum()  # >= 1 always (the largest entry qualifies)
    theta = css.gather(0, (count - 1).reshape(1)) / count.to(z.dtype)
    return (z - theta).clamp(min=0)


@register("moco")
class MoCo(Aggregator):
    """MoCo (Fernando et al. 2023, Alg. 1): a tracked gradient per task, then MGDA steps.

    State: the tracking matrix ``Y`` (k x n, buffer ``tracking``, zeros, created at the
    first call with the gradients' n, device and dtype), the task weights ``lambda``
    (buffer ``lambdas``, float64, starts uniform 1/k) and the step counter t (from 1).
    Each call, with ``beta_t = beta / t^beta_sigma`` and ``gamma_t = gamma / t^gamma_sigma``::

        G_hat_i = g_i / ||g_i|| * l_i                     (reference normalisation; 0 if g_i = 0)
        Y      <- Y - beta_t (Y - G_hat)                  (tracking step)
        lambda <- Pi_simplex(lambda - gamma_t (Y Y^T + rho I) lambda)
        d       = Y^T lambda

    The lambda step is the paper's: a projected gradient step on
    ``1/2 lambda^T (Y Y^T + rho I) lambda`` over the probability simplex, with
    ``Pi_simplex`` the Euclidean projection (:func:`project_to_simplex`), so for constant
    gradients lambda converges to the MGDA (min-norm) weights of the tracked gradients.
    This is the default, ``lambda_map="projection"``.

    Where the reference code differs: the public implementation (LibMTL, based on the
    authors' code) replaces the projection by a softmax,
    ``lambda <- softmax(lambda - gamma_t (Y Y^T + rho I) lambda)``; ``lambda_map="softmax"``
    reproduces it.  A softmax keeps every weight positive and, as its input entries
    differ by little (lambda lies in the simplex, the step is small), close to uniform:
    it does not converge to the MGDA weights.  The other
    defaults (beta 0.5, gamma 0.1, decay exponents 0.5, rho 0) are the reference's.  The
    reference adds 1e-6 to ||g_i||; here only a zero gradient is guarded.  ``d`` is not a
    combination of the current gradients: ``weights`` stays None (``lambdas`` holds lambda).
    Y costs k x n memory in the gradients' dtype.
    """

    needs_losses = True
    state_attributes = ("step",)
    lazy_buffers = ("tracking",)
    coordinate_state = True

    def __init__(
        self,
        num_tasks: int,
        beta: float = 0.5,
        beta_sigma: float = 0.5,
        gamma: float = 0.1,
        gamma_sigma: float = 0.5,
        rho: float = 0.0,
        lambda_map: str = "projection",
    ):
        super().__init__(num_tasks)
        if not 0.0 < float(beta) <= 1.0:
            raise ValueError(f"MoCo beta (tracking rate) must be in (0, 1], got {beta}")
        if not float(gamma) > 0.0:
            raise ValueError(f"MoCo gamma (lambda step size) must be > 0, got {gamma}")
        if float(beta_sigma) < 0 or float(gamma_sigma) < 0:
            raise ValueError(f"MoCo decay exponents must be >= 0, got {beta_sigma}, {gamma_sigma}")
        if float(rho) < 0:
            raise ValueError(f"MoCo rho (regularisation) must be >= 0, got {rho}")
        if lambda_map not in _LAMBDA_MAPS:
            raise ValueError(f"MoCo lambda_map must be one of {_LAMBDA_MAPS}, got {lambda_map!r}")
        self.beta, self.beta_sigma = float(beta), float(beta_sigma)
        self.gamma, self.gamma_sigma = float(gamma), float(gamma_sigma)
        self.rho = float(rho)
        self.lambda_map = lambda_map
        self.register_buffer("tracking", torch.zeros(0))
        self.register_buffer("lambdas", torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64))
        self.step = 0  # a Python int (no device sync); saved through the extra state

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        self.step += 1
        t = float(self.step)
        beta_t = self.beta / t**self.beta_sigma
        gamma_t = self.gamma / t**self.gamma_sigma
        y = self.lazy_buffer("tracking", grads)

        norms = grads.norm(dim=1).to(torch.float64)
        scale = safe_divide(losses.to(device=grads.device, dtype=torch.float64), norms)
        # Y <- (1 - beta_t) Y + beta_t G_hat, in place (no k x n temporary)
        y.mul_(1.0 - beta_t).addcmul_(grads, (beta_t * scale).to(grads.dtype)[:, None])

        k = self.num_tasks
        gram = (y @ y.T).to(torch.float64)
        lam = self.lambdas.to(device=grads.device, dtype=torch.float64)
        eye = torch.eye(k, dtype=torch.float64, device=grads.device)
        z = lam - gamma_t * ((gram + self.rho * eye) @ lam)
        lam = torch.softmax(z, 0) if self.lambda_map == "softmax" else project_to_simplex(z)
        self.lambdas = lam
        return lam.to(y.dtype) @ y

    # -- state ----------------------------------------------------------------------------
    def reset(self) -> None:
        super().reset()
        self.tracking = torch.zeros(0, device=self.tracking.device)
        self.lambdas = torch.full(
            (self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64, device=self.lambdas.device
        )
        self.step = 0

    def extra_repr(self) -> str:
        return (
            f"num_tasks={self.num_tasks}, beta={self.beta}, beta_sigma={self.beta_sigma}, "
            f"gamma={self.gamma}, gamma_sigma={self.gamma_sigma}, rho={self.rho}, "
            f"lambda_map={self.lambda_map!r}"
        )
