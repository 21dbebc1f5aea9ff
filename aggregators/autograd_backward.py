"""``aggregators.backward``: apply any aggregator to the losses of your own model.

A user's training loop (``model.trunk``: the parameters all tasks share)::

    import aggregators

    for x, targets in loader:
        optimizer.zero_grad()
        out = model(x)
        losses = {name: criteria[name](out[name], targets[name]) for name in criteria}
        info = aggregators.backward(losses, model.trunk, "pivrg")
        optimizer.step()
        logger.log(info.log_dict())        # losses, weights, direction norm per task

:func:`backward` replaces ``sum(losses).backward()``.  The shared parameters get the
aggregated direction ``d``; every other leaf a loss reaches (heads, task embeddings) gets
its gradient of ``sum_i w_i l_i`` where the method weights the losses (Gram-matrix and
loss-only methods), else of ``sum_i l_i``, exactly as one ordinary backward of that sum.
Gradients accumulate into ``.grad`` like an ordinary backward.  The cost per family:

* loss-only methods (``requires_grads`` False): one backward of ``aggregator.loss(l)``;
* gradient methods: one batched backward (``is_grads_batched``) for the k x n matrix
  ``G`` of per-task gradients on the shared parameters, then one backward restricted to
  the other leaves.  Gram-matrix methods take their weights from ``M = G G^T``;
* ``low_memory=True`` (Gram-matrix methods): ``M`` is summed over parameter chunks
  (one batched backward per chunk, never the whole ``G``), then one backward of
  ``sum_i w_i l_i`` fills every gradient;
* ``features=z`` (feature-level, "-UB"/rep mode): the method aggregates the per-task
  gradients w.r.t. the shared representation ``z``, and the aggregated ``d_z`` goes
  back through the trunk once.

A registry name builds a fresh aggregator at every call.  That suits methods without
state; methods that carry state between steps (Nash-MTL, FAMO, DWA, GradNorm, UW, MoCo,
the seeded random methods, performance-informed methods fed ``update_performance``)
need an instance the loop keeps (its ``parameters()`` go to the optimiser where it has
any).  This call never runs the per-step hooks ``after_step`` / ``end_epoch``: the
caller's loop does, as with any optimiser.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import diagnostics as diag
from .base import Aggregator, GramWeighting
from .registry import make

__all__ = ["backward", "BackwardResult"]


@dataclass
class BackwardResult:
    """What :func:`backward` applied, as tensors (reading them is the caller's host sync).

    In feature-level mode with a gradient method, the direction, its norm and the
    diagnostics are those of the representation gradients (the space the method
    aggregated in); loss-only methods report them on the shared parameters.
    """

    losses: Tensor                        # (k,) the task losses, detached
    weights: Tensor | None                # (k,) float64 where d = sum_i w_i g_i, else None
    direction_norm: Tensor                # ||d|| (float64 scalar)
    task_names: tuple[str, ...]
    diagnostics: dict[str, Tensor] | None = None  # see :func:`backward`

    def log_dict(self) -> dict[str, float]:
        """Flat ``{"loss/<task>": ..., "weight/<task>": ..., "direction_norm": ...}`` floats
        (plus the diagnostics: per-task entries as ``"<key>/<task>"``; ``gram`` left out)."""
        out = {f"loss/{n}": v for n, v in zip(self.task_names, self.losses.tolist())}
        if self.weights is not None:
            out.update({f"weight/{n}": v for n, v in zip(self.task_names, self.weights.tolist())})
        out["direction_norm"] = float(self.direction_norm)
        for key, value in (self.diagnostics or {}).items():
            if value.dim() == 0:
                out[key] = float(value)
            elif value.dim() == 1:
                out.update({f"{key}/{n}": v for n, v in zip(self.task_names, value.tolist())})
        return out


@dataclass
class _Call:
    """The validated inputs of one call."""

    names: tuple[str, ...]
    losses: Tensor                        # (k,) differentiable
    agg: Aggregator
    params: list[Tensor]                  # shared
    others: list[Tensor]                  # every other leaf a loss reaches
    features: list[Tensor]
    want_diagnostics: bool
    check: bool                           # run the NaN/inf checks (agg.check_inputs)
    retain_graph: bool                    # keep the graph after the last backward
    batched: bool = True                  # per-task gradients from one batched backward

    def result(self, weights, norm, gram=None, cosines=None) -> BackwardResult:
        diagnostics = _diagnostics(gram, cosines) if self.want_diagnostics else None
        return BackwardResult(self.losses.detach(), weights, norm.detach().to(torch.float64),
                              self.names, diagnostics)


def backward(losses: Sequence[Tensor] | Mapping[str, Tensor], shared: nn.Module | Iterable[Tensor],
             aggregator: str | Aggregator, features: Tensor | Sequence[Tensor] | None = None, *,
             low_memory: bool = False, chunk_numel: int = 1 << 22, diagnostics: bool = False,
             task_names: Sequence[str] | None = None, retain_graph: bool = False,
             per_task: str = "batched") -> BackwardResult:
    """Fill ``.grad`` with the aggregated update of k losses (see the module docstring).

    Args:
        losses: k scalar losses, a sequence or a dict (its keys name the tasks).
        shared: the shared parameters, an ``nn.Module`` or an iterable of tensors (those
            that do not require grad are skipped, as an ordinary backward skips them).
        aggregator: a registry name (``aggregators.make(name, k)``, moved to the losses'
            device) or an :class:`Aggregator` built for k tasks.
        features: the shared representation(s) ``z`` the task heads read; given, the
            method aggregates ``dl_i / dz`` (feature-level mode).  Every path from a loss
            to a shared parameter must pass through them.  Loss-only methods, whose
            update does not depend on the level, only validate them.
        low_memory: Gram-matrix methods only: never hold the k x n matrix ``G``; ``M``
            is summed over chunks of at most ``chunk_numel`` parameter entries (one
            batched backward per chunk).  Other gradient methods raise ``ValueError``
            (they need ``G`` itself); loss-only methods ignore it.
        diagnostics: also return, from ``M`` and ``d``, the Gram matrix ``gram``,
            per-task gradient norms ``grad_norm``, ``gds`` / ``gms`` (k > 1), the
            condition number ``kappa`` and ``cosine`` = cos(g_i, d).  Loss-only methods
            then compute the per-task gradients for it (one batched backward more).
        task_names: names for a sequence of losses (default "0", "1", ...).
        retain_graph: keep the autograd graph for a further backward, as in
            ``Tensor.backward(retain_graph=True)``.
        per_task: ``"batched"`` (default): the k per-task gradients from one batched
            backward (``is_grads_batched``, i.e. vmap over the backward); ``"loop"``: one
            backward per task.  Same gradients; the loop is faster where the model's
            backward ops have no batching rules and vmap runs them task by task (measured:
            the QM9 MPNN's GRU and NNConv on CPU, ``scripts/bench_supervised.py``).

    Bad input (non-scalar or non-finite losses, a loss reaching no shared parameter, a
    shared parameter no loss reaches, a task count the aggregator was not built for,
    non-finite per-task gradients where they are computed) raises ``ValueError`` naming the task before any
    ``.grad`` is written.  The NaN/inf checks synchronise with the GPU; they follow
    ``aggregator.check_inputs`` (set it False to skip them).
    """
    if per_task not in ("batched", "loop"):
        raise ValueError(f"per_task must be 'batched' or 'loop', got {per_task!r}")
    names, loss_list, loss_vec = _stack_losses(losses, task_names)
    agg = _resolve(aggregator, names, loss_vec.device)
    params, labels = _shared_parameters(shared)
    feats = _features(features)
    if low_memory and agg.requires_grads:
        _check_low_memory(agg, feats)
    if not isinstance(chunk_numel, int) or chunk_numel < 1:
        raise ValueError(f"chunk_numel must be a positive int, got {chunk_numel!r}")
    others = _check_graph(loss_list, names, params, labels, feats)
    call = _Call(names, loss_vec, agg, params, others, feats, diagnostics, agg.check_inputs, retain_graph,
                 per_task == "batched")
    if not agg.requires_grads:
        return _loss_only(call, chunk_numel if low_memory else None)
    if feats:
        return _feature_level(call)
    if low_memory:
        return _low_memory(call, chunk_numel)
    return _full(call)


# -- the four paths ------------------------------------------------------------------------

def _loss_only(call: _Call, chunk_numel: int | None) -> BackwardResult:
    """One backward of ``agg.loss(l)``: shared, other and method parameters (UW's
    log-variances) get their gradients from it."""
    gram = _chunked_gram(call.losses, call.params, chunk_numel, call.batched) if call.want_diagnostics else None
    _check_finite(call, None if gram is None else gram.diagonal())
    with _unchecked(call.agg):
        total = call.agg.loss(call.losses)
    method_params = [q for q in call.agg.parameters() if q.requires_grad]
    targets = [*call.params, *call.others, *method_params]
    grads = torch.autograd.grad(total, targets, allow_unused=True, retain_graph=call.retain_graph)
    _accumulate(targets, grads)
    norm = _total_norm(grads[:len(call.params)])
    w = call.agg.weights
    cos = None if gram is None else diag.direction_cosines_from_gram(gram, w)
    return call.result(w, norm, gram, cos)


def _full(call: _Call) -> BackwardResult:
    """Batched per-task gradients ``G`` on the shared parameters, ``d = A(G, l)``."""
    agg = call.agg
    G, Gd, gram = _task_matrix(call, call.params)
    w, d = _aggregate(call, Gd, gram)
    d = _add_penalty(call, d, G, call.params)
    _accumulate(call.params, _split(d, call.params))
    _backward_others(call, w)
    cos = None
    if call.want_diagnostics:
        exact_gram = w is not None and not agg.needs_graph  # d = w^T G exactly
        cos = diag.direction_cosines_from_gram(gram, w) if exact_gram else diag.direction_cosines(Gd, d)
    return call.result(w, torch.linalg.vector_norm(d), gram, cos)


def _low_memory(call: _Call, chunk_numel: int) -> BackwardResult:
    """``M`` summed over parameter chunks, weights from it, one backward of sum_i w_i l_i."""
    gram = _chunked_gram(call.losses, call.params, chunk_numel, call.batched)
    _check_finite(call, gram.diagonal())
    with _unchecked(call.agg):
        w = call.agg.gram_weights(gram, call.losses.detach())
    _weighted_backward(call, w, [*call.params, *call.others])
    cos = diag.direction_cosines_from_gram(gram, w) if call.want_diagnostics else None
    return call.result(w, _weighted_norm(gram, w), gram, cos)


def _feature_level(call: _Call) -> BackwardResult:
    """Aggregate ``dl_i / dz``; the trunk receives ``J_z^T d_z`` from one backward.

    Gram-matrix methods (without a second-order term) do that with one backward of
    ``sum_i w_i l_i``: every path to a shared parameter passes through ``z``, so its
    trunk gradient is ``J_z^T sum_i w_i dl_i/dz = J_z^T d_z``."""
    agg = call.agg
    Gz, Gd, gram = _task_matrix(call, call.features)
    if isinstance(agg, GramWeighting) and not agg.needs_graph:
        with _unchecked(agg):
            w = agg.gram_weights(gram, call.losses.detach())
        _weighted_backward(call, w, [*call.params, *call.others])
        cos = diag.direction_cosines_from_gram(gram, w) if call.want_diagnostics else None
        return call.result(w, _weighted_norm(gram, w), gram, cos)
    w, d = _aggregate(call, Gd, gram)
    d = _add_penalty(call, d, Gz, call.features)
    torch.autograd.backward(call.features, grad_tensors=_split(d, call.features), inputs=call.params,
                            retain_graph=bool(call.others) or call.retain_graph)
    _backward_others(call, w)
    cos = diag.direction_cosines(Gd, d) if call.want_diagnostics else None
    return call.result(w, torch.linalg.vector_norm(d), gram, cos)


# -- pieces of the paths -------------------------------------------------------------------

def _task_matrix(call: _Call, inputs: list[Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(G, G detached, M)``: the k per-task gradients w.r.t. ``inputs`` as rows (kept
    differentiable for a second-order term), checked finite; ``M = G G^T`` where a
    Gram-matrix method or the diagnostics need it."""
    agg = call.agg
    is_gram = isinstance(agg, GramWeighting)
    G = _rows(_per_task(call.losses, inputs, create_graph=agg.needs_graph, batched=call.batched))
    Gd = G.detach()
    gram = Gd @ Gd.T if is_gram or call.want_diagnostics else None
    _check_finite(call, gram.diagonal() if is_gram else _row_max(Gd))
    return G, Gd, gram


def _add_penalty(call: _Call, d: Tensor, G: Tensor, inputs: list[Tensor]) -> Tensor:
    """``d`` plus the gradient of the method's second-order penalty (CosReg) w.r.t. ``inputs``."""
    agg = call.agg
    if not agg.needs_graph:
        return d
    penalty = torch.autograd.grad(agg.penalty(G), inputs, retain_graph=True, allow_unused=True,
                                  materialize_grads=True)
    d = d + _flat(penalty).to(d.dtype)
    if call.check:
        _check_finite_tensor(d, f"{agg.name} penalty gradient")
    return d


def _aggregate(call: _Call, G: Tensor, gram: Tensor | None) -> tuple[Tensor | None, Tensor]:
    """``(w, d)``: Gram-matrix methods take w from the given ``M``; others return d only."""
    with _unchecked(call.agg):
        if isinstance(call.agg, GramWeighting):
            w = call.agg.gram_weights(gram, call.losses.detach())
            return w, w.to(G.dtype) @ G
        return None, call.agg(G, call.losses.detach())


def _per_task(losses: Tensor, inputs: list[Tensor], create_graph: bool = False, batched: bool = True) -> list[Tensor]:
    """Row i of each result: ``d l_i / d input``, from one batched backward (``batched``),
    else from one backward per task.

    Where an operation of the model has no batching rule (``vmap`` refuses it), falls
    back to one backward per task, with a warning."""
    k = losses.shape[0]
    if batched:
        eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
        try:
            return list(torch.autograd.grad(losses, inputs, grad_outputs=eye, is_grads_batched=True,
                                            retain_graph=True, create_graph=create_graph))
        except RuntimeError as err:
            warnings.warn(f"batched per-task backward failed ({err}); using one backward per task",
                          RuntimeWarning, stacklevel=3)
    rows = [torch.autograd.grad(losses[i], inputs, retain_graph=True, create_graph=create_graph,
                                allow_unused=True, materialize_grads=True)
            for i in range(k)]
    return [torch.stack(per_input) for per_input in zip(*rows)]


def _chunks(params: list[Tensor], chunk_numel: int | None) -> list[list[Tensor]]:
    """Consecutive groups of parameters of at most ``chunk_numel`` entries (a larger
    parameter is a group of its own); ``None``: one group."""
    if chunk_numel is None:
        return [params]
    groups, size = [[]], 0
    for q in params:
        if groups[-1] and size + q.numel() > chunk_numel:
            groups.append([])
            size = 0
        groups[-1].append(q)
        size += q.numel()
    return groups


def _chunked_gram(losses: Tensor, params: list[Tensor], chunk_numel: int | None, batched: bool = True) -> Tensor:
    """``M = sum_c J_c J_c^T`` over parameter chunks (in the gradients' dtype)."""
    gram = None
    for chunk in _chunks(params, chunk_numel):
        J = _rows(_per_task(losses, chunk, batched=batched))
        part = J @ J.T
        gram = part if gram is None else gram + part.to(gram.dtype)
        del J  # free this chunk before the next one is computed
    return gram


def _rows(parts: list[Tensor]) -> Tensor:
    """(k, n) matrix from per-input batched gradients of shape (k, *input.shape)."""
    return torch.cat([g.reshape(g.shape[0], -1) for g in parts], dim=1)


def _flat(parts) -> Tensor:
    return torch.cat([g.reshape(-1) for g in parts])


def _row_max(G: Tensor) -> Tensor:
    """``max_j |G_ij|`` per row: finite exactly when the row is (NaN propagates)."""
    return torch.linalg.vector_norm(G, ord=float("inf"), dim=1)


def _split(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Views of ``flat`` shaped like each tensor of ``like``, in its dtype."""
    parts = torch.split(flat, [t.numel() for t in like])
    return [p.view(t.shape).to(t.dtype) for p, t in zip(parts, like)]


def _accumulate(tensors: list[Tensor], grads) -> None:
    """``t.grad += g`` (or ``= g``) as an ordinary backward does; ``None`` grads skipped."""
    for t, g in zip(tensors, grads):
        if g is None:
            continue
        g = g.to(t.dtype)
        if t.grad is None:
            t.grad = g
        else:
            t.grad.add_(g)


def _weighted_loss(call: _Call, w: Tensor | None) -> Tensor:
    if w is None:
        return call.losses.sum()
    return (w.detach().to(call.losses.dtype) * call.losses).sum()


def _weighted_backward(call: _Call, w: Tensor, inputs: list[Tensor]) -> None:
    torch.autograd.backward(_weighted_loss(call, w), inputs=inputs, retain_graph=call.retain_graph)


def _backward_others(call: _Call, w: Tensor | None) -> None:
    """The non-shared leaves: one backward of the (weighted) sum restricted to them."""
    if call.others:
        torch.autograd.backward(_weighted_loss(call, w), inputs=call.others, retain_graph=call.retain_graph)


def _total_norm(tensors) -> Tensor:
    """``||concat(tensors)||`` in float64 (one norm per tensor, fused where the device can)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))).to(torch.float64))


def _weighted_norm(gram: Tensor, w: Tensor) -> Tensor:
    """``||sum_i w_i g_i|| = sqrt(w^T M w)``."""
    m = gram.to(torch.float64)
    return (w @ m @ w).clamp_min(0).sqrt()


def _diagnostics(gram: Tensor, cosines: Tensor) -> dict[str, Tensor]:
    m = gram.detach().to(torch.float64)
    out = {
        "gram": m,
        "grad_norm": diag.task_norms(m, is_gram=True),
        "kappa": diag.condition_number(m, is_gram=True),
        "cosine": cosines.detach().to(torch.float64),
    }
    if m.shape[0] > 1:
        out.update(gds=diag.gds(m, is_gram=True), gms=diag.gms(m, is_gram=True))
    return out


@contextlib.contextmanager
def _unchecked(agg: Aggregator):
    """Skip the aggregator's own NaN/inf checks (and their syncs): the inputs were checked."""
    modules = [m for m in agg.modules() if isinstance(m, Aggregator)]
    saved = [m.check_inputs for m in modules]
    for m in modules:
        m.check_inputs = False
    try:
        yield
    finally:
        for m, s in zip(modules, saved):
            m.check_inputs = s


# -- validation ----------------------------------------------------------------------------

def _stack_losses(losses, task_names) -> tuple[tuple[str, ...], list[Tensor], Tensor]:
    if isinstance(losses, Tensor):
        raise ValueError("pass the losses as a list or dict of k scalar tensors, not one tensor")
    if isinstance(losses, Mapping):
        if task_names is not None:
            raise ValueError("task_names is for a sequence of losses; a dict's keys already name the tasks")
        names, values = [str(n) for n in losses], list(losses.values())
    else:
        values = list(losses)
        names = [str(i) for i in range(len(values))] if task_names is None else [str(n) for n in task_names]
    if not values:
        raise ValueError("no losses given: pass at least one scalar loss")
    if len(names) != len(values) or len(set(names)) != len(names):
        raise ValueError(f"task_names must be {len(values)} distinct names, got {names}")
    for name, l in zip(names, values):
        if not isinstance(l, Tensor) or not l.is_floating_point():
            got = f"dtype {l.dtype}" if isinstance(l, Tensor) else type(l).__name__
            raise ValueError(f"task {name!r}: the loss must be a floating-point tensor, got {got}")
        if l.numel() != 1:
            raise ValueError(f"task {name!r}: the loss has shape {tuple(l.shape)}, not a scalar; "
                             "reduce it (e.g. .mean()) first")
    dtype = functools.reduce(torch.promote_types, [l.dtype for l in values])
    return tuple(names), values, torch.stack([l.reshape(()).to(dtype) for l in values])


def _resolve(aggregator, names: tuple[str, ...], device: torch.device) -> Aggregator:
    k = len(names)
    if isinstance(aggregator, str):
        return make(aggregator, k).to(device)
    if not isinstance(aggregator, Aggregator):
        raise ValueError(f"aggregator must be a registry name or an Aggregator, got {type(aggregator).__name__}")
    if aggregator.num_tasks != k:
        raise ValueError(f"{aggregator.name} was built for {aggregator.num_tasks} tasks but {k} losses were "
                         f"given (tasks {', '.join(names)}); build it with num_tasks={k}")
    return aggregator


def _shared_parameters(shared) -> tuple[list[Tensor], list[str]]:
    if isinstance(shared, nn.Module):
        named = list(shared.named_parameters())
    elif isinstance(shared, Tensor):
        named = [("shared", shared)]
    else:
        named = [(f"shared[{i}]", q) for i, q in enumerate(shared)]
    params, labels, seen = [], [], set()
    for label, q in named:
        if not isinstance(q, Tensor):
            raise ValueError(f"shared parameter {label} is a {type(q).__name__}, not a tensor")
        if not q.requires_grad or id(q) in seen:
            continue
        if not q.is_leaf:
            raise ValueError(f"shared parameter {label} is not a leaf tensor; pass the parameters themselves")
        seen.add(id(q))
        params.append(q)
        labels.append(label)
    if not params:
        raise ValueError("no shared parameter requires grad; pass the trunk's (trainable) parameters")
    return params, labels


def _features(features) -> list[Tensor]:
    if features is None:
        return []
    feats = [features] if isinstance(features, Tensor) else list(features)
    if not feats:
        raise ValueError("features is empty; pass the shared representation tensor(s) or None")
    for j, f in enumerate(feats):
        if not isinstance(f, Tensor) or f.grad_fn is None:
            raise ValueError(f"features[{j}] has no autograd history; pass the trunk's output itself, "
                             "not a detached copy or an input")
    return feats


def _check_low_memory(agg: Aggregator, feats: list[Tensor]) -> None:
    if feats:
        raise ValueError("low_memory is for parameter-level aggregation; feature-level mode never forms "
                         "the parameter matrix: drop low_memory=True")
    if not isinstance(agg, GramWeighting):
        raise ValueError(f"{agg.name} needs the per-task gradient matrix itself (it is not a Gram-matrix "
                         "method); use low_memory=False")
    if agg.needs_graph:
        raise ValueError(f"{agg.name}'s penalty needs the per-task gradients with their graph; "
                         "use low_memory=False")


def _reach(roots, shared_ids: set[int], stops: dict) -> tuple[list[int], dict[int, Tensor]]:
    """Walk the autograd graph below ``roots`` once (post-order, memoised).

    Returns, per root, a bit mask (bit 0: a shared parameter is reached without passing a
    stop node; bit 1 + j: stop node of feature j is reached) and every leaf tensor
    reached (the ``variable`` of each ``AccumulateGrad`` node), by ``id``; the walk does
    not descend below stop nodes."""
    memo: dict = {}
    leaves: dict[int, Tensor] = {}
    for root in roots:
        stack = [] if root is None else [(root, None)]
        while stack:
            node, kids = stack.pop()
            if kids is not None:  # second visit: every child is done
                mask = 0
                for child in kids:
                    mask |= memo[child]
                memo[node] = mask
                continue
            if node in memo:
                continue
            if node in stops:
                memo[node] = stops[node]
                continue
            kids = [child for child, _ in node.next_functions if child is not None]
            if not kids:
                var = getattr(node, "variable", None)  # AccumulateGrad: a leaf tensor
                if var is not None:
                    leaves[id(var)] = var
                memo[node] = int(var is not None and id(var) in shared_ids)
                continue
            stack.append((node, kids))
            stack.extend((child, None) for child in kids if child not in memo)
    return [memo.get(root, 0) for root in roots], leaves


def _check_graph(loss_list: list[Tensor], names: tuple[str, ...], params: list[Tensor],
                 labels: list[str], feats: list[Tensor]) -> list[Tensor]:
    """Validate which losses reach what; return the non-shared leaves the losses reach."""
    shared_ids = {id(q) for q in params}
    stops: dict = {}
    for j, f in enumerate(feats):
        stops[f.grad_fn] = stops.get(f.grad_fn, 0) | (2 << j)
    masks, leaves = _reach([l.grad_fn for l in loss_list], shared_ids, stops)
    for name, mask in zip(names, masks):
        if not feats and not mask & 1:
            raise ValueError(f"task {name!r}: its loss reaches none of the shared parameters; "
                             "drop the task or pass the parameters it trains as shared")
        if feats and mask & 1:
            raise ValueError(f"task {name!r}: its loss reaches shared parameters without passing through "
                             "`features`; pass every shared representation the heads read")
        if feats and not mask >> 1:
            raise ValueError(f"task {name!r}: its loss does not depend on `features`")
    if feats:
        used = functools.reduce(int.__or__, masks, 0) >> 1
        for j in range(len(feats)):
            if not used >> j & 1:
                raise ValueError(f"features[{j}] is used by no loss; pass only the representations the heads read")
        for j, f in enumerate(feats):
            others = {fn: bits for fn, bits in stops.items() if fn is not f.grad_fn}
            (mask,), below = _reach([f.grad_fn], shared_ids, others)
            if mask >> 1:
                nested = [i for i in range(len(feats)) if mask >> (i + 1) & 1]
                raise ValueError(f"features[{j}] is computed from features{nested}: a loss would be counted "
                                 "once per path; pass only representations that do not depend on each other")
            leaves.update(below)  # no other feature below f (checked): its whole subtree
    missing = [label for q, label in zip(params, labels) if id(q) not in leaves]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"no loss reaches the shared parameter(s) {shown}; pass only parameters "
                         "the losses use (or freeze the others)")
    return [t for key, t in leaves.items() if key not in shared_ids]


def _check_finite(call: _Call, grad_rows: Tensor | None) -> None:
    """One sync: NaN/inf in a loss or (``grad_rows`` (k,), finite iff task i's gradient is)
    in a per-task gradient raises ``ValueError`` naming the tasks."""
    if not call.check:
        return
    flags = torch.isfinite(call.losses.detach())
    if grad_rows is not None:
        flags = torch.stack([flags, torch.isfinite(grad_rows)])
    if bool(flags.all()):
        return
    flags = flags.reshape(-1, len(call.names)).cpu()
    bad_loss = [n for n, ok in zip(call.names, flags[0].tolist()) if not ok]
    if bad_loss:
        raise ValueError(f"task(s) {', '.join(map(repr, bad_loss))}: non-finite loss; check for divergence "
                         "(lower the learning rate, clip gradients)")
    bad_grad = [n for n, ok in zip(call.names, flags[1].tolist()) if not ok]
    raise ValueError(f"task(s) {', '.join(map(repr, bad_grad))}: non-finite per-task gradient; "
                     "check the loss for operations with infinite slope (sqrt, log at 0)")


def _check_finite_tensor(x: Tensor, what: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} is not finite; check the losses for divergence")
