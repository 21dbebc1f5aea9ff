"""Name -> aggregator class registry and the public constructor ``make``."""

from __future__ import annotations

import inspect
from typing import Callable

from .base import Aggregator

_REGISTRY: dict[str, Callable[..., Aggregator]] = {}


def register(name: str):
    """Class decorator: make ``aggregators.make(name, ...)`` build this class."""

    def deco(cls):
        if name in _REGISTRY:
            raise RuntimeError(f"aggregator {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def register_factory(name: str, factory: Callable[..., Aggregator],
                     hparams: Callable[[], dict[str, object]]) -> None:
    """Register a function ``factory(num_tasks, **hparams)`` (for example a
    performance-informed wrapper around another method); ``hparams()`` returns the
    accepted hyper-parameters with their defaults (called lazily, once every method
    module has registered)."""
    if name in _REGISTRY:
        raise RuntimeError(f"aggregator {name!r} registered twice")
    factory.hparams = hparams  # type: ignore[attr-defined]
    _REGISTRY[name] = factory


def available() -> list[str]:
    """Sorted registry names."""
    return sorted(_REGISTRY)


def hyperparameters(name: str) -> dict[str, object]:
    """The hyper-parameters ``name`` accepts, with their defaults."""
    target = _lookup(name)
    if hasattr(target, "hparams"):
        return dict(target.hparams())
    sig = inspect.signature(target)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name not in ("self", "num_tasks") and p.kind is not p.VAR_KEYWORD
    }


def _lookup(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown aggregator {name!r}; valid names: {', '.join(available())}")
    return _REGISTRY[name]


def make(name: str, num_tasks: int, **hparams) -> Aggregator:
    """Build the aggregator ``name`` for ``num_tasks`` tasks.

    Unknown names or hyper-parameters raise ``ValueError`` listing the valid ones.
    """
    target = _lookup(name)
    valid = hyperparameters(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) {unknown} for aggregator {name!r}; "
            f"valid: {', '.join(sorted(valid)) or '(none)'}"
        )
    agg = target(num_tasks, **hparams)
    return agg
