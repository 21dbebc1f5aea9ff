"""Per-benchmark hyper-parameters of the references (``../shared/docs/``).

``preset(name, benchmark)`` returns the keyword arguments for ``make``; a method with no
benchmark-specific value returns ``{}`` (its paper defaults apply).

:data:`SETTINGS` are named settings of a method (``aggregator=<setting>``): a method whose
values a paper fixes per benchmark, looked up like a method's presets under the setting's
name; a setting has no default, so it runs only on the benchmarks it lists.
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
    # Xiao et al. (NeurIPS 2023)'s released scripts: experiments/nyuv2/run.sh lamda=0.3
    # (the Cityscapes trainer's default), mtrl_files/run.sh sdmgrad_lamda=0.6 (MT10, MT50)
    "sdmgrad": {"nyuv2": {"lam": 0.3}, "cityscapes": {"lam": 0.3}, "mt10": {"lam": 0.6}, "mt50": {"lam": 0.6}},
    # Qin et al. (NeurIPS 2025)'s released experiments/nyuv2/run.sh: ntk_exp=0.75
    "ntkmtl": {"nyuv2": {"ntk_exp": 0.75}},
    # Guo et al. (arXiv 2025)'s "Grid Search" baseline: LS with fixed loss weights, those of
    # the paper's text (grid_search) and of its released configs (grid_search_reference);
    # NYUD: semantic, depth, normals, edge; PASCAL-Context: semantic, human parts,
    # saliency, normals, edge.
    "grid_search": {"nyud": {"loss_weights": [1, 1, 2, 50]}, "pascal_context": {"loss_weights": [1, 2, 5, 5, 50]}},
    "grid_search_reference": {"nyud": {"loss_weights": [1, 1, 10, 50]},
                              "pascal_context": {"loss_weights": [1, 2, 5, 10, 50]}},
    **{f"pi_{m}": _PI for m in ("ls", "rlw", "dwa", "uw", "mgda", "nash_mtl")},
}


#: named settings: the registry method each one configures
SETTINGS: dict[str, str] = {"grid_search": "ls", "grid_search_reference": "ls"}


def benchmarks() -> frozenset[str]:
    """The benchmark names some method has reference values for."""
    return frozenset(b for per_method in PRESETS.values() for b in per_method)


def preset(name: str, benchmark: str | None) -> dict[str, object]:
    """Hyper-parameters of ``name`` on ``benchmark`` (``{}`` where the defaults apply)."""
    if benchmark is None:
        return {}
    return dict(PRESETS.get(name, {}).get(benchmark.lower(), {}))


def setting(name: str, benchmark: str | None) -> dict[str, object]:
    """The values of the named setting ``name`` (:data:`SETTINGS`) on ``benchmark``; a
    ValueError naming the benchmarks it has values for where it has none."""
    if name not in SETTINGS:
        raise ValueError(f"unknown aggregator setting {name!r}; valid: {', '.join(sorted(SETTINGS))}")
    values = preset(name, benchmark)
    if not values:
        raise ValueError(f"aggregator={name} has values for {', '.join(sorted(PRESETS[name]))} only, not for "
                         f"aggregator_preset={benchmark}; run it on one of those benchmarks")
    return values
