"""Per-task replay buffer with stratified sampling.

Every vector step adds one transition per task, so the buffer keeps one ring per task
(capacity ``capacity // k`` each) and a batch of size ``b`` holds ``b // k`` transitions of
every task, shaped (k, b // k, ...): exactly the layout the per-task losses are vmapped
over.  The reference code (mtrl) drew the batch uniformly from the whole buffer (about
b / k per task on average, not exactly); stratified sampling makes every task's loss an
average over the same number of samples.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

FIELDS = ("obs", "action", "reward", "next_obs", "done")


class ReplayBuffer:
    def __init__(self, num_tasks: int, obs_dim: int, act_dim: int, capacity: int, device: str | torch.device = "cpu"):
        if capacity < num_tasks:
            raise ValueError(f"replay capacity {capacity} is smaller than the number of tasks {num_tasks}")
        self.k = num_tasks
        self.per_task = capacity // num_tasks
        self.device = torch.device(device)
        shapes = {"obs": (obs_dim,), "action": (act_dim,), "reward": (), "next_obs": (obs_dim,), "done": ()}
        self.data = {f: torch.zeros((num_tasks, self.per_task, *s), dtype=torch.float32, device=self.device)
                     for f, s in shapes.items()}
        self.pos = 0
        self.size = 0

    def add(self, obs, action, reward, next_obs, done) -> None:
        """One transition per task (arrays with the task axis first)."""
        for f, v in zip(FIELDS, (obs, action, reward, next_obs, done)):
            self.data[f][:, self.pos] = torch.as_tensor(np.asarray(v), dtype=torch.float32, device=self.device)
        self.pos = (self.pos + 1) % self.per_task
        self.size = min(self.size + 1, self.per_task)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        """A stratified batch: ``batch_size // k`` transitions of each task, (k, b, ...)."""
        if self.size == 0:
            raise RuntimeError("sampling from an empty replay buffer")
        b = max(1, batch_size // self.k)
        idx = torch.randint(0, self.size, (self.k, b), generator=generator, device=generator.device)
        idx = idx.to(self.device)
        rows = torch.arange(self.k, device=self.device)[:, None]
        return {f: v[rows, idx] for f, v in self.data.items()}

    def state_dict(self) -> dict:
        """The filled part only: a copy, since ``torch.save`` of a slice would write its
        whole storage (the buffer's full capacity, hundreds of MB for a 1M buffer)."""
        return {"pos": self.pos, "size": self.size, "per_task": self.per_task,
                "data": {f: v[:, : self.size].to("cpu", copy=True) for f, v in self.data.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["per_task"] != self.per_task or state["data"]["obs"].shape[0] != self.k:
            raise ValueError("replay buffer in the checkpoint has a different shape (tasks or capacity)")
        self.pos, self.size = int(state["pos"]), int(state["size"])
        for f, v in state["data"].items():
            self.data[f][:, : self.size] = v.to(self.device)
