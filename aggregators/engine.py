"""The per-task gradient engine: ``aggregators.backward`` applies any aggregator to k losses.

This is the one place in the project where per-task gradients are computed.  The MT10
agent, the supervised trainer, ConsMTL's lower level and the diagnostics all use it, and
so can a user's own model (``model.trunk`` holds the parameters all tasks share)::

    import aggregators

    for x, targets in loader:
        optimizer.zero_grad()
        out = model(x)
        losses = {name: criteria[name](out[name], targets[name]) for name in criteria}
        info = aggregators.backward(losses, model.trunk, "pivrg")
        optimizer.step()
        logger.log(info.log_dict())        # losses, weights, direction norm per task

:func:`backward` replaces ``sum(losses).backward()``.  The shared parameters get the
aggregated direction ``d``.  Gradients accumulate into ``.grad`` as an ordinary backward
does.

Every other leaf a loss reaches (heads, task embeddings, per-task temperatures: the
*task parameters*) gets what ``task_grads`` names:

* ``"weighted"`` (the default): the gradient of ``sum_i w_i l_i`` where the method weights
  the losses (Gram-matrix and loss-only methods), else of ``sum_i l_i``.  This is one
  ordinary backward of that sum, as in the Nash-MTL and FairGrad reference code.
* ``"own"``: the gradient of ``sum_i l_i``, i.e. its own task's gradient for a parameter
  that only one task uses, as in torchjd and LibMTL.

How the k per-task gradients are computed (``per_task``; the result's ``path`` says
which one ran):

* loss-only methods (``requires_grads`` False) need none: one ordinary backward of
  ``aggregator.loss(l)``.  In ``"own"`` mode with non-unit weights, a second backward of
  ``sum_i l_i`` restricted to the task parameters is added.
* ``"split"``: the batch is split by task, the same number of samples per task in
  consecutive blocks, and loss i depends only on the samples of block i (RL's stratified
  batches).  The model's forward runs each shared linear layer once over the whole batch
  and lists it in ``linear_records``.  One backward of ``sum_i l_i`` then gives every
  layer's output gradient, which in block i is task i's own.  The per-task weight
  gradients ``A_i^T delta_i`` are taken from per-task slices of those output gradients
  and of the inputs: the FLOPs of one ordinary weight gradient, without the sum over
  tasks.  Shared parameters that no record covers get the batched path.
* ``"batched"``: one batched backward (``is_grads_batched``: vmap over the backward) for
  the k x n matrix ``G``.  Where an operation of the model has no batching rule, it falls
  back to ``"loop"`` with a warning.
* ``"loop"``: one backward per task.
* ``"auto"`` (the default): ``"split"`` where ``linear_records`` are given, else
  ``"batched"``; so is ``"split"`` (the shared parameters no record covers go batched).

Other modes:

* ``low_memory=True`` (Gram-matrix methods): ``M = G G^T`` is summed over parameter
  chunks, one per-task pass per chunk, so the whole ``G`` is never held.  Then one
  backward of ``sum_i w_i l_i`` fills every gradient.
* ``features=z`` (feature-level, "-UB" or rep mode): the method aggregates the per-task
  gradients with respect to the shared representation ``z``.  The aggregated ``d_z``
  goes back through the trunk once.
* a lower level (ConsMTL, ``has_lower_level``): given ``heads`` (the parameters of each
  task's head) and the ``representation`` the heads read, head i receives
  ``grad l_i + clip(grad L_i^extra)`` (ConsMTL eqs. 7-8) instead of its upper-level
  gradient.
* ``reducer=Reducer(...)`` (data parallelism, :mod:`aggregators.distributed`): each
  process passes its shard's losses and every process writes the union batch's update.
* ``loss_scale=S`` (mixed precision): every backward differentiates S times its objective
  and writes S times the update, while the method sees the unscaled values.

Non-finite losses or gradients (``nonfinite``):

* ``"raise"`` raises ``ValueError`` naming the tasks, before any ``.grad`` is written;
* ``"skip"`` writes nothing and returns ``finite=False``; RL skips such an update and
  counts it.
* ``"mask"`` decides on the device, never on the host: ``finite`` is a 0-dim bool tensor,
  every gradient written is ``where(finite, g, 0)``, and a non-finite Gram matrix, ``G``
  or loss vector reaches the aggregator replaced by a harmless one (identity, zeros,
  ones) so that no solver fails on it.  The caller makes its step a no-op where
  ``finite`` is false and restores the aggregator's state (``agents.sac`` does: the
  device-side skip of an update with no host synchronisation).

``"raise"`` and ``"skip"`` synchronise with the device once per call.  The aggregator's own input checks
are turned off inside the call, so a ``pi_*`` wrapper does not check a second time.

A registry name builds a fresh aggregator at every call.  That suits methods without
state.  Methods that carry state between steps (Nash-MTL, FAMO, DWA, GradNorm, UW, MoCo,
the seeded random methods, performance-informed methods fed ``update_performance``) need
an instance that the loop keeps; where it has ``parameters()``, they go to the optimiser.
This call never runs the per-step hooks ``after_step`` / ``end_epoch``: the caller's loop
does, as with any optimiser.
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from . import diagnostics as diag
from .base import Aggregator, GramWeighting
from .distributed import Reducer, check_method
from .registry import make

__all__ = ["backward", "BackwardResult", "task_gradients", "PATHS", "TASK_GRADS", "NONFINITE"]

#: ``per_task`` choices
PATHS = ("auto", "split", "batched", "loop")
#: what task parameters receive
TASK_GRADS = ("weighted", "own")
#: what a non-finite loss or gradient does
NONFINITE = ("raise", "skip", "mask")


@dataclass
class BackwardResult:
    """What :func:`backward` applied.  The values are tensors; reading them is the
    caller's host sync.

    In feature-level mode with a gradient method, the direction, its norm and the
    diagnostics are those of the representation gradients, the space the method
    aggregated in.  Loss-only methods report them on the shared parameters.
    """

    losses: Tensor                        # (k,) the task losses, detached
    weights: Tensor | None                # (k,) float64 where d = sum_i w_i g_i, else None
    direction_norm: Tensor                # ||d|| (float64 scalar; NaN when skipped)
    task_names: tuple[str, ...]
    diagnostics: dict[str, Tensor] | None = None  # see :func:`backward`
    gram: Tensor | None = None            # (k, k) float64 M = G G^T where it was computed
    finite: bool | Tensor = True          # False: nonfinite="skip" found NaN/inf, nothing written;
                                          # "mask": a 0-dim bool tensor (False: zeros written)
    path: str = ""                        # "loss-only", "split", "batched", "loop", "no-shared"

    def log_dict(self) -> dict[str, float]:
        """Flat ``{"loss/<task>": ..., "weight/<task>": ..., "direction_norm": ...}`` floats,
        plus the diagnostics: per-task entries as ``"<key>/<task>"`` (``gram`` left out)."""
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


class _Skip(Exception):
    """Raised inside a path when nonfinite="skip" found NaN/inf (nothing written yet)."""


@dataclass
class _Call:
    """The validated inputs of one call."""

    names: tuple[str, ...]
    losses: Tensor                        # (k,) differentiable
    agg: Aggregator
    params: list[Tensor]                  # shared
    others: list[Tensor]                  # the task parameters: every other leaf a loss reaches
    features: list[Tensor]
    want_diagnostics: bool
    retain_graph: bool                    # keep the graph after the last backward
    path: str                             # "split", "batched" or "loop"
    own: bool                             # task parameters get the gradient of sum_i l_i
    nonfinite: str                        # "raise", "skip" or "mask"
    records: list[tuple] = field(default_factory=list)
    heads: list[list[Tensor]] | None = None
    representation: list[Tensor] = field(default_factory=list)
    ok: Tensor | None = None              # "mask": the device flag, all checks so far
    rows: Tensor | None = None            # the tasks drawn this step (tasks_per_step); None: all
    reducer: Reducer | None = None        # data parallelism: what is all-reduced (aggregators.distributed)
    scale: float = 1.0                    # loss_scale: every backward differentiates scale * objective

    def unscaled(self, x: Tensor, power: int = 1) -> Tensor:
        """What the method sees of a gradient quantity of the scaled losses (degree
        ``power`` in them: 1 for gradients, 2 for Gram matrices), in float32 at least."""
        x = _high(x)
        return x if self.scale == 1.0 else x / self.scale ** power

    def rescaled(self, d: Tensor) -> Tensor:
        """A direction the method returned, as a gradient of the scaled losses."""
        return d if self.scale == 1.0 else d * self.scale

    @property
    def exact_rows(self) -> bool:
        """Under a reducer, the per-task gradients themselves are all-reduced (not Gram-only)."""
        return self.reducer is not None and not self.reducer.gram_only

    def averaged(self, grads) -> list:
        """Per-shard gradients as the union batch's: their means over the processes (as
        they are without a reducer)."""
        return list(grads) if self.reducer is None else self.reducer.mean(list(grads))

    @property
    def heads_own(self) -> bool:
        """The task parameters get the gradient of ``sum_i l_i``: in ``"own"`` mode, and on
        a step with a draw (the weights are 0 for the tasks not drawn, whose own
        parameters would otherwise get nothing)."""
        return self.own or self.rows is not None

    def drawn(self, x: Tensor) -> Tensor:
        """The drawn tasks' rows of ``x`` (all of them without a draw)."""
        return x if self.rows is None else x.index_select(0, self.rows.to(x.device))

    def padded(self, gram: Tensor) -> Tensor:
        """The k x k Gram matrix from the drawn tasks' one: zero rows and columns for the
        tasks not drawn (the ``tasks_per_step`` estimator, ``aggregators.cost``)."""
        if self.rows is None:
            return gram
        k = self.losses.shape[0]
        full = torch.zeros((k, k), dtype=gram.dtype, device=gram.device)
        r = self.rows.to(gram.device)
        return full.index_put((r[:, None], r[None, :]), gram)

    @property
    def masked(self) -> bool:
        return self.nonfinite == "mask"

    def agg_losses(self) -> Tensor:
        """The detached losses the aggregator sees ("mask": ones where not finite)."""
        losses = self.unscaled(self.losses.detach())
        return torch.where(torch.isfinite(losses), losses, torch.ones_like(losses)) if self.masked else losses

    def safe(self, x: Tensor | None, fill: str = "zeros") -> Tensor | None:
        """``x`` for the aggregator: under "mask", the identity (``fill="eye"``, a Gram
        matrix) or zeros where the checks so far failed, so no solver sees NaN/inf."""
        if x is None or not self.masked:
            return x
        other = torch.eye(x.shape[0], dtype=x.dtype, device=x.device) if fill == "eye" else torch.zeros_like(x)
        return torch.where(self.ok, x, other)

    def result(self, weights, norm, gram=None, cosines=None, path=None) -> BackwardResult:
        diagnostics = _diagnostics(gram, cosines) if self.want_diagnostics else None
        return BackwardResult(self.unscaled(self.losses.detach()), weights, norm.detach().to(torch.float64), self.names,
                              diagnostics, None if gram is None else gram.detach().to(torch.float64),
                              finite=self.ok if self.masked else True, path=path or self.path)


def backward(losses: Sequence[Tensor] | Mapping[str, Tensor] | Tensor, shared: nn.Module | Iterable[Tensor],
             aggregator: str | Aggregator, features: Tensor | Sequence[Tensor] | None = None, *,
             task_params: Iterable[Tensor] | None = None, task_grads: str = "weighted",
             nonfinite: str = "raise", per_task: str = "auto", linear_records: Sequence[tuple] | None = None,
             heads: Sequence[Iterable[Tensor]] | None = None,
             representation: Tensor | Sequence[Tensor] | None = None,
             low_memory: bool = False, chunk_numel: int = 1 << 22, diagnostics: bool = False,
             task_names: Sequence[str] | None = None, retain_graph: bool = False,
             reducer: Reducer | None = None, loss_scale: float = 1.0) -> BackwardResult:
    """Fill ``.grad`` with the aggregated update of k losses (see the module docstring).

    Args:
        losses: k scalar losses as a sequence or a dict (its keys name the tasks), or one
            1-D tensor of the k losses.
        shared: the shared parameters, an ``nn.Module`` or an iterable of tensors.  Those
            that do not require grad are skipped, as an ordinary backward skips them.  It may
            be empty only when ``task_params`` is given; then nothing is aggregated and every
            task parameter gets the gradient of ``sum_i l_i``, or, for a loss-only method in
            ``"weighted"`` mode, of the method's combined loss.
        aggregator: a registry name (``aggregators.make(name, k)``, moved to the losses'
            device) or an :class:`Aggregator` built for k tasks.
        features: the shared representation(s) ``z`` that the task heads read.  Given, the
            method aggregates ``dl_i / dz`` (feature-level mode), and every path from a loss
            to a shared parameter must pass through them.  Loss-only methods, whose update
            does not depend on the level, only check them.
        task_params: the task parameters, given explicitly.  This skips the walk of the
            autograd graph that finds them and checks which losses reach what (the trainers'
            hot path).  Default: every leaf the losses reach that is not shared.
        task_grads: ``"weighted"`` or ``"own"``: what the task parameters receive.
        nonfinite: ``"raise"``, ``"skip"`` or ``"mask"`` (see the module docstring).
        per_task: ``"auto"``, ``"split"``, ``"batched"`` or ``"loop"`` (see the module
            docstring).  The loop is faster where the model's backward ops have no batching
            rules and vmap runs them task by task; this was measured on the QM9 MPNN's GRU
            and NNConv on CPU (``scripts/bench_supervised.py``).
        linear_records: for ``"split"``: one ``(input, output, weight, bias)`` tuple per use
            of a shared linear layer in the forward, ``output = input @ weight^T + bias``.
            ``input`` is ``(..., N, in)``, ``output`` is ``(..., N, out)``, ``weight`` is
            ``(..., out, in)`` (leading ensemble dims allowed) and ``bias`` is
            ``(..., out)`` or None.  The N samples are k consecutive blocks of N / k, block
            i belonging to task i.  Every use of a recorded weight must be recorded.
        heads, representation: the lower level of a method that has one (ConsMTL): the
            parameters of each task's head, in task order, and the representation
            tensor(s) they read (default: ``features``).  Ignored by other methods.
        low_memory: Gram-matrix methods only: never hold the k x n matrix ``G``; ``M``
            is summed over chunks of at most ``chunk_numel`` parameter entries (one
            per-task pass per chunk).  Other gradient methods raise ``ValueError``, since
            they need ``G`` itself; loss-only methods ignore it.
        diagnostics: also return, from ``M`` and ``d``, the Gram matrix ``gram``,
            per-task gradient norms ``grad_norm``, ``gds`` / ``gms`` (k > 1), the
            condition number ``kappa`` and ``cosine`` = cos(g_i, d).  Loss-only methods
            then compute the per-task gradients for it (one per-task pass more).
        task_names: names for a sequence of losses (default "0", "1", ...).
        retain_graph: keep the autograd graph for a further backward, as in
            ``Tensor.backward(retain_graph=True)``.
        reducer: data parallelism (:class:`aggregators.distributed.Reducer`): each
            process passes the losses of its shard of the batch, and every process
            writes the update of the union batch (exactly, or with ``gram_only`` from the
            mean of the shards' Gram matrices; see :mod:`aggregators.distributed`).
        loss_scale: mixed precision's loss scale S (``torch.amp.GradScaler.get_scale()``):
            every backward differentiates S times its objective, so that float16
            activation gradients do not underflow, and every gradient written is S times
            the update (what ``GradScaler.step`` unscales); the method sees the unscaled
            losses, gradients and Gram matrix.  Per-task gradients of a lower precision
            (the representation's under autocast) reach the method in float32.

    Bad input raises ``ValueError`` naming the task before any ``.grad`` is written.  Bad
    input means: non-scalar losses; a loss reaching no shared parameter; a shared parameter
    that no loss reaches; a task count the aggregator was not built for; bad records.
    """
    for value, allowed, what in ((per_task, PATHS, "per_task"), (task_grads, TASK_GRADS, "task_grads"),
                                 (nonfinite, NONFINITE, "nonfinite")):
        if value not in allowed:
            raise ValueError(f"{what} must be one of {', '.join(allowed)}; got {value!r}")
    names, loss_list, loss_vec = _stack_losses(losses, task_names)
    agg = _resolve(aggregator, names, loss_vec.device)
    explicit = task_params is not None
    params, labels = _shared_parameters(shared, allow_empty=explicit)
    feats = _features(features)
    if not (isinstance(loss_scale, (int, float)) and math.isfinite(loss_scale) and loss_scale > 0):
        raise ValueError(f"loss_scale must be a positive finite number, got {loss_scale!r}")
    if loss_scale != 1.0 and agg.requires_grads and agg.needs_graph:
        raise ValueError(f"{agg.name} differentiates through the per-task gradients: use it without loss scaling "
                         "(train.amp=bf16 or off)")
    if reducer is not None:
        if not isinstance(reducer, Reducer):
            raise ValueError(f"reducer must be an aggregators.distributed.Reducer, got {type(reducer).__name__}")
        check_method(agg, reducer.gram_only, representation=bool(feats))
        global_losses = reducer.mean([loss_vec.detach()])[0]
        loss_vec = loss_vec + (global_losses - loss_vec.detach())   # the union's values, this shard's gradients
    loss_scale = float(loss_scale)
    if loss_scale != 1.0:
        loss_vec = loss_vec * loss_scale
    if low_memory and agg.requires_grads:
        _check_low_memory(agg, feats)
    if not isinstance(chunk_numel, int) or chunk_numel < 1:
        raise ValueError(f"chunk_numel must be a positive int, got {chunk_numel!r}")
    if explicit:
        others = _task_parameters(task_params, params)
    else:
        others = _check_graph(loss_list, names, params, labels, feats)
    records = list(linear_records or [])
    path = ("split" if records else "batched") if per_task in ("auto", "split") else per_task
    if path == "split":
        _check_records(records, params, len(names))
    lower = heads is not None and agg.has_lower_level
    call = _Call(names, loss_vec, agg, params, others, feats, diagnostics, retain_graph, path,
                 task_grads == "own", nonfinite, records if path == "split" else [], reducer=reducer,
                 scale=loss_scale)
    if lower:
        call.heads = _heads(heads, len(names))
        call.representation = _features(representation) if representation is not None else feats
        if not call.representation:
            raise ValueError(f"{agg.name}'s lower level needs the representation the heads read: "
                             "pass representation=z (or features=z)")
        head_ids = {id(q) for h in call.heads for q in h}
        call.others = [q for q in others if id(q) not in head_ids]
    try:
        with _unchecked(agg):
            rep_grads = _rows(_per_task(call, call.representation, create_graph=True)) if lower else None
            if not agg.requires_grads:
                out = _loss_only(call, chunk_numel if low_memory and params else None)
            elif not params:
                out = _no_shared(call)
            else:
                call.rows = agg.task_rows()
                if feats:
                    out = _feature_level(call)
                elif low_memory:
                    out = _low_memory(call, chunk_numel)
                else:
                    out = _full(call)
            if lower:
                _lower_level(call, rep_grads)
    except _Skip:
        nan = torch.full((), float("nan"), dtype=torch.float64, device=loss_vec.device)
        return BackwardResult(call.unscaled(loss_vec.detach()), None, nan, names, finite=False, path=path)
    return out


def task_gradients(losses: Tensor, inputs: Tensor | Sequence[Tensor], *, per_task: str = "batched",
                   create_graph: bool = False) -> Tensor:
    """``(k, n)``: row i is ``d l_i / d inputs``, flattened and joined over the inputs (an
    input that a loss does not reach contributes zeros).  ``per_task`` is ``"batched"`` or
    ``"loop"``.  The diagnostics and ConsMTL's lower level use it."""
    if per_task not in ("batched", "loop"):
        raise ValueError(f"per_task must be 'batched' or 'loop' here, got {per_task!r}")
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    return _rows(_vjp_rows(losses, inputs, create_graph, per_task == "batched"))


# -- the paths ---------------------------------------------------------------------------------

def _no_shared(call: _Call) -> BackwardResult:
    """A gradient method without shared parameters (per-task temperatures; a network
    without trunk): nothing to aggregate, one backward of ``sum_i l_i``."""
    grads = call.averaged(_grad(call.losses.sum(), call.others, call.retain_graph))
    _check_finite(call, None, grads)
    _accumulate(call, call.others, grads)
    zero = torch.zeros((), dtype=torch.float64, device=call.losses.device)
    return call.result(None, zero, path="no-shared")


def _loss_only(call: _Call, chunk_numel: int | None) -> BackwardResult:
    """One backward of ``agg.loss(l)``: shared, task and method parameters (UW's
    log-variances) get their gradients from it.  In ``"own"`` mode the task parameters
    get the gradient of ``sum_i l_i``, from the same backward when the method's weights
    are ones (LS), else from a second backward restricted to them."""
    agg = call.agg
    gram = _chunked_gram(call, call.params, chunk_numel) if call.want_diagnostics and call.params else None
    total = agg.loss(call.losses) if call.scale == 1.0 else call.scale * agg.loss(call.losses / call.scale)
    method_params = _method_params(agg)
    separate = bool(call.own and call.others and not agg.unit_weights)
    first = [*call.params, *method_params, *([] if separate else call.others)]
    grads = list(_grad(total, first, call.retain_graph or separate))
    if separate:
        grads += _grad(call.losses.sum(), call.others, call.retain_graph)
        first = first + call.others
    grads = call.averaged(grads)
    _check_finite(call, None if gram is None else gram.diagonal(), grads)
    _accumulate(call, first, grads)
    norm = _total_norm(grads[:len(call.params)]) / call.scale
    w = agg.weights
    cos = None if gram is None else diag.direction_cosines_from_gram(gram, w)
    return call.result(w, norm, gram, cos, path="loss-only")


def _full(call: _Call) -> BackwardResult:
    """Per-task gradients on the shared parameters, ``d = A(G, l)``.  Gram-matrix methods
    (without a second-order term) never join the per-parameter blocks into ``G``: ``M`` is
    the sum of the blocks' Gram matrices and ``d`` is ``w^T G`` block by block."""
    agg = call.agg
    by_gram = isinstance(agg, GramWeighting) and not agg.needs_graph
    blocks, own = _task_blocks(call, factored=by_gram and call.reducer is None)
    if call.exact_rows:   # the union's per-task gradients (k x n numbers all-reduced)
        blocks = [_Rows(r) for r in call.reducer.mean([b.rows for b in blocks])]
    gram = None
    if isinstance(agg, GramWeighting) or call.want_diagnostics:
        gram = functools.reduce(torch.add, [b.gram() for b in blocks])
        if call.reducer is not None and call.reducer.gram_only:
            gram = call.reducer.mean([gram])[0]
        gram = call.padded(call.unscaled(gram, 2))
    Gd = None if by_gram else call.unscaled(_join(blocks).detach())
    _check_finite(call, gram.diagonal() if gram is not None else _row_max(Gd))
    gram, Gd = call.safe(gram, "eye"), call.safe(Gd)
    if by_gram:
        w = agg.gram_weights(gram, call.agg_losses())
        parts = [b.direction(call.drawn(w)).view(q.shape) for b, q in zip(blocks, call.params)]
        norm = _weighted_norm(gram, w)
    else:
        w, d = _aggregate(call, Gd, gram)
        d = _add_penalty(call, d, _join(blocks), call.params)
        parts = _split_flat(call.rescaled(d), call.params)
        norm = torch.linalg.vector_norm(d)
    if not call.exact_rows:    # this shard's direction (Gram-only): the mean is the union's
        parts = call.averaged(parts)
    others = call.averaged(own if own is not None else _others_grads(call, w))
    _check_finite(call, None, [*others, *parts])
    _accumulate(call, call.params, parts)
    _accumulate(call, call.others, others)
    cos = None
    if call.want_diagnostics:
        exact_gram = w is not None and not agg.needs_graph  # d = w^T G exactly
        cos = diag.direction_cosines_from_gram(gram, w) if exact_gram else diag.direction_cosines(Gd, d)
    return call.result(w, norm, gram, cos)


def _low_memory(call: _Call, chunk_numel: int) -> BackwardResult:
    """``M`` summed over parameter chunks, weights from it, one backward of sum_i w_i l_i."""
    gram = call.padded(_chunked_gram(call, call.params, chunk_numel))
    _check_finite(call, gram.diagonal())
    return _gram_weighted_backward(call, call.safe(gram, "eye"))


def _gram_weighted_backward(call: _Call, gram: Tensor) -> BackwardResult:
    """Weights from the (checked) Gram matrix ``M``, then one backward of
    ``sum_i w_i l_i`` fills every gradient (``d = w^T G`` without ``G``)."""
    w = call.agg.gram_weights(gram, call.agg_losses())
    grads = call.averaged(_weighted_grads(call, w))
    _check_finite(call, None, grads)
    _accumulate(call, [*call.params, *call.others], grads)
    cos = diag.direction_cosines_from_gram(gram, w) if call.want_diagnostics else None
    return call.result(w, _weighted_norm(gram, w), gram, cos)


def _feature_level(call: _Call) -> BackwardResult:
    """Aggregate ``dl_i / dz``; the trunk receives ``J_z^T d_z`` from one backward.

    Gram-matrix methods without a second-order term do that with one backward of
    ``sum_i w_i l_i``: every path to a shared parameter passes through ``z``, so the
    trunk gradient is ``J_z^T sum_i w_i dl_i/dz = J_z^T d_z``."""
    agg = call.agg
    Gz = _rows(_per_task(call, call.features, agg.needs_graph))
    Gd = call.unscaled(Gz.detach())
    gram = None
    if isinstance(agg, GramWeighting) or call.want_diagnostics:
        gram = Gd @ Gd.T
        if call.reducer is not None:   # z's rows are the shards' samples, each 1/R of the union's gradient
            gram = call.reducer.sum([gram], 1.0 / call.reducer.world ** 2)[0]
        gram = call.padded(gram)
    _check_finite(call, gram.diagonal() if gram is not None else _row_max(Gd))
    gram, Gd = call.safe(gram, "eye"), call.safe(Gd)
    if isinstance(agg, GramWeighting) and not agg.needs_graph:
        return _gram_weighted_backward(call, gram)
    w, d = _aggregate(call, Gd, gram)
    d = _add_penalty(call, d, Gz, call.features)
    trunk = torch.autograd.grad(call.features, call.params, grad_outputs=_split_flat(call.rescaled(d), call.features),
                                retain_graph=True, allow_unused=True)
    trunk, others = call.averaged(trunk), call.averaged(_others_grads(call, w))
    _check_finite(call, None, [*trunk, *others])
    _accumulate(call, call.params, trunk)
    _accumulate(call, call.others, others)
    cos = diag.direction_cosines(Gd, d) if call.want_diagnostics else None
    return call.result(w, torch.linalg.vector_norm(d), gram, cos)


def _lower_level(call: _Call, rep_grads: Tensor) -> None:
    """ConsMTL eqs. 7-8: head i's gradient is ``grad l_i`` plus the clipped gradient of
    ``-lam <delta_i, d_z>``, with ``delta_i = d l_i / d z`` and ``d_z`` from the
    upper-level weights (Prop. 3.1).  It replaces the head's upper-level gradient."""
    agg = call.agg
    flat = [q for h in call.heads for q in h]
    own = torch.autograd.grad(call.losses.sum(), flat, retain_graph=True, allow_unused=True,
                              materialize_grads=True)
    extra_losses = agg.extra_losses(call.unscaled(rep_grads)).sum()   # scaled below, as the task gradients are
    extra = torch.autograd.grad(call.rescaled(extra_losses), flat, allow_unused=True,
                                materialize_grads=True, retain_graph=call.retain_graph)
    if call.reducer is not None:   # the extra loss is bilinear in the representation gradients (1/R each)
        own = call.reducer.mean(own)
        extra = call.reducer.sum(extra, 1.0 / call.reducer.world ** 2)
    offset = 0
    for head in call.heads:
        part = slice(offset, offset + len(head))
        task = torch.cat([g.flatten() for g in own[part]])
        ext = agg.clip_extra_grad(torch.cat([g.flatten() for g in extra[part]]), task)
        _accumulate(call, head, _split_flat(task + ext, head))
        offset += len(head)


# -- pieces of the paths -------------------------------------------------------------------------

class _Rows:
    """Task i's gradient of one parameter as row i of ``rows (k, E, numel / E)``: E is the
    ensemble size of a split-path parameter (1 elsewhere), and ``rows[:, e]`` is
    contiguous, so the Gram matrix and the direction need no copy."""

    def __init__(self, rows: Tensor):
        self.rows = rows

    def gram(self) -> Tensor:
        r = self.rows.detach()
        return functools.reduce(torch.add, [r[:, e] @ r[:, e].T for e in range(r.shape[1])])

    def direction(self, w: Tensor) -> Tensor:
        r = self.rows.detach()
        return torch.stack([w.to(r.dtype) @ r[:, e] for e in range(r.shape[1])])

    def matrix(self) -> Tensor:
        return self.rows.reshape(self.rows.shape[0], -1)


class _Factored:
    """Task i's gradient of a linear layer's weight (or bias) in factored form:
    ``sum_{s in block i} delta_s x_s^T`` (or ``sum delta_s``), never formed.  Its Gram
    matrix comes from the sample Gram matrices, ``M_ij = sum_{s in i, t in j} (delta_s .
    delta_t) (x_s . x_t)``, and the direction from one weighted weight-gradient matmul
    ``(w_rows * delta)^T X``.  This is Goodfellow's (2015) per-example trick taken to task
    blocks; it is cheaper than forming the per-task gradients where the blocks are small."""

    def __init__(self, x: Tensor, gy: Tensor, k: int, bias: bool, delta_gram: Tensor):
        """``x (E or 1, N, in)``, ``gy (E, N, out)``; ``delta_gram = gy gy^T`` (E, N, N),
        computed once per layer for its weight and bias."""
        self.x, self.gy, self.k, self.bias, self.delta_gram = x, gy, k, bias, delta_gram

    def gram(self) -> Tensor:
        p = self.delta_gram
        if not self.bias:
            p = p * torch.bmm(self.x, self.x.transpose(1, 2))
        n = p.shape[-1]
        return p.reshape(-1, self.k, n // self.k, self.k, n // self.k).sum((0, 2, 4))

    def direction(self, w: Tensor) -> Tensor:
        n = self.gy.shape[1]
        weighted = self.gy * w.to(self.gy.dtype).repeat_interleave(n // self.k)[:, None]
        if self.bias:
            return weighted.sum(1)
        return torch.bmm(weighted.transpose(1, 2), self.x.expand(self.gy.shape[0], -1, -1))

    def matrix(self) -> Tensor:
        gw, gb = _linear_task_grads(self.x, self.gy, self.k)
        return (gb if self.bias else gw).reshape(self.k, -1)


def _task_blocks(call: _Call, factored: bool = False) -> tuple[list, list | None]:
    """The k per-task gradients of each shared parameter, one block per parameter in
    their order (differentiable where a second-order term needs them), and on the split
    path the task parameters' own gradients from the same backward.  ``factored``: on the
    split path, layers whose blocks are small keep their gradients factored."""
    create_graph = call.agg.needs_graph
    if call.path != "split":
        return [_Rows(g.reshape(g.shape[0], 1, -1)) for g in _per_task(call, call.params, create_graph)], None
    if call.rows is None:
        return _split_blocks(call, create_graph, factored)
    # one backward gives every task's rows: keep the drawn ones
    blocks, own = _split_blocks(call, create_graph, False)
    return [_Rows(call.drawn(b.rows)) for b in blocks], own


def _join(blocks: list) -> Tensor:
    """The (k, n) matrix ``G`` from per-parameter blocks (a copy)."""
    return torch.cat([b.matrix() for b in blocks], dim=1)


def _split_blocks(call: _Call, create_graph: bool, factored: bool) -> tuple[list, list | None]:
    """One backward of ``sum_i l_i`` to the recorded layer outputs (and, in ``"own"`` mode,
    to the task parameters), then ``A_i^T delta_i`` per task block.  Shared parameters
    that no record covers get their rows from the batched path."""
    k = call.losses.shape[0]
    outputs = [r[1] for r in call.records]
    others = call.others if call.own else []
    grads = torch.autograd.grad(call.losses.sum(), [*outputs, *others], retain_graph=True,
                                create_graph=create_graph, allow_unused=True, materialize_grads=True)
    uses: dict[int, int] = {}
    for _, _, w, b in call.records:
        for q in (w, b):
            if q is not None:
                uses[id(q)] = uses.get(id(q), 0) + 1
    rows: dict[int, Tensor] = {}
    blocks: dict[int, object] = {}
    for (x, _, w, b), gy in zip(call.records, grads[:len(outputs)]):
        n, out, inp = gy.shape[-2], gy.shape[-1], x.shape[-1]
        if factored and n * (out + inp) <= _FACTOR_RATIO * out * inp and uses[id(w)] == 1:
            x3, gy3 = x.reshape(-1, n, inp), gy.reshape(-1, n, out)
            dd = torch.bmm(gy3, gy3.transpose(1, 2))
            blocks[id(w)] = _Factored(x3, gy3, k, False, dd)
            if b is not None:
                blocks[id(b)] = _Factored(x3, gy3, k, True, dd)
            continue
        gw, gb = _linear_task_grads(x, gy, k)
        rows[id(w)] = gw if id(w) not in rows else rows[id(w)] + gw
        if b is not None:
            rows[id(b)] = gb if id(b) not in rows else rows[id(b)] + gb
    blocks.update((key, _Rows(r)) for key, r in rows.items())
    rest = [q for q in call.params if id(q) not in blocks]
    if rest:
        blocks.update((id(q), _Rows(g.reshape(k, 1, -1)))
                      for q, g in zip(rest, _vjp_rows(call.losses, rest, create_graph, True)))
    return [blocks[id(q)] for q in call.params], (list(grads[len(outputs):]) if call.own else None)


#: a layer's per-task gradients stay factored when N (out + in) <= this * out * in (the
#: sample Gram matrices then cost at most this many times the per-task matmuls' FLOPs,
#: and spare forming k x out x in; measured with scripts/bench_update.py)
_FACTOR_RATIO = 2


def _linear_task_grads(x: Tensor, gy: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-task gradients of ``y = x W^T + b`` from the inputs ``x ([E,] N, in)`` and the
    output gradients ``gy ([E,] N, out)``: ``A_i^T delta_i`` on each task block, as
    ``(k, E, out * in)`` and ``(k, E, out)`` views of ensemble-major results (E = 1 for a
    plain layer)."""
    lead, (n, out) = gy.shape[:-2], gy.shape[-2:]
    x = x.expand(*lead, *x.shape[-2:])
    g4 = gy.reshape(-1, k, n // k, out)
    e, inp = g4.shape[0], x.shape[-1]
    # one bmm over the E k task blocks (as fast as the ordinary weight gradient's matmul)
    gw = torch.bmm(g4.reshape(e * k, n // k, out).transpose(1, 2), x.reshape(e * k, n // k, inp))
    return gw.view(e, k, out * inp).transpose(0, 1), g4.sum(2).transpose(0, 1)


def _others_grads(call: _Call, w: Tensor | None) -> list:
    """The task parameters' gradients: of ``sum_i l_i`` (``"own"``, or no weights) or of
    ``sum_i w_i l_i``, from one backward restricted to them."""
    if not call.others:
        return []
    total = _weighted_loss(call, None if call.heads_own else w)
    return list(_grad(total, call.others, call.retain_graph or call.heads is not None))


def _weighted_grads(call: _Call, w: Tensor) -> list:
    """Gradients of ``sum_i w_i l_i`` on the shared parameters and the task parameters
    (those of ``sum_i l_i`` in ``"own"`` mode)."""
    keep = call.retain_graph or call.heads is not None
    if not call.heads_own or not call.others:
        return list(_grad(_weighted_loss(call, w), [*call.params, *call.others], keep))
    return [*_grad(_weighted_loss(call, w), call.params, True), *_grad(call.losses.sum(), call.others, keep)]


def _add_penalty(call: _Call, d: Tensor, G: Tensor, inputs: list[Tensor]) -> Tensor:
    """``d`` plus the gradient of the method's second-order penalty (CosReg) w.r.t. ``inputs``."""
    agg = call.agg
    if not agg.needs_graph:
        return d
    penalty = agg.penalty(G)
    if not penalty.requires_grad:   # the per-task gradients do not depend on the inputs
        return d
    grads = torch.autograd.grad(penalty, inputs, retain_graph=True, allow_unused=True, materialize_grads=True)
    return d + _flat(grads).to(d.dtype)


def _aggregate(call: _Call, G: Tensor, gram: Tensor | None) -> tuple[Tensor | None, Tensor]:
    """``(w, d)``: Gram-matrix methods take w from the given ``M``; others return d only."""
    if isinstance(call.agg, GramWeighting):
        w = call.agg.gram_weights(gram, call.agg_losses())
        return w, w.to(G.dtype) @ G
    return None, call.agg(G, call.agg_losses())


def _per_task(call: _Call, inputs: list[Tensor], create_graph: bool = False) -> list[Tensor]:
    """Row i of each result: ``d l_i / d input``, by the call's path, for the drawn tasks
    only where the call has a draw; for inputs that are not shared parameters, the split
    path counts as batched."""
    return _vjp_rows(call.losses, inputs, create_graph, call.path != "loop", call.rows)


def _vjp_rows(losses: Tensor, inputs: list[Tensor], create_graph: bool, batched: bool,
              rows: Tensor | None = None) -> list[Tensor]:
    """Row i of each result: ``d l_i / d input``, from one batched backward (``batched``),
    else from one backward per task; only the tasks ``rows`` (sorted indices) where given.

    Where an operation of the model has no batching rule (``vmap`` refuses it), falls
    back to one backward per task, with a warning."""
    k = losses.shape[0]
    if batched:
        eye = torch.eye(k, dtype=losses.dtype, device=losses.device)
        if rows is not None:
            eye = eye.index_select(0, rows.to(losses.device))
        try:
            return list(torch.autograd.grad(losses, inputs, grad_outputs=eye, is_grads_batched=True,
                                            retain_graph=True, create_graph=create_graph, allow_unused=True,
                                            materialize_grads=True))
        except RuntimeError as err:
            warnings.warn(f"batched per-task backward failed ({err}); using one backward per task",
                          RuntimeWarning, stacklevel=4)
    tasks = range(k) if rows is None else rows.tolist()   # rows live on the CPU: no device sync
    per_task = [torch.autograd.grad(losses[i], inputs, retain_graph=True, create_graph=create_graph,
                                    allow_unused=True, materialize_grads=True)
                for i in tasks]
    return [torch.stack(per_input) for per_input in zip(*per_task)]


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


def _chunked_gram(call: _Call, params: list[Tensor], chunk_numel: int | None) -> Tensor:
    """``M = sum_c J_c J_c^T`` over parameter chunks (in the gradients' dtype)."""
    gram = None
    for chunk in _chunks(params, chunk_numel):
        J = _rows(_per_task(call, chunk))
        if call.exact_rows:
            J = call.reducer.mean([J])[0]
        part = J @ J.T
        gram = part if gram is None else gram + part.to(gram.dtype)
        del J  # free this chunk before the next one is computed
    if call.reducer is not None and call.reducer.gram_only:
        gram = call.reducer.mean([gram])[0]
    return call.unscaled(gram, 2)


def _rows(parts: list[Tensor]) -> Tensor:
    """(k, n) matrix from per-input batched gradients of shape (k, *input.shape)."""
    return torch.cat([g.reshape(g.shape[0], -1) for g in parts], dim=1)


def _high(x: Tensor) -> Tensor:
    """``x`` in float32 where it is in a lower precision (autocast's float16 / bfloat16)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _flat(parts) -> Tensor:
    return torch.cat([g.reshape(-1) for g in parts])


def _row_max(G: Tensor) -> Tensor:
    """``max_j |G_ij|`` per row: finite exactly when the row is (NaN propagates)."""
    return torch.linalg.vector_norm(G, ord=float("inf"), dim=1)


def _split_flat(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    """Views of ``flat`` shaped like each tensor of ``like``, in its dtype."""
    parts = torch.split(flat, [t.numel() for t in like])
    return [p.view(t.shape).to(t.dtype) for p, t in zip(parts, like)]


def _grad(total: Tensor, inputs: list[Tensor], retain_graph: bool) -> tuple:
    if not inputs:
        return ()
    return torch.autograd.grad(total, inputs, allow_unused=True, retain_graph=retain_graph)


def _method_params(agg: Aggregator) -> list[Tensor]:
    return [q for q in agg.parameters() if q.requires_grad]


def _accumulate(call: _Call, tensors: list[Tensor], grads) -> None:
    """``t.grad += g`` (or ``= g``) as an ordinary backward does; ``None`` grads skipped;
    under "mask", ``where(ok, g, 0)``."""
    for t, g in zip(tensors, grads):
        if g is None:
            continue
        g = g.to(t.dtype)
        if call.masked:
            g = torch.where(call.ok, g, torch.zeros_like(g))
        if t.grad is None:
            t.grad = g
        else:
            t.grad.add_(g)


def _weighted_loss(call: _Call, w: Tensor | None) -> Tensor:
    if w is None:
        return call.losses.sum()
    return (w.detach().to(call.losses.dtype) * call.losses).sum()


def _total_norm(tensors) -> Tensor:
    """``||concat(tensors)||`` in float64 (one norm per tensor, fused where the device can)."""
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors)).to(torch.float64))


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
    """Skip the aggregator's own NaN/inf checks (and their syncs): the engine checks once."""
    modules = [m for m in agg.modules() if isinstance(m, Aggregator)]
    saved = [m.check_inputs for m in modules]
    for m in modules:
        m.check_inputs = False
    try:
        yield
    finally:
        for m, s in zip(modules, saved):
            m.check_inputs = s


def _check_finite(call: _Call, grad_rows: Tensor | None, grads=(), direction: Tensor | None = None) -> None:
    """One sync: NaN/inf in a loss, in a per-task gradient (``grad_rows`` (k,): finite iff
    task i's gradient is), in the gradients about to be written or in the direction.
    ``"raise"`` names the tasks; ``"skip"`` aborts the call before anything is written;
    ``"mask"`` folds the flag into ``call.ok`` on the device (no sync)."""
    flags = [torch.isfinite(call.losses.detach())]
    if grad_rows is not None:
        flags.append(torch.isfinite(grad_rows))
    extra = [g for g in grads if g is not None]
    if direction is not None:
        extra.append(direction)
    if extra:
        flags.append(torch.isfinite(torch.stack(torch._foreach_norm(extra)).sum()).reshape(1))
    ok = torch.cat([f.reshape(-1) for f in flags])
    if call.masked:
        call.ok = ok.all() if call.ok is None else call.ok & ok.all()
        return
    if bool(ok.all()):
        return
    if call.nonfinite == "skip":
        raise _Skip
    bad_loss = [n for n, good in zip(call.names, flags[0].tolist()) if not good]
    if bad_loss:
        raise ValueError(f"task(s) {', '.join(map(repr, bad_loss))}: non-finite loss; check for divergence "
                         "(lower the learning rate, clip gradients)")
    bad_grad = [n for n, good in zip(call.names, flags[1].tolist()) if not good] if grad_rows is not None else []
    if bad_grad:
        raise ValueError(f"task(s) {', '.join(map(repr, bad_grad))}: non-finite per-task gradient; "
                         "check the loss for operations with infinite slope (sqrt, log at 0)")
    raise ValueError(f"{call.agg.name}: the update is not finite; check the losses for divergence")


# -- validation ----------------------------------------------------------------------------

def _stack_losses(losses, task_names) -> tuple[tuple[str, ...], list[Tensor], Tensor]:
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise ValueError(f"a tensor of losses must be 1-D (one loss per task), got shape {tuple(losses.shape)}; "
                             "or pass a list or dict of k scalar tensors")
        losses = list(losses.unbind())
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


def _shared_parameters(shared, allow_empty: bool = False) -> tuple[list[Tensor], list[str]]:
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
    if not params and not allow_empty:
        raise ValueError("no shared parameter requires grad; pass the trunk's (trainable) parameters")
    return params, labels


def _task_parameters(task_params, shared: list[Tensor]) -> list[Tensor]:
    shared_ids = {id(q) for q in shared}
    out, seen = [], set()
    for j, q in enumerate(task_params):
        if not isinstance(q, Tensor):
            raise ValueError(f"task_params[{j}] is a {type(q).__name__}, not a tensor")
        if id(q) in shared_ids:
            raise ValueError(f"task_params[{j}] is also a shared parameter; a parameter is shared or a task's")
        if q.requires_grad and id(q) not in seen:
            seen.add(id(q))
            out.append(q)
    return out


def _check_records(records: list, shared: list[Tensor], k: int) -> None:
    """Each ``(input, output, weight, bias)`` record: a shared weight (and bias), a sample
    axis that splits into k blocks, matching shapes."""
    shared_ids = {id(q) for q in shared}
    for j, record in enumerate(records):
        if not isinstance(record, (tuple, list)) or len(record) != 4:
            raise ValueError(f"linear_records[{j}] must be an (input, output, weight, bias) tuple")
        x, y, w, b = record
        if id(w) not in shared_ids or (b is not None and id(b) not in shared_ids):
            raise ValueError(f"linear_records[{j}]: its weight and bias must be shared parameters")
        if y.dim() < 2 or y.shape[-2] % k or x.shape[-2] != y.shape[-2]:
            raise ValueError(f"linear_records[{j}]: input {tuple(x.shape)} and output {tuple(y.shape)} need a "
                             f"common sample axis (dim -2) of k = {k} equal task blocks")
        if w.shape[-2:] != (y.shape[-1], x.shape[-1]) or not y.requires_grad:
            raise ValueError(f"linear_records[{j}]: weight {tuple(w.shape)} does not map input {tuple(x.shape)} "
                             f"to output {tuple(y.shape)} (or the output has no autograd history)")


def _heads(heads, k: int) -> list[list[Tensor]]:
    groups = [[q for q in h if q.requires_grad] for h in heads]
    if len(groups) != k or not all(groups):
        raise ValueError(f"heads must list the trainable parameters of each of the {k} task heads, in task order")
    return groups


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


