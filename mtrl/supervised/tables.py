"""The papers' tables of the supervised benchmarks (metrics, MR, dm%), from several runs.

Reads each run directory's ``config.json`` and ``results.json`` (written by
:class:`mtrl.supervised.trainer.SupervisedTrainer` when a run finishes: the test metrics at
the selected epoch) and ``status.json``; runs that failed, are unfinished, lack or have a
malformed ``results.json`` are reported as problems, never dropped silently.  Metric
directions and single-task baselines come from the benchmark modules
(:func:`mtrl.supervised.registry.benchmark_metrics`), so no data set is needed.

Runs whose configs are equal apart from the seed, the device, the data paths and the
logging intervals (``IGNORED_KEYS``) are seeds of one method (a row).  Per row:

* the mean and s.e.m. over seeds of every test metric;
* dm% of the seed-mean metrics against the baselines (``mtrl.metrics.delta_m``, PIVRG
  sec. 4), with the s.e.m. of the per-seed dm%.  dm% is linear in the metric values, so the
  dm% of the mean metrics (what the papers print) equals the mean of the per-seed dm%;
* Var[dm_i] of the seed-mean metrics' per-task drops (PIVRG's fairness indicator; as the
  papers compute it from the metrics they print), the same over the per-metric drops, the
  mean ± s.e.m. of the per-seed Var[dm_i] (Var is not linear, so these differ), and the
  task-weighted dm% (Aligned-MTL sec. 5);
* MR: the mean rank (``mtrl.metrics.mean_rank``) of the seed-mean metrics among the rows
  of the same benchmark (the single-task baseline is shown but not ranked).

One table per benchmark (and per metric set, should runs of one benchmark report different
targets): ``<benchmark>_table.md`` and ``<benchmark>_table.csv``.

Run discovery and seed pooling are the RL summary's (:mod:`mtrl.summary`), the s.e.m. is
:func:`mtrl.statistics.sem` and the Markdown/CSV helpers are :mod:`mtrl.rendering`'s.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import metrics as mtl_metrics
from ..rendering import markdown_table, pm, problems_markdown, write_csv
from ..run_files import read_config, read_status, write_text_atomic
from ..run_identity import SUPERVISED_KEYS
from ..statistics import column_sem, sem
from ..summary import Problem, collect_runs, config_key, seed_order, seed_pooled_keys, variant_labels
from .benchmarks.base import Metric
from .registry import benchmark_metrics

#: the keys runs differing only in are seeds of the same method (a row)
IGNORED_KEYS = seed_pooled_keys(SUPERVISED_KEYS, "train.epochs")
#: relative tolerance between results.json's dm% and the one recomputed from its metrics
DM_TOLERANCE = 1e-6
FIXED_COLUMNS = ("benchmark", "table", "method", "aggregator", "mode", "variant", "seeds", "seed_list", "mr",
                 "delta_m", "delta_m_sem", "delta_m_var", "delta_m_var_metrics", "delta_m_var_seed_mean",
                 "delta_m_var_seed_sem", "task_weighted_delta_m")


@dataclass
class SupervisedRun:
    """One finished run: its config, its ``results.json`` and its benchmark's metrics."""
    path: Path
    config: dict
    results: dict
    metrics: list[Metric]

    @property
    def seed(self):
        return self.config.get("seed")

    def values(self) -> np.ndarray:
        """The test metric values at the selected epoch, in the benchmark's metric order."""
        return np.array([self.results["metrics"][m.name] for m in self.metrics], dtype=float)


@dataclass
class MethodRow:
    """The seeds of one method on one benchmark; ``values`` is (seeds x metrics)."""
    benchmark: str
    aggregator: str
    mode: str
    variant: str
    runs: list[SupervisedRun]
    metrics: list[Metric]
    mr: float = math.nan

    @property
    def method(self) -> str:
        """The aggregator, with "-UB" for representation-level aggregation (mode ``rep``,
        as Senushkin et al. (CVPR 2023) and Mao et al. (arXiv 2024) name it)."""
        return self.aggregator + ("-UB" if self.mode == "rep" else "")

    @property
    def label(self) -> str:
        return f"{self.method} [{self.variant}]" if self.variant else self.method

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def values(self) -> np.ndarray:
        return np.stack([r.values() for r in self.runs])

    @property
    def mean(self) -> np.ndarray:
        return self.values.mean(axis=0)

    @property
    def sem(self) -> np.ndarray:
        return column_sem(self.values)

    def _args(self, values) -> tuple:
        return (list(values), [m.baseline for m in self.metrics], [m.higher_is_better for m in self.metrics])

    @property
    def _tasks(self) -> list[str]:
        return [m.task for m in self.metrics]

    @property
    def task_names(self) -> list[str]:
        """The tasks, in the order of their first metric."""
        return list(dict.fromkeys(self._tasks))

    @property
    def mean_weights(self) -> list[float] | None:
        """The seed mean of each task's mean applied weight over training (``mean_weights``
        of results.json; Guo et al. (arXiv 2025)'s lambda_t in Tables VI-VII); None unless every seed has it."""
        found = [r.results.get("mean_weights") for r in self.runs]
        if not all(found):
            return None
        return [float(np.mean([w[t] for w in found])) for t in self.task_names]

    @property
    def delta_m(self) -> float:
        """dm% of the seed-mean metrics (= the mean of the per-seed dm%)."""
        return mtl_metrics.delta_m(*self._args(self.mean))

    @property
    def delta_m_seeds(self) -> np.ndarray:
        return np.array([mtl_metrics.delta_m(*self._args(v)) for v in self.values])

    @property
    def delta_m_sem(self) -> float:
        return sem(self.delta_m_seeds)

    @property
    def delta_m_i(self) -> dict[str, float]:
        """Per-task drops dm_i of the seed-mean metrics (PIVRG eq. 3)."""
        return mtl_metrics.delta_m_per_task(*self._args(self.mean), self._tasks)

    @property
    def delta_m_var(self) -> float:
        """Var[dm_i] of the seed-mean metrics."""
        return mtl_metrics.delta_m_variance(self.delta_m_i)

    @property
    def delta_m_var_metrics(self) -> float:
        """The variance over the per-metric drops of the seed-mean metrics."""
        return mtl_metrics.delta_m_variance(mtl_metrics.per_metric_delta(*self._args(self.mean)))

    @property
    def delta_m_var_seeds(self) -> np.ndarray:
        return np.array([mtl_metrics.delta_m_variance(mtl_metrics.delta_m_per_task(*self._args(v), self._tasks))
                         for v in self.values])

    @property
    def task_weighted_delta_m(self) -> float:
        return mtl_metrics.task_weighted_delta_m(*self._args(self.mean), self._tasks)


@dataclass
class Table:
    """The rows of one benchmark that report the same metrics; ``stem`` names its files."""
    benchmark: str
    stem: str
    metrics: list[Metric]
    rows: list[MethodRow] = field(default_factory=list)

    @property
    def one_metric_per_task(self) -> bool:
        tasks = [m.task for m in self.metrics]
        return len(set(tasks)) == len(tasks)


# ------------------------------------------------------------------------------- loading

def _epoch_list(run_dir: Path) -> list[int]:
    """The epochs of the intact records of ``metrics.jsonl``, in file order."""
    out = []
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(int(json.loads(line)["epoch"]))
        except (ValueError, KeyError, TypeError):
            continue
    return out


def _short(values: list) -> str:
    return str(values) if len(values) <= 8 else f"[{', '.join(map(str, values[:8]))}, ...]"


def _epochs_done(run_dir: Path) -> int:
    """The last epoch recorded in ``metrics.jsonl`` (0 without one)."""
    done = 0
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        try:
            done = int(json.loads(line)["epoch"])
        except (ValueError, KeyError, TypeError):
            break  # a torn last line of a killed run
    return done


def _check_results(results, metrics: list[Metric]) -> str | None:
    """Why ``results.json`` cannot be used with the benchmark's ``metrics``, or None."""
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict):
        return "results.json has no 'metrics' mapping; excluded"
    missing = [m.name for m in metrics if m.name not in results["metrics"]]
    if missing:
        return f"results.json lacks the benchmark's metric(s) {', '.join(missing)}; excluded"
    bad = [m.name for m in metrics if isinstance(results["metrics"][m.name], bool)
           or not isinstance(results["metrics"][m.name], (int, float))
           or not math.isfinite(results["metrics"][m.name])]
    if bad:
        return f"results.json has non-finite or non-numeric value(s) for {', '.join(bad)}; excluded"
    return None


def load_run(run_dir, metrics_cache: dict | None = None) -> tuple[SupervisedRun | None, list[Problem]]:
    """One run directory -> (the run, or None when it cannot be tabulated; problems).

    A run is usable when ``status.json`` says ``finished`` and ``results.json`` holds a
    finite value for each of its benchmark's metrics.  ``metrics_cache`` (benchmark config
    -> metric list) saves repeated look-ups over many runs."""
    run_dir = Path(run_dir)
    where = str(run_dir)
    try:
        config = read_config(run_dir)
    except ValueError as exc:
        return None, [Problem(where, str(exc))]
    if not isinstance(config.get("benchmark"), dict):
        return None, [Problem(where, "not a supervised run (its config has no benchmark section); skipped")]
    if not isinstance(config.get("aggregator"), dict) or "name" not in config["aggregator"]:
        return None, [Problem(where, "config lacks aggregator.name; excluded")]
    cache = {} if metrics_cache is None else metrics_cache
    key = json.dumps(config["benchmark"], sort_keys=True, default=str)
    if key not in cache:
        try:
            cache[key] = benchmark_metrics(config["benchmark"])
        except (ValueError, TypeError, ImportError) as exc:
            cache[key] = f"cannot list benchmark {config['benchmark'].get('name')!r}'s metrics ({exc}); excluded"
    if isinstance(cache[key], str):
        return None, [Problem(where, cache[key])]
    metrics = cache[key]

    status = read_status(run_dir) or {}
    state = status.get("state")
    results_path = run_dir / "results.json"
    if state == "failed":
        return None, [Problem(where, f"failed: {status.get('error', 'no reason recorded')}")]
    if not results_path.is_file():
        if state == "finished":
            return None, [Problem(where, "status says finished but results.json is missing; excluded")]
        epochs = config.get("train", {}).get("epochs", "?")
        return None, [Problem(where, f"unfinished ({_epochs_done(run_dir)} of {epochs} epochs, no results.json "
                                     "yet); excluded")]
    if state != "finished":
        return None, [Problem(where, "results.json is there but status.json does not say finished (running "
                                     "again?); excluded as possibly stale")]
    try:
        results = json.loads(results_path.read_text())
    except (OSError, ValueError) as exc:
        return None, [Problem(where, f"results.json is unreadable ({exc}); excluded")]
    error = _check_results(results, metrics)
    if error is not None:
        return None, [Problem(where, error)]
    run = SupervisedRun(run_dir, config, results, metrics)
    problems = []
    epochs = _epoch_list(run_dir)
    expected = list(range(1, int(config.get("train", {}).get("epochs", len(epochs))) + 1))
    if epochs != expected:
        problems.append(Problem(where, f"flagged: metrics.jsonl lists epochs {_short(epochs)}, expected 1..{len(expected)} "
                                       "once each (duplicated, missing or torn records)"))
    stored = results.get("delta_m")
    if isinstance(stored, (int, float)):
        recomputed = mtl_metrics.delta_m(list(run.values()), [m.baseline for m in metrics],
                                         [m.higher_is_better for m in metrics])
        if abs(stored - recomputed) > DM_TOLERANCE * max(1.0, abs(recomputed)):
            problems.append(Problem(where, f"results.json's dm% {stored:.4f} differs from {recomputed:.4f} "
                                           "recomputed against the current baselines; the table uses the latter"))
    return run, problems


def load_runs(paths) -> tuple[list[SupervisedRun], list[Problem]]:
    """Every usable run named by ``paths`` (run directories, parents searched recursively,
    glob patterns; see :func:`mtrl.summary.find_run_dirs`) and the problems met."""
    cache: dict = {}
    return collect_runs(paths, lambda run_dir: load_run(run_dir, cache))


# ------------------------------------------------------------------------------ grouping

def _label(config: dict) -> tuple[str, str, str]:
    """(benchmark, mode, aggregator) of a run config (mode ``param`` where unset, as the trainer)."""
    return str(config["benchmark"]["name"]), str(config.get("mode", "param")), str(config["aggregator"]["name"])


def group_runs(runs: list[SupervisedRun]) -> tuple[list[MethodRow], list[Problem]]:
    """Pool runs over seeds (equal configs apart from ``IGNORED_KEYS``).  Rows that share
    (benchmark, mode, aggregator) get a ``variant`` naming the config values that tell them
    apart.  A seed that appears twice in one row is reported (both runs are kept)."""
    groups: dict[tuple, list[SupervisedRun]] = {}
    for run in runs:
        groups.setdefault(config_key(run.config, IGNORED_KEYS), []).append(run)
    by_label: dict[tuple, list[tuple]] = {}
    for key, members in groups.items():
        by_label.setdefault(_label(members[0].config), []).append(key)
    rows, problems = [], []
    for (bench, mode, agg), keys in by_label.items():
        for key, variant in zip(keys, variant_labels(keys) if len(keys) > 1 else [""]):
            members = sorted(groups[key], key=lambda r: (seed_order(r.seed), str(r.path)))
            row = MethodRow(bench, agg, mode, variant, members, members[0].metrics)
            seeds = row.seeds
            for s in sorted({s for s in seeds if seeds.count(s) > 1}, key=str):
                paths = ", ".join(str(r.path) for r in members if r.seed == s)
                problems.append(Problem(f"{bench}/{row.label}", f"seed {s} appears in {seeds.count(s)} runs "
                                                                f"({paths}); all are averaged"))
            rows.append(row)
    rows.sort(key=lambda r: (r.benchmark, r.aggregator, r.mode, r.variant))
    return rows, problems


def build_tables(rows: list[MethodRow]) -> list[Table]:
    """One table per benchmark and metric set (file stem ``<benchmark>``, numbered
    ``<benchmark>-1``, ``-2``, ... when one benchmark has several metric sets), with each
    row's MR among the rows of its table."""
    sets: dict[str, list[tuple]] = {}
    tables: dict[tuple, Table] = {}
    for row in rows:
        names = tuple(m.name for m in row.metrics)
        sets.setdefault(row.benchmark, [])
        if names not in sets[row.benchmark]:
            sets[row.benchmark].append(names)
        key = (row.benchmark, names)
        if key not in tables:
            tables[key] = Table(row.benchmark, row.benchmark, row.metrics)
        tables[key].rows.append(row)
    for (bench, names), table in tables.items():
        if len(sets[bench]) > 1:
            table.stem = f"{bench}-{sets[bench].index(names) + 1}"
        ranks = mtl_metrics.mean_rank({i: list(r.mean) for i, r in enumerate(table.rows)},
                                      [m.higher_is_better for m in table.metrics])
        for i, row in enumerate(table.rows):
            row.mr = ranks[i]
    return sorted(tables.values(), key=lambda t: t.stem)


def summarize_runs(runs: list[SupervisedRun]) -> tuple[list[Table], list[Problem]]:
    """Rows pooled over seeds (:func:`group_runs`), gathered into tables (:func:`build_tables`)."""
    rows, problems = group_runs(runs)
    return build_tables(rows), problems


# ------------------------------------------------------------------------------- outputs

def _num(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.4g}"


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def table_markdown(table: Table) -> str:
    """The papers'-style table: a single-task (STL) reference row, then one row per method
    with the seed-mean metrics, MR, dm% (mean ± s.e.m. over seeds) and Var[dm_i] (plus the
    task-weighted dm% when a task reports several metrics)."""
    variant = any(r.variant for r in table.rows)
    weighted = not table.one_metric_per_task
    tasks = _lambda_tasks(table)
    lambdas = bool(tasks)
    header = (["method"] + (["variant"] if variant else []) + ["seeds"]
              + [f"{m.name} {_arrow(m.higher_is_better)}" for m in table.metrics]
              + ["MR ↓", "dm% ↓", "Var[dm_i] ↓"] + (["task-weighted dm% ↓"] if weighted else [])
              + ([f"λ {t}" for t in tasks] if lambdas else []))
    rows = [["STL"] + ([""] if variant else []) + ["-"] + [_num(m.baseline) for m in table.metrics]
            + ["-", "0.00", "0.00"] + (["0.00"] if weighted else []) + (["-"] * len(tasks) if lambdas else [])]
    for r in table.rows:
        rows.append([r.method] + ([r.variant] if variant else [])
                    + [str(r.n)] + [_num(x) for x in r.mean]
                    + [f"{r.mr:.2f}", pm(r.delta_m, r.delta_m_sem, digits=2, sign="+", missing_err=None),
                       f"{r.delta_m_var:.2f}"]
                    + ([f"{r.task_weighted_delta_m:+.2f}"] if weighted else [])
                    + (([_num(w) for w in r.mean_weights] if r.mean_weights else ["-"] * len(tasks)) if lambdas else []))
    reports = sorted({r.results.get("report", "selected epoch") for row in table.rows for r in row.runs})
    when = "; ".join("at the selected epoch" if rep == "selected epoch" else rep for rep in reports)
    text = (f"# {table.stem}: test metrics ({when}), mean over seeds\n\n"
            f"Metric columns: the mean over seeds of each run's test value ({when}) "
            "(s.e.m. in the CSV). dm%: mean relative drop against the single-task baselines (STL row; "
            "positive = worse), of the seed-mean metrics ± the s.e.m. of the per-seed dm% (dm% is linear "
            "in the metrics, so the two means agree). Var[dm_i]: variance of the per-task drops of the "
            "seed-mean metrics. MR: mean rank over the metrics among the methods of this table (1 = best; "
            "STL not ranked)." + (" λ: each task's applied weight averaged over the training steps "
                                  "(Guo et al., arXiv 2025, Tables VI-VII)." if lambdas else "") + "\n\n")
    return text + markdown_table(header, rows)


def document_markdown(table: Table, problems: list[Problem]) -> str:
    """The whole ``<stem>_table.md``: the table and every problem met while loading."""
    return (table_markdown(table) + "\n\n## Problems\n\n"
            "Runs listed here are left out of the table unless the line says otherwise.\n\n"
            + problems_markdown(problems) + "\n")


def csv_columns(table: Table) -> list[str]:
    """``FIXED_COLUMNS``, then each metric's seed mean (``<metric>``) and s.e.m. (``<metric>_sem``),
    then, where some row has them, each task's mean applied weight (``lambda_<task>``, empty
    for rows without)."""
    return (list(FIXED_COLUMNS) + [c for m in table.metrics for c in (m.name, f"{m.name}_sem")]
            + [f"lambda_{t}" for t in _lambda_tasks(table)])


def _lambda_tasks(table: Table) -> list[str]:
    """The tasks of the lambda columns: all of them if some row has mean weights, else none."""
    return table.rows[0].task_names if any(r.mean_weights is not None for r in table.rows) else []


def csv_rows(table: Table) -> list[list]:
    rows = []
    for r in table.rows:
        var_seeds = r.delta_m_var_seeds
        rows.append([r.benchmark, table.stem, r.label, r.aggregator, r.mode, r.variant, r.n,
                     " ".join(map(str, r.seeds)), r.mr, r.delta_m, r.delta_m_sem, r.delta_m_var,
                     r.delta_m_var_metrics, float(var_seeds.mean()), sem(var_seeds), r.task_weighted_delta_m]
                    + [x for pair in zip(r.mean, r.sem) for x in pair]
                    + ((r.mean_weights or [""] * len(r.task_names)) if _lambda_tasks(table) else []))
    return rows


def write_tables(tables: list[Table], problems: list[Problem], out_dir) -> list[Path]:
    """Write ``<stem>_table.md`` and ``<stem>_table.csv`` of each table to ``out_dir``
    (created if needed); returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in tables:
        md, csv = out / f"{table.stem}_table.md", out / f"{table.stem}_table.csv"
        write_text_atomic(md, document_markdown(table, problems))
        write_csv(csv, csv_columns(table), csv_rows(table))
        paths += [md, csv]
    return paths
