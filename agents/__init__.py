"""Agents (multi-task SAC variants) for the MT10 trainer.

>>> from agents import MultiTaskSAC
>>> agent = MultiTaskSAC(39, 4, 10, kind="mh_sac", backward=backwards)  # one per component
>>> a = agent.act(obs, deterministic=True)    # obs (k, 39) -> (k, 4), row i: task i
>>> logs = agent.update(batch)                 # stratified batch: every tensor (k, b, ...)

The agent computes per-task losses and names its shared and task parameters; the
aggregated backward is handed in (``mtrl.aggregation.component_backwards``).  Agents
import no aggregator and nothing of ``mtrl``.
"""

from .base import Agent
from .networks import KINDS, Actor, Critic, StackedMLP, mlp_forward, squashed_gaussian
from .rollback import Rollback
from .sac import (COMPONENTS, NONFINITE_SKIPS, Backward, MultiTaskSAC, SumBackward, Temperature, actor_losses,
                  critic_losses, temperature_losses)

__all__ = [
    "COMPONENTS", "KINDS", "Agent", "NONFINITE_SKIPS", "Actor", "Backward", "Critic", "MultiTaskSAC", "Rollback",
    "StackedMLP", "SumBackward",
    "Temperature", "actor_losses", "critic_losses", "mlp_forward", "squashed_gaussian", "temperature_losses",
]
