"""Multi-task SAC on stratified batches, with per-component gradient aggregation.

A batch holds k rows, one per task: ``obs (k, b, obs_dim)``, ``action (k, b, act_dim)``,
``reward (k, b)``, ``next_obs (k, b, obs_dim)``, ``done (k, b)`` (terminations only, never
time-limit truncations).  The task of a sample is its row; observations carry no task id.

Each of the three components (critic, actor, temperature) states its loss for ONE task as a
pure function of (shared params, that task's params, that task's slice of the batch);
:func:`mtrl.per_task_grads.aggregated_backward` maps it over the task axis and sends the
(k, n) matrix of per-task shared gradients through that component's own aggregator, while
every task parameter (head row, embedding row, per-task log-alpha) keeps its own task's
gradient.  The agent knows nothing about aggregation beyond that call.
"""

from __future__ import annotations

import copy
import math
from functools import partial
from typing import Callable, Mapping, Union

import torch
from torch import Tensor, nn

import aggregators as aggregator_registry
from aggregators import Aggregator, needs_after_step
from mtrl.per_task_grads import UpdateInfo, aggregated_backward, per_task_losses

from .networks import KINDS, Actor, Critic, actor_sample, critic_forward, squashed_gaussian

__all__ = [
    "AGGREGATOR_LR",
    "COMPONENTS",
    "MultiTaskSAC",
    "Temperature",
    "critic_loss",
    "actor_loss",
    "temperature_loss",
    "make_aggregators",
    "needs_after_step",
]

#: learning rate of the aggregators' own learnable parameters (UW log-variances, GradNorm
#: logits), Adam; 0.025 as in the Nash-MTL / FAMO reference code
AGGREGATOR_LR = 0.025
#: the components, in update order; each has its own aggregator and optimiser
COMPONENTS = ("critic", "actor", "alpha")
BATCH_KEYS = ("obs", "action", "reward", "next_obs", "done")

AggregatorSpec = Union[None, str, Mapping[str, Aggregator], Callable[[str], Aggregator]]


# ---------------------------------------------------------------------------------------
# per-task losses (one task; vmapped over the task axis by aggregated_backward)
# ---------------------------------------------------------------------------------------
def critic_loss(shared: dict, task: dict, obs: Tensor, act: Tensor, target: Tensor) -> Tensor:
    """Sum over the twin Qs of the MSE to the (precomputed) soft Bellman target, mean over
    the task's samples: ``mean (Q1 - y)^2 + mean (Q2 - y)^2``."""
    q = critic_forward(shared, task, obs, act)  # (2, b)
    return (q - target).pow(2).mean(-1).sum()


def actor_loss(critic_shared: dict, shared: dict, task: dict, obs: Tensor, noise: Tensor, alpha: Tensor,
               critic_task: dict) -> Tensor:
    """``mean(alpha_i log pi(a|s) - min(Q1, Q2)(s, a))`` with ``a`` reparameterised from
    ``noise``; the critic's parameters come in detached (``critic_shared`` bound with
    ``functools.partial``, ``critic_task`` as a per-task batch input) so only the actor
    receives gradients."""
    a, logp = actor_sample(shared, task, obs, noise)
    q = critic_forward(critic_shared, critic_task, obs, a)
    return (alpha * logp - torch.minimum(q[0], q[1])).mean()


def temperature_loss(shared: dict, task: dict, entropy_gap: Tensor) -> Tensor:
    """``-mean(log_alpha * (log pi + target_entropy))`` with the gap detached; the log-alpha
    is the shared one (``shared["log_alpha"]``) or the task's own (``task["log_alpha"]``)."""
    log_alpha = shared["log_alpha"] if "log_alpha" in shared else task["log_alpha"]
    return -(log_alpha * entropy_gap).mean()


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def make_aggregators(method: str, num_tasks: int, components: tuple[str, ...] = COMPONENTS,
                     fallback: str = "ls", **hparams) -> dict[str, Aggregator]:
    """One aggregator per component: ``method`` (with ``hparams``) for ``components`` and
    ``fallback`` for the others.  FAMO as in its reference on MT10:
    ``make_aggregators("famo", 10, components=("critic",), gamma=0.01)`` (its log of the
    losses needs positive losses, which only the critic's are)."""
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown component(s) {sorted(unknown)}; valid: {', '.join(COMPONENTS)}")
    return {c: aggregator_registry.make(method, num_tasks, **hparams) if c in components
            else aggregator_registry.make(fallback, num_tasks) for c in COMPONENTS}


def _batch_get(batch, key: str) -> Tensor:
    if isinstance(batch, Mapping):
        if key not in batch:
            raise KeyError(f"batch lacks {key!r}; a batch needs {', '.join(BATCH_KEYS)}")
        return batch[key]
    if not hasattr(batch, key):
        raise KeyError(f"batch lacks {key!r}; a batch needs {', '.join(BATCH_KEYS)}")
    return getattr(batch, key)


class Temperature(nn.Module):
    """Log-temperature: one per task (``(k,)``, task parameters) or one shared (``(1,)``,
    a shared parameter: its per-task gradients form a (k, 1) matrix)."""

    def __init__(self, num_tasks: int, shared: bool = False, init_temperature: float = 1.0):
        super().__init__()
        if not init_temperature > 0:
            raise ValueError(f"init_temperature must be > 0, got {init_temperature}")
        self.num_tasks, self.is_shared = num_tasks, bool(shared)
        shape = (1,) if shared else (num_tasks,)
        self.log_alpha = nn.Parameter(torch.full(shape, math.log(init_temperature)))

    def alpha(self) -> Tensor:
        """``(k,)`` temperatures (the shared one repeated)."""
        return self.log_alpha.exp().expand(self.num_tasks)

    def shared_params(self) -> dict[str, nn.Parameter]:
        return {"log_alpha": self.log_alpha} if self.is_shared else {}

    def task_params(self) -> dict[str, nn.Parameter]:
        return {} if self.is_shared else {"log_alpha": self.log_alpha}


# ---------------------------------------------------------------------------------------
# the agent
# ---------------------------------------------------------------------------------------
class MultiTaskSAC:
    """Multi-task SAC (``kind``: ``mh_sac``, ``mtl_sac`` or ``mtl_sac_te``) for k tasks.

    Args:
        obs_dim, act_dim, num_tasks: sizes; actions live in [-1, 1].
        kind: network family (see :mod:`agents.networks`).
        hidden, layers: actor width and number of hidden layers (3 x 400: 4 linear layers
            for ``mtl_sac``; for ``mh_sac`` ``layers`` shared hidden layers then the head).
        critic_hidden, critic_layers: the critic's (default: the actor's).
        head_layers: linear layers per task head (``mh_sac``); the reference's 2-layer head of
            400 on a 2-layer trunk is ``layers=2, head_layers=2``.
        embedding_dim: task-embedding size (``mtl_sac_te``), default 8.
        shared_alpha: one temperature for all tasks (else one per task, "disentangled").
        lr / actor_lr / critic_lr / alpha_lr, betas, adam_eps: Adam per component.
        discount, tau, init_temperature, target_entropy (default ``-act_dim``).
        grad_clip: clip each component's gradient (shared + task params) to this norm
            after aggregation (None: no clipping, as the 2020-21 references).
        aggregators: one aggregator per component ``{"critic", "actor", "alpha"}`` (distinct
            objects), a callable ``component -> Aggregator``, a registry name used for every
            component, or None (``ls`` everywhere).
        aggregator_lr: Adam learning rate of the aggregators' learnable parameters.
        device: where parameters live.
    """

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, kind: str = "mh_sac", *,
                 hidden: int = 400, layers: int = 3, critic_hidden: int | None = None,
                 critic_layers: int | None = None, head_layers: int = 1, embedding_dim: int = 8,
                 shared_alpha: bool = False, lr: float = 3e-4, actor_lr: float | None = None,
                 critic_lr: float | None = None, alpha_lr: float | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 discount: float = 0.99, tau: float = 0.005, init_temperature: float = 1.0,
                 target_entropy: float | None = None, grad_clip: float | None = None,
                 aggregators: AggregatorSpec = None, aggregator_lr: float = AGGREGATOR_LR,
                 device: str | torch.device = "cpu"):
        if kind not in KINDS:
            raise ValueError(f"unknown agent kind {kind!r}; valid: {', '.join(KINDS)}")
        self.obs_dim, self.act_dim, self.num_tasks, self.kind = obs_dim, act_dim, num_tasks, kind
        self.discount, self.tau = float(discount), float(tau)
        self.target_entropy = float(-act_dim if target_entropy is None else target_entropy)
        self.grad_clip = grad_clip
        self.device = torch.device(device)
        self.config = dict(obs_dim=obs_dim, act_dim=act_dim, num_tasks=num_tasks, kind=kind, hidden=hidden,
                           layers=layers, critic_hidden=critic_hidden or hidden,
                           critic_layers=layers if critic_layers is None else critic_layers,
                           head_layers=head_layers, embedding_dim=embedding_dim, shared_alpha=bool(shared_alpha))

        common = dict(kind=kind, head_layers=head_layers, embedding_dim=embedding_dim)
        self.actor = Actor(obs_dim, act_dim, num_tasks, hidden=hidden, layers=layers, **common).to(self.device)
        self.critic = Critic(obs_dim, act_dim, num_tasks, hidden=self.config["critic_hidden"],
                             layers=self.config["critic_layers"], **common).to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.temperature = Temperature(num_tasks, shared_alpha, init_temperature).to(self.device)

        self.aggregators = nn.ModuleDict(self._build_aggregators(aggregators)).to(self.device)
        self._after_step = {c: needs_after_step(a) for c, a in self.aggregators.items()}

        opt = dict(betas=tuple(betas), eps=adam_eps)
        self.optimizers = {
            "critic": torch.optim.Adam(self.critic.parameters(), lr=critic_lr or lr, **opt),
            "actor": torch.optim.Adam(self.actor.parameters(), lr=actor_lr or lr, **opt),
            "alpha": torch.optim.Adam(self.temperature.parameters(), lr=alpha_lr or lr, **opt),
        }
        self.aggregator_optimizers = {}
        for c, agg in self.aggregators.items():
            params = [p for p in agg.parameters() if p.requires_grad]
            if params:
                self.aggregator_optimizers[c] = torch.optim.Adam(params, lr=aggregator_lr)

    # -- construction helpers -------------------------------------------------------------
    def _build_aggregators(self, spec: AggregatorSpec) -> dict[str, Aggregator]:
        k = self.num_tasks
        if spec is None:
            spec = "ls"
        if isinstance(spec, str):
            aggs = {c: aggregator_registry.make(spec, k) for c in COMPONENTS}
        elif isinstance(spec, Mapping):
            missing, extra = set(COMPONENTS) - set(spec), set(spec) - set(COMPONENTS)
            if missing or extra:
                raise ValueError(f"aggregators must name exactly the components {COMPONENTS}; "
                                 f"missing {sorted(missing)}, unknown {sorted(extra)}")
            aggs = {c: spec[c] for c in COMPONENTS}
        elif callable(spec):
            aggs = {c: spec(c) for c in COMPONENTS}
        else:
            raise TypeError(f"aggregators must be None, a name, a mapping or a callable, got {type(spec).__name__}")
        for c, a in aggs.items():
            if not isinstance(a, Aggregator):
                raise TypeError(f"aggregator for {c!r} is a {type(a).__name__}, not an Aggregator")
            if a.num_tasks != k:
                raise ValueError(f"aggregator for {c!r} was built for {a.num_tasks} tasks, the agent has {k}")
        if len({id(a) for a in aggs.values()}) < len(aggs):
            raise ValueError("each component needs its own aggregator object (they keep per-component state)")
        return aggs

    # -- acting ------------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        """Actions for ``obs (k, obs_dim)`` (row i: task i's policy) -> ``(k, act_dim)``;
        ``(k, m, obs_dim)`` gives ``(k, m, act_dim)``.  Deterministic: ``tanh(mean)``."""
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if obs.shape[0] != self.num_tasks:
            raise ValueError(f"obs must have one row per task ({self.num_tasks}), got shape {tuple(obs.shape)}")
        single = obs.dim() == 2
        x = obs.unsqueeze(1) if single else obs
        mean, log_std = self.actor.distribution(x)
        if deterministic:
            a = torch.tanh(mean)
        else:
            a, _ = squashed_gaussian(mean, log_std, torch.randn_like(mean))
        return a.squeeze(1) if single else a

    # -- the update ------------------------------------------------------------------------------
    def alpha(self) -> Tensor:
        """Current temperatures ``(k,)``."""
        return self.temperature.alpha()

    def _unpack(self, batch) -> tuple[Tensor, ...]:
        obs, act, rew, next_obs, done = (_batch_get(batch, k) for k in BATCH_KEYS)
        k = self.num_tasks
        if rew.dim() != 2 or rew.shape[0] != k:
            raise ValueError(f"batch must be stratified (k={k}, b, ...): reward has shape {tuple(rew.shape)}")
        b = rew.shape[1]
        for name, x, tail in (("obs", obs, (self.obs_dim,)), ("action", act, (self.act_dim,)),
                              ("next_obs", next_obs, (self.obs_dim,)), ("done", done, ())):
            if tuple(x.shape) != (k, b, *tail):
                raise ValueError(f"batch[{name!r}] must have shape {(k, b, *tail)}, got {tuple(x.shape)}")
        f = dict(dtype=torch.float32, device=self.device)
        return obs.to(**f), act.to(**f), rew.to(**f), next_obs.to(**f), done.to(**f)

    @torch.no_grad()
    def prepare(self, obs: Tensor, reward: Tensor, next_obs: Tensor, done: Tensor
                ) -> tuple[Tensor, Tensor, Tensor]:
        """The update's fixed inputs, from one actor pass over ``[next_obs, obs]``:
        ``(target (k, b), noise (k, b, act_dim), logp (k, b))``: the soft Bellman target
        ``r + gamma (1 - done) (min Q_targ(s', a') - alpha_i log pi(a'|s'))``, the noise the
        actor loss reparameterises with, and log pi at ``obs`` for that noise (the actor does
        not change before its own step, so this is the log-prob the actor loss sees; the
        temperature loss uses it, as the references use the actor step's log-prob)."""
        k, b = reward.shape
        noise = torch.randn(k, 2 * b, self.act_dim, device=self.device)
        a, logp = self.actor.sample(torch.cat([next_obs, obs], dim=1), noise)
        q_next = self.critic_target.q_values(next_obs, a[:, :b]).amin(dim=1)
        soft_v = q_next - self.alpha()[:, None] * logp[:, :b]
        target = reward + self.discount * (1.0 - done) * soft_v
        return target, noise[:, b:], logp[:, b:]

    def update(self, batch) -> dict[str, Tensor | int]:
        """One SAC update: critic, actor, temperature, then the Polyak target update.

        Returns (tensors are detached, on the agent's device; convert at log time):
        ``{c}_loss`` (k,) per-task losses and ``skipped_{c}`` (int 0/1) for each component
        c in critic / actor / alpha, ``{c}_weights`` (k,) where the aggregator has weights,
        ``gram_{c}`` (k, k) float64 Gram matrix of the per-task shared gradients (gradient
        methods only: it comes free with them; diagnostics, not a scalar to log),
        ``alpha`` (k,) after the step, ``entropy`` (k,) = -mean log pi, ``target_q`` (k,)
        mean soft Bellman target.  A component whose losses or gradients are not finite is
        skipped (no step, grads cleared); a skipped critic also skips the target update.
        """
        obs, act, rew, next_obs, done = self._unpack(batch)
        target, noise, logp = self.prepare(obs, rew, next_obs, done)
        logs: dict[str, Tensor | int] = {}

        self._component_update("critic", critic_loss, self.critic, (obs, act, target), logs)

        critic_task = {n: p.detach() for n, p in self.critic.task_params().items()}
        critic_shared = {n: p.detach() for n, p in self.critic.shared_params().items()}
        alpha = self.alpha().detach()
        self._component_update("actor", partial(actor_loss, critic_shared), self.actor,
                               (obs, noise, alpha, critic_task), logs)

        gap = (logp + self.target_entropy).detach()
        self._component_update("alpha", temperature_loss, self.temperature, (gap,), logs)

        if not logs["skipped_critic"]:
            self._soft_update_target()

        logs["alpha"] = self.alpha().detach()
        logs["entropy"] = -logp.mean(-1)
        logs["target_q"] = target.mean(-1)
        return logs

    def _component_update(self, name: str, loss_fn, module, batch: tuple, logs: dict) -> None:
        shared, task = module.shared_params(), module.task_params()
        params = [*shared.values(), *task.values()]
        agg = self.aggregators[name]
        agg_opt = self.aggregator_optimizers.get(name)
        agg_params = [p for g in agg_opt.param_groups for p in g["params"]] if agg_opt else []
        for p in params + agg_params:
            p.grad = None

        info = self._backward(loss_fn, shared, task, batch, agg)
        logs[f"{name}_loss"] = info.losses
        if not info.finite:
            for p in params + agg_params:
                p.grad = None
            logs[f"skipped_{name}"] = 1
            return
        logs[f"skipped_{name}"] = 0
        if info.weights is not None:
            logs[f"{name}_weights"] = info.weights.detach().clone()
        if info.gram is not None:
            logs[f"gram_{name}"] = info.gram
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizers[name].step()
        if agg_opt is not None:
            agg_opt.step()
        if self._after_step[name]:
            with torch.no_grad():
                new_losses = per_task_losses(loss_fn, shared, task, *batch)
            agg.after_step(new_losses)

    @staticmethod
    def _backward(loss_fn, shared: dict, task: dict, batch: tuple, agg: Aggregator) -> UpdateInfo:
        """``aggregated_backward``, except for a component without shared parameters (per-task
        temperatures; ``mh_sac`` with ``layers=0``) under a gradient method: nothing to
        aggregate, every task parameter gets its own task's gradient (one backward of the
        summed losses)."""
        if shared or not agg.requires_grads:
            return aggregated_backward(loss_fn, shared, task, batch, agg)
        losses = per_task_losses(loss_fn, shared, task, *batch)
        if not bool(torch.isfinite(losses).all()):
            return UpdateInfo(losses.detach(), None, finite=False)
        losses.sum().backward()
        return UpdateInfo(losses.detach(), None)

    @torch.no_grad()
    def _soft_update_target(self) -> None:
        target = list(self.critic_target.parameters())
        source = list(self.critic.parameters())
        torch._foreach_lerp_(target, source, self.tau)

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume: networks, target critic, temperature, optimisers, the
        aggregators' state and their optimisers, and the architecture config."""
        return {
            "config": dict(self.config),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "temperature": self.temperature.state_dict(),
            "optimizers": {c: o.state_dict() for c, o in self.optimizers.items()},
            "aggregators": {c: a.state_dict() for c, a in self.aggregators.items()},
            "aggregator_optimizers": {c: o.state_dict() for c, o in self.aggregator_optimizers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        mismatch = {k: (v, self.config.get(k)) for k, v in state["config"].items() if self.config.get(k) != v}
        if mismatch:
            raise ValueError(f"checkpoint was written by a different agent configuration: {mismatch} "
                             "(checkpoint, this agent)")
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        self.temperature.load_state_dict(state["temperature"])
        for c, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][c])
        for c, a in self.aggregators.items():
            a.load_state_dict(state["aggregators"][c])
        if set(state["aggregator_optimizers"]) != set(self.aggregator_optimizers):
            raise ValueError("checkpoint's aggregators have different learnable parameters than this agent's")
        for c, o in self.aggregator_optimizers.items():
            o.load_state_dict(state["aggregator_optimizers"][c])

    def to(self, device: str | torch.device) -> "MultiTaskSAC":
        """Move parameters, buffers and optimiser moments (parameter objects are kept, so the
        optimisers stay valid; Adam's step counters stay where Adam wants them)."""
        self.device = torch.device(device)
        for m in (self.actor, self.critic, self.critic_target, self.temperature, self.aggregators):
            m.to(self.device)
        for o in [*self.optimizers.values(), *self.aggregator_optimizers.values()]:
            for st in o.state.values():
                for key, v in st.items():
                    if torch.is_tensor(v) and key != "step":
                        st[key] = v.to(self.device)
        return self

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                "temperature": self.temperature, "aggregators": self.aggregators}
