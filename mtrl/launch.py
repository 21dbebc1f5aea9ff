"""What both training scripts do around a run: name its directory from its identity, check
its config, claim the directory, refuse to continue it under another config, skip it when
it is finished, and report failures (one line; exit code 2 for bad configuration, 1 for a
failed run; in a sweep the failure goes to ``status.json`` and the other runs go on).

Order (every check before any file of the run is touched):

1. ``prepare(config)``: every value checked, presets applied (exit 2 on a bad value);
2. the lock (:mod:`mtrl.run_lock`): a directory in use by another live process is left
   alone (exit 2; in a sweep the run is reported as running);
3. temporary files of killed writes are removed;
4. the directory's ``config.json`` against this config (:mod:`mtrl.run_identity`):
   any difference outside the driver's resumable keys is refused, naming the key;
5. a run whose ``status.json`` says it finished this length is skipped;
6. the run itself.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Callable

from .run_files import CheckpointError
from .configuration import SETTING, ConfigError
from .run_files import DiskFullError, read_config, remove_temp_files, run_is_finished, write_status
from .run_identity import META_KEY, POLICIES, KeyPolicy, check_continuation, config_hash, run_name
from .run_lock import RunLock, RunLocked


class RunFailed(RuntimeError):
    """A run that started and failed (non-finite updates, ...): exit code 1, status ``failed``."""


def _resolve_run_name(driver: str, method, *, _root_) -> str:
    """``${run_name:<driver>,<method>}`` in the configs' ``hydra.run.dir`` and
    ``hydra.sweep.subdir``: ``<method>[-<typed override>...]-<config hash>``
    (:func:`mtrl.run_identity.run_name` under the driver's :data:`POLICIES` entry)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig, ListConfig, OmegaConf

    config = {k: (OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v)
              for k, v in _root_.items() if k != "hydra"}
    try:
        overrides = list(HydraConfig.get().overrides.task)
    except ValueError:   # outside a Hydra job
        overrides = []
    return run_name(str(method), overrides, config, POLICIES[driver])


def register_run_name() -> None:
    """Register the ``run_name`` resolver.  Importing this module does it, so a sweep job
    that unpickles the scripts' task function elsewhere (joblib workers, SLURM nodes) has it
    before Hydra resolves the job's directory."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("run_name", _resolve_run_name, replace=True)


def register_aggregator_configs() -> None:
    """One ``aggregator/<name>`` config per registry name, derived from the method's
    signature (its name and every hyper-parameter with its default), in Hydra's
    ConfigStore: ``aggregator=<name>`` needs no YAML file; and one per named setting
    (``aggregator=grid_search``: LS with the loss weights Guo et al. fix per benchmark,
    :data:`aggregators.presets.SETTINGS`), whose values are applied with the presets.
    Importing this module does it."""
    import aggregators
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for name in aggregators.available():
        defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in aggregators.hyperparameters(name).items()}
        store.store(group="aggregator", name=name, node={"name": name, **defaults})
    for setting, method in aggregators.presets.SETTINGS.items():
        store.store(group="aggregator", name=setting, node={"name": method, SETTING: setting})


def compose(config_name: str, overrides: list[str], resolve: bool = False) -> dict:
    """The config ``config_name`` composed with ``overrides`` outside ``@hydra.main`` (a
    benchmark script, a notebook), without its ``hydra`` section; the registry's aggregator
    configs are in the store (importing this module put them there).  ``resolve``: with
    its interpolations resolved (``aggregator_preset: ${benchmark.name}``), as the CLI
    hands a run its config."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    from .components import CONFIGS

    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = OmegaConf.to_container(hydra_compose(config_name, overrides=overrides), resolve=False)
    cfg.pop("hydra", None)
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True) if resolve else cfg


def aggregator_choices() -> list[str]:
    """Every ``aggregator=`` choice: the registry's names and the named settings."""
    import aggregators

    return sorted(set(aggregators.available()) | set(aggregators.presets.SETTINGS))


def job_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def share_cpus(launcher) -> None:
    """Under the local (joblib) launcher, give each of the n_jobs parallel runs its share of
    the cores instead of letting every run's torch use all of them."""
    import torch

    n_jobs = int(launcher.get("n_jobs", 1) or 1) if "n_jobs" in launcher else 1
    cpus = os.cpu_count() or 1
    if n_jobs < 0:
        n_jobs = cpus
    torch.set_num_threads(max(1, cpus // max(n_jobs, 1)))


def hydra_job(cfg, policy: KeyPolicy) -> tuple[str, bool, list[str], dict]:
    """What a training script's Hydra task function starts from: (run directory, whether
    this is a sweep, the job's overrides, the resolved config with its metadata).  In a
    sweep each run first takes its share of the cores (``share_cpus``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    sweep = hc.mode == RunMode.MULTIRUN
    if sweep:
        share_cpus(hc.launcher)
    overrides = job_overrides()
    config = with_metadata(OmegaConf.to_container(cfg, resolve=True), overrides, policy)
    return hc.runtime.output_dir, sweep, overrides, config


def with_metadata(config: dict, overrides: list[str], policy: KeyPolicy) -> dict:
    """``config`` with its run metadata: the typed overrides and the identity hash."""
    return {**config, META_KEY: {"overrides": overrides, "identity": config_hash(config, policy)}}


def resume_command(script: str, overrides: list[str], run_dir: str, extra: dict[str, object]) -> str:
    """The command that resumes this one run in ``run_dir`` with ``extra`` values."""
    keep = [o for o in overrides if not o.lstrip("+~").startswith("hydra")
            and o.lstrip("+~").partition("=")[0] not in extra]
    args = keep + [f"{k}={v}" for k, v in extra.items()] + [f"hydra.run.dir={run_dir}"]
    return " ".join(shlex.quote(a) for a in ["python", script, *args])


def run_directory(run_dir: str | Path, config: dict, *, policy: KeyPolicy, prepare: Callable[[dict], dict],
                  length: str, sweep: bool, body: Callable[[dict], None]) -> None:
    """Steps 1-6 of the module docstring; ``length`` is the ``train`` key of the run's length
    (``steps`` or ``epochs``), ``body(config)`` runs the run."""
    run_dir = Path(run_dir)

    def fail(exc: BaseException, code: int, record: bool) -> None:
        print(f"error: {exc}", file=sys.stderr)
        if record:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                write_status(run_dir, "failed", error=f"{type(exc).__name__}: {exc}")
            except OSError:
                pass
        if not sweep:
            raise SystemExit(code)

    try:
        config = prepare(config)
    except ConfigError as exc:
        if not sweep and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()   # the empty directory Hydra made for a run that never starts
        return fail(exc, 2, record=sweep)
    try:
        lock = RunLock(run_dir).acquire()
    except RunLocked as exc:
        if sweep:
            print(f"running elsewhere, left alone: {exc}", file=sys.stderr)
            return
        return fail(exc, 2, record=False)
    try:
        if lock.stale_message():
            print(lock.stale_message(), file=sys.stderr)
        for p in remove_temp_files(run_dir):
            print(f"note: removed {p} (left by a killed write)", file=sys.stderr)
        if (run_dir / "config.json").is_file():
            try:
                check_continuation(read_config(run_dir), config, policy, str(run_dir))
            except ValueError as exc:
                return fail(ConfigError(str(exc)), 2, record=False)   # the directory holds another run: leave it
        total = config["train"][length]
        if run_is_finished(run_dir, total):
            print(f"run directory: {run_dir} (finished: {total} {length}; skipped)")
            return
        try:
            body(config)
        except ConfigError as exc:
            return fail(exc, 2, record=sweep)
        except (CheckpointError, RunFailed, DiskFullError) as exc:
            return fail(exc, 1, record=True)
    finally:
        lock.release()


register_run_name()
register_aggregator_configs()
