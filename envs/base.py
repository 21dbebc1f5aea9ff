"""The multi-task vector environment interface shared by every environment in ``envs``.

One sub-environment per task: row ``i`` of every array is task ``i`` (``task_names[i]``).
All tasks step together and their episodes run in lock step (every task has the same
episode length, and none of the environments here ends an episode early), so a vector
step ends the episode of every task or of none.

Observations do **not** contain the task id.  An agent identifies the task of a row by
the row index (multi-head agents select their head by it; agents that want a one-hot
task encoding append it themselves).

Time limits are never terminal states: reaching the episode length sets ``truncated``
and leaves ``terminated`` False, so a learner keeps bootstrapping through the time limit
(the protocol of the published multi-task SAC numbers).  ``terminated`` is True only for
true terminal states, which none of the current environments has.

Auto-reset: when an episode ends at a step, ``StepResult.next_obs`` holds the true last
observation of the episode (what a replay buffer stores), while ``StepResult.obs`` holds
the first observation of the next episode (what the agent acts on next).  No environment
is ever stepped past its time limit.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class StepResult:
    """The result of one vector step over all k tasks.

    Attributes:
        next_obs: (k, obs_dim) float32, the observation this step led to, before any
            reset.  Store this as the transition's next observation.
        reward: (k,) float32.
        terminated: (k,) bool, true terminal states only (never the time limit).
        truncated: (k,) bool, the episode hit its time limit at this step.
        success: (k,) bool, the environment's success flag at this step (evaluation
            counts an episode as successful if this was True at any step).
        obs: (k, obs_dim) float32, the observation to act on next: ``next_obs``, except
            for tasks whose episode ended at this step, which were reset and give their
            reset observation.
    """

    next_obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    success: np.ndarray
    obs: np.ndarray

    @property
    def done(self) -> np.ndarray:
        """(k,) bool, the episode ended at this step (terminated or truncated)."""
        return self.terminated | self.truncated


class MultiTaskVecEnv(abc.ABC):
    """k tasks, one sub-environment each, stepped together (see the module docstring).

    Attributes (set by every implementation):
        num_tasks: k.
        task_names: the k task names, in row order.
        obs_dim, act_dim: observation and action sizes (observations carry no task id).
        action_low, action_high: (act_dim,) float32 bounds; ``step`` clips to them.
        max_episode_steps: the episode length (the same for every task).
        protocol: a plain, JSON-serialisable dict describing everything that defines the
            setting (env, protocol name, episode length, reward version, goal policy,
            seed, ...); write it into every run's config and metrics.
    """

    num_tasks: int
    task_names: list[str]
    obs_dim: int
    act_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    max_episode_steps: int
    protocol: dict[str, Any]

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode of every task; returns the (k, obs_dim) float32 observations.

        ``seed`` re-seeds the environment's per-episode randomness (start states and,
        where the protocol draws one, the goal of each episode); ``None`` continues the
        current random stream.  ``make_env(..., seed=s)`` followed by ``reset()`` gives
        the same observations as following it by ``reset(seed=s)``.
        """

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> StepResult:
        """Step every task with ``actions`` (k, act_dim); see :class:`StepResult`."""

    def step_async(self, actions: np.ndarray) -> None:
        """Start a step with ``actions``; :meth:`step_wait` returns its result.  An env
        whose tasks run in other processes steps them in between, while the caller works;
        in-process envs (this default) step in ``step_wait``.  The result is the same."""
        if getattr(self, "_pending", None) is not None:
            raise RuntimeError("step_async() twice without step_wait()")
        self._pending = np.asarray(actions)

    def step_wait(self) -> StepResult:
        """The result of the step started by :meth:`step_async`."""
        actions = getattr(self, "_pending", None)
        if actions is None:
            raise RuntimeError("step_wait() without step_async()")
        self._pending = None
        return self.step(actions)

    def close(self) -> None:
        """Release the environment's resources."""

    # helpers for implementations -------------------------------------------------------

    def _prepare_actions(self, actions: np.ndarray) -> np.ndarray:
        """``actions`` as a (k, act_dim) float32 array clipped to the action bounds."""
        a = np.asarray(actions, dtype=np.float32)
        if a.shape != (self.num_tasks, self.act_dim):
            raise ValueError(f"actions must have shape ({self.num_tasks}, {self.act_dim}), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("actions contain NaN or inf")
        return np.clip(a, self.action_low, self.action_high)

    def __enter__(self) -> "MultiTaskVecEnv":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.protocol.get('env')!r}, protocol={self.protocol.get('protocol')!r}, k={self.num_tasks})"
