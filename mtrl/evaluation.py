"""Evaluation of a multi-task policy: deterministic actions, success = the env's success
flag reached at any step of the episode (per task).

* :func:`evaluate`: the protocol of the published MT10 numbers, episodes of all tasks in
  lock step (any :class:`envs.MultiTaskVecEnv`);
* :func:`evaluate_metaworld`: the MetaWorld 3 package's own evaluation
  (``metaworld.evaluation.evaluation``: N episodes per task, ending on success, a fresh
  goal variant at every reset under the ``metaworld3`` protocol).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EvalResult:
    success: np.ndarray  # (k,) success rate per task over the episodes
    returns: np.ndarray  # (k,) mean undiscounted return per task

    @property
    def mean_success(self) -> float:
        return float(self.success.mean())


def success_drops(success: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-task performance drop in percent, ``100 (s_ref - s) / s_ref`` (larger = worse):
    the signal PIVRG's omega is computed from (PIVRG eq. 3 with one metric per task)."""
    return 100.0 * (reference - success) / reference


@torch.no_grad()
def evaluate(agent, env, episodes: int, seed: int, device: torch.device) -> EvalResult:
    """Run ``episodes`` deterministic episodes of every task in lock step."""
    k = env.num_tasks
    successes = np.zeros((episodes, k))
    returns = np.zeros((episodes, k))
    for ep in range(episodes):
        obs = env.reset(seed=seed + ep)
        hit = np.zeros(k, dtype=bool)
        total = np.zeros(k)
        for _ in range(env.max_episode_steps):
            action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=device), deterministic=True)
            res = env.step(action.cpu().numpy())
            hit |= res.success.astype(bool)
            total += res.reward
            obs = res.obs
            if np.all(res.terminated | res.truncated):
                break
        successes[ep] = hit
        returns[ep] = total
    return EvalResult(successes.mean(0), returns.mean(0))


class _MetaWorldPolicy:
    """The agent behind the interface ``metaworld.evaluation`` drives (``eval_action``,
    ``reset``); row i of the observations belongs to task i."""

    def __init__(self, agent, device: torch.device):
        self.agent, self.device = agent, device

    @torch.no_grad()
    def eval_action(self, observations: np.ndarray) -> np.ndarray:
        obs = torch.as_tensor(observations, dtype=torch.float32, device=self.device)
        return self.agent.act(obs, deterministic=True).cpu().numpy()

    def reset(self, env_mask: np.ndarray) -> None:  # a feed-forward policy has no state
        pass


def evaluate_metaworld(agent, env, episodes: int, device: torch.device) -> EvalResult:
    """``metaworld.evaluation.evaluation`` on a :class:`envs.MetaWorldVecEnv` (its gym vector
    env): ``episodes`` episodes per task; per-task success rate and mean return."""
    from metaworld.evaluation import evaluation

    _, _, success, returns = evaluation(_MetaWorldPolicy(agent, device), env.vector_env, num_episodes=episodes)
    names = env.task_names
    return EvalResult(np.array([success[n] for n in names]), np.array([np.mean(returns[n]) for n in names]))
