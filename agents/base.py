"""The interface the MT10 trainer uses, and nothing more: an agent acts, updates from a
task-stratified batch, names its optimisers and per-component backwards, and saves,
loads and moves its state.

A new agent is one module in this package with a subclass of :class:`Agent`, plus
``configs/agent/<name>.yaml`` naming it as ``_target_`` with its hyper-parameters (the
trainer builds it through :func:`mtrl.components.build`).  Its constructor takes the
environment's sizes and the trainer's runtime objects as keyword arguments:

``obs_dim``, ``act_dim``, ``num_tasks``
    the vector environment's sizes (actions in [-1, 1], one row per task);
``backward``
    one :class:`~agents.sac.Backward` per name in :attr:`Agent.components` (the aggregated
    per-task backward of :mod:`mtrl.aggregation`);
``nonfinite_skip``
    ``"host"`` or ``"device"`` (see :data:`agents.sac.NONFINITE_SKIPS`);
``device``
    where its parameters live.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor


class Agent(ABC):
    """A multi-task agent the trainer drives (:class:`mtrl.trainer.Trainer`)."""

    #: the components whose per-task losses go through an aggregated backward
    components: ClassVar[tuple[str, ...]]
    #: one optimiser per component (the trainer re-reads and sets their learning rates)
    optimizers: dict[str, torch.optim.Optimizer]
    #: one backward per component, as handed to the constructor
    backward: dict
    #: True: non-finite updates are skipped on the device (the trainer reads the count at log time)
    device_skip: bool

    @abstractmethod
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions for ``obs (k, obs_dim)``, row i for task i -> ``(k, act_dim)``."""

    @abstractmethod
    def update(self, batch) -> dict[str, Tensor | int]:
        """One update from a stratified batch (every tensor ``(k, b, ...)``); returns its
        logs (tensors, read by the trainer only at log time): for every component ``c``,
        ``skipped_<c>`` (true where a non-finite update was skipped) and, where the
        component's aggregator took a Gram matrix, ``gram_<c>`` (for the diagnostics)."""

    @abstractmethod
    def state_dict(self) -> dict:
        """Everything a bit-identical resume needs (networks, optimisers, backwards)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s output."""

    @abstractmethod
    def to(self, device: str | torch.device) -> Agent:
        """Move every tensor of the agent to ``device``; returns ``self``."""
