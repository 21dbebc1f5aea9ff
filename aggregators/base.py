"""The aggregator interface shared by every method.

An aggregator maps the per-task gradients of k losses on the shared parameters,
``grads`` of shape (k, n) (row i is the gradient of task i's loss), and where the
method needs them the k losses, to one update direction ``d`` of shape (n,).

Three families share this interface:

* :class:`GramWeighting` -- ``d = sum_i w_i g_i`` with ``w`` computed from the k x k Gram
  matrix ``M = G G^T`` (and the losses where the method uses them).  These methods can
  run without materialising ``grads``: ``weights_from_gram(M, losses)`` then one backward
  of ``sum_i w_i l_i``.
* :class:`LossWeighting` -- loss-only methods (LS, SI, RLW, DWA, UW, FAMO): they combine
  the losses into one scalar (``combine``) for a single ordinary backward and never need
  per-task gradients.  Called with ``grads`` they return the same direction,
  ``sum_i (d combine / d l_i) g_i``.
* :class:`Aggregator` itself, for methods whose direction is not a combination of the
  current gradients (GradDrop, MoCo).

All of them are ``torch.nn.Module``: state lives on the object as buffers (or extra
state), learnable method parameters are ``nn.Parameter`` (``parameters()`` gives them to
the trainer's optimiser), ``state_dict()`` / ``load_state_dict()`` round-trip them, and
``reset()`` returns a method to its initial state.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

__all__ = [
    "Aggregator",
    "GramWeighting",
    "LossWeighting",
    "gram_matrix",
    "check_finite",
]


def check_finite(name: str, x: Tensor) -> None:
    """Raise a clear ``ValueError`` when ``x`` holds NaN or inf.

    On a GPU this check synchronises; callers on the hot path may skip it with
    ``aggregator.check_inputs = False``.
    """
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"{name} contains NaN or inf; check the losses for divergence (lower the learning "
            "rate, clip gradients) before aggregating"
        )


def gram_matrix(grads: Tensor) -> Tensor:
    """``M = G G^T`` in float64 (the matmul runs in the gradients' own dtype)."""
    return (grads @ grads.T).to(torch.float64)


class Aggregator(nn.Module):
    """Base class: ``aggregator(grads, losses) -> direction``.

    Subclasses set the class attributes below and implement :meth:`aggregate`.
    """

    #: registry name, set by ``@register``
    name: ClassVar[str] = ""
    #: False for loss-only methods: they never need per-task gradients
    requires_grads: ClassVar[bool] = True
    #: True where the method reads the losses
    needs_losses: ClassVar[bool] = False
    #: True for methods that need second-order gradients through ``grads`` (CosReg)
    needs_graph: ClassVar[bool] = False
    #: capabilities a training loop reads instead of method names:
    #: the method takes logs of the losses, so every loss must be positive (FAMO, SI)
    needs_positive_losses: ClassVar[bool] = False
    #: the method's weights are all ones (LS), so ``"own"`` and ``"weighted"`` task
    #: gradients coincide
    unit_weights: ClassVar[bool] = False
    #: the method has a lower level on the task heads (ConsMTL): ``extra_losses`` and
    #: ``clip_extra_grad``, run by :func:`aggregators.backward` when given ``heads``
    has_lower_level: ClassVar[bool] = False
    #: the method takes a performance signal (``update_performance(delta_m)``; ``omega``
    #: and ``temperature`` are its state)
    uses_performance: ClassVar[bool] = False
    #: plain Python attributes (step counters, flags: no device sync to read them) that
    #: the state dict carries as extra state
    state_attributes: ClassVar[tuple[str, ...]] = ()
    #: buffers shaped at the first call (MoCo's tracked gradients): loading a state dict
    #: first resizes them to the saved shape
    lazy_buffers: ClassVar[tuple[str, ...]] = ()
    #: keeps per-coordinate statistics of the gradients across calls (MoCo's and DB-MTL's
    #: tracked gradients, ExcessMTL's accumulated squares): every call's coordinates must
    #: mean the same thing, which the shared parameters do and a batch's representation
    #: (the "-UB" / ``mode=rep`` use: one row per sample of that batch) does not
    coordinate_state: ClassVar[bool] = False

    def __init__(self, num_tasks: int):
        super().__init__()
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}")
        self.num_tasks = num_tasks
        #: set False to skip the NaN/inf check (it synchronises on a GPU)
        self.check_inputs = True
        #: weights of the last call where the direction is sum_i w_i g_i (float64, (k,))
        self.weights: Tensor | None = None

    # -- input validation -------------------------------------------------------------
    def _check_grads(self, grads: Tensor | None) -> Tensor:
        if grads is None:
            raise ValueError(f"{self.name} needs the per-task gradients `grads` of shape (k, n)")
        if grads.dim() != 2 or grads.shape[0] != self.num_tasks:
            raise ValueError(
                f"{self.name}: grads must have shape ({self.num_tasks}, n), got {tuple(grads.shape)}; "
                f"build the aggregator with num_tasks={grads.shape[0] if grads.dim() == 2 else '?'} "
                "or pass one row per task"
            )
        if self.check_inputs:
            check_finite("grads", grads)
        return grads

    def _check_losses(self, losses: Tensor | None, required: bool | None = None) -> Tensor | None:
        required = self.needs_losses if required is None else required
        if losses is None:
            if required:
                raise ValueError(f"{self.name} needs the k task losses: call it as agg(grads, losses)")
            return None
        losses = torch.as_tensor(losses)
        if losses.shape != (self.num_tasks,):
            raise ValueError(
                f"{self.name}: losses must have shape ({self.num_tasks},), got {tuple(losses.shape)}"
            )
        if self.check_inputs:
            check_finite("losses", losses)
        return losses

    # -- the call -----------------------------------------------------------------------
    def forward(self, grads: Tensor | None = None, losses: Tensor | None = None) -> Tensor:
        grads = self._check_grads(grads)
        losses = self._check_losses(losses)
        return self.aggregate(grads, None if losses is None else losses.detach())

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        raise NotImplementedError

    # -- state ----------------------------------------------------------------------------
    def task_rows(self) -> Tensor | None:
        """The tasks whose gradients this step needs (sorted int64 indices), drawn once per
        step by the engine before any per-task gradient; None: every task (the
        ``tasks_per_step`` knob, :class:`aggregators.cost.Subsampled`, draws a subset)."""
        return None

    def reset(self) -> None:
        """Return to the initial state (stateless methods: only clears ``weights``)."""
        self.weights = None

    def after_step(self, losses: Tensor) -> None:
        """Hook called by trainers after the optimiser step with the new losses on the same
        batch (FAMO uses it); a no-op for other methods."""

    def end_epoch(self) -> None:
        """Hook called by trainers at the end of each epoch (epoch-level DWA uses it);
        a no-op for other methods."""

    def lazy_buffer(self, name: str, like: Tensor) -> Tensor:
        """The lazy buffer ``name`` (:attr:`lazy_buffers`) shaped like ``like``: zeros at
        the first call, moved to ``like``'s device and dtype after; a ValueError where the
        shape changed (the number of shared parameters must stay the same)."""
        buf = getattr(self, name)
        if buf.numel() == 0:
            buf = torch.zeros_like(like)
        elif buf.shape != like.shape:
            raise ValueError(
                f"{self.name}: grads of shape {tuple(like.shape)} do not match its {name} buffer "
                f"{tuple(buf.shape)}; the number of shared parameters must stay the same (reset() to start over)")
        elif buf.device != like.device or buf.dtype != like.dtype:
            buf = buf.to(device=like.device, dtype=like.dtype)
        setattr(self, name, buf)
        return buf

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.lazy_buffers:
            saved = state_dict.get(prefix + name)
            if saved is not None:
                setattr(self, name, torch.empty(saved.shape, dtype=saved.dtype, device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def get_extra_state(self) -> dict:
        return {name: getattr(self, name) for name in self.state_attributes}

    def set_extra_state(self, state: dict) -> None:
        for name in self.state_attributes:
            setattr(self, name, state[name])

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}"


def needs_after_step(agg: Aggregator) -> bool:
    """True when the aggregator (or the method a PI-X wrapper wraps) overrides ``after_step``
    (FAMO): only then must a training loop compute the losses again after the optimiser
    step (same batch, updated parameters) and pass them to ``after_step``."""
    base = getattr(agg, "base", None)
    if isinstance(base, Aggregator):
        return needs_after_step(base)
    return type(agg).after_step is not Aggregator.after_step


class GramWeighting(Aggregator):
    """``d = sum_i w_i g_i`` with weights computed from the Gram matrix only.

    ``gram_weights`` records ``gram_eps``, the machine epsilon of the dtype the Gram matrix
    was computed in (pass it in that dtype: a float32 product is only accurate to a few
    float32 eps per entry, and solvers that need a positive-definite matrix size their
    regularisation by it); ``weights_from_gram`` always receives float64.
    """

    #: machine epsilon of the dtype of the last Gram matrix (see the class docstring)
    gram_eps: float = torch.finfo(torch.float64).eps

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        """Weights (k,) in float64 from the k x k Gram matrix (and losses where needed)."""
        raise NotImplementedError

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        w = self.gram_weights(grads @ grads.T, losses)
        return w.to(grads.dtype) @ grads

    def gram_weights(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        """Validated entry point of the low-memory path: weights from ``M`` alone.

        Use as ``w = agg.gram_weights(M, losses)`` and then back-propagate
        ``(w.detach() * losses).sum()`` once.
        """
        k = self.num_tasks
        if gram.shape != (k, k):
            raise ValueError(f"{self.name}: Gram matrix must be ({k}, {k}), got {tuple(gram.shape)}")
        if self.check_inputs:
            check_finite("Gram matrix", gram)
        losses = self._check_losses(losses)
        # precision of the product: a float32 Gram is only accurate to a few eps32 per entry
        self.gram_eps = torch.finfo(gram.dtype).eps
        w = self.weights_from_gram(gram.to(torch.float64), None if losses is None else losses.detach())
        self.weights = w
        return w


class LossWeighting(Aggregator):
    """Loss-only methods: one ordinary backward of ``combine(losses)``.

    ``combine`` must be differentiable in the losses; its derivative w.r.t. ``l_i`` is the
    weight of task i's gradient, which is how the matrix form ``agg(grads, losses)`` is
    defined (and why both forms give the same update).
    """

    requires_grads = False
    needs_losses = True

    def combine(self, losses: Tensor) -> Tensor:
        """The scalar objective to back-propagate once (differentiable in ``losses``).

        Must be a deterministic function of the losses and the method's state: it is
        evaluated more than once per step.  Per-step randomness or bookkeeping belongs in
        :meth:`begin_step`."""
        raise NotImplementedError

    def begin_step(self, losses: Tensor) -> None:
        """Called exactly once per training step, before ``combine``, with the detached
        losses (RLW draws its weights here, DWA records its loss history)."""

    def loss(self, losses: Tensor) -> Tensor:
        """Validated ``combine``: use this in a training loop, then ``.backward()``.

        Method parameters (UW's log-variances) receive their gradient from the same backward.
        """
        if losses.shape != (self.num_tasks,):
            raise ValueError(
                f"{self.name}: losses must have shape ({self.num_tasks},), got {tuple(losses.shape)}"
            )
        if self.check_inputs:
            check_finite("losses", losses)
        self.begin_step(losses.detach())
        total = self.combine(losses)
        self.weights = self._loss_weights(losses.detach())[0]
        return total

    def _loss_weights(self, losses: Tensor) -> tuple[Tensor, list[Tensor | None]]:
        """(d combine / d l, d combine / d method-parameters) at ``losses``."""
        l = losses.detach().to(torch.float64).requires_grad_(True)
        params = [p for p in self.parameters() if p.requires_grad]
        with torch.enable_grad():
            total = self.combine(l)
            out = torch.autograd.grad(total, [l, *params], allow_unused=True)
        w = out[0] if out[0] is not None else torch.zeros_like(l)
        return w.detach(), list(out[1:])

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        self.begin_step(losses)
        w, param_grads = self._loss_weights(losses)
        for p, g in zip([p for p in self.parameters() if p.requires_grad], param_grads):
            p.grad = None if g is None else g.to(p.dtype)
        self.weights = w
        return w.to(grads.dtype) @ grads


def softmax_weights(logits: Tensor, scale: float | int) -> Tensor:
    """``scale * softmax(logits)``: the normalisation used by DWA, GradNorm and PIVRG."""
    return scale * torch.softmax(logits, dim=-1)


def log_safe(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``log(x + eps)``, the guard FAMO and SI use against a zero loss."""
    return torch.log(x + eps)

