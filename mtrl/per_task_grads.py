"""Per-task gradients in one vectorised pass, and the aggregated backward built on them.

The one place where per-task gradients are computed (architecture sketch): a model
states its loss for ONE task as a pure function

    loss_fn(shared: dict[str, Tensor], task: dict[str, Tensor], *batch_i) -> scalar

of the shared parameters, that task's own parameters (one row of each stacked per-task
tensor: heads, task embeddings, per-task temperatures) and that task's slice of the
batch.  ``torch.func.vmap`` maps it over the task axis, so the k per-task gradients of
all parameters come from one batched backward instead of k separate ones.

:func:`aggregated_backward` then fills ``.grad`` of every parameter:

* gradient aggregators: the shared parameters get the aggregated direction
  ``d = A(G, l)`` from the (k, n) matrix of per-task shared gradients; each task's own
  parameters get that task's own gradient;
* loss-only aggregators (``requires_grads`` False): one ordinary backward of
  ``agg.loss(l)``, no per-task gradients at all (task parameters then receive their
  weighted gradient, as the references' single backward gives them);
* methods with a second-order term (CosReg, ``needs_graph``): the gradient of
  ``agg.penalty(G(theta))`` w.r.t. the shared parameters is added, by differentiating
  through the vectorised gradient computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor
from torch.func import grad, grad_and_value, vmap

from aggregators import Aggregator, GramWeighting
from aggregators.base import check_finite

__all__ = ["per_task_grads", "per_task_losses", "aggregated_backward", "UpdateInfo", "flatten_rows"]

LossFn = Callable[..., Tensor]


def _detached(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in params.items()}


def _in_dims(batch: tuple) -> tuple:
    return (None, 0, *([0] * len(batch)))


def per_task_losses(loss_fn: LossFn, shared: Mapping[str, Tensor], task: Mapping[str, Tensor], *batch) -> Tensor:
    """The k task losses (k,), differentiable w.r.t. the given parameter tensors.

    ``task`` tensors and every ``batch`` tensor have the task axis first (size k)."""
    return vmap(loss_fn, in_dims=_in_dims(batch))(dict(shared), dict(task), *batch)


def per_task_grads(loss_fn: LossFn, shared: Mapping[str, Tensor], task: Mapping[str, Tensor], *batch
                   ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """``(losses (k,), shared_grads, task_grads)`` in one vectorised pass.

    ``shared_grads[name]`` has shape ``(k, *param.shape)`` (row i: gradient of task i's loss);
    ``task_grads[name]`` has the stacked parameter's shape (row i: task i's own gradient).
    """
    fn = vmap(grad_and_value(loss_fn, argnums=(0, 1)), in_dims=_in_dims(batch))
    (g_shared, g_task), losses = fn(_detached(shared), _detached(task), *batch)
    return losses, g_shared, g_task


def _all_finite(tensors) -> bool:
    """One reduction per tensor: NaN and inf propagate through a sum (a finite sum that
    overflows float32 also counts as non-finite, which only gradients near 1e31 reach)."""
    return bool(torch.isfinite(torch.stack([t.sum() for t in tensors])).all())


def flatten_rows(grads: Mapping[str, Tensor], names: list[str]) -> Tensor:
    """(k, n) matrix from per-parameter per-task gradients, in the order of ``names``."""
    return torch.cat([grads[n].flatten(1) for n in names], dim=1)


def _write_flat(direction: Tensor, params: Mapping[str, Tensor]) -> None:
    offset = 0
    for p in params.values():
        n = p.numel()
        g = direction[offset:offset + n].view_as(p).to(p.dtype)  # a view: no copy
        p.grad = g if p.grad is None else p.grad + g
        offset += n


@dataclass
class UpdateInfo:
    """What an aggregated backward used, for logging."""

    losses: Tensor                      # (k,) detached task losses
    weights: Tensor | None              # aggregator weights where the method has them
    gram: Tensor | None = None          # (k, k) Gram matrix of the shared gradients (gradient methods)
    finite: bool = True                 # False: non-finite losses/gradients, nothing was written


def aggregated_backward(loss_fn: LossFn, shared: Mapping[str, Tensor], task: Mapping[str, Tensor],
                        batch: tuple, aggregator: Aggregator, check_finite_inputs: bool = True) -> UpdateInfo:
    """Fill ``.grad`` of ``shared`` and ``task`` parameters for one component's update.

    Returns ``UpdateInfo(finite=False)`` without touching any ``.grad`` when the losses or
    gradients are not finite (the trainer skips such an update and counts it).
    """
    shared = dict(shared)
    task = dict(task)
    if not aggregator.requires_grads:
        losses = per_task_losses(loss_fn, shared, task, *batch)
        if check_finite_inputs and not _all_finite([losses]):
            return UpdateInfo(losses.detach(), None, finite=False)
        aggregator.loss(losses).backward()
        return UpdateInfo(losses.detach(), aggregator.weights)

    losses, g_shared, g_task = per_task_grads(loss_fn, shared, task, *batch)
    G = flatten_rows(g_shared, list(shared))
    if check_finite_inputs and not _all_finite([losses, G, *g_task.values()]):
        return UpdateInfo(losses.detach(), None, finite=False)
    gram = G @ G.T  # in G's dtype: Gram methods size their regularisation by it
    checks, aggregator.check_inputs = aggregator.check_inputs, False  # just checked
    try:
        if isinstance(aggregator, GramWeighting):  # reuse the one Gram matrix for the weights
            d = aggregator.gram_weights(gram, losses.detach()).to(G.dtype) @ G
        else:
            d = aggregator(G, losses.detach())
    finally:
        aggregator.check_inputs = checks
    if aggregator.needs_graph:
        d = d + _penalty_gradient(loss_fn, shared, task, batch, aggregator)
    _write_flat(d, shared)
    for name, p in task.items():
        g = g_task[name].to(p.dtype)
        p.grad = g if p.grad is None else p.grad + g
    return UpdateInfo(losses.detach(), aggregator.weights, gram=gram.to(torch.float64))


def _penalty_gradient(loss_fn: LossFn, shared: dict, task: dict, batch: tuple, aggregator: Aggregator) -> Tensor:
    """Flat gradient w.r.t. the shared parameters of ``aggregator.penalty(G(theta))``,
    differentiating through the vectorised per-task gradients (second order)."""
    names = list(shared)
    task_d = _detached(task)

    def penalty(sh):
        g = vmap(grad(loss_fn, argnums=0), in_dims=_in_dims(batch))(sh, task_d, *batch)
        return aggregator.penalty(flatten_rows(g, names))

    g_pen = grad(penalty)(_detached(shared))
    out = torch.cat([g_pen[n].flatten() for n in names])
    check_finite("CosReg penalty gradient", out)
    return out
