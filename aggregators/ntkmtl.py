"""NTKMTL: task weights that balance the tasks' NTK eigenvalues."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import GramWeighting
from .registry import register
from .solvers import ZERO_REL

__all__ = ["NTKMTL"]


@register("ntkmtl")
class NTKMTL(GramWeighting):
    """NTKMTL (Qin, Wang, Liao & Yan, "NTKMTL: Mitigating Task Imbalance in Multi-Task
    Learning from Neural Tangent Kernel Perspective", NeurIPS 2025, arXiv 2510.18258; the
    weight rule of the authors' released code, github.com/jianke0604/NTKMTL,
    ``methods/weight_methods.py``, ``NTKMTL.ntkgrad``; the paper's equation numbers could
    not be checked here, only its abstract and the code were available).

    Under gradient flow a task's loss decreases at a rate set by the spectrum of its
    neural tangent kernel ``K_i = J_i J_i^T`` (``J_i``: the Jacobian of task i's n sample
    losses with respect to the shared parameters); NTKMTL equalises the tasks' largest
    eigenvalues ``lambda_i = lambda_max(K_i)`` by the weights

        ``w_i = (sum_j lambda_j / lambda_i) ** ntk_exp``,   ``d = sum_i w_i g_i``,

    with ``ntk_exp`` = 0.5, the square root of the NTK ratio of the paper's main text (the
    authors' README).  With one sample per task (``n = 1``, the setting of the paper's
    NTKMTL experiments, chosen for one gradient per task like the other gradient
    methods) ``K_i`` is the scalar ``||g_i||^2``, so ``lambda_i = M_ii`` and the weights
    are ``(tr M / M_ii) ** ntk_exp``: a function of the Gram matrix's diagonal.  At
    ``ntk_exp = 0.5`` every task contributes ``||w_i g_i|| = sqrt(tr M)``, i.e.
    ``d = sqrt(tr M) sum_i g_i / ||g_i||``, so two tasks never conflict with ``d``.  The
    weights are invariant to a global scale of ``G`` (``d`` is linear in ``G``).

    NTKMTL-SR (shared representation, the paper's cheaper variant) applies the same rule
    to the gradients of the losses with respect to the shared representation ``z`` and
    back-propagates ``sum_i w_i l_i`` once.  With ``n = 1`` (the released NYU-v2 /
    Cityscapes setting: the per-task losses averaged over the batch) that is this class
    in the engine's feature-level mode (``mode=rep``, ``aggregators.backward(...,
    features=z)``), whose Gram matrix is that of ``dl_i / dz``; the reference takes each
    task's gradient with respect to its own head's input, which for MTAN's per-task
    features is the block of ``z`` task i reads.  With ``n > 1`` (the released CelebA
    setting: the batch split into 4 chunks) ``lambda_i`` is the top eigenvalue of the
    n x n kernel of task i's chunk-loss gradients with respect to ``z``, not a function
    of the k x k Gram matrix: :meth:`weights_from_kernels` computes those weights from the
    k kernels, which the engine does not form.

    Not reproduced (trainer concerns): the reference multiplies ``d`` by k "to match the
    sum loss" and clips it to norm 1 (its SR form does neither).  A task with a zero
    gradient (``lambda_i <= 1e-30 max_j lambda_j``) gets weight 0 (its direction is
    undefined); if every task is zero, every weight is ``k ** ntk_exp`` (the equal-kernel
    value) and ``d = 0``.

    ``ntk_exp`` = 0.5 is the paper's value and the released CelebA / QM9 scripts'; the
    released NYU-v2 script uses 0.75 (``aggregators.preset("ntkmtl", "nyuv2")``; the
    README recommends exploring slightly larger exponents).  Stateless.  Runs in torch on
    the Gram matrix's device, with no host read.
    """

    def __init__(self, num_tasks: int, ntk_exp: float = 0.5):
        super().__init__(num_tasks)
        try:
            value = float(ntk_exp)
        except (TypeError, ValueError):
            value = float("nan")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"NTKMTL ntk_exp must be a finite number >= 0, got {ntk_exp!r}")
        self.ntk_exp = value

    def weights_from_eigenvalues(self, eigenvalues: Tensor) -> Tensor:
        """``w_i = (sum_j lambda_j / lambda_i) ** ntk_exp`` from the k largest kernel
        eigenvalues (float64; zero tasks get 0, all zero gives ``k ** ntk_exp``)."""
        lam = eigenvalues.to(torch.float64).clamp_min(0.0)
        k = lam.shape[0]
        live = lam > ZERO_REL * lam.max()
        total = lam.sum()
        ratio = total / torch.where(live, lam, torch.ones_like(lam))
        w = torch.where(live, ratio.pow(self.ntk_exp), torch.zeros_like(lam))
        return torch.where(live.any(), w, torch.full_like(lam, float(k) ** self.ntk_exp))

    def weights_from_kernels(self, kernels: Tensor) -> Tensor:
        """The general rule (n samples per task): ``kernels`` (k, n, n) holds each task's
        NTK ``J_i J_i^T`` (for NTKMTL-SR, of the gradients with respect to ``z``);
        ``lambda_i`` is its largest eigenvalue.  ``n = 1`` is :meth:`weights_from_gram`.
        Sets ``weights``; back-propagate ``sum_i w_i l_i`` with them."""
        if kernels.dim() != 3 or kernels.shape[0] != self.num_tasks or kernels.shape[1] != kernels.shape[2]:
            raise ValueError(f"{self.name}: kernels must have shape ({self.num_tasks}, n, n), "
                             f"got {tuple(kernels.shape)}")
        k64 = kernels.to(torch.float64)
        top = torch.linalg.eigvalsh(0.5 * (k64 + k64.transpose(1, 2)))[:, -1]
        self.weights = self.weights_from_eigenvalues(top)
        return self.weights

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        return self.weights_from_eigenvalues(gram.diagonal())

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, ntk_exp={self.ntk_exp}"
