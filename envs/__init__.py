"""Multi-task environments (MetaWorld MT1/MT10/MT50 and a tiny test environment).

``make_env(name, protocol, seed, reward_version, **kwargs)`` returns a
:class:`MultiTaskVecEnv`: one sub-environment per task (row i = task i), episodes of all
tasks in lock step, observations without the task id, time limits as truncations only,
and ``StepResult.next_obs`` (true next observation) separate from ``StepResult.obs``
(the observation to act on, the reset observation after an episode end).

Names:
    ``point_mass``      k point-mass goal-reaching tasks (kwargs: num_tasks=4,
                        episode_length=50, ...); fixed goals, ``paper`` protocol only.
    ``mt10``, ``mt50``  MetaWorld 3 MT10 / MT50.
    ``mt1:<task>``      one MetaWorld 3 task, e.g. ``mt1:reach-v3``.

Protocols (MetaWorld):
    ``paper``       150-step episodes, one goal per task fixed for the whole run by the
                    seed (the published MT10 numbers' protocol);
    ``metaworld3``  the package defaults: 500-step episodes, a new goal variant per reset.
The reward function version ("v2" default, or "v1") matters as much as the protocol;
both, with the seed and goal policy, are in ``env.protocol``: record it with every run.
"""

from __future__ import annotations

import inspect
import operator

from .base import MultiTaskVecEnv, StepResult
from .metaworld_env import PROTOCOLS, REWARD_VERSIONS, VECTOR_STRATEGIES, MetaWorldVecEnv, metaworld_task_names
from .point_mass import PointMassEnv

ENV_NAMES = ("point_mass", "mt10", "mt50", "mt1:<task>")

__all__ = [
    "ENV_NAMES",
    "PROTOCOLS",
    "REWARD_VERSIONS",
    "MetaWorldVecEnv",
    "MultiTaskVecEnv",
    "PointMassEnv",
    "StepResult",
    "VECTOR_STRATEGIES",
    "make_env",
    "metaworld_task_names",
    "task_count",
    "vector_strategies",
]


def _check_kwargs(cls: type, kwargs: dict, fixed: tuple[str, ...]) -> None:
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *fixed)]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)} for {cls.__name__}; valid: {', '.join(allowed)}")


def task_count(name: str, **kwargs) -> int:
    """How many tasks ``make_env(name, **kwargs)`` would have, without building it."""
    key = str(name).strip().lower()
    if key == "point_mass":
        default = inspect.signature(PointMassEnv.__init__).parameters["num_tasks"].default
        return int(kwargs.get("num_tasks", default))
    if key in ("mt10", "mt50"):
        return int(key[2:])
    if key.startswith("mt1:"):
        return 1
    raise ValueError(f"unknown env {name!r}; valid: {', '.join(ENV_NAMES)} (e.g. mt1:reach-v3)")


def vector_strategies(name: str) -> tuple[str, ...]:
    """The ``vector`` strategies ``make_env(name)`` accepts: MetaWorld steps its tasks in
    this process (``"sync"``) or in subprocesses (``"async"``); point_mass in this process."""
    return ("sync",) if str(name).strip().lower() == "point_mass" else VECTOR_STRATEGIES


def make_env(
    name: str,
    protocol: str = "paper",
    seed: int = 0,
    reward_version: str = "v2",
    **kwargs,
) -> MultiTaskVecEnv:
    """Build the multi-task vector env ``name`` (one of ``ENV_NAMES``; see the module docstring).

    ``seed`` is the run's seed (for MetaWorld's ``paper`` protocol it also fixes the goals:
    build the evaluation env with the same seed).  ``kwargs`` go to the env class
    (``PointMassEnv``: num_tasks, episode_length, ...; ``MetaWorldVecEnv``: num_goals,
    vector="sync"|"async").
    Unknown names, protocols, reward versions or kwargs raise ValueError.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if reward_version not in REWARD_VERSIONS:
        raise ValueError(f"unknown reward_version {reward_version!r}; valid: {', '.join(REWARD_VERSIONS)}")
    try:
        seed_int = operator.index(seed)  # ints and NumPy integers, not floats or strings
    except TypeError:
        seed_int = -1
    if isinstance(seed, bool) or seed_int < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed = seed_int
    key = str(name).strip().lower()
    if key == "point_mass":
        if protocol != "paper":
            raise ValueError(f"point_mass has fixed goals and 50-step episodes: protocol must be 'paper', got {protocol!r}")
        if reward_version != "v2":
            raise ValueError(f"reward_version is a MetaWorld setting: point_mass must keep the default 'v2', got {reward_version!r}")
        _check_kwargs(PointMassEnv, kwargs, ("seed",))
        return PointMassEnv(seed=seed, **kwargs)
    if key in ("mt10", "mt50"):
        benchmark = key.upper()
    elif key.startswith("mt1:"):
        benchmark = key[4:]
        if benchmark not in metaworld_task_names():
            raise ValueError(f"unknown MetaWorld task {benchmark!r} in {name!r}; valid tasks: {', '.join(metaworld_task_names())}")
    else:
        raise ValueError(f"unknown env {name!r}; valid: {', '.join(ENV_NAMES)} (e.g. mt1:reach-v3)")
    _check_kwargs(MetaWorldVecEnv, kwargs, ("benchmark", "protocol", "seed", "reward_version"))
    return MetaWorldVecEnv(benchmark, protocol=protocol, seed=seed, reward_version=reward_version, **kwargs)
