"""Pieces of configuration handling shared by the RL trainer and the supervised driver."""

from __future__ import annotations

import torch

import aggregators


class ConfigError(ValueError):
    """A bad configuration: reported as one line, exit code 2, before any work starts."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda[:i]``; CUDA without a GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    return torch.device(name)


def build_aggregator(cfg: dict, num_tasks: int, preset: str | None = None) -> aggregators.Aggregator:
    """The configured aggregator (``cfg``: ``name`` and hyper-parameters); with ``preset``
    (a benchmark name) the references' values for that benchmark replace the config's."""
    hp = {k: v for k, v in cfg.items() if k != "name"}
    hp.update(aggregators.preset(cfg["name"], preset))
    try:
        return aggregators.make(cfg["name"], num_tasks, **hp)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
