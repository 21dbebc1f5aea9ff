"""A benchmark's class from its config section (``benchmark._target_``, the one registry
mechanism of :mod:`mtrl.components`), and its reported metrics without reading any data."""

from __future__ import annotations

import inspect

from .. import components
from .benchmarks.base import Benchmark

#: the key of a benchmark section that names it and is not the class's argument
LABELS = ("name",)


def with_target(cfg: dict) -> dict:
    """``cfg`` (a config's ``benchmark`` section); one without ``_target_`` (a run recorded
    before it, a section written in code with just the ``name``) takes the ``_target_`` of
    ``configs/benchmark/<name>.yaml``."""
    if components.TARGET in cfg or not cfg.get("name"):
        return cfg
    option = components.group_option("benchmark", cfg["name"])
    return {components.TARGET: option.get(components.TARGET), **cfg}


def benchmark_class(cfg: dict) -> type[Benchmark]:
    """The :class:`Benchmark` subclass a ``benchmark`` section names (see :func:`with_target`)."""
    cfg = with_target(cfg)
    return components.target_of(cfg, f"benchmark {cfg.get('name')}", Benchmark)


def build_benchmark(cfg: dict, root) -> Benchmark:
    """The benchmark ``cfg`` (a config's ``benchmark`` section) describes, reading its data
    from ``root`` (the config's ``data.root``; None is passed on to a class whose
    ``needs_root`` is False, whose data ship with a package)."""
    cfg = with_target(cfg)
    name, cls = cfg.get("name"), benchmark_class(cfg)
    if not root and cls.needs_root:
        raise components.ConfigError(f"benchmark {name} needs its data: set data.root=PATH")
    # the readers' DataError is a ValueError with its own message: only a bad option is a ConfigError
    return components.build(cfg, f"benchmark {name}", root, base=cls, labels=LABELS, catch=(TypeError,))


def benchmark_metrics(cfg: dict) -> list:
    """The reported metrics (``Metric``: name, task, direction, single-task baseline) of the
    benchmark that ``cfg`` (a run config's ``benchmark`` section) describes, from its
    class's ``metric_list`` without reading any data; options the metric list does not
    depend on (root, image size, ...) are ignored."""
    cls = benchmark_class(cfg)
    metric_list = cls.metric_list
    accepted = inspect.signature(metric_list).parameters
    return metric_list(**{k: v for k, v in cfg.items() if k in accepted})
