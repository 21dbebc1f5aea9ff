"""The aggregated backward the MT10 trainer hands each SAC component.

The agent (:mod:`agents.sac`) computes per-task losses and names its parameters.  A
:class:`ComponentBackward` owns everything about their aggregation:

* the aggregator;
* the Adam optimiser of its learnable parameters (UW's log-variances);
* FAMO's ``after_step`` on the losses of the updated parameters;
* the options of the engine, :func:`aggregators.backward`.

The engine options:

* ``task_grads``: what the task parameters (heads, embeddings, per-task temperatures)
  receive.  The MT10 config uses ``"own"``, the gradient of each task's own loss.  A
  stacked head is only ever computed for its own task's samples, so this is the
  gradient of ``sum_i l_i``.  Scaling it by the method's weight ``w_i`` would only change
  that head's effective step size, which Adam normalises away; the weights are there to
  arbitrate the shared parameters.
* ``nonfinite="skip"``: a non-finite update is skipped and counted, never raised.
* ``per_task``: ``"auto"`` takes the task-split path (``A_i^T delta_i`` per shared layer,
  at the cost of one backward) from the layers the agent's forward records.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

import aggregators
from agents import COMPONENTS
from aggregators import Aggregator, BackwardResult, needs_after_step

__all__ = ["AGGREGATOR_LR", "ComponentBackward", "component_backwards"]

#: learning rate of the aggregators' own learnable parameters (UW log-variances, GradNorm
#: logits), Adam; 0.025 as in the Nash-MTL / FAMO reference code
AGGREGATOR_LR = 0.025


class ComponentBackward(nn.Module):
    """One component's aggregated backward (the agent's ``Backward`` protocol)."""

    def __init__(self, aggregator: Aggregator, task_grads: str = "own", per_task: str = "auto",
                 lr: float = AGGREGATOR_LR):
        super().__init__()
        if not isinstance(aggregator, Aggregator):
            raise TypeError(f"ComponentBackward needs an Aggregator, got {type(aggregator).__name__}")
        self.aggregator = aggregator
        self.task_grads, self.per_task = task_grads, per_task
        params = [p for p in aggregator.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=lr) if params else None
        self._after_step = needs_after_step(aggregator)

    def forward(self, losses: Tensor, shared: list[Tensor], task: list[Tensor], records: list) -> BackwardResult:
        return aggregators.backward(losses, shared, self.aggregator, task_params=task, task_grads=self.task_grads,
                                    nonfinite="skip", per_task=self.per_task, linear_records=records)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, recompute: Callable[[], Tensor]) -> None:
        """After the component's optimiser step: the aggregator's own parameters, then
        ``after_step`` on the recomputed losses where the method has one (FAMO)."""
        if self.optimizer is not None:
            self.optimizer.step()
        if self._after_step:
            self.aggregator.after_step(recompute())

    def state_dict(self, *args, **kwargs) -> dict:
        return {"aggregator": self.aggregator.state_dict(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict, strict: bool = True):
        self.aggregator.load_state_dict(state["aggregator"])
        if (state["optimizer"] is None) != (self.optimizer is None):
            raise ValueError("checkpoint's aggregator has different learnable parameters than this one")
        if self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def to(self, *args, **kwargs) -> "ComponentBackward":
        super().to(*args, **kwargs)
        if self.optimizer is not None:   # Adam's moments follow their parameters
            for st in self.optimizer.state.values():
                for key, v in st.items():
                    if torch.is_tensor(v) and key != "step":
                        st[key] = v.to(*args, **kwargs)
        return self


def component_backwards(method: str | Callable[[str], Aggregator], num_tasks: int,
                        components: tuple[str, ...] = COMPONENTS, fallback: str = "ls",
                        task_grads: str = "own", per_task: str = "auto", **hparams) -> dict[str, ComponentBackward]:
    """One :class:`ComponentBackward` per SAC component.  ``method`` (with ``hparams``) is
    used on ``components`` and ``fallback`` on the others; a callable
    ``component -> Aggregator`` is also accepted.  FAMO as in its reference on MT10 is
    ``component_backwards("famo", 10, components=("critic",), gamma=0.01)``: only the
    critic's losses are positive, as its log needs."""
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown component(s) {sorted(unknown)}; valid: {', '.join(COMPONENTS)}")
    out = {}
    for c in COMPONENTS:
        if callable(method):
            agg = method(c)
        elif c in components:
            agg = aggregators.make(method, num_tasks, **hparams)
        else:
            agg = aggregators.make(fallback, num_tasks)
        if agg.num_tasks != num_tasks:
            raise ValueError(f"aggregator for {c!r} was built for {agg.num_tasks} tasks, the agent has {num_tasks}")
        out[c] = ComponentBackward(agg, task_grads, per_task)
    if len({id(b.aggregator) for b in out.values()}) < len(out):
        raise ValueError("each component needs its own aggregator object (they keep per-component state)")
    return out
