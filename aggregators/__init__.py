"""Multi-task gradient aggregators behind one interface.

>>> import aggregators
>>> agg = aggregators.make("pivrg", num_tasks=3)
>>> d = agg(grads)                 # grads: (k, n) per-task gradients -> direction (n,)
>>> agg.weights                    # w with d = sum_i w_i g_i
>>> agg.update_performance(dm)     # performance-informed methods: per-task drops in %

``aggregators.available()`` lists the registry names; each method lives in one module
of this package and registers itself with ``@register(name)``.
"""

from __future__ import annotations

import importlib
import pkgutil

from . import diagnostics
from .engine import BackwardResult, backward, task_gradients
from .base import Aggregator, GramWeighting, LossWeighting, gram_matrix, needs_after_step
from .performance import PerformanceInformed, performance_weights
from .registry import available, hyperparameters, make, register
from .presets import preset

# Import every method module so that its @register calls run.
_INFRASTRUCTURE = {"base", "registry", "solvers", "diagnostics", "performance", "presets", "engine", "cost",
                  "distributed"}
for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in _INFRASTRUCTURE and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = [
    "Aggregator",
    "BackwardResult",
    "GramWeighting",
    "LossWeighting",
    "PerformanceInformed",
    "available",
    "backward",
    "task_gradients",
    "diagnostics",
    "gram_matrix",
    "hyperparameters",
    "make",
    "needs_after_step",
    "performance_weights",
    "preset",
    "register",
]
