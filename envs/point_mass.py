"""A tiny multi-task point-mass environment (pure NumPy, vectorised over tasks).

A point mass moves in the box [-1, 1]^2.  Task i's goal is the point at angle
2 pi i / k on the circle of radius 0.7 around the origin.  With ``observe_goal=False``
(the default) the goal is not part of the observation, so one policy can only solve
several tasks by using the task index (multi-head agents, or a task encoding the agent
adds itself); with ``observe_goal=True`` the goal is appended, as MetaWorld's
observations contain theirs, and a fully shared policy can solve every task.

* observation: (x, y, vx, vy), float32 (velocity in box units per second, |v| <= 2),
  then (gx, gy) with ``observe_goal``;
* action: a 2-D acceleration command in [-1, 1]^2;
* dynamics (dt = 0.1): ``v <- velocity_decay * v + accel_gain * a`` then
  ``p <- clip(p + dt * v, -1, 1)`` (the velocity component into a wall is zeroed);
  with the defaults the top speed is 2 (0.2 per step) and a coasting mass stops within
  0.2, so 0.7 is crossed in about 5 steps;
* reward: minus the distance to the goal after the step (dense, about -0.7 at the start, at most 2.2 in size);
* success: distance to the goal < 0.1;
* episodes: 50 steps (configurable), time limit = truncation (never terminal), every
  task in lock step; start positions uniform in [-0.1, 0.1]^2 with zero velocity, drawn
  from the env's seeded RNG.

The goals are fixed (they *are* the tasks), so the environment implements the fixed-goal
``paper`` protocol only.  A vector step costs a few microseconds.
"""

from __future__ import annotations

import numpy as np

from .base import MultiTaskVecEnv, StepResult


class PointMassEnv(MultiTaskVecEnv):
    """k point-mass tasks whose goals are evenly spaced on a circle (see the module docstring)."""

    def __init__(
        self,
        num_tasks: int = 4,
        seed: int = 0,
        episode_length: int = 50,
        goal_radius: float = 0.7,
        success_radius: float = 0.1,
        start_radius: float = 0.1,
        dt: float = 0.1,
        velocity_decay: float = 0.5,
        accel_gain: float = 1.0,
        observe_goal: bool = False,
    ):
        if int(num_tasks) < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        if int(episode_length) < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        if not 0.0 <= velocity_decay < 1.0:
            raise ValueError(f"velocity_decay must be in [0, 1), got {velocity_decay}")
        k = int(num_tasks)
        self.num_tasks = k
        self.task_names = [f"goal-{i}" for i in range(k)]
        self.observe_goal = bool(observe_goal)
        self.obs_dim = 6 if self.observe_goal else 4
        self.act_dim = 2
        self.action_low = -np.ones(2, dtype=np.float32)
        self.action_high = np.ones(2, dtype=np.float32)
        self.max_episode_steps = int(episode_length)
        angles = 2.0 * np.pi * np.arange(k) / k
        self.goals = goal_radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        self.success_radius = float(success_radius)
        self.start_radius = float(start_radius)
        self.dt = float(dt)
        self.velocity_decay = float(velocity_decay)
        self.accel_gain = float(accel_gain)
        self.seed = int(seed)
        self.protocol = {
            "env": "point_mass",
            "protocol": "paper",
            "num_tasks": k,
            "tasks": list(self.task_names),
            "episode_length": self.max_episode_steps,
            "time_limit": "truncation (not terminal)",
            "reward": "negative distance to goal",
            "reward_version": None,
            "goal_policy": f"fixed: goal i at angle 2*pi*i/k on the circle of radius {goal_radius}",
            "success": f"distance < {self.success_radius}",
            "task_id_in_obs": False,
            "goal_in_obs": self.observe_goal,
            "obs_dim": self.obs_dim,
            "dynamics": {"dt": self.dt, "velocity_decay": self.velocity_decay, "accel_gain": self.accel_gain},
            "seed": self.seed,
        }
        self._rng = np.random.default_rng(self.seed)
        self._pos = np.zeros((k, 2))
        self._vel = np.zeros((k, 2))
        self._t = 0
        self._needs_reset = True

    def goal_positions(self) -> np.ndarray:
        """(k, 2) goal of each task."""
        return self.goals.copy()

    def _obs(self) -> np.ndarray:
        parts = [self._pos, self._vel] + ([self.goals] if self.observe_goal else [])
        return np.concatenate(parts, axis=1).astype(np.float32)

    def _start_episode(self) -> None:
        r = self.start_radius
        self._pos = self._rng.uniform(-r, r, size=(self.num_tasks, 2))
        self._vel = np.zeros((self.num_tasks, 2))
        self._t = 0
        self._needs_reset = False

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            self._rng = np.random.default_rng(int(seed))
        self._start_episode()
        return self._obs()

    def step(self, actions: np.ndarray) -> StepResult:
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        a = self._prepare_actions(actions).astype(np.float64)
        vel = self.velocity_decay * self._vel + self.accel_gain * a
        new_pos = self._pos + self.dt * vel
        pos = np.clip(new_pos, -1.0, 1.0)
        vel[pos != new_pos] = 0.0  # a wall stops the motion into it
        self._pos, self._vel = pos, vel
        self._t += 1
        dist = np.linalg.norm(pos - self.goals, axis=1)
        next_obs = self._obs()
        k = self.num_tasks
        truncated = np.full(k, self._t >= self.max_episode_steps)
        if truncated[0]:
            self._start_episode()  # auto-reset, all tasks at once (lock step)
            obs = self._obs()
        else:
            obs = next_obs.copy()
        return StepResult(
            next_obs=next_obs,
            reward=(-dist).astype(np.float32),
            terminated=np.zeros(k, dtype=bool),
            truncated=truncated,
            success=dist < self.success_radius,
            obs=obs,
        )
