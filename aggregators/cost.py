"""Cost knobs of the Gram-matrix methods: the per-task gradients and the weight solve every
``every`` steps only, or the per-task gradients of ``tasks_per_step`` sampled tasks only.

A Gram-matrix method (:class:`~aggregators.base.GramWeighting`) costs k backward passes, or
one task-split pass, per step, plus its solve.  Two wrappers, one per knob, each for every
Gram-matrix method; ``aggregators.make(name, k, every=N)`` / ``make(name, k,
tasks_per_step=m)`` build them, so both trainers and :func:`aggregators.backward` take
``aggregator.every`` and ``aggregator.tasks_per_step``:

* :class:`Periodic` (``every=N``) solves on the steps 0, N, 2N, ... and, in between, reuses
  the last weights: the engine then runs one ordinary backward of ``sum_i w_i l_i``, as
  Nash-MTL's reference does with its ``update_weights_every`` (Navon et al., ICML 2022,
  sec. 5.4 and its code).  The wrapped method sees only the solve steps, so its state
  (Nash-MTL's warm start and step counter, FairGrad's last weights, PIVRG's temperature)
  advances once per solve; the wrapper's own state, the call counter and the last weights,
  is in its ``state_dict``.
* :class:`Subsampled` (``tasks_per_step=m``) draws m of the k tasks per step, uniformly
  without replacement; the engine computes the gradients of those m tasks only (m rows of
  the batched backward, m backward passes on the loop path; the task-split path gets all k
  from its one backward anyway and keeps the m).  This is the objective-sampling estimator
  of SDMGrad-OS (Xiao, Ban & Ji, NeurIPS 2023, its objective-sampling variant, in the
  form of the authors' released MT10 code): the
  tasks not drawn count as zero gradients, so the method solves on the k x k Gram matrix
  with their rows and columns zero, and the update is ``(k / m) sum_{i in S} w_i g_i`` (for
  fixed weights an unbiased estimate of ``sum_i w_i g_i``, as each task is drawn with
  probability m / k).  The references draw each task with probability m / k (SDMGrad-OS) or
  keep m - 1 tasks and average the rest into one (CAGrad-Fast, Liu et al., NeurIPS 2021,
  its practical speed-up, in the released MT10 code); here exactly m, so the cost per step is fixed.  Every method keeps seeing k
  tasks, so its per-task state (warm starts, momenta, PIVRG's priorities) stays indexed by
  task; nearly every method gives a zero-gradient task weight 0 and solves the others'
  problem (the test checks that the direction equals the m-task problem's), CAGrad and
  SDMGrad keep the zeros in their average gradient g0 as SDMGrad-OS does.  The draws come
  from the wrapper's own generator, seeded from torch's global generator at construction;
  its state is in the ``state_dict``, so a resumed run draws the same tasks.

Methods whose update needs more than the weights each step are refused by both: ConsMTL
(its lower level needs the per-task gradients every step) and CosReg (second-order terms);
``tasks_per_step`` also refuses MGDA (and PI-MGDA): the min-norm point of a hull that
contains a zero gradient is 0, so every subsampled step would be empty.  The two knobs are
not combined (``every`` would reuse one step's sampled weights for N steps).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import GramWeighting


def periodic_support(agg: GramWeighting | object) -> str | None:
    """Why ``every`` cannot wrap ``agg`` (None when it can)."""
    if not isinstance(agg, GramWeighting):
        return "it is not a Gram-matrix method (its update is not sum_i w_i g_i with weights from G G^T)"
    if agg.has_lower_level:
        return "its lower level needs the per-task gradients at every step"
    if agg.needs_graph:
        return "its update has second-order terms through the gradients"
    return None


class _Wrapper(GramWeighting):
    """A cost knob around a Gram-matrix method ``inner``: the method's flags, hooks and
    performance-informed API are the wrapped method's."""

    def __init__(self, inner: GramWeighting, why: str | None, knob: str):
        if why is not None:
            raise ValueError(f"{inner.name}: {knob} is not available: {why}")
        super().__init__(inner.num_tasks)
        self.inner = inner
        self.name = inner.name
        self.needs_losses = inner.needs_losses
        self.needs_positive_losses = inner.needs_positive_losses
        self.uses_performance = inner.uses_performance

    def task_rows(self) -> Tensor | None:
        return self.inner.task_rows()

    def update_performance(self, delta_m) -> None:
        self.inner.update_performance(delta_m)

    @property
    def omega(self) -> Tensor:
        return self.inner.omega

    @property
    def temperature(self) -> float:
        return self.inner.temperature

    def reset(self) -> None:
        super().reset()
        self.inner.reset()

    def end_epoch(self) -> None:
        self.inner.end_epoch()


class Periodic(_Wrapper):
    """``inner`` solved every ``every`` calls; in between, ``sum_i w_i l_i`` with the last
    weights as a loss-only step (``requires_grads`` is False on those calls, so
    :func:`aggregators.backward` computes no per-task gradient)."""

    state_attributes = ("calls",)
    lazy_buffers = ("last_weights",)

    def __init__(self, inner: GramWeighting, every: int):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        why = periodic_support(inner)
        if why is None and isinstance(inner, Subsampled):
            why = "it is combined with tasks_per_step (set one of the two knobs)"
        super().__init__(inner, why, f"every={every}")
        self.every = every
        #: backward calls so far (a host int: reading it costs no device sync)
        self.calls = 0
        self.register_buffer("last_weights", torch.zeros(0, dtype=torch.float64))

    @property
    def requires_grads(self) -> bool:  # type: ignore[override]
        """True on the solve steps (``calls % every == 0``)."""
        return self.calls % self.every == 0

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        self.inner.gram_eps = self.gram_eps
        w = self.inner.weights_from_gram(gram, losses)
        self.inner.weights = w
        self.last_weights = w.detach().clone()
        self.calls += 1
        return w

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        """The matrix form: a solve on the solve steps, the last weights on ``grads`` between."""
        if self.requires_grads:
            return super().aggregate(grads, losses)
        self.calls += 1
        self.weights = self.last_weights
        return self.last_weights.to(grads.dtype) @ grads

    def loss(self, losses: Tensor) -> Tensor:
        """The step between two solves: ``sum_i w_i l_i`` with the last solve's weights."""
        if losses.shape != (self.num_tasks,):
            raise ValueError(f"{self.name}: losses must have shape ({self.num_tasks},), got {tuple(losses.shape)}")
        if self.last_weights.numel() != self.num_tasks:
            raise RuntimeError(f"{self.name}: every={self.every} reuses the last weights, but no step has solved yet")
        self.weights = self.last_weights
        self.calls += 1
        return (self.last_weights.to(device=losses.device, dtype=losses.dtype) * losses).sum()

    def reset(self) -> None:
        super().reset()
        self.calls = 0
        self.last_weights = torch.zeros(0, dtype=torch.float64, device=self.last_weights.device)


    def extra_repr(self) -> str:
        return f"every={self.every}"


def subsample_support(agg: GramWeighting | object) -> str | None:
    """Why ``tasks_per_step`` cannot wrap ``agg`` (None when it can)."""
    why = periodic_support(agg)
    if why is not None:
        return why
    base = agg
    while hasattr(base, "base") or hasattr(base, "inner"):   # PI-X and cost wrappers
        base = getattr(base, "base", None) or getattr(base, "inner")
    if getattr(base, "zero_gradient_stalls", False):
        return "one zero (not drawn) gradient makes its direction 0 (the min-norm point of the hull)"
    return None


class Subsampled(_Wrapper):
    """``inner`` on the gradients of ``tasks_per_step`` tasks drawn per step (the module
    docstring gives the estimator).  :meth:`task_rows` draws the step's tasks (the engine
    calls it once per step, before computing any per-task gradient); the weights it then
    returns are ``(k / m) w_i`` on the drawn tasks and 0 elsewhere, so the engine's one
    backward of ``sum_i w_i l_i`` (or ``w^T G`` on the drawn rows) is the estimate."""

    state_attributes = ("generator_state",)

    def __init__(self, inner: GramWeighting, tasks_per_step: int):
        k = inner.num_tasks
        m = tasks_per_step
        if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= k:
            raise ValueError(f"tasks_per_step must be an int in [1, {k}] (the number of tasks), got {m!r}")
        super().__init__(inner, subsample_support(inner), f"tasks_per_step={m}")
        self.tasks_per_step = m
        seed = int(torch.randint(0, 2**62, (1,)).item())
        self.generator = torch.Generator().manual_seed(seed)
        #: the drawn tasks of the current step (sorted, int64 on the CPU), None between steps
        self.rows: Tensor | None = None

    @property
    def generator_state(self) -> Tensor:
        return self.generator.get_state()

    @generator_state.setter
    def generator_state(self, state: Tensor) -> None:
        self.generator.set_state(state)

    def task_rows(self) -> Tensor:
        """Draw this step's m tasks (sorted indices)."""
        perm = torch.randperm(self.num_tasks, generator=self.generator)
        self.rows = perm[: self.tasks_per_step].sort().values
        return self.rows

    def _mask(self, device) -> Tensor:
        mask = torch.zeros(self.num_tasks, dtype=torch.bool)
        mask[self.rows] = True
        return mask.to(device)

    def weights_from_gram(self, gram: Tensor, losses: Tensor | None = None) -> Tensor:
        """``gram`` has zero rows and columns outside the drawn tasks (the engine's); a full
        Gram matrix (a caller that computed every gradient) is masked here."""
        if self.rows is None:
            self.task_rows()
        mask = self._mask(gram.device)
        gram = gram * (mask[:, None] & mask[None, :])
        self.inner.gram_eps = self.gram_eps
        w = self.inner.weights_from_gram(gram, losses)
        self.inner.weights = w
        self.rows = None
        scale = self.num_tasks / self.tasks_per_step
        return torch.where(mask, w * scale, torch.zeros_like(w))

    def aggregate(self, grads: Tensor, losses: Tensor | None) -> Tensor:
        """The matrix form: the rows of the tasks not drawn count as zero."""
        if self.rows is None:
            self.task_rows()
        return super().aggregate(grads * self._mask(grads.device)[:, None].to(grads.dtype), losses)

    def reset(self) -> None:
        super().reset()
        self.rows = None

    def extra_repr(self) -> str:
        return f"tasks_per_step={self.tasks_per_step}"
