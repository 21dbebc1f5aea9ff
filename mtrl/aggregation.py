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
* ``nonfinite="skip"``: a non-finite update is skipped and counted, never raised;
  ``"mask"`` where the agent skips on the device (``device_skip=True``: the flag stays a
  device tensor, and the agent's :class:`~agents.rollback.Rollback` restores the
  aggregator's state, :meth:`ComponentBackward.state_tensors`).
* ``per_task``: ``"auto"`` takes the task-split path (``A_i^T delta_i`` per shared layer,
  at the cost of one backward) from the layers the agent's forward records.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

import aggregators
from agents import COMPONENTS
from agents.rollback import place_step_counts
from aggregators import Aggregator, BackwardResult, needs_after_step

__all__ = ["AGGREGATOR_LR", "ComponentBackward", "component_backwards", "host_state"]

#: learning rate of the aggregators' own learnable parameters (UW log-variances, GradNorm
#: logits), Adam; 0.025 as in the Nash-MTL / FAMO reference code
AGGREGATOR_LR = 0.025


def host_state(aggregator: Aggregator) -> list[str]:
    """The aggregator's state that is not a tensor (a Python counter or flag, a random
    generator), as ``"<name>.<attribute>"``: a device-side skip cannot restore it without
    reading the finite flag on the host.  Empty: the method supports the device-side skip."""
    held = []
    for key, v in aggregator.state_dict().items():
        if torch.is_tensor(v) or (isinstance(v, dict) and not v):
            continue
        module = key.removesuffix("_extra_state").rstrip(".")   # "" (the aggregator's own) or "rng"
        held += [module] if module else list(v)
    return [f"{aggregator.name}.{h}" for h in held]


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

    def forward(self, losses: Tensor, shared: list[Tensor], task: list[Tensor], records: list,
                device_skip: bool = False) -> BackwardResult:
        return aggregators.backward(losses, shared, self.aggregator, task_params=task, task_grads=self.task_grads,
                                    nonfinite="mask" if device_skip else "skip", per_task=self.per_task,
                                    linear_records=records)

    def state_tensors(self) -> dict[str, Tensor]:
        """The live tensors of the aggregator's state and of its optimiser, by name."""
        out = {f"aggregator.{key}": v for key, v in self.aggregator.state_dict(keep_vars=True).items()
               if torch.is_tensor(v)}
        if self.optimizer is not None:
            for i, p in enumerate(self.optimizer.param_groups[0]["params"]):
                out.update({f"optimizer.{i}.{key}": v for key, v in self.optimizer.state.get(p, {}).items()
                            if torch.is_tensor(v)})
        return out

    def host_state(self) -> list[str]:
        """See :func:`host_state`."""
        return host_state(self.aggregator)

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
            place_step_counts(self.optimizer)

    def to(self, *args, **kwargs) -> "ComponentBackward":
        super().to(*args, **kwargs)
        if self.optimizer is not None:   # Adam's moments follow their parameters
            for st in self.optimizer.state.values():
                for key, v in st.items():
                    if torch.is_tensor(v) and key != "step":
                        st[key] = v.to(*args, **kwargs)
            place_step_counts(self.optimizer)
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
