"""The performance-informed variants of PIVRG paper sec. 4.4 (Table 5):
pi_ls, pi_rlw, pi_dwa, pi_uw, pi_mgda, pi_nash_mtl.

Each is ``PerformanceInformed.wrap(make(base, k, **base_hparams), bound, min_temperature)``:
one wrapper, no per-method copies (see :mod:`aggregators.performance`).
"""

from __future__ import annotations

import inspect

from .performance import PerformanceInformed
from .registry import hyperparameters, make, register_factory

BASES = ("ls", "rlw", "dwa", "uw", "mgda", "nash_mtl")
_PI_HPARAMS = {
    p.name: p.default
    for p in inspect.signature(PerformanceInformed.__init__).parameters.values()
    if p.name not in ("self", "base")
}


def _factory(base: str):
    def build(num_tasks: int, **hparams) -> PerformanceInformed:
        pi = {k: hparams.pop(k) for k in list(hparams) if k in _PI_HPARAMS}
        return PerformanceInformed.wrap(make(base, num_tasks, **hparams), **pi)

    def accepted() -> dict[str, object]:
        return {**hyperparameters(base), **_PI_HPARAMS}

    return build, accepted


for _base in BASES:
    register_factory(f"pi_{_base}", *_factory(_base))
