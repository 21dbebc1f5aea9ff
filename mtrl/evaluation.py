"""Evaluation of a multi-task policy: deterministic actions, success = the env's success
flag reached at any step of the episode (per task), the protocol of the published MT10
numbers."""

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
