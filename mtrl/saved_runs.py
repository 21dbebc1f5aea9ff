"""Reading a finished (or interrupted) run back from its directory: its config, its agent
from the checkpoint, and a fresh evaluation of that agent under a chosen protocol.

A run directory holds ``config.json`` (Hydra's ``.hydra/config.yaml`` is the fallback),
``metrics.jsonl``, ``checkpoints/latest.pt`` and, after ``scripts/evaluate.py``,
``evaluations/<protocol>-<episodes>ep-seed<seed>.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .run_files import CheckpointError, load_checkpoint
from .evaluation import evaluate, evaluate_metaworld
from . import run_files
from .trainer import ConfigError, build_agent, build_env, resolve_device

#: default episodes per task of each evaluation protocol (None: the run's train.eval_episodes)
DEFAULT_EPISODES = {"metaworld3": 50, "paper": None}


def read_config(run_dir: str | Path) -> dict:
    """The run's resolved config (:func:`run_files.read_config`) as a :class:`ConfigError`."""
    try:
        return run_files.read_config(run_dir)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def load_agent(run_dir: str | Path, env, device: torch.device):
    """The agent of the run's latest checkpoint, built for ``env``; returns ``(agent, step)``."""
    cfg = read_config(run_dir)
    path = Path(run_dir) / "checkpoints" / "latest.pt"
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: the run saved no checkpoint yet "
                              "(checkpoints are written every train.checkpoint_every steps)")
    state = load_checkpoint(path, mmap=True)
    agent = build_agent(cfg, env, device)
    try:
        agent.load_state_dict(state["agent"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path} does not fit the run's config ({exc})") from None
    return agent, int(state["step"])


def evaluate_run(run_dir: str | Path, protocol: str | None = None, episodes: int | None = None,
                 seed: int | None = None, device: str = "auto") -> dict:
    """Evaluate a saved run's agent and save the result in ``run_dir/evaluations/``.

    ``protocol``: ``metaworld3`` (default for MetaWorld envs): the package's own evaluation,
    ``metaworld.evaluation.evaluation`` with 50 episodes per task and a fresh goal variant
    at every reset; ``paper``: the training-time evaluation of the published numbers
    (fixed goals, 150-step episodes, ``train.eval_episodes`` episodes per task).
    ``seed`` (default: the run's) fixes the benchmark's goal variants.
    """
    cfg = read_config(run_dir)
    env_cfg = cfg["env"]
    metaworld = env_cfg["name"] != "point_mass"
    protocol = protocol or ("metaworld3" if metaworld else env_cfg["protocol"])
    if protocol not in DEFAULT_EPISODES:
        raise ConfigError(f"unknown evaluation protocol {protocol!r}; valid: {', '.join(DEFAULT_EPISODES)}")
    if protocol == "metaworld3" and not metaworld:
        raise ConfigError(f"the metaworld3 protocol needs a MetaWorld env, this run used {env_cfg['name']}; "
                          "use --protocol paper")
    if episodes is None:
        episodes = DEFAULT_EPISODES[protocol] or int(cfg["train"]["eval_episodes"])
    if episodes < 1:
        raise ConfigError(f"episodes must be >= 1, got {episodes}")
    seed = int(cfg["seed"] if seed is None else seed)
    dev = resolve_device(device)
    env = build_env(env_cfg, seed, protocol=protocol)
    try:
        agent, step = load_agent(run_dir, env, dev)
        t0 = time.perf_counter()
        if protocol == "metaworld3":
            res = evaluate_metaworld(agent, env, episodes, dev)
        else:
            res = evaluate(agent, env, episodes, seed=seed, device=dev)
        seconds = time.perf_counter() - t0
        record = {
            "run_dir": str(run_dir),
            "checkpoint_step": step,
            "evaluation_protocol": protocol,
            "episodes_per_task": episodes,
            "seed": seed,
            "tasks": list(env.task_names),
            "success": res.success.tolist(),
            "mean_success": res.mean_success,
            "returns": res.returns.tolist(),
            "seconds": seconds,
            "env_protocol": env.protocol,
        }
    finally:
        env.close()
    out = Path(run_dir) / "evaluations" / f"{protocol}-{episodes}ep-seed{seed}.json"
    out.parent.mkdir(exist_ok=True)
    run_files.write_json_atomic(out, record)
    record["path"] = str(out)
    return record
