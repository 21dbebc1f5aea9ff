"""Agents (multi-task SAC variants) for the MT10 trainer.

>>> from agents import MultiTaskSAC, make_aggregators
>>> agent = MultiTaskSAC(39, 4, 10, kind="mh_sac", aggregators=make_aggregators("pivrg", 10))
>>> a = agent.act(obs, deterministic=True)    # obs (k, 39) -> (k, 4), row i: task i
>>> logs = agent.update(batch)                 # stratified batch: every tensor (k, b, ...)
"""

from .networks import (KINDS, Actor, Critic, StackedMLP, actor_forward, actor_sample, critic_forward,
                       mlp_forward)
from .sac import (AGGREGATOR_LR, COMPONENTS, MultiTaskSAC, Temperature, actor_loss, critic_loss,
                  make_aggregators, needs_after_step, temperature_loss)

__all__ = [
    "AGGREGATOR_LR", "COMPONENTS", "KINDS", "Actor", "Critic", "MultiTaskSAC", "StackedMLP", "Temperature",
    "actor_forward", "actor_loss", "actor_sample", "critic_forward", "critic_loss", "make_aggregators",
    "mlp_forward", "needs_after_step", "temperature_loss",
]
