"""Pieces of configuration handling shared by the RL trainer and the supervised driver."""

from __future__ import annotations

import torch

import aggregators


#: the key of an aggregator config that names its setting (``aggregators.presets.SETTINGS``)
SETTING = "setting"


class ConfigError(ValueError):
    """A bad configuration: reported as one line, exit code 2, before any work starts."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``; CUDA without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    return torch.device(name)


def aggregator_config(cfg: dict, preset: str | None, explicit=(), known_presets=()) -> tuple[dict, dict]:
    """The hyper-parameters a run uses: every one the method accepts (its defaults), the
    config's values, and for ``preset`` (a benchmark name) the references' values where the
    user did not set the key (``explicit``: the keys typed as ``aggregator.<key>=...``).
    A config with a ``setting`` (``aggregator=grid_search``, see
    :data:`aggregators.presets.SETTINGS`) takes that setting's values for the benchmark
    instead of the method's presets.  Returns ``(config, applied preset values)``.  A preset
    that is neither a benchmark with reference values nor one of ``known_presets``, or a
    setting without values for it, is a ConfigError."""
    if preset is not None:
        valid = sorted(aggregators.presets.benchmarks() | set(known_presets))
        if str(preset).lower() not in valid:
            raise ConfigError(f"unknown aggregator_preset {preset!r}; valid: {', '.join(valid)} or null")
    name, setting = cfg["name"], cfg.get(SETTING)
    try:
        out = {"name": name, **({SETTING: setting} if setting else {}), **aggregators.hyperparameters(name)}
        values = aggregators.presets.setting(setting, preset) if setting else aggregators.preset(name, preset)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out.update({k: v for k, v in cfg.items() if k not in ("name", SETTING)})
    applied = {k: v for k, v in values.items() if k not in set(explicit)}
    out.update(applied)
    return out, applied


def build_aggregator(cfg: dict, num_tasks: int) -> aggregators.Aggregator:
    """The aggregator ``cfg`` describes (``name`` and hyper-parameters, as
    :func:`aggregator_config` completed them)."""
    hp = {k: v for k, v in cfg.items() if k not in ("name", SETTING)}
    try:
        return aggregators.make(cfg["name"], num_tasks, **hp)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
