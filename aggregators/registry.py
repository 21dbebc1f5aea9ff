"""Name -> aggregator class registry and the public constructor ``make``."""

from __future__ import annotations

import inspect
from typing import Callable

from .base import Aggregator
from .cost import Periodic, Subsampled, periodic_support

#: the cost knobs every Gram-matrix method takes (``aggregators.cost``), with their defaults
#: (tasks_per_step None: every task)
COST_KNOBS = {"every": 1, "tasks_per_step": None}

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
    """The hyper-parameters ``name`` accepts, with their defaults; a Gram-matrix method also
    takes the cost knobs (:data:`COST_KNOBS`)."""
    target = _lookup(name)
    if hasattr(target, "hparams"):
        own = dict(target.hparams())
    else:
        sig = inspect.signature(target)
        own = {p.name: p.default for p in sig.parameters.values()
               if p.name not in ("self", "num_tasks") and p.kind is not p.VAR_KEYWORD}
    return {**own, **COST_KNOBS} if takes_cost_knobs(name) else own


_KNOB_SUPPORT: dict[str, bool] = {}


def takes_cost_knobs(name: str) -> bool:
    """Whether ``name`` is a Gram-matrix method :class:`~aggregators.cost.Periodic` can wrap
    (decided on a two-task instance, once per name)."""
    if name not in _KNOB_SUPPORT:
        _KNOB_SUPPORT[name] = periodic_support(_lookup(name)(2)) is None
    return _KNOB_SUPPORT[name]


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
    knobs = {k: hparams.pop(k) for k in COST_KNOBS if k in hparams}
    agg = target(num_tasks, **hparams)
    every, m = knobs.get("every", 1), knobs.get("tasks_per_step")
    if m is not None:
        agg = Subsampled(agg, m)
    plain = isinstance(every, int) and not isinstance(every, bool) and every == 1
    return agg if plain else Periodic(agg, every)
