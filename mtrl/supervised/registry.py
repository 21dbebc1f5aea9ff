"""Benchmark names -> classes, imported on first use (QM9 needs torch_geometric, which the
other benchmarks do not)."""

from __future__ import annotations

import importlib
import inspect

#: name -> "module:class" under mtrl.supervised
BENCHMARKS = {
    "qm9": "benchmarks.qm9:QM9Benchmark",
    "celeba": "benchmarks.celeba:CelebABenchmark",
    "nyuv2": "benchmarks.nyuv2:NYUv2Benchmark",
    "cityscapes": "benchmarks.cityscapes:CityscapesBenchmark",
    "nyuv2_pspnet": "benchmarks.nyuv2:NYUv2PSPNetBenchmark",
    "cityscapes3": "benchmarks.cityscapes3:Cityscapes3Benchmark",
    "nyud": "benchmarks.nyud_pascal:NYUDBenchmark",
    "pascal_context": "benchmarks.nyud_pascal:PascalContextBenchmark",
}


def benchmark_class(name: str):
    module, cls = BENCHMARKS[name].split(":")
    return getattr(importlib.import_module(f"mtrl.supervised.{module}"), cls)


def benchmark_metrics(cfg: dict) -> list:
    """The reported metrics (``Metric``: name, task, direction, single-task baseline) of the
    benchmark that ``cfg`` (a run config's ``benchmark`` section) describes, from its
    class's or module's ``metric_list`` without reading any data; options the metric list does not
    depend on (root, image size, ...) are ignored."""
    name = cfg.get("name")
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; valid: {', '.join(sorted(BENCHMARKS))}")
    cls = benchmark_class(name)
    # the dense benchmarks' classes list their metrics; QM9 and CelebA have a module function
    metric_list = getattr(cls, "metric_list", None) or importlib.import_module(cls.__module__).metric_list
    accepted = inspect.signature(metric_list).parameters
    return metric_list(**{k: v for k, v in cfg.items() if k in accepted})
