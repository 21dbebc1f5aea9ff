"""MetaWorld 3.x benchmarks (MT10, MT50, MT1) as a :class:`MultiTaskVecEnv`.

The environments are built by the package's own machinery: ``gym.make_vec("Meta-World/MT10"
| "Meta-World/MT50", vector_strategy=...)`` and, for a single task,
``metaworld.make_mt_envs(<task>)`` inside a gymnasium vector env.  ``vector="sync"`` steps
every task in this process; ``"async"`` (gymnasium's ``AsyncVectorEnv``) one subprocess per
task, and ``step_async`` returns while they step.  Each
sub-environment is the package's wrapper stack around one v3 task: ``TimeLimit`` ->
``AutoTerminateOnSuccessWrapper`` (off) -> ``RecordEpisodeStatistics`` -> task-select
wrapper -> ``CheckpointWrapper``.  The vector auto-resets in gymnasium's ``SAME_STEP`` mode
(the package default): an ending sub-environment is reset inside ``step`` and its last
observation and info come back under ``final_obs`` / ``final_info``; this class turns
them into ``StepResult.next_obs`` and ``StepResult.success``.

Goals.  For a seed s the benchmark draws 50 goal variants per task (``metaworld._make_tasks``,
NumPy's global RNG seeded with s and restored afterwards); every sub-environment is seeded
with s (``SawyerXYZEnv.seed``), and its task-select wrapper draws variants with that RNG.

Protocols (see docs/rl_protocol.md):

``paper`` -- the protocol of the published MT10 numbers (mtrl and the methods built on it):
    * 150-step episodes (``max_episode_steps=150``; the env's own limit is 500, so it is
      never reached); the time limit is a truncation, never terminal;
    * ONE goal per task for the whole run: ``task_select="pseudorandom"`` (the
      ``PseudoRandomTaskSelectWrapper`` changes the goal only when ``sample_tasks`` is
      called explicitly) and one ``sample_tasks()`` per task at construction, which
      shuffles that task's variants with the seeded env RNG and takes the first.  Every
      later reset keeps that goal, so an evaluation env built with the same seed has the
      same goals, and a different seed gives different goals.  MetaWorld's resets are
      otherwise deterministic: each episode of a task starts from the same state.
``metaworld3`` -- the MetaWorld 3 package defaults (the Meta-World+ setting, without the
    one-hot that the package's ``use_one_hot`` would append):
    * 500-step episodes (the env's ``max_path_length``), truncation only;
    * ``task_select="random"``: a new goal variant (uniform over the 50) at every reset.

Both: 39-dim observations (hand, gripper, two object poses, the previous frame's 18
values, the goal position), no task id; 4-dim actions in [-1, 1]; reward function
``reward_function_version`` "v2" (the package default, rewards in [0, 10]) or "v1";
``terminate_on_success=False``; ``success`` is ``info["success"]`` of each step.  Every
task's episode has the same length, so all tasks end together.

Cost on this machine (one CPU core): MT10 construction about 5 s (more than half of it
the package's 500 goal-generating resets), MT50 about 28 s (12 s with num_goals=1);
MT10 runs about 320 vector steps per second, and a reset of all 10 tasks takes 60 ms.
On 2 cores (measured 2026-12-03, a slower day): a sync MT10 step 9 ms, an async one 6 ms
(the 10 subprocesses on both cores), async construction 9.5 s against 5 s.  ``num_goals`` (default 50, the package's value) sets the number of goal
variants drawn per task; fewer makes construction faster and is recorded in ``protocol``.
"""

from __future__ import annotations

import contextlib
from functools import partial
from importlib import metadata
from typing import Any, Iterator

import gymnasium as gym
import numpy as np

from .base import MultiTaskVecEnv, StepResult

PROTOCOLS = ("paper", "metaworld3")
REWARD_VERSIONS = ("v2", "v1")
PAPER_EPISODE_LENGTH = 150
VECTOR_STRATEGIES = ("sync", "async")


@contextlib.contextmanager
def _goal_variants(num_goals: int) -> Iterator[None]:
    """Set the package's number of goal variants per task for one construction.

    The registered ``Meta-World/*`` entry points accept ``num_goals`` but assign it to the
    module global ``metaworld._N_GOALS`` for good, which would change every later
    construction in the process; this sets it and restores it afterwards.
    """
    import metaworld

    old = metaworld._N_GOALS
    metaworld._N_GOALS = int(num_goals)
    try:
        yield
    finally:
        metaworld._N_GOALS = old


def metaworld_task_names() -> list[str]:
    """Names of all MetaWorld v3 tasks (valid ``mt1:<task>`` names)."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS)


class MetaWorldVecEnv(MultiTaskVecEnv):
    """MT10, MT50 or MT1 under the ``paper`` or ``metaworld3`` protocol (see the module docstring).

    Args:
        benchmark: "MT10", "MT50" or a v3 task name (MT1), e.g. "reach-v3".
        protocol: "paper" or "metaworld3".
        seed: the run's seed; fixes the goal variants, the paper protocol's goals and the
            env RNGs.
        reward_version: "v2" (default) or "v1".
        num_goals: goal variants drawn per task (package default 50).
        vector: ``"sync"`` (all tasks in this process) or ``"async"`` (one subprocess per
            task, gymnasium's ``AsyncVectorEnv``): the same transitions either way, and with
            ``step_async`` / ``step_wait`` the tasks step while the caller works.
    """

    def __init__(
        self,
        benchmark: str,
        protocol: str = "paper",
        seed: int = 0,
        reward_version: str = "v2",
        num_goals: int = 50,
        vector: str = "sync",
    ):
        import metaworld  # registers the Meta-World/* ids

        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
        if reward_version not in REWARD_VERSIONS:
            raise ValueError(f"unknown reward_version {reward_version!r}; valid: {', '.join(REWARD_VERSIONS)}")
        if vector not in VECTOR_STRATEGIES:
            raise ValueError(f"unknown vector strategy {vector!r}; valid: {', '.join(VECTOR_STRATEGIES)}")
        if int(num_goals) < 1:
            raise ValueError(f"num_goals must be >= 1, got {num_goals}")
        multi = benchmark in ("MT10", "MT50")
        if not multi and benchmark not in metaworld_task_names():
            raise ValueError(f"unknown MetaWorld task {benchmark!r}; valid: {', '.join(metaworld_task_names())}")

        self.seed = int(seed)
        paper = protocol == "paper"
        env_kwargs: dict[str, Any] = dict(
            seed=self.seed,
            use_one_hot=False,
            terminate_on_success=False,
            reward_function_version=reward_version,
            task_select="pseudorandom" if paper else "random",
            max_episode_steps=PAPER_EPISODE_LENGTH if paper else None,  # None: max_path_length
        )
        same_step = gym.vector.AutoresetMode.SAME_STEP
        with _goal_variants(num_goals):
            if multi:
                vec = gym.make_vec(f"Meta-World/{benchmark}", vector_strategy=vector, autoreset_mode=same_step, **env_kwargs)
            else:
                # The registered Meta-World/MT1 id is a single-env entry point: gym.make would
                # add its env checker and turn max_episode_steps into an extra outer TimeLimit.
                # make_mt_envs(<task>) is what the MT10/MT50 vector builds for each task.
                vectorizer = gym.vector.AsyncVectorEnv if vector == "async" else gym.vector.SyncVectorEnv
                vec = vectorizer([partial(metaworld.make_mt_envs, benchmark, env_id=0, **env_kwargs)],
                                 autoreset_mode=same_step)
        self._vec = vec
        if paper:
            # Choose each task's one goal now; the pseudorandom wrapper keeps it on resets.
            vec.call("sample_tasks")

        self.num_tasks = vec.num_envs
        self.task_names = [tasks[0].env_name for tasks in vec.get_attr("tasks")]
        self.obs_dim = int(np.prod(vec.single_observation_space.shape))
        self.act_dim = int(np.prod(vec.single_action_space.shape))
        self.action_low = np.asarray(vec.single_action_space.low, dtype=np.float32)
        self.action_high = np.asarray(vec.single_action_space.high, dtype=np.float32)
        limits = set(vec.get_attr("_max_episode_steps"))
        assert len(limits) == 1, f"tasks with different episode lengths: {limits}"
        self.max_episode_steps = limits.pop()
        path_length = min(vec.get_attr("max_path_length"))
        assert self.max_episode_steps <= path_length, "episodes would step past MetaWorld's max_path_length"

        name = benchmark.lower() if multi else f"mt1:{benchmark}"
        self.protocol = {
            "env": name,
            "benchmark": benchmark if multi else "MT1",
            "protocol": protocol,
            "num_tasks": self.num_tasks,
            "tasks": list(self.task_names),
            "episode_length": self.max_episode_steps,
            "time_limit": "truncation (not terminal)",
            "reward_version": reward_version,
            "goal_policy": (
                "fixed: one goal per task for the whole run, chosen from the seed (pseudorandom task select, sampled once)"
                if paper
                else "random: a new goal variant at every reset (task_select=random)"
            ),
            "num_goal_variants": int(num_goals),
            "terminate_on_success": False,
            "task_id_in_obs": False,
            "obs_dim": self.obs_dim,
            "autoreset": "same_step",
            "package": f"metaworld {_version('metaworld')}, gymnasium {_version('gymnasium')}",
            "seed": self.seed,
        }
        self._needs_reset = True

    @property
    def vector_env(self):
        """The package's gymnasium vector env (for ``metaworld.evaluation``)."""
        return self._vec

    def goal_positions(self) -> np.ndarray:
        """(k, 3) goal position of each task's current episode."""
        return np.stack([np.asarray(p, dtype=np.float64) for p in self._vec.get_attr("_target_pos")])

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is not None:
            # MetaWorld ignores reset(seed=...); the package seeds through SawyerXYZEnv.seed,
            # with the same seed for every task (as make_mt_envs does at construction).
            self._vec.call("seed", int(seed))
        obs, _ = self._vec.reset()
        self._needs_reset = False
        return np.asarray(obs, dtype=np.float32)

    @property
    def _is_async(self) -> bool:
        return isinstance(self._vec, gym.vector.AsyncVectorEnv)

    def step(self, actions: np.ndarray) -> StepResult:
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        return self._result(*self._vec.step(self._prepare_actions(actions)))

    def step_async(self, actions: np.ndarray) -> None:
        if not self._is_async:
            return super().step_async(actions)
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        self._vec.step_async(self._prepare_actions(actions))

    def step_wait(self) -> StepResult:
        return self._result(*self._vec.step_wait()) if self._is_async else super().step_wait()

    def _result(self, obs, reward, terminated, truncated, info) -> StepResult:
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        done = terminated | truncated
        obs = np.asarray(obs, dtype=np.float32)
        next_obs = obs.copy()
        success = np.zeros(self.num_tasks, dtype=bool)
        if "success" in info:  # tasks still running: this step's info
            m = info["_success"]
            success[m] = info["success"][m] > 0
        if done.any():
            if not done.all():
                raise RuntimeError(f"episodes out of lock step: done={done}")
            final_info = info["final_info"]
            for i in np.flatnonzero(info["_final_obs"]):
                next_obs[i] = info["final_obs"][i]
                success[i] = final_info["success"][i] > 0
        return StepResult(
            next_obs=next_obs,
            reward=np.asarray(reward, dtype=np.float32),
            terminated=terminated,
            truncated=truncated,
            success=success,
            obs=obs,
        )

    def close(self) -> None:
        self._vec.close()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
