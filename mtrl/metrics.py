"""Summary metrics of the supervised benchmarks: relative drop dm%, per-task dm_i,
task-weighted dm, Var[dm_i] and mean rank (MR).

For K reported metrics with the method's values M_m, the single-task baseline's values
M_b and the directions delta_j (1 when higher is better), the drop on metric j is

    d_j = (-1)^{delta_j} (M_m,j - M_b,j) / M_b,j * 100,

so d_j > 0 means worse than the baseline and d_j < 0 better, in either direction.

* ``delta_m``: the mean of d_j over all K metrics (PIVRG sec. 4, "per-metric" dm).
* ``delta_m_per_task``: dm_i, the mean of d_j over the S_i metrics of task i (PIVRG eq. 3).
* ``task_weighted_delta_m``: the mean of the dm_i over the k tasks (Aligned-MTL sec. 5,
  the "task-weighted" dm; it is not biased towards tasks that report many metrics).
* ``delta_m_variance``: Var[dm_i], PIVRG's fairness indicator.
* ``mean_rank``: each method's rank among the compared methods on each metric, averaged
  over the metrics.

Metric values are given either as sequences of length K (all inputs in the same metric
order) or as mappings keyed by metric name (all inputs with the same keys).  Bad input
(mismatched lengths or keys, a zero baseline, non-finite values) raises ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Union

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "per_metric_delta",
    "delta_m",
    "delta_m_per_task",
    "task_weighted_delta_m",
    "delta_m_variance",
    "mean_rank",
]

Values = Union[Sequence, np.ndarray, Mapping]


def _keys(values: Values, what: str) -> list | None:
    """The metric names of a mapping input, ``None`` for a sequence input."""
    if isinstance(values, Mapping):
        if not values:
            raise ValueError(f"{what} is empty; give at least one metric")
        return list(values)
    return None


def _align(named: dict[str, Values]) -> list[list]:
    """The inputs as lists in one metric order: all mappings with the same keys (ordered
    as the first one), or all sequences of the same non-zero length."""
    names = list(named)
    keys = {name: _keys(values, name) for name, values in named.items()}
    first = names[0]
    if any((keys[name] is None) != (keys[first] is None) for name in names):
        raise ValueError(
            f"{', '.join(names)} must all be mappings keyed by metric name or all sequences; "
            "do not mix the two forms")
    if keys[first] is not None:
        order = keys[first]
        for name in names[1:]:
            if set(keys[name]) != set(order):
                raise ValueError(
                    f"{name} has metric keys {sorted(map(str, keys[name]))} but {first} has "
                    f"{sorted(map(str, order))}; give every input the same metric names")
        return [[named[name][key] for key in order] for name in names]
    for name in names:
        if np.ndim(named[name]) != 1:
            raise ValueError(f"{name} must be a flat sequence with one value per metric (or a "
                             f"mapping keyed by metric name), got {named[name]!r}")
    lists = [list(named[name]) for name in names]
    lengths = {name: len(values) for name, values in zip(names, lists)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"inputs have different numbers of metrics {lengths}; give one value "
                         "per metric in each")
    if lengths[first] == 0:
        raise ValueError(f"{first} is empty; give at least one metric")
    return lists


def _finite(values: list, what: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{what} must be numbers, got {values!r}") from error
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} has non-finite values {array.tolist()}; pass finite metrics")
    return array


def _directions(values: list) -> np.ndarray:
    if not all(isinstance(v, (bool, np.bool_)) or v in (0, 1) for v in values):
        raise ValueError(f"higher_is_better must be booleans (or 0/1), got {values!r}")
    return np.asarray(values, dtype=bool)


def per_metric_delta(method: Values, baseline: Values, higher_is_better: Values) -> np.ndarray:
    """The K per-metric drops d_j = (-1)^{delta_j} (M_m,j - M_b,j) / M_b,j * 100 (in
    percent, positive = worse than the baseline), in the metric order of ``method``."""
    m, b, h = _align({"method": method, "baseline": baseline,
                      "higher_is_better": higher_is_better})
    m, b, h = _finite(m, "method"), _finite(b, "baseline"), _directions(h)
    if np.any(b == 0):
        raise ValueError(f"baseline has zero values {b.tolist()}; dm% divides by the baseline, "
                         "so every baseline metric must be non-zero")
    sign = np.where(h, -1.0, 1.0)
    return sign * (m - b) / b * 100.0


def delta_m(method: Values, baseline: Values, higher_is_better: Values) -> float:
    """Per-metric dm%: the mean over all K metrics of
    (-1)^{delta_j} (M_m,j - M_b,j) / M_b,j * 100 (PIVRG sec. 4; lower is better, 0 for a
    method equal to the baseline, negative when the method beats it)."""
    return float(per_metric_delta(method, baseline, higher_is_better).mean())


def delta_m_per_task(method: Values, baseline: Values, higher_is_better: Values,
                     metric_tasks: Values) -> dict[Hashable, float]:
    """Per-task dm_i (PIVRG eq. 3): the mean of the per-metric drops over the S_i metrics
    of each task.  ``metric_tasks`` gives the task of each metric (a sequence, or a
    mapping metric name -> task); the result is ordered by each task's first appearance."""
    drops = per_metric_delta(method, baseline, higher_is_better)
    _, tasks = _align({"method": method, "metric_tasks": metric_tasks})
    if not all(isinstance(task, Hashable) for task in tasks):
        raise ValueError(f"metric_tasks must hold task names, got {tasks!r}")
    order = list(dict.fromkeys(tasks))
    tasks = np.asarray([order.index(task) for task in tasks])
    return {task: float(drops[tasks == i].mean()) for i, task in enumerate(order)}


def task_weighted_delta_m(method: Values, baseline: Values, higher_is_better: Values,
                          metric_tasks: Values) -> float:
    """Task-weighted dm% (Aligned-MTL sec. 5): the mean over the k tasks of the per-task
    dm_i, so each task counts once whatever its number of metrics.

    Aligned-MTL prints this measure without the 1/n_t inside the task sum, but its NYU-v2
    tables match the mean of per-task means computed here (e.g. Uniform: -1.07 printed,
    about -0.9 from the table's rounded values, against about 17 with a plain sum)."""
    per_task = delta_m_per_task(method, baseline, higher_is_better, metric_tasks)
    return float(np.mean(list(per_task.values())))


def delta_m_variance(per_task: Values) -> float:
    """Var[dm_i], PIVRG's fairness indicator: the population variance (ddof = 0, the
    1/k normalisation of the paper's E[dm_i] = 1/k sum_i dm_i) of the given drops, a
    mapping task -> dm_i (as from :func:`delta_m_per_task`) or a sequence.

    The values PIVRG's NYU-v2 table 5 prints under "Var[dm_i]" are reproduced by this
    variance taken over the 9 per-metric drops (:func:`per_metric_delta`), not over the
    3 per-task means; on QM9 and CelebA, with one metric per task, the two coincide."""
    if isinstance(per_task, Mapping):
        values = list(per_task.values())
    elif np.ndim(per_task) == 1:
        values = list(per_task)
    else:
        raise ValueError(f"per_task must be a mapping task -> dm_i or a flat sequence, got "
                         f"{per_task!r}")
    if not values:
        raise ValueError("per_task is empty; give at least one dm_i")
    return float(np.var(_finite(values, "per_task"), ddof=0))


def mean_rank(results: Mapping[Hashable, Values],
              higher_is_better: Values) -> dict[Hashable, float]:
    """Mean rank (MR): on each metric rank the methods of ``results`` ({name: metric
    values}) from 1 (best: the highest value where higher is better, else the lowest),
    ties sharing the average of their ranks (``scipy.stats.rankdata``), then average each
    method's ranks over the metrics.  1 is best; names keep their input order."""
    if not isinstance(results, Mapping) or not results:
        raise ValueError("results must be a non-empty mapping {method name: metric values}")
    named = {f"results[{name!r}]": values for name, values in results.items()}
    named["higher_is_better"] = higher_is_better
    *rows, h = _align(named)
    table = np.stack([_finite(row, f"results[{name!r}]") for name, row in zip(results, rows)])
    scores = np.where(_directions(h), -table, table)       # lower score = better
    ranks = rankdata(scores, method="average", axis=0)
    return {name: float(r) for name, r in zip(results, ranks.mean(axis=1))}
