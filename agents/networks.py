"""SAC networks on task-split batches: one matmul per shared layer over the whole batch.

A stratified batch holds k consecutive blocks of b samples, block i belonging to task i.
The networks run on the flattened batch ``x (N = k b, in)``:

* a shared layer is one matmul ``x @ W^T + b`` over all N samples: never k copies of the
  weights;
* a task head is a batched matmul over the k blocks, each with its own task's weights, so
  a head is only ever computed for its own task's samples;
* the task embedding ``emb`` (k, e) is repeated over each task's block and concatenated
  to the input.

Every network is a chain of linear layers with ReLU between them (none after the last).
Its parameters live in two dicts:

* ``shared``: the trunk, one tensor per layer (``trunk{j}_w`` (out, in), ``trunk{j}_b`` (out,));
* ``task``: per-task tensors stacked with a leading k axis: the head layers
  (``head{j}_w`` (k, out, in), ``head{j}_b`` (k, out)) and the embedding ``emb`` (k, e).

Given a ``record`` list, the forward appends ``(input, output, weight, bias)`` for each
shared layer.  The per-task gradient engine takes the k per-task weight gradients from
those: ``A_i^T delta_i`` on the task blocks, at the cost of one backward.

The twin critic stores its two Q networks as one ensemble: every critic weight has an extra
leading axis of size 2 (``(2, out, in)`` shared, ``(k, 2, out, in)`` per task), so both Q
values come from the same batched matmuls.

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

__all__ = [
    "KINDS",
    "LOG_STD_MIN",
    "LOG_STD_MAX",
    "mlp_forward",
    "squashed_gaussian",
    "StackedMLP",
    "Actor",
    "Critic",
]

KINDS = ("mh_sac", "mtl_sac", "mtl_sac_te")
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

Params = dict[str, Tensor]


# ---------------------------------------------------------------------------------------
# pure functions on the flattened batch
# ---------------------------------------------------------------------------------------
def _shared_linear(x: Tensor, w: Tensor, b: Tensor, record: list | None) -> Tensor:
    """``x @ w^T + b`` for plain ``w (out, in)`` and ensemble ``w (E, out, in)`` weights
    (an ensemble maps ``x (N, in)`` or ``x (E, N, in)`` to ``(E, N, out)``)."""
    if w.dim() == 2 and x.dim() == 2:
        y = torch.addmm(b, x, w.T)
    else:   # an ensemble: one batched matmul, the bias folded in
        y = torch.baddbmm(b.unsqueeze(-2), x.expand(w.shape[0], *x.shape[-2:]), w.transpose(-1, -2))
    if record is not None:
        if torch.compiler.is_compiling():
            _record_outside_graph(record, (x, y, w, b))
        else:
            record.append((x, y, w, b))
    return y


@torch.compiler.disable
def _record_outside_graph(record: list, entry: tuple) -> None:
    """Under ``torch.compile``, recording breaks the graph, so that the recorded output is
    a graph boundary on the loss's autograd path (an intermediate that a graph returns is
    not: the gradients the engine takes to it would be zeros)."""
    record.append(entry)


def _head_linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Task i's weights on task i's block: ``w (k, [E,] out, in)``, ``x ([E,] N, in)``."""
    k = w.shape[0]
    w = w.movedim(0, w.dim() - 3)               # ([E,] k, out, in)
    b = b.movedim(0, b.dim() - 2)               # ([E,] k, out)
    blocks = x.unflatten(-2, (k, x.shape[-2] // k))
    y = torch.matmul(blocks, w.transpose(-1, -2)) + b.unsqueeze(-2)
    return y.flatten(-3, -2)


def _layers(params: Params, prefix: str) -> list[tuple[Tensor, Tensor]]:
    out, j = [], 0
    while f"{prefix}{j}_w" in params:
        out.append((params[f"{prefix}{j}_w"], params[f"{prefix}{j}_b"]))
        j += 1
    return out


def mlp_forward(shared: Params, task: Params, x: Tensor, k: int, record: list | None = None) -> Tensor:
    """The network on the flattened batch ``x (N, in)`` of k task blocks:
    [input ++ embedding] -> trunk -> head, ``([E,] N, out)``."""
    if "emb" in task:
        x = torch.cat([x, task["emb"].repeat_interleave(x.shape[-2] // k, dim=0)], dim=-1)
    trunk, head = _layers(shared, "trunk"), _layers(task, "head")
    last = len(trunk) + len(head) - 1
    for j, (w, b) in enumerate(trunk):
        x = _shared_linear(x, w, b, record)
        x = torch.relu(x) if j < last else x
    for j, (w, b) in enumerate(head, start=len(trunk)):
        x = _head_linear(x, w, b)
        x = torch.relu(x) if j < last else x
    return x


def squashed_gaussian(mean: Tensor, log_std: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
    """Reparameterised tanh-Gaussian sample ``a = tanh(mean + std * noise)`` and its
    log-probability (summed over action dims) with the tanh change-of-variables term,
    ``log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))`` (stable form)."""
    u = mean + log_std.exp() * noise
    gauss = (-0.5 * noise.pow(2) - log_std - _HALF_LOG_2PI).sum(-1)
    correction = (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
    return torch.tanh(u), gauss - correction


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

    def distribution(self, obs: Tensor, record: list | None = None) -> tuple[Tensor, Tensor]:
        """``(mean, log_std)`` of the pre-tanh Gaussian, each ``(k, b, act_dim)``, for
        stratified ``obs (k, b, obs_dim)``; the log-std is squashed into
        [LOG_STD_MIN, LOG_STD_MAX] by ``min + 0.5 (max - min) (tanh(raw) + 1)``."""
        k, b = obs.shape[:2]
        out = mlp_forward(self.shared_params(), self.task_params(), obs.reshape(k * b, -1), k, record)
        mean, raw = out.reshape(k, b, -1).chunk(2, dim=-1)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (torch.tanh(raw) + 1.0)
        return mean, log_std

    def sample(self, obs: Tensor, noise: Tensor, record: list | None = None) -> tuple[Tensor, Tensor]:
        """Actions ``(k, b, act_dim)`` in [-1, 1] and log-probs ``(k, b)`` for the
        standard-normal ``noise (k, b, act_dim)``."""
        mean, log_std = self.distribution(obs, record)
        return squashed_gaussian(mean, log_std, noise)


class Critic(StackedMLP):
    """Twin Q networks as one ensemble of two."""

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, **kw):
        super().__init__(obs_dim + act_dim, 1, num_tasks, ensemble=2, **kw)

    def q_values(self, obs: Tensor, act: Tensor, record: list | None = None, detached: bool = False) -> Tensor:
        """Twin Q values ``(k, 2, b)`` for stratified ``obs``, ``act``; ``detached``: with
        the parameters cut from the graph (the actor loss reads the critic that way)."""
        k, b = obs.shape[:2]
        shared, task = self.shared_params(), self.task_params()
        if detached:
            shared = {n: p.detach() for n, p in shared.items()}
            task = {n: p.detach() for n, p in task.items()}
        x = torch.cat([obs, act], dim=-1).reshape(k * b, -1)
        q = mlp_forward(shared, task, x, k, record).squeeze(-1)     # (2, N)
        return q.reshape(2, k, b).transpose(0, 1)
