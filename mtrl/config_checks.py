"""Every configured value checked before work starts: one table of rules per driver
(:data:`RL_RULES`, :data:`SUPERVISED_RULES`), the aggregator's hyper-parameters against
the types of their defaults, and the presets.  A bad value is a :class:`ConfigError`
naming the key and the valid range (one line, exit code 2 from the scripts).

``check(config, rules)`` returns a copy with integer-valued numbers normalised to ``int``
(``train.steps=2e6`` is 2000000), so the recorded config says what was run.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import aggregators
import envs
from agents import NONFINITE_SKIPS
from aggregators.engine import PATHS, TASK_GRADS

from .compiled_update import MODES as COMPILE_MODES
from .configuration import ConfigError, aggregator_config
from .run_identity import META_KEY


@dataclass(frozen=True)
class Int:
    min: int | None = None
    optional: bool = False

    def __call__(self, key: str, value):
        if value is None and self.optional:
            return None
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and math.isfinite(value) and value.is_integer())
        if not ok or (self.min is not None and value < self.min):
            bound = f" >= {self.min}" if self.min is not None else ""
            none = " (or null)" if self.optional else ""
            raise ConfigError(f"{key} must be an integer{bound}{none}, got {value!r}")
        return int(value)


@dataclass(frozen=True)
class Number:
    low: float | None = None     # exclusive unless closed_low
    high: float | None = None    # inclusive
    closed_low: bool = False
    optional: bool = False

    def __call__(self, key: str, value):
        if value is None and self.optional:
            return None
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok and self.low is not None:
            ok = value >= self.low if self.closed_low else value > self.low
        if ok and self.high is not None:
            ok = value <= self.high
        if not ok:
            lo = "" if self.low is None else f"{self.low} {'<=' if self.closed_low else '<'} "
            hi = "" if self.high is None else f" <= {self.high}"
            rng = f" ({lo}{key}{hi})" if lo or hi else ""
            raise ConfigError(f"{key} must be a finite number{rng}{' or null' if self.optional else ''}, got {value!r}")
        return value


@dataclass(frozen=True)
class Choice:
    values: tuple

    def __call__(self, key: str, value):
        if value not in self.values:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, self.values))}, got {value!r}")
        return value


@dataclass(frozen=True)
class Bool:
    def __call__(self, key: str, value):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value


RL_RULES = {
    "seed": Int(0),
    "train.steps": Int(1),
    "train.seed_steps": Int(0),
    "train.initial_updates": Int(1),
    "train.batch_size": Int(1),
    "train.buffer_size": Int(1),
    "train.eval_every": Int(1),
    "train.eval_episodes": Int(1),
    "train.checkpoint_every": Int(1),
    "train.checkpoint_minutes": Number(0),
    "train.diagnostics_every": Int(0),
    "train.log_every": Int(1),
    "train.max_nonfinite": Int(1),
    "train.nonfinite_skip": Choice(("auto", *NONFINITE_SKIPS)),
    "train.compile": Choice(tuple(COMPILE_MODES)),
    "agent.hidden": Int(1),
    "agent.layers": Int(1),
    "agent.critic_hidden": Int(1, optional=True),
    "agent.critic_layers": Int(1, optional=True),
    "agent.head_layers": Int(1),
    "agent.embedding_dim": Int(1),
    "agent.shared_alpha": Bool(),
    "agent.lr": Number(0),
    "agent.actor_lr": Number(0, optional=True),
    "agent.critic_lr": Number(0, optional=True),
    "agent.alpha_lr": Number(0, optional=True),
    "agent.discount": Number(0, 1),
    "agent.tau": Number(0, 1),
    "agent.init_temperature": Number(0),
    "agent.target_entropy": Number(optional=True),
    "agent.grad_clip": Number(0, optional=True),
    "performance.source": Choice(("eval", "train_window")),
    "env.vector": Choice(("auto", *envs.VECTOR_STRATEGIES)),
    "train.per_task_grads": Choice(PATHS),
    "train.task_grads": Choice(TASK_GRADS),
    "performance.window": Int(1),
}

SUPERVISED_RULES = {
    "seed": Int(0),
    "mode": Choice(("param", "rep")),
    "train.epochs": Int(1),
    "train.batch_size": Int(1),
    "train.eval_batch_size": Int(1, optional=True),
    "train.max_batches": Int(1, optional=True),
    "train.optimizer": Choice(("adam", "sgd")),
    "train.lr": Number(0),
    "train.weight_decay": Number(0, closed_low=True),
    "train.log_every": Int(1),
    "train.diagnostics_every": Int(0),
    "train.per_task_grads": Choice(("auto", "batched", "loop")),
    "train.task_grads": Choice(TASK_GRADS),
    "train.scheduler.name": Choice(("step", "plateau", "poly", "none")),
    "train.amp": Choice(("off", "bf16", "fp16")),
    "dist.gram_only": Bool(),
}


def _get(config: dict, key: str):
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(config: dict, key: str, value) -> None:
    *parents, last = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[last] = value


_MISSING = object()


def check(config: dict, rules: dict) -> dict:
    """A copy of ``config`` with every ruled key checked (absent keys keep their defaults)."""
    out = copy.deepcopy(config)
    for key, rule in rules.items():
        value = _get(out, key)
        if value is not _MISSING:
            _set(out, key, rule(key, value))
    return out


def check_task_split(config: dict, num_tasks: int) -> None:
    """The RL batch and buffer split evenly over the ``num_tasks`` tasks (stratified sampling)."""
    t = config["train"]
    if t["batch_size"] < num_tasks or t["batch_size"] % num_tasks:
        raise ConfigError(f"train.batch_size must be a positive multiple of the {num_tasks} tasks "
                          f"(batch_size / k transitions per task), got {t['batch_size']}")
    if t["buffer_size"] < num_tasks:
        raise ConfigError(f"train.buffer_size must be >= the {num_tasks} tasks (one ring per task), "
                          f"got {t['buffer_size']}")


def _hparam_rule(default):
    if isinstance(default, bool):
        return Bool()
    if isinstance(default, (int, float)):
        return Number()
    return None


def check_option_types(section: str, cfg: dict, defaults: dict) -> None:
    """The types of a component's options against its defaults (``defaults``: from its
    signature): a number where the default is a number, true/false where it is a flag; a
    key without a default of those types, or set to null, is the component's to check."""
    for key, value in cfg.items():
        rule = _hparam_rule(defaults[key]) if key in defaults else None
        if rule is not None and value is not None:
            rule(f"{section}.{key}", value)


def check_aggregator(agg_cfg: dict) -> None:
    """The aggregator's name and the types of its hyper-parameters (a number where the
    method's default is a number, true/false where it is a flag); the method checks ranges."""
    if not isinstance(agg_cfg, dict) or "name" not in agg_cfg:
        raise ConfigError("aggregator must be a mapping with a name (aggregator=<registry name>)")
    try:
        defaults = aggregators.hyperparameters(agg_cfg["name"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # unknown keys: aggregators.make names them and the valid ones
    check_option_types("aggregator", {k: v for k, v in agg_cfg.items() if k != "name"}, defaults)


def explicit_aggregator_keys(config: dict) -> set[str]:
    """The aggregator hyper-parameters the user typed (``aggregator.c=0.2`` on the command
    line or in a sweep), from the overrides recorded in the config's run metadata."""
    keys = set()
    for text in config.get(META_KEY, {}).get("overrides", []):
        key, sep, _ = str(text).lstrip("+~").partition("=")
        if sep and key.startswith("aggregator."):
            keys.add(key.split(".", 1)[1])
    return keys


def prepare(config: dict, rules: dict, known_presets=()) -> dict:
    """The config a run uses, checked: ``rules``, the aggregator's hyper-parameter types, the
    preset (applied where the user set no value; recorded under ``_run.preset_applied``) and
    every hyper-parameter of the method written out.  Idempotent."""
    out = check(config, rules)
    check_aggregator(out["aggregator"])
    agg, applied = aggregator_config(out["aggregator"], out.get("aggregator_preset"),
                                     explicit_aggregator_keys(out), known_presets)
    check_aggregator(agg)
    out["aggregator"] = agg
    meta = out.setdefault(META_KEY, {})
    if applied:
        meta["preset_applied"] = {**meta.get("preset_applied", {}), **applied}
    return out
