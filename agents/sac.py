"""Multi-task SAC on stratified batches; the gradient aggregation is handed in.

A batch holds k rows, one per task: ``obs (k, b, obs_dim)``, ``action (k, b, act_dim)``,
``reward (k, b)``, ``next_obs (k, b, obs_dim)``, ``done (k, b)`` (terminations only, never
time-limit truncations).  The task of a sample is its row; observations carry no task id.

Each of the three components (critic, actor, temperature) computes its k per-task losses
on the flattened batch, and names its shared and task parameters and the shared linear
layers its forward ran (``record``).  Its backward is handed in by the caller, one
:class:`Backward` per component.  The MT10 trainer hands the aggregated backward of
:mod:`mtrl.aggregation`, and without one the agent does a plain backward of the summed
losses (MTL-SAC).  The agent knows nothing about aggregation.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Protocol

import torch
from torch import Tensor, nn

from .base import Agent
from .networks import KINDS, Actor, Critic, squashed_gaussian
from .rollback import Rollback, place_step_counts

__all__ = [
    "COMPONENTS",
    "NONFINITE_SKIPS",
    "Backward",
    "MultiTaskSAC",
    "SumBackward",
    "Temperature",
    "critic_losses",
    "actor_losses",
    "temperature_losses",
]

#: the components, in update order; each has its own backward and optimiser
COMPONENTS = ("critic", "actor", "alpha")
BATCH_KEYS = ("obs", "action", "reward", "next_obs", "done")
#: where the skip of a non-finite update is decided: ``host`` (one sync per component)
#: or ``device`` (a masked step, :class:`agents.rollback.Rollback`; no sync)
NONFINITE_SKIPS = ("host", "device")


# ---------------------------------------------------------------------------------------
# per-task losses, (k,)
# ---------------------------------------------------------------------------------------
def critic_losses(critic: Critic, obs: Tensor, act: Tensor, target: Tensor, record: list | None = None) -> Tensor:
    """Per task: the sum over the twin Qs of the MSE to the (precomputed) soft Bellman
    target, ``mean (Q1 - y)^2 + mean (Q2 - y)^2`` over the task's samples."""
    q = critic.q_values(obs, act, record)            # (k, 2, b)
    return (q - target[:, None]).pow(2).mean(-1).sum(-1)


def actor_losses(actor: Actor, critic: Critic, obs: Tensor, noise: Tensor, alpha: Tensor,
                 record: list | None = None) -> tuple[Tensor, Tensor]:
    """Per task: ``mean(alpha_i log pi(a|s) - min(Q1, Q2)(s, a))`` with ``a`` reparameterised
    from ``noise``, and ``log pi (k, b)``; the critic's parameters enter detached, so only
    the actor receives gradients."""
    a, logp = actor.sample(obs, noise, record)
    q = critic.q_values(obs, a, detached=True)
    return (alpha[:, None] * logp - q.amin(dim=1)).mean(-1), logp


def temperature_losses(temperature: "Temperature", entropy_gap: Tensor) -> Tensor:
    """Per task: ``-mean(log_alpha_i * (log pi + target_entropy))`` with the gap detached;
    ``log_alpha_i`` is the shared one or the task's own."""
    log_alpha = temperature.log_alpha.expand(temperature.num_tasks)
    return -(log_alpha[:, None] * entropy_gap).mean(-1)


# ---------------------------------------------------------------------------------------
# the backward a component is handed
# ---------------------------------------------------------------------------------------
class Backward(Protocol):
    """What a component's backward does: fill ``.grad`` of ``shared`` and ``task`` from the
    losses (k,), given the shared linear layers of the forward (``records``).  The result
    has ``losses``, ``weights`` (or None), ``gram`` (or None) and ``finite``.  With
    ``device_skip=False``, ``finite`` is a bool (False: nothing was written, the update is
    skipped).  With ``device_skip=True`` it is a 0-dim bool tensor, decided without a host
    sync, and the gradients written are zero where it is false; the agent then undoes the
    step where it is false, including the backward's own state, ``state_tensors()`` (the
    live tensors by name).  ``host_state()`` names the state a device-side skip cannot
    restore (Python values; empty: the backward supports it).  Those two are called only
    with the device-side skip.  ``step(recompute)`` runs
    after the component's optimiser step (the backward's own parameters and state;
    ``recompute()`` gives the losses of the updated parameters where it needs them).
    ``state_dict`` / ``load_state_dict`` / ``to`` as for a module."""

    def __call__(self, losses: Tensor, shared: list[Tensor], task: list[Tensor], records: list,
                 device_skip: bool = False): ...

    def state_tensors(self) -> dict[str, Tensor]: ...

    def host_state(self) -> list[str]: ...

    def step(self, recompute: Callable[[], Tensor]) -> None: ...

    def zero_grad(self) -> None: ...


@dataclass
class PlainUpdate:
    losses: Tensor
    weights: Tensor | None = None
    gram: Tensor | None = None
    finite: bool | Tensor = True


class SumBackward:
    """The plain backward of ``sum_i l_i`` (MTL-SAC without aggregation); a non-finite
    loss or gradient skips the update."""

    def __call__(self, losses: Tensor, shared: list[Tensor], task: list[Tensor], records: list,
                 device_skip: bool = False) -> PlainUpdate:
        params = [*shared, *task]
        grads = torch.autograd.grad(losses.sum(), params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        ok = torch.isfinite(torch.stack([losses.detach().sum(), *torch._foreach_norm(grads)])).all()
        if device_skip:
            grads = [torch.where(ok, g, torch.zeros_like(g)) for g in grads]
        elif not bool(ok):
            return PlainUpdate(losses.detach(), finite=False)
        for p, g in zip(params, grads):
            p.grad = g
        return PlainUpdate(losses.detach(), finite=ok if device_skip else True)

    def state_tensors(self) -> dict[str, Tensor]:
        return {}

    def host_state(self) -> list[str]:
        return []

    def step(self, recompute: Callable[[], Tensor]) -> None:
        pass

    def zero_grad(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def to(self, device) -> "SumBackward":
        return self


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
class MultiTaskSAC(Agent):
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
        backward: one :class:`Backward` per component ``{"critic", "actor", "alpha"}``
            (distinct objects: they keep per-component state), or None: the plain
            backward of the summed losses everywhere (:class:`SumBackward`).
        nonfinite_skip: where a component's non-finite update is skipped (see
            :data:`NONFINITE_SKIPS`): ``"host"`` reads the finite flag (one sync per
            component); ``"device"`` steps on zeroed gradients and undoes the step on the
            device (:class:`~agents.rollback.Rollback`), with the same result.  It needs
            backwards whose state is all tensors (``host_state()`` empty).
        device: where parameters live.  On CUDA the optimisers are capturable (their step
            counts on the device).
    """

    components = COMPONENTS

    def __init__(self, obs_dim: int, act_dim: int, num_tasks: int, kind: str = "mh_sac", *,
                 hidden: int = 400, layers: int = 3, critic_hidden: int | None = None,
                 critic_layers: int | None = None, head_layers: int = 1, embedding_dim: int = 8,
                 shared_alpha: bool = False, lr: float = 3e-4, actor_lr: float | None = None,
                 critic_lr: float | None = None, alpha_lr: float | None = None,
                 betas: tuple[float, float] = (0.9, 0.999), adam_eps: float = 1e-8,
                 discount: float = 0.99, tau: float = 0.005, init_temperature: float = 1.0,
                 target_entropy: float | None = None, grad_clip: float | None = None,
                 backward: Mapping[str, Backward] | None = None, nonfinite_skip: str = "host",
                 device: str | torch.device = "cpu"):
        if kind not in KINDS:
            raise ValueError(f"unknown agent kind {kind!r}; valid: {', '.join(KINDS)}")
        if nonfinite_skip not in NONFINITE_SKIPS:
            raise ValueError(f"nonfinite_skip must be one of {', '.join(NONFINITE_SKIPS)}, got {nonfinite_skip!r}")
        self.device_skip = nonfinite_skip == "device"
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

        self.backward = self._check_backward(backward)
        for b in self.backward.values():   # the aggregators' state next to the gradients (no copies per step)
            b.to(self.device)
        if self.device_skip:
            held = {c: h for c, b in self.backward.items() if (h := b.host_state())}
            if held:
                raise ValueError("a device-side skip cannot restore host state: "
                                 + "; ".join(f"{c}: {', '.join(h)}" for c, h in held.items())
                                 + " (skip on the host instead)")

        opt = dict(betas=tuple(betas), eps=adam_eps)
        self.optimizers = {
            "critic": torch.optim.Adam(self.critic.parameters(), lr=critic_lr or lr, **opt),
            "actor": torch.optim.Adam(self.actor.parameters(), lr=actor_lr or lr, **opt),
            "alpha": torch.optim.Adam(self.temperature.parameters(), lr=alpha_lr or lr, **opt),
        }
        for o in self.optimizers.values():
            place_step_counts(o)

    # -- construction helpers -------------------------------------------------------------
    @staticmethod
    def _check_backward(spec: Mapping[str, Backward] | None) -> dict[str, Backward]:
        if spec is None:
            return {c: SumBackward() for c in COMPONENTS}
        if not isinstance(spec, Mapping):
            raise TypeError(f"backward must be a mapping component -> Backward or None, got {type(spec).__name__}")
        missing, extra = set(COMPONENTS) - set(spec), set(spec) - set(COMPONENTS)
        if missing or extra:
            raise ValueError(f"backward must name exactly the components {COMPONENTS}; "
                             f"missing {sorted(missing)}, unknown {sorted(extra)}")
        if len({id(b) for b in spec.values()}) < len(spec):
            raise ValueError("each component needs its own backward object (they keep per-component state)")
        return {c: spec[c] for c in COMPONENTS}

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
        """The update's fixed inputs: ``(target (k, b), noise (k, b, act_dim))``, the soft
        Bellman target ``r + gamma (1 - done) (min Q_targ(s', a') - alpha_i log pi(a'|s'))``
        and the noise the actor loss reparameterises with (one draw for both)."""
        k, b = reward.shape
        noise = torch.randn(k, 2 * b, self.act_dim, device=self.device)
        a, logp = self.actor.sample(next_obs, noise[:, :b])
        q_next = self.critic_target.q_values(next_obs, a).amin(dim=1)
        soft_v = q_next - self.alpha()[:, None] * logp
        target = reward + self.discount * (1.0 - done) * soft_v
        return target, noise[:, b:]

    def update(self, batch) -> dict[str, Tensor | int]:
        """One SAC update: critic, actor, temperature, then the Polyak target update.

        Returns (tensors are detached, on the agent's device; convert at log time):
        ``{c}_loss`` (k,) per-task losses and ``skipped_{c}`` (int 0/1) for each component
        c in critic / actor / alpha, ``{c}_weights`` (k,) where the backward reports weights,
        ``gram_{c}`` (k, k) float64 Gram matrix of the per-task shared gradients where the
        backward computed it (diagnostics, not a scalar to log), ``alpha`` (k,) after the
        step, ``entropy`` (k,) = -mean log pi, ``target_q`` (k,) mean soft Bellman target.
        A component whose losses or gradients are not finite is skipped (no step, grads
        cleared); a skipped critic also skips the target update.  With the device-side skip
        ``skipped_{c}`` is a 0-dim bool tensor, and nothing in the update reads a device
        value on the host.
        """
        obs, act, rew, next_obs, done = self._unpack(batch)
        target, noise = self.prepare(obs, rew, next_obs, done)
        logs: dict[str, Tensor | int] = {}
        seen: dict[str, Tensor] = {}
        alpha = self.alpha().detach()

        def actor_fn(record):
            losses, logp = actor_losses(self.actor, self.critic, obs, noise, alpha, record)
            seen.setdefault("logp", logp.detach())   # the actor step's log pi, for the temperature
            return losses

        self._component_update("critic", lambda rec: critic_losses(self.critic, obs, act, target, rec),
                               self.critic.shared_params(), self.critic.task_params(), logs)
        self._component_update("actor", actor_fn, self.actor.shared_params(), self.actor.task_params(), logs)
        logp = seen["logp"]
        gap = logp + self.target_entropy
        self._component_update("alpha", lambda rec: temperature_losses(self.temperature, gap),
                               self.temperature.shared_params(), self.temperature.task_params(), logs)

        if self.device_skip:   # the target moves by tau where the critic stepped, else by 0
            self._soft_update_target(self.tau * (~logs["skipped_critic"]).to(target.dtype))
        elif not logs["skipped_critic"]:
            self._soft_update_target(self.tau)

        logs["alpha"] = self.alpha().detach()
        logs["entropy"] = -logp.mean(-1)
        logs["target_q"] = target.mean(-1)
        return logs

    def _component_update(self, name: str, losses_fn: Callable[[list | None], Tensor], shared: dict,
                          task: dict, logs: dict) -> None:
        params = [*shared.values(), *task.values()]
        backward = self.backward[name]
        for p in params:
            p.grad = None
        backward.zero_grad()
        records: list = []
        rollback = Rollback(lambda: self._step_state(name, params)) if self.device_skip else None
        info = backward(losses_fn(records), list(shared.values()), list(task.values()), records,
                        device_skip=self.device_skip)
        logs[f"{name}_loss"] = info.losses
        if rollback is None and not info.finite:
            for p in params:
                p.grad = None
            backward.zero_grad()
            logs[f"skipped_{name}"] = 1
            return
        logs[f"skipped_{name}"] = 0 if rollback is None else ~info.finite
        if info.weights is not None:
            logs[f"{name}_weights"] = info.weights.detach().clone()
        if info.gram is not None:
            logs[f"gram_{name}"] = info.gram
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        self.optimizers[name].step()

        def recompute() -> Tensor:
            with torch.no_grad():
                return losses_fn(None)

        backward.step(recompute)
        if rollback is not None:
            rollback.unless(info.finite)

    def _step_state(self, name: str, params: list[Tensor]) -> dict[str, Tensor]:
        """Every tensor a component's step changes, by name: its parameters, their
        optimiser state and the backward's own state."""
        out = {f"param.{i}": p for i, p in enumerate(params)}
        opt_state = self.optimizers[name].state
        for i, p in enumerate(params):
            out.update({f"opt.{i}.{key}": v for key, v in opt_state.get(p, {}).items() if torch.is_tensor(v)})
        out.update({f"backward.{key}": v for key, v in self.backward[name].state_tensors().items()})
        return out

    @torch.no_grad()
    def _soft_update_target(self, tau: float | Tensor) -> None:
        target = list(self.critic_target.parameters())
        source = list(self.critic.parameters())
        # a tensor tau: one weight per tensor (the 0-dim-tensor overload reads it on the host)
        torch._foreach_lerp_(target, source, [tau] * len(target) if torch.is_tensor(tau) else tau)

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Everything needed to resume: networks, target critic, temperature, optimisers, the
        backwards' state, and the architecture config."""
        return {
            "config": dict(self.config),
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "temperature": self.temperature.state_dict(),
            "optimizers": {c: o.state_dict() for c, o in self.optimizers.items()},
            "backward": {c: b.state_dict() for c, b in self.backward.items()},
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
        for c, b in self.backward.items():
            b.load_state_dict(state["backward"][c])
        for o in self.optimizers.values():
            place_step_counts(o)

    def to(self, device: str | torch.device) -> "MultiTaskSAC":
        """Move parameters, buffers and optimiser moments (parameter objects are kept, so the
        optimisers stay valid; Adam's step counters stay where Adam wants them)."""
        self.device = torch.device(device)
        for m in (self.actor, self.critic, self.critic_target, self.temperature, *self.backward.values()):
            m.to(self.device)
        for o in self.optimizers.values():
            for st in o.state.values():
                for key, v in st.items():
                    if torch.is_tensor(v) and key != "step":
                        st[key] = v.to(self.device)
            place_step_counts(o)
        return self

    def modules(self) -> dict[str, nn.Module]:
        return {"actor": self.actor, "critic": self.critic, "critic_target": self.critic_target,
                "temperature": self.temperature}
