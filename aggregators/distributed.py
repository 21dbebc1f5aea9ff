"""Aggregation under data parallelism: what :func:`aggregators.backward` all-reduces.

Each of R processes holds a shard of the batch, and its task losses are means over that
shard.  The union's loss is the mean of the shards' (equal shard sizes), so its per-task
gradients are the means of the shards'.  Given a :class:`Reducer`,
``aggregators.backward(..., reducer=...)`` makes every process apply the update of the
union batch:

* the **losses** the method sees are the all-reduced means, with each process's own
  gradient (``l + (mean(l) - l).detach()``): loss-only methods (LS, UW, DWA, FAMO, STCH,
  ...) compute the same weights everywhere, and the chain rule through them is exact;
* **exact mode** (the default): the k per-task gradients on the shared parameters are
  all-reduced (k x n numbers, k times the traffic of a plain data-parallel all-reduce),
  so every process aggregates the union's ``G`` and writes the same direction;
* **Gram-only mode** (``gram_only=True``, Gram-matrix methods only): only the k x k Gram
  matrices are all-reduced, ``M ~ mean_r G_r G_r^T``, and then each process's weighted
  gradient ``sum_i w_i g_i^(r)`` (n numbers), as in ordinary data parallelism.  The
  direction is exact for the weights it uses; the weights are approximate:
  ``mean_r G_r G_r^T = G G^T + C`` where ``G = mean_r G_r`` and ``C`` is the between-shard
  covariance of the per-task gradients, so the method sees task gradients longer (and
  less correlated) than the union's by the shard noise; C vanishes as the shards grow;
* **representation level** (``features=z``, Gram-matrix methods): z's rows are the
  shards' samples, so the union's Gram matrix is ``sum_r M_r / R^2`` exactly, in either
  mode (k x k numbers), and the trunk gets the mean of the shards' ``J_z^T d_z``;
* everything else the call writes (task heads, the method's own parameters, the shared
  parameters of a loss-only method, a Gram-only direction) is a per-shard gradient and
  is averaged, as ``DistributedDataParallel`` averages it;
* ConsMTL's lower level (Qin et al., CVPR 2025, eqs. 7-8) takes the means of the heads'
  task gradients and of their extra-loss gradients divided by R (the extra loss is
  bilinear in the representation gradients, which are 1/R of the shards' on the union),
  and clips after the reduction.

Methods that differentiate through ``G`` (CosReg) and, at the representation level or
with ``gram_only``, methods that need ``G`` itself are refused with a ``ValueError``.
The module knows no model, loop or launcher: it reduces tensors over a process group.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .base import Aggregator, GramWeighting

__all__ = ["Reducer", "check_method"]


def check_method(agg: Aggregator, gram_only: bool = False, representation: bool = False) -> None:
    """``ValueError`` for what data parallelism cannot reproduce: a second-order term
    through ``G`` (the all-reduce carries no graph), and a method that needs ``G`` itself
    where only Gram matrices cross (``gram_only``) or where no process holds its rows whole
    (the representation level)."""
    if not agg.requires_grads:
        return
    if agg.needs_graph:
        raise ValueError(f"{agg.name} differentiates through the per-task gradients, which an all-reduce "
                         "does not carry: it has no data-parallel form; use one process")
    if not isinstance(agg, GramWeighting) and (representation or gram_only):
        where = "at the representation level (mode=rep)" if representation else "with gram_only"
        raise ValueError(f"{agg.name} needs the per-task gradients themselves, which {where} no process holds "
                         "whole: use the exact parameter-level mode, or a Gram-matrix method")


class Reducer:
    """All-reduces (means) over a ``torch.distributed`` process group, one collective per
    dtype and call; counts the bytes it sends (``bytes``, the payload of each all-reduce).

    ``world`` is the group's size; a group of one reduces nothing (the tensors come back
    as they are)."""

    def __init__(self, group: dist.ProcessGroup | None = None, gram_only: bool = False):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("aggregators.distributed.Reducer needs an initialised torch.distributed process group "
                               "(torch.distributed.init_process_group, or a launch by torchrun)")
        self.group = group
        self.gram_only = bool(gram_only)
        self.world = dist.get_world_size(group)
        self.bytes = 0

    def mean(self, tensors: Sequence[Tensor | None]) -> list[Tensor | None]:
        """The means over the group of each tensor (``None`` stays ``None``), detached."""
        return self._reduce(tensors, 1.0 / self.world)

    def sum(self, tensors: Sequence[Tensor | None], scale: float = 1.0) -> list[Tensor | None]:
        """``scale`` times the sums over the group of each tensor, detached."""
        return self._reduce(tensors, scale)

    def _reduce(self, tensors: Sequence[Tensor | None], scale: float) -> list[Tensor | None]:
        out: list[Tensor | None] = [None if t is None else t.detach() for t in tensors]
        if self.world == 1:
            return [None if t is None else t * scale if scale != 1.0 else t for t in out]
        groups: dict[tuple, list[int]] = {}
        for i, t in enumerate(out):
            if t is not None:
                groups.setdefault((t.dtype, t.device), []).append(i)
        for idx in groups.values():
            flat = torch.cat([out[i].reshape(-1) for i in idx])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
            self.bytes += flat.numel() * flat.element_size()
            if scale != 1.0:
                flat.mul_(scale)
            for i, part in zip(idx, torch.split(flat, [out[i].numel() for i in idx])):
                out[i] = part.view(out[i].shape)
        return out
