"""SAC networks in a functional, task-stacked form (``torch.func.vmap`` over the task axis).

Every network is a chain of linear layers with ReLU between them (none after the last).
Its parameters live in two dicts:

* ``shared``: the trunk, one tensor per layer (``trunk{j}_w`` (out, in), ``trunk{j}_b`` (out,));
* ``task``: per-task tensors stacked with a leading k axis: the head layers
  (``head{j}_w`` (k, out, in), ``head{j}_b`` (k, out)) applied after the trunk, and the task
  embedding ``emb`` (k, e) concatenated to the network input.

The pure functions below take ONE task's slice of ``task`` (row i of every tensor) and that
task's inputs, so ``vmap(f, in_dims=(None, 0, 0, ...))`` evaluates every task on its own
samples with its own head: a head is only ever computed for its own task.

The twin critic stores its two Q networks as one ensemble: every critic weight has an extra
leading axis of size 2 (``(2, out, in)`` shared, ``(k, 2, out, in)`` per task), so both Q
values come from the same batched matmuls; :func:`critic_forward` returns ``(2, b)``.

Kinds (config names):

* ``mh_sac``: ``layers`` shared hidden layers, then a per-task head of ``head_layers`` linear
  layers (``head_layers - 1`` hidden layers of width ``hidden``, then the output layer);
* ``mtl_sac``: ``layers`` hidden layers and the output layer, all shared; no task parameters;
* ``mtl_sac_te``: as ``mtl_sac`` with a learned per-task embedding concatenated to the input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vmap

__all__ = [
    "KINDS",
    "LOG_STD_MIN",
    "LOG_STD_MAX",
    "mlp_forward",
    "actor_forward",
    "actor_sample",
    "critic_forward",
    "StackedMLP",
    "Actor",
    "Critic",
]

KINDS = ("mh_sac", "mtl_sac", "mtl_sac_te")
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------
# pure functions (one task)
# ---------------------------------------------------------------------------------------
def _linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``x @ w^T + b`` for plain ``w (out, in)`` and ensemble ``w (E, out, in)`` weights
    (an ensemble maps ``x (b, in)`` or ``x (E, b, in)`` to ``(E, b, out)``)."""
    return torch.matmul(x, w.transpose(-1, -2)) + b.unsqueeze(-2)


def _layers(params: dict[str, Tensor], prefix: str) -> list[tuple[Tensor, Tensor]]:
    out, j = [], 0
    while f"{prefix}{j}_w" in params:
        out.append((params[f"{prefix}{j}_w"], params[f"{prefix}{j}_b"]))
        j += 1
    return out


def mlp_forward(shared: dict[str, Tensor], task: dict[str, Tensor], x: Tensor) -> Tensor:
    """One task's network on ``x (b, in)``: [input ++ embedding] -> trunk -> head."""
    if "emb" in task:
        e = task["emb"]
        x = torch.cat([x, e.expand(*x.shape[:-1], e.shape[-1])], dim=-1)
    layers = _layers(shared, "trunk") + _layers(task, "head")
    for j, (w, b) in enumerate(layers):
        x = _linear(x, w, b)
        if j < len(layers) - 1:
            x = torch.relu(x)
    return x


def actor_forward(shared: dict[str, Tensor], task: dict[str, Tensor], obs: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, log_std)`` of the pre-tanh Gaussian, each ``(b, act_dim)``; the log-std is
    squashed into [LOG_STD_MIN, LOG_STD_MAX] by ``min + 0.5 (max - min) (tanh(raw) + 1)``."""
    mean, raw = mlp_forward(shared, task, obs).chunk(2, dim=-1)
    log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)
    return mean, log_std


def squashed_gaussian(mean: Tensor, log_std: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Reparameterised tanh-Gaussian sample ``a = tanh(mean + std * noise)`` and its
    log-probability (summed over action dims) with the tanh change-of-variables term,
    ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` (stable form)."""
    u = mean + log_std.exp() * noise
    gauss = (-0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
    correction = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), gauss - correction


def actor_sample(shared: dict[str, Tensor], task: dict[str, Tensor], obs: Tensor, noise: Tensor
                 ) -> tuple[Tensor, Tensor]:
    """One task's action ``(b, act_dim)`` in [-1, 1] and log-probability ``(b,)`` for the
    given standard-normal ``noise (b, act_dim)`` (drawn outside vmap)."""
    mean, log_std = actor_forward(shared, task, obs)
    return squashed_gaussian(mean, log_std, noise)


def critic_forward(shared: dict[str, Tensor], task: dict[str, Tensor], obs: Tensor, act: Tensor) -> Tensor:
    """One task's twin Q values, ``(2, b)``."""
    return mlp_forward(shared, task, torch.cat([obs, act], dim=-1)).squeeze(-1)


# ---------------------------------------------------------------------------------------
# modules that own the parameters
# ---------------------------------------------------------------------------------------
def _xavier_(w: Tensor) -> None:
    """Xavier-uniform init of every (out, in) matrix in the trailing two dims."""
    fan_out, fan_in = w.shape[-2], w.shape[-1]
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        w.uniform_(-bound, bound)


class StackedMLP(nn.Module):
    """Parameters of one network kind, split into ``shared`` and stacked ``task`` dicts.

    ``ensemble``: None for one network, E for E networks batched along a leading axis.
    """

    def __init__(self, in_dim: int, out_dim: int, num_tasks: int, kind: str = "mh_sac", hidden: int = 400,
                 layers: int = 3, head_layers: int = 1, embedding_dim: int = 8, ensemble: int | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown agent kind {kind!r}; valid: {', '.join(KINDS)}")
        if layers < 0 or (kind != "mh_sac" and layers < 1):
            raise ValueError(f"layers must be >= 1 (>= 0 for mh_sac), got {layers}")
        if kind == "mh_sac" and head_layers < 1:
            raise ValueError(f"head_layers must be >= 1, got {head_layers}")
        if kind == "mtl_sac_te" and embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.kind, self.num_tasks = kind, num_tasks
        ens = () if ensemble is None else (ensemble,)
        k = (num_tasks,)
        self.shared = nn.ParameterDict()
        self.task = nn.ParameterDict()
        if kind == "mtl_sac_te":
            emb = torch.empty(num_tasks, embedding_dim)
            nn.init.normal_(emb)
            self.task["emb"] = nn.Parameter(emb)
            in_dim += embedding_dim
        if kind == "mh_sac":
            trunk = [in_dim] + [hidden] * layers
            head = [trunk[-1]] + [hidden] * (head_layers - 1) + [out_dim]
        else:
            trunk = [in_dim] + [hidden] * layers + [out_dim]
            head = [trunk[-1]]
        for name, dims, lead in (("trunk", trunk, ens), ("head", head, k + ens)):
            target = self.shared if name == "trunk" else self.task
            for j, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
                w = torch.empty(*lead, o, i)
                _xavier_(w)
                target[f"{name}{j}_w"] = nn.Parameter(w)
                target[f"{name}{j}_b"] = nn.Parameter(torch.zeros(*lead, o))

    def shared_params(self) -> dict[str, nn.Parameter]:
        return dict(self.shared.items())

    def task_params(self) -> dict[str, nn.Parameter]:
        return dict(self.task.items())


class Actor(StackedMLP):
    """Tanh-Gaussian policy; output layer gives mean and raw log-std (2 * act_dim)."""

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, **kw):
        super().__init__(obs_dim, 2 * act_dim, num_tasks, **kw)
        self.act_dim = act_dim

    def distribution(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``(mean, log_std)`` for stratified ``obs (k, b, obs_dim)``."""
        return vmap(actor_forward, in_dims=(None, 0, 0))(self.shared_params(), self.task_params(), obs)

    def sample(self, obs: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Actions ``(k, b, act_dim)`` and log-probs ``(k, b)`` for ``noise (k, b, act_dim)``."""
        return vmap(actor_sample, in_dims=(None, 0, 0, 0))(self.shared_params(), self.task_params(), obs, noise)


class Critic(StackedMLP):
    """Twin Q networks as one ensemble of two."""

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, **kw):
        super().__init__(obs_dim + act_dim, 1, num_tasks, ensemble=2, **kw)

    def q_values(self, obs: Tensor, act: Tensor) -> Tensor:
        """Twin Q values ``(k, 2, b)`` for stratified ``obs``, ``act``."""
        return vmap(critic_forward, in_dims=(None, 0, 0, 0))(self.shared_params(), self.task_params(), obs, act)
