"""A benchmark's class from its config section (``benchmark._target_``, the one registry
mechanism of :mod:`mtrl.components`), and its reported metrics without reading any data."""

from __future__ import annotations

import importlib
import inspect

from .. import components
from .benchmarks.base import Benchmark

#: the keys of a benchmark section that name the run and are not the class's arguments
LABELS = ("name", "root", "preset")


def with_target(cfg: dict) -> dict:
    """``cfg`` (a config's ``benchmark`` section); one without ``_target_`` (a run recorded
    before it, a section written in code with just the ``name``) takes the ``_target_`` of
    ``configs/benchmark/<name>.yaml``."""
    if components.TARGET in cfg or not cfg.get("name"):
        return cfg
    option = components.group_option("benchmark", cfg["name"]).get("benchmark", {})
    return {components.TARGET: option.get(components.TARGET), **cfg}


def benchmark_class(cfg: dict) -> type[Benchmark]:
    """The :class:`Benchmark` subclass a ``benchmark`` section names (see :func:`with_target`)."""
    cfg = with_target(cfg)
    return components.target_of(cfg, f"benchmark {cfg.get('name')}", Benchmark)


def build_benchmark(cfg: dict) -> Benchmark:
    """The benchmark ``cfg`` describes, built from its data's ``root`` and its options."""
    cfg = with_target(cfg)
    name, cls = cfg.get("name"), benchmark_class(cfg)
    if not cfg.get("root"):
        raise components.ConfigError(f"benchmark {name} needs its data: set data.root=PATH")
    # the readers' DataError is a ValueError with its own message: only a bad option is a ConfigError
    return components.build(cfg, f"benchmark {name}", cfg["root"], base=cls, labels=LABELS, catch=(TypeError,))


def benchmark_metrics(cfg: dict) -> list:
    """The reported metrics (``Metric``: name, task, direction, single-task baseline) of the
    benchmark that ``cfg`` (a run config's ``benchmark`` section) describes, from its
    class's or module's ``metric_list`` without reading any data; options the metric list does not
    depend on (root, image size, ...) are ignored."""
    cls = benchmark_class(cfg)
    # the dense benchmarks' classes list their metrics; QM9 and CelebA have a module function
    metric_list = getattr(cls, "metric_list", None) or importlib.import_module(cls.__module__).metric_list
    accepted = inspect.signature(metric_list).parameters
    return metric_list(**{k: v for k, v in cfg.items() if k in accepted})
