"""Per-benchmark hyper-parameters of the references (``../shared/docs/``).

``preset(name, benchmark)`` returns the keyword arguments for ``make``; a method with no
benchmark-specific value returns ``{}`` (its paper defaults apply).
"""

from __future__ import annotations

_PI = {  # PIVRG temperature control (bound, min_temperature); also used by the PI-X variants
    "nyuv2": {"bound": 2.0, "min_temperature": 10.0},
    "cityscapes": {"bound": 1.8, "min_temperature": 20.0},
    "celeba": {"bound": 2.0, "min_temperature": 10.0},
    "qm9": {"bound": 1.8, "min_temperature": 100.0},
}

PRESETS: dict[str, dict[str, dict[str, object]]] = {
    "cagrad": {"nyuv2": {"c": 0.4}, "cityscapes": {"c": 0.4}, "mt10": {"c": 0.9}, "mt50": {"c": 0.5}},
    "famo": {
        "nyuv2": {"gamma": 0.001, "w_lr": 0.025},
        "celeba": {"gamma": 0.001, "w_lr": 0.025},
        "qm9": {"gamma": 0.001, "w_lr": 0.025},
        "cityscapes": {"gamma": 0.01, "w_lr": 0.025},
        "mt10": {"gamma": 0.01, "w_lr": 0.025},
    },
    "fairgrad": {"celeba": {"alpha": 2.0}, "qm9": {"alpha": 2.0}, "mt10": {"alpha": 2.0}},
    "nash_mtl": {"mt10": {"update_weights_every": 1}},
    "consmtl": {
        "nyuv2": {"lam": 1.0},
        "cityscapes": {"lam": 50.0},
        "celeba": {"lam": 50.0},
        "qm9": {"lam": 1e-3},
    },
    "pivrg": _PI,
    **{f"pi_{m}": _PI for m in ("ls", "rlw", "dwa", "uw", "mgda", "nash_mtl")},
}


def benchmarks() -> frozenset[str]:
    """The benchmark names some method has reference values for."""
    return frozenset(b for per_method in PRESETS.values() for b in per_method)


def preset(name: str, benchmark: str | None) -> dict[str, object]:
    """Hyper-parameters of ``name`` on ``benchmark`` (``{}`` where the defaults apply)."""
    if benchmark is None:
        return {}
    return dict(PRESETS.get(name, {}).get(benchmark.lower(), {}))
