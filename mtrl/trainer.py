"""The multi-task SAC training loop.

One *step* is one step of the vector env of all k tasks (k transitions) and one update
(after ``seed_steps`` steps of uniform random actions).  The action is computed first; the
update then runs while the envs simulate the step (``env.vector=async``: in subprocesses),
on a batch of the transitions before it.  Episodes of all tasks
run in lock step; evaluation and checkpoints happen at episode boundaries, and every
episode starts from ``env.reset(seed=f(run seed, episode index))``, so a run resumed from
a checkpoint continues exactly as the uninterrupted run would have (bit-identical on CPU).

The config is a plain nested dict (Hydra's, converted): keys ``seed``, ``device``,
``env``, ``agent``, ``aggregator``, ``train``, ``performance`` (see ``configs/train.yaml``).
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import envs
from agents import Agent
from aggregators import diagnostics

from . import components, config_checks
from .aggregation import ComponentBackward, host_state
from .run_files import CheckpointError, load_checkpoint, save_checkpoint
from .compiled_update import compile_update
from .host_memory import keep_freed_memory
from .configuration import ConfigError, build_aggregator, resolve_device
from .run_identity import RL_KEYS, check_continuation
from .evaluation import evaluate, success_drops
from .metrics_log import RunLogger
from .replay import ReplayBuffer
from .skip_count import SkipCount

#: format 4: the update of a step runs while the step's transition is being simulated
#: (it samples the transitions before it), so a format-3 run would continue differently
CHECKPOINT_FORMAT = 4
#: ``env.vector: auto`` steps MetaWorld in subprocesses from this many cores
ASYNC_MIN_CORES = 4


class NonFiniteError(RuntimeError):
    """Too many consecutive updates with non-finite losses or gradients."""


def _episode_seed(seed: int, episode: int) -> int:
    return (seed * 1_000_003 + episode) % (2**31 - 1)


def prepare_config(cfg: dict) -> dict:
    """The checked config a run uses (:func:`mtrl.config_checks.prepare` with the RL rules,
    presets applied, every aggregator hyper-parameter written out) and the batch / buffer
    split over the env's tasks.  Every bad value is a one-line :class:`ConfigError`."""
    cfg = config_checks.prepare(cfg, config_checks.RL_RULES)
    # any agent's options typed by its constructor's defaults (RL_RULES add MultiTaskSAC's ranges)
    agent_cls = components.target_of(cfg["agent"], "agent", Agent)
    config_checks.check_option_types("agent", cfg["agent"], components.accepted_options(agent_cls))
    e = cfg["env"]
    try:
        k = envs.task_count(e["name"], **e.get("kwargs", {}))
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    config_checks.check_task_split(cfg, k)
    vector_strategy(e)              # a strategy the env cannot take, before the run directory
    aggs = component_aggregators(cfg, k)   # the methods' needs against the SAC losses, before any work
    nonfinite_skip(cfg, resolve_device(str(cfg.get("device", "auto"))), aggs)
    return cfg


def nonfinite_skip(cfg: dict, device: torch.device, aggs: dict) -> str:
    """``train.nonfinite_skip`` resolved: ``auto`` skips a non-finite update on the device
    (no host sync in the update) on CUDA where every component's aggregator keeps its state
    in tensors, else on the host (on the CPU a sync costs nothing); ``device`` with an
    aggregator that keeps host state is a ConfigError."""
    choice = cfg.get("train", {}).get("nonfinite_skip", "auto")
    held = [h for agg in aggs.values() for h in host_state(agg)]
    if choice == "auto":
        return "device" if device.type == "cuda" and not held else "host"
    if choice == "device" and held:
        raise ConfigError(f"train.nonfinite_skip=device cannot restore the host state of {', '.join(held)}; "
                          "use train.nonfinite_skip=host or auto")
    return choice


def vector_strategy(env_cfg: dict) -> str:
    """``env.vector`` resolved: ``auto`` steps the tasks in subprocesses where the env can
    (MetaWorld) and the machine has at least :data:`ASYNC_MIN_CORES` cores for this
    process, else in this process; a strategy the env cannot take is a ConfigError."""
    choice = env_cfg.get("vector", "auto")
    allowed = envs.vector_strategies(env_cfg["name"])
    if choice == "auto":
        return "async" if "async" in allowed and len(os.sched_getaffinity(0)) >= ASYNC_MIN_CORES else "sync"
    if choice not in allowed:
        raise ConfigError(f"{env_cfg['name']} steps in this process: env.vector must be sync or auto, got {choice!r}")
    return choice


def uniform_actions(env, generator: torch.Generator) -> np.ndarray:
    """``(k, act_dim)`` float32 actions drawn uniformly in the env's action box (the
    random phase of training; the simulator floor of ``scripts/bench_train.py``)."""
    u = torch.rand((env.num_tasks, env.act_dim), generator=generator, dtype=torch.float64).numpy()
    return (env.action_low + u * (env.action_high - env.action_low)).astype(np.float32)


def build_env(env_cfg: dict, seed: int, protocol: str | None = None, vector: str = "sync"):
    """The env of an ``env`` config (``protocol`` replaces the config's when given;
    ``vector``: ``sync`` or ``async``, see :func:`vector_strategy`)."""
    kwargs = dict(env_cfg.get("kwargs", {}))
    if vector != "sync":
        kwargs["vector"] = vector
    try:
        return envs.make_env(env_cfg["name"], protocol=protocol or env_cfg["protocol"], seed=seed,
                             reward_version=env_cfg.get("reward_version", "v2"), **kwargs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def build_agent(cfg: dict, env, device: torch.device) -> Agent:
    """The run's agent for ``env`` (also used to load a saved run for evaluation): the
    :class:`~agents.Agent` that ``agent._target_`` names, built with the env's sizes and
    one :class:`~mtrl.aggregation.ComponentBackward` per component; it skips non-finite
    updates where :func:`nonfinite_skip` says (``agent.device_skip``)."""
    aggs = component_aggregators(cfg, env.num_tasks)
    skip = nonfinite_skip(cfg, device, aggs)
    t = cfg.get("train", {})
    backward = {c: ComponentBackward(aggs[c], t.get("task_grads", "own"), t.get("per_task_grads", "auto"))
                for c in aggs}
    return components.build(cfg["agent"], "agent", base=Agent, obs_dim=env.obs_dim, act_dim=env.act_dim,
                            num_tasks=env.num_tasks, backward=backward, nonfinite_skip=skip, device=device,
                            catch=(TypeError, ValueError, RuntimeError))


def component_aggregators(cfg: dict, k: int) -> dict:
    """The configured aggregator on the agent's components listed in ``aggregate``, LS on
    the others; a method whose declared needs the SAC losses cannot meet is a ConfigError."""
    every = components.target_of(cfg["agent"], "agent", Agent).components
    aggregated = list(cfg.get("aggregate", every))
    unknown = sorted(set(aggregated) - set(every))
    if unknown:
        raise ConfigError(f"aggregate lists unknown component(s) {unknown}; valid: {', '.join(every)}")
    aggs = {c: build_aggregator(cfg["aggregator"] if c in aggregated else {"name": "ls"}, k) for c in every}
    name = cfg["aggregator"]["name"]
    if any(aggs[c].has_lower_level for c in aggregated):
        raise ConfigError(f"{name}'s lower level needs the task heads' gradients through the representation "
                          "with a second-order term, which for the SAC actor runs through the critic; it is "
                          "not supported on MT10: use pivrg (ConsMTL's upper level is PIVRG with omega = 1)")
    if "actor" in aggregated and aggs["actor"].needs_positive_losses:
        raise ConfigError(f"{name} takes the log of the losses and the SAC actor loss is negative: "
                          f"use aggregate=[critic] (FAMO's MT10 setting) or aggregate=[critic,alpha]")
    return aggs


class Trainer:
    def __init__(self, cfg: dict, run_dir: str | Path):
        cfg = prepare_config(copy.deepcopy(cfg))
        keep_freed_memory()
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.seed = int(cfg["seed"])
        self.device = resolve_device(str(cfg.get("device", "auto")))
        t = cfg["train"]
        self.total_steps = int(t["steps"])
        self.seed_steps = int(t["seed_steps"])
        #: the first update needs two transitions; it runs ``initial_updates`` updates
        self.first_update = max(self.seed_steps, 2)
        self.initial_updates = int(t.get("initial_updates", 1))
        self.batch_size = int(t["batch_size"])
        self.eval_every = int(t["eval_every"])
        self.eval_episodes = int(t["eval_episodes"])
        self.checkpoint_every = int(t["checkpoint_every"])
        self.checkpoint_seconds = 60.0 * float(t.get("checkpoint_minutes", 20))
        self.diagnostics_every = int(t["diagnostics_every"])
        self.log_every = int(t.get("log_every", 100))
        self.max_nonfinite = int(t.get("max_nonfinite", 100))

        self._seed_everything(self.seed)
        e = cfg["env"]
        self.vector = vector_strategy(e)
        self.env = build_env(e, self.seed, vector=self.vector)
        self.eval_env = build_env(e, self.seed)
        k = self.env.num_tasks
        expected = e.get("num_tasks")
        if expected is not None and int(expected) != k:
            raise ConfigError(f"env {e['name']} has {k} tasks but the config says num_tasks={expected}; fix env.num_tasks")
        self.num_tasks = k
        ref = cfg.get("performance", {}).get("reference_success", 1.0)
        ref = np.broadcast_to(np.asarray(ref, dtype=np.float64), (k,)).copy() if np.ndim(ref) == 0 or len(ref) == k else None
        if ref is None or not (ref > 0).all():
            raise ConfigError(f"performance.reference_success must be one positive number or {k} of them")
        self.reference_success = ref
        perf = cfg.get("performance", {})
        self.performance_source = perf.get("source", "eval")
        self.performance_window = int(perf.get("window", 50))
        #: success (0/1) of the last training episodes, one row per episode (train_window source)
        self.train_success: list[list[float]] = []
        self.fed_success: list[float] | None = None

        self.agent = build_agent(cfg, self.env, self.device)
        #: where a non-finite update is skipped: "host" or "device" (no sync in the update)
        self.nonfinite_skip = "device" if self.agent.device_skip else "host"
        #: ``train.compile``: the agent's update stays eager or is replaced by its compiled form
        self.compile = str(t.get("compile", "off"))
        self.agent.update = compile_update(self.agent.update, self.compile)
        #: the aggregator of each component (the agent holds them inside its backwards)
        self.aggregators = {c: b.aggregator for c, b in self.agent.backward.items()}
        self.buffer = ReplayBuffer(k, self.env.obs_dim, self.env.act_dim, int(t["buffer_size"]), self.device)
        self.sample_gen = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        self.action_gen = torch.Generator().manual_seed(self.seed + 2)
        self.step = 0
        self.episode = 0
        self.skips = SkipCount(self.max_nonfinite)
        self.best_mean_success = -math.inf
        self.last_eval = None
        #: every evaluation record written so far (saved in the checkpoint: metrics.jsonl is restored from it)
        self.evaluations: list[dict] = []
        self.wall_time = 0.0

        self.ckpt_path = self.run_dir / "checkpoints" / "latest.pt"
        resumed = self.ckpt_path.exists()
        #: config values changed since the checkpoint (the documented resumable keys)
        self.changed: list[tuple[str, object, object]] = []
        if resumed:
            self._restore(load_checkpoint(self.ckpt_path))
        self.log = RunLogger(self.run_dir, resume_step=self.step if resumed else None,
                             evaluations=self.evaluations if resumed else None)
        self.log.save_config(self.cfg, self.step, self.changed)
        self.resumed = resumed

    # -- reproducibility ----------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _state(self) -> dict:
        self._read_skips()
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg,
            "step": self.step,
            "episode": self.episode,
            "agent": self.agent.state_dict(),
            "buffer": self.buffer.state_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "numpy": np.random.get_state(),
                "python": random.getstate(),
                "sample": self.sample_gen.get_state(),
                "action": self.action_gen.get_state(),
            },
            "nonfinite_total": self.skips.total,
            "best_mean_success": self.best_mean_success,
            "last_eval": self.last_eval,
            "evaluations": self.evaluations,
            "wall_time": self.wall_time,
            "train_success": self.train_success,
            "fed_success": self.fed_success,
        }

    def _restore(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{self.ckpt_path} has format {state.get('format')}, this trainer writes "
                                  f"{CHECKPOINT_FORMAT}; use a new run directory")
        try:
            self.changed = check_continuation(state["config"], self.cfg, RL_KEYS, str(self.ckpt_path))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        # the learning rates of this config, not the checkpoint's (resuming with a lower rate
        # after a non-finite stop is what the error message advises)
        lrs = {c: [g["lr"] for g in o.param_groups] for c, o in self.agent.optimizers.items()}
        try:
            self.agent.load_state_dict(state["agent"])
            self.buffer.load_state_dict(state["buffer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{self.ckpt_path} does not fit this run ({exc}); use a new run directory") from None
        for c, o in self.agent.optimizers.items():
            for g, lr in zip(o.param_groups, lrs[c]):
                g["lr"] = lr
        self.step, self.episode = int(state["step"]), int(state["episode"])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.sample_gen.set_state(rng["sample"])
        self.action_gen.set_state(rng["action"])
        self.skips = SkipCount(self.max_nonfinite, int(state["nonfinite_total"]))
        self.best_mean_success = float(state["best_mean_success"])
        self.last_eval = state["last_eval"]
        self.evaluations = list(state["evaluations"])
        self.wall_time = float(state["wall_time"])
        self.train_success = state["train_success"]
        self.fed_success = state["fed_success"]

    @property
    def learning_rate(self) -> float:
        """The critic optimiser's learning rate (``agent.lr`` unless ``agent.critic_lr`` is set)."""
        return float(self.agent.optimizers["critic"].param_groups[0]["lr"])

    def save_checkpoint(self) -> None:
        save_checkpoint(self._state(), self.ckpt_path)

    # -- the loop -------------------------------------------------------------------------
    def _updates(self) -> None:
        """The step's update; at the first update step, ``initial_updates`` of them (the
        reference code's burst of ``seed_steps`` updates on the random transitions)."""
        n = self.initial_updates if self.step == self.first_update else 1
        for i in (range(n) if n == 1 else tqdm(range(n), desc="initial updates", unit="update", leave=False,
                                                dynamic_ncols=True, mininterval=1.0)):
            self._update(log=i == n - 1)

    def _update(self, log: bool = True) -> None:
        batch = self.buffer.sample(self.batch_size, self.sample_gen)
        info = self.agent.update(batch)
        flags = [info[f"skipped_{c}"] for c in self.agent.components]
        if self.agent.device_skip:   # counted on the device, read at log time
            self.skips.add(torch.stack(flags).any())
        elif any(flags):
            self.skips.add(True)
            self._read_skips()
            return
        else:
            self.skips.add(False)
        if not log:
            return
        if self.step % self.log_every == 0:
            self._read_skips()
            self.log.scalars(self._loggable(info), self.step)
        if self.diagnostics_every > 0 and self.step % self.diagnostics_every == 0:
            for c in self.agent.components:
                gram = info.get(f"gram_{c}")
                if gram is not None and gram.shape[0] > 1:
                    self.log.scalars({f"diagnostics/{c}/{key}": v
                                      for key, v in diagnostics.summary(gram, is_gram=True).items()}, self.step)

    def _read_skips(self) -> None:
        """The skip counts on the host (the device-side skip's one sync, at log time): a
        new skip is logged, and ``max_nonfinite`` consecutive ones stop the run."""
        before = self.skips.total
        self.skips.read()
        if self.skips.total != before:
            self.log.scalars({"train/nonfinite_updates": self.skips.total}, self.step)
        if self.skips.exceeded:
            raise NonFiniteError(
                f"{self.skips.peak} consecutive updates had non-finite losses or gradients "
                f"(by step {self.step}); the last good checkpoint is {self.ckpt_path}. Lower the learning "
                f"rate (agent.lr, now {self.learning_rate:g}) or check the rewards, then resume this "
                f"run directory ({self.run_dir})"
            )
        self.skips.reset_peak()

    def _loggable(self, info: dict) -> dict[str, float]:
        out = {}
        names = self.env.task_names
        for key, value in info.items():
            if key.startswith("gram_") or value is None:
                continue
            if torch.is_tensor(value) and value.numel() > 1:
                for i, v in enumerate(value.detach().flatten().tolist()):
                    out[f"{key}/{names[i] if value.numel() == len(names) else i}"] = v
            else:
                out[f"train/{key}" if "/" not in key else key] = float(value)
        return out

    def _feed_performance(self, success: np.ndarray) -> None:
        """PIVRG's signal: ``dm_i = 100 (s_ref_i - s_i) / s_ref_i`` to every
        performance-informed aggregator, whenever the success rates changed."""
        success = [float(x) for x in success]
        if success == self.fed_success:
            return
        self.fed_success = success
        dm = torch.as_tensor(success_drops(np.asarray(success), self.reference_success))
        for agg in self.aggregators.values():
            if agg.uses_performance:
                agg.update_performance(dm)

    def _end_training_episode(self, hit: np.ndarray) -> None:
        """Record a training episode's per-task success; with ``performance.source:
        train_window`` feed the success rate over the last ``window`` episodes."""
        self.log.scalars({"train/episode_success": float(hit.mean())}, self.step)
        if self.performance_source != "train_window":
            return
        self.train_success.append(hit.astype(float).tolist())
        del self.train_success[:-self.performance_window]
        self._feed_performance(np.mean(self.train_success, axis=0))

    def _evaluate(self) -> dict:
        res = evaluate(self.agent, self.eval_env, self.eval_episodes, seed=_episode_seed(self.seed + 7919, self.step),
                       device=self.device)
        record = {
            "step": self.step,
            "tasks": list(self.env.task_names),
            "success": res.success.tolist(),
            "mean_success": res.mean_success,
            "returns": res.returns.tolist(),
            "wall_time": self.wall_time,
        }
        if self.performance_source == "eval":
            self._feed_performance(res.success)
        if self.fed_success is not None:
            record["delta_m"] = success_drops(np.asarray(self.fed_success), self.reference_success).tolist()
        for c in self.agent.components:
            agg = self.aggregators[c]
            if agg.uses_performance:
                record.setdefault("omega", agg.omega.tolist())
                record.setdefault("temperature", agg.temperature)
            if agg.weights is not None:
                record.setdefault("weights", {})[c] = agg.weights.detach().cpu().tolist()
        self.best_mean_success = max(self.best_mean_success, res.mean_success)
        self.last_eval = record
        self.evaluations.append(record)
        self.log.evaluation(record)
        scal = {"eval/mean_success": res.mean_success, "eval/best_mean_success": self.best_mean_success}
        for name, s, r in zip(self.env.task_names, res.success, res.returns):
            scal[f"eval/success/{name}"] = float(s)
            scal[f"eval/return/{name}"] = float(r)
        if "omega" in record:
            scal.update({f"pivrg/omega/{n}": w for n, w in zip(self.env.task_names, record["omega"])})
            scal["pivrg/temperature"] = record["temperature"]
        self.log.scalars(scal, self.step)
        return record

    def train(self) -> dict | None:
        """Run (or continue) training to ``train.steps``; returns the last evaluation."""
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   mininterval=1.0)
        next_eval = (self.step // self.eval_every + 1) * self.eval_every
        last_ckpt, last_ckpt_time = self.step, time.monotonic()
        try:
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                obs = self.env.reset(seed=_episode_seed(self.seed, self.episode))
                hit = np.zeros(self.num_tasks, dtype=bool)
                for _ in range(self.env.max_episode_steps):
                    if self.step < self.seed_steps:
                        action = uniform_actions(self.env, self.action_gen)
                    else:
                        with torch.no_grad():
                            action = self.agent.act(torch.as_tensor(obs, device=self.device), deterministic=False)
                        action = action.cpu().numpy()
                    # The step's update runs while its transition is simulated (in subprocesses
                    # with env.vector=async): it samples the transitions before this one, in
                    # either strategy, so both give the same run.
                    self.env.step_async(action)
                    self.step += 1
                    if self.step >= self.first_update:
                        self._updates()
                    res = self.env.step_wait()
                    self.buffer.add(obs, action, res.reward, res.next_obs, res.terminated)
                    obs = res.obs
                    hit |= res.success.astype(bool)
                    bar.update()
                    if self.step >= self.total_steps or bool(np.all(res.terminated | res.truncated)):
                        break
                self.episode += 1
                self._end_training_episode(hit)
                self.wall_time += time.perf_counter() - t0
                if self.step >= next_eval or self.step >= self.total_steps:
                    rec = self._evaluate()
                    bar.set_postfix(success=f"{rec['mean_success']:.2f}", best=f"{self.best_mean_success:.2f}")
                    next_eval = (self.step // self.eval_every + 1) * self.eval_every
                if (self.step - last_ckpt >= self.checkpoint_every or self.step >= self.total_steps
                        or time.monotonic() - last_ckpt_time >= self.checkpoint_seconds):
                    self.save_checkpoint()
                    last_ckpt, last_ckpt_time = self.step, time.monotonic()
            self.log.save_status("finished", self.step)
        finally:
            bar.close()
            self.log.flush()
        return self.last_eval

    def close(self) -> None:
        self.log.close()
        self.env.close()
        self.eval_env.close()


def format_success_table(record: dict, evaluations: list[dict] | None = None) -> str:
    """The per-task success table of ``record`` printed at the end of a run (and by the
    evaluator); with the run's ``evaluations``, the best mean success over training and
    the step of its first evaluation."""
    width = max(len(t) for t in record["tasks"])
    lines = [f"{'task':<{width}}  success", "-" * (width + 9)]
    lines += [f"{t:<{width}}  {s:7.2f}" for t, s in zip(record["tasks"], record["success"])]
    lines.append("-" * (width + 9))
    note = f"   (step {record['step']:,}"
    if evaluations:
        best = max(evaluations, key=lambda r: r["mean_success"])   # the first of equal ones
        note += f"; best over training: {best['mean_success']:.2f} at step {best['step']:,}"
    lines.append(f"{'mean':<{width}}  {record['mean_success']:7.2f}{note})")
    return "\n".join(lines)
