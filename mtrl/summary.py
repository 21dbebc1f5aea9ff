"""Run discovery, loading and grouping of training runs over seeds, shared by the RL
summary and the supervised tables (``mtrl.supervised.tables``).

Reads only each run directory's saved config (``config.json``, or Hydra's
``.hydra/config.yaml``) and ``metrics.jsonl`` (one JSON object per evaluation, see
``mtrl.metrics_log``), so it works on runs copied from other machines.  The numbers come
from :mod:`mtrl.statistics`; the files are written by :mod:`mtrl.rendering`.

* ``load_runs(paths)`` finds run directories (directories, parents searched recursively,
  glob patterns) and loads them; every run that cannot be used, or is unfinished or
  truncated, is reported in the returned problem list, never dropped silently.
* ``summarize(runs)`` pools runs over seeds: runs whose configs are equal apart from the
  seed, the device and bookkeeping intervals form one group.  Per group: mean ± s.e.m.
  of each run's best evaluation mean success over training (the metric of the published
  MT10 tables) and of its final evaluation, the interquartile mean (IQM) of the
  (runs x tasks) final per-task success with a 95% stratified bootstrap interval over
  runs, and the performance profile of that success (Agarwal et al. 2021, "Deep RL at the
  edge of the statistical precipice").
* ``improvements(groups, baseline)`` gives each group's probability of improvement over
  the baseline group of the same experiment (env, protocol, steps and tasks).
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .run_files import read_config, read_status
from .run_identity import META_KEY, RL_KEYS, KeyPolicy
from .statistics import (column_sem, iqm, performance_profile, probability_of_improvement, sem,
                         stratified_bootstrap_iqm, t_halfwidth)

RUN_MARKERS = ("config.json", os.path.join(".hydra", "config.yaml"), "metrics.jsonl")


def seed_pooled_keys(policy: KeyPolicy, length_key: str) -> frozenset[str]:
    """The config keys runs of one experiment may differ in: the seed and the driver's
    untracked keys (``policy``: device, logging intervals, ...), except its run length
    (``length_key``): a longer run is another experiment."""
    return frozenset({"seed"} | (policy.untracked - {length_key}))


#: the keys runs differing only in are seeds of the same experiment
IGNORED_KEYS = seed_pooled_keys(RL_KEYS, "train.steps")
LABEL_KEYS = ("env.name", "env.protocol", "agent.kind", "aggregator.name", "train.steps")
RECORD_KEYS = {"step": int, "tasks": list, "success": list, "mean_success": (int, float)}
#: the success thresholds of the performance profiles
PROFILE_TAUS = np.linspace(0.0, 1.0, 21)
#: the aggregator of the default baseline of :func:`improvements` (linear scalarisation)
DEFAULT_BASELINE = "ls"


@dataclass(frozen=True)
class Problem:
    """Something wrong with one path: a run that is excluded, truncated or unfinished."""
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Run:
    """One run directory: its resolved config and its evaluations in order."""
    path: Path
    config: dict
    evaluations: list[dict]
    truncated: bool = False
    #: duplicated, missing or non-finite evaluations (:func:`evaluation_issues`)
    issues: tuple[str, ...] = ()

    @property
    def steps(self) -> int:
        return int(self.config["train"]["steps"])

    @property
    def last_step(self) -> int:
        return int(self.evaluations[-1]["step"])

    @property
    def finished(self) -> bool:
        """The trainer always evaluates at the end, so a run is done when an intact
        metrics file reaches ``train.steps``."""
        return not self.truncated and self.last_step >= self.steps

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(self.evaluations[0]["tasks"])


@dataclass
class GroupSummary:
    """Statistics of one group of runs (same config apart from the seed).

    ``best``/``final``: per run, the highest and the last evaluation mean success;
    ``task_scores``: (runs x tasks) final per-task success; ``curve_*``: mean success over
    the evaluation steps all runs share, with the 95% t-interval half-width over seeds;
    ``profile*``: the fraction of ``task_scores`` above each of ``profile_taus``, with its
    95% stratified bootstrap interval.
    """
    env: str
    protocol: str
    agent: str
    aggregator: str
    steps: int
    variant: str
    runs: list[Run]
    seeds: list
    tasks: tuple[str, ...]
    best: np.ndarray
    final: np.ndarray
    task_scores: np.ndarray
    iqm: float
    iqm_low: float
    iqm_high: float
    curve_steps: np.ndarray
    curve_mean: np.ndarray
    curve_halfwidth: np.ndarray
    unfinished: int
    profile_taus: np.ndarray
    profile: np.ndarray
    profile_low: np.ndarray
    profile_high: np.ndarray
    flag: str = ""

    @property
    def label_fields(self) -> tuple:
        return (self.env, self.protocol, self.agent, self.aggregator, self.steps)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def best_mean(self) -> float:
        return float(np.mean(self.best))

    @property
    def best_sem(self) -> float:
        return sem(self.best)

    @property
    def final_mean(self) -> float:
        return float(np.mean(self.final))

    @property
    def final_sem(self) -> float:
        return sem(self.final)

    @property
    def task_mean(self) -> np.ndarray:
        return self.task_scores.mean(axis=0)

    @property
    def task_sem(self) -> np.ndarray:
        return column_sem(self.task_scores)

    @property
    def name(self) -> str:
        base = f"{self.env}/{self.protocol}/{self.agent}/{self.aggregator}/{self.steps}"
        return f"{base} [{self.variant}]" if self.variant else base

    @property
    def experiment(self) -> tuple:
        """What groups must share to be compared: env, protocol, steps and task list."""
        return (self.env, self.protocol, self.steps, self.tasks)


@dataclass
class Improvement:
    """The probability that ``group`` improves on ``baseline`` (same experiment), with its
    95% stratified bootstrap interval."""
    group: GroupSummary
    baseline: GroupSummary
    probability: float
    low: float
    high: float


# ----------------------------------------------------------------------------- discovery

def _is_run_dir(path: Path) -> bool:
    return any((path / m).is_file() for m in RUN_MARKERS)


def find_run_dirs(paths) -> tuple[list[Path], list[Problem]]:
    """Run directories named by ``paths``: run directories themselves, parents (searched
    recursively; the search does not descend into a run directory) or glob patterns
    (expanded here too, in case quoting kept the shell from doing it)."""
    found: dict[Path, Path] = {}  # resolved -> as given, so one run named twice is loaded once
    problems = []
    for arg in map(str, paths):
        matches = sorted(glob.glob(arg, recursive=True)) if glob.has_magic(arg) else [arg]
        if not matches:
            problems.append(Problem(arg, "pattern matched nothing"))
        for m in map(Path, matches):
            if m.is_file() and m.name in ("config.json", "metrics.jsonl"):
                m = m.parent
            if not m.exists():
                problems.append(Problem(str(m), "no such directory"))
            elif not m.is_dir():
                problems.append(Problem(str(m), "not a directory"))
            elif _is_run_dir(m):
                found.setdefault(m.resolve(), m)
            else:
                below = []
                for root, dirs, _ in os.walk(m):
                    dirs.sort()
                    if _is_run_dir(Path(root)):
                        below.append(Path(root))
                        dirs.clear()
                if not below:
                    problems.append(Problem(str(m), "no run directories (config.json, .hydra/config.yaml or "
                                                    "metrics.jsonl) found below"))
                for b in below:
                    found.setdefault(b.resolve(), b)
    return list(found.values()), problems


# ------------------------------------------------------------------------------- loading

def _check_record(rec, tasks) -> str | None:
    """Why an evaluation record is unusable, or None."""
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    for key, typ in RECORD_KEYS.items():
        if key not in rec:
            return f"missing key {key!r}"
        if not isinstance(rec[key], typ) or isinstance(rec[key], bool):
            return f"{key!r} has type {type(rec[key]).__name__}"
    if len(rec["success"]) != len(rec["tasks"]):
        return f"{len(rec['success'])} success values for {len(rec['tasks'])} tasks"
    if tasks is not None and tuple(rec["tasks"]) != tasks:
        return "task list differs from the first evaluation's"
    return None


def _load_metrics(path: Path) -> tuple[list[dict], bool]:
    """Evaluations in ``metrics.jsonl`` and whether its last line was torn (a partial
    line without a trailing newline, left by a killed run).  A bad line anywhere else
    raises ValueError naming ``path:line``."""
    text = path.read_text()
    lines = text.split("\n")
    torn_candidate = not text.endswith("\n")
    if not torn_candidate:
        lines.pop()  # the empty string after the final newline
    records, tasks = [], None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = torn_candidate and lineno == len(lines)
        try:
            rec = json.loads(line)
            error = _check_record(rec, tasks)
        except json.JSONDecodeError as exc:
            error = f"invalid JSON ({exc.msg} at column {exc.colno})"
        if error is not None:
            if last:
                return records, True
            raise ValueError(f"{path}:{lineno}: {error}")
        tasks = tuple(rec["tasks"])
        records.append(rec)
    return records, False


def evaluation_issues(evaluations: list[dict], eval_every: int | None) -> list[str]:
    """What is wrong with a run's evaluation sequence: steps that repeat or go back (two
    processes wrote the file, or it was edited), evaluations missing (the trainer evaluates
    at the first episode end past each multiple of ``train.eval_every``, so with episodes
    shorter than it every multiple is reached once), and non-finite success values."""
    steps = [int(e["step"]) for e in evaluations]
    issues = []
    repeated = sorted({b for a, b in zip(steps, steps[1:]) if b <= a})
    if repeated:
        issues.append(f"duplicated or out-of-order evaluation step(s) {repeated[:5]}")
    if eval_every and eval_every > 0 and not repeated:
        bins = [0] + [s // eval_every for s in steps]
        gaps = [(a * eval_every, b * eval_every) for a, b in zip(bins, bins[1:]) if b - a >= 2]
        if gaps:
            lost = sum((b - a) // eval_every - 1 for a, b in gaps)
            issues.append(f"{lost} evaluation(s) missing (one is written every train.eval_every={eval_every} "
                          f"steps; none between steps {gaps[0][0]} and {gaps[0][1]})")
    bad = [e["step"] for e in evaluations
           if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in [e["mean_success"], *e["success"]])]
    if bad:
        issues.append(f"non-finite success at step(s) {bad[:5]}")
    return issues


def flatten_config(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {"a.b.c": value}; lists become tuples (hashable).  The run metadata
    (``_run``: overrides, history) is not config and is left out."""
    out = {}
    for key, value in d.items():
        if not prefix and key == META_KEY:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out


def load_run(run_dir) -> tuple[Run | None, list[Problem]]:
    """One run directory -> (Run or None when unusable, problems)."""
    run_dir = Path(run_dir)
    where = str(run_dir)
    try:
        config = read_config(run_dir)
    except ValueError as exc:
        return None, [Problem(where, str(exc))]
    status = read_status(run_dir) or {}
    failed = [Problem(where, f"failed: {status.get('error', 'no reason recorded')}")] if status.get("state") == "failed" else []
    flat = flatten_config(config)
    missing = [k for k in LABEL_KEYS if k not in flat]
    if missing:
        return None, [Problem(where, f"config lacks {', '.join(missing)}")]
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None, failed + [Problem(where, "no evaluation yet (no metrics.jsonl)")]
    try:
        evaluations, truncated = _load_metrics(metrics)
    except ValueError as exc:
        return None, [Problem(where, f"excluded: {exc}")]
    if not evaluations:
        reason = "only a truncated line" if truncated else "empty"
        return None, failed + [Problem(where, f"no evaluation yet (metrics.jsonl {reason})")]
    eval_every = flat.get("train.eval_every")
    issues = evaluation_issues(evaluations, eval_every if isinstance(eval_every, int) else None)
    run = Run(run_dir, config, evaluations, truncated, tuple(issues))
    problems = failed + [Problem(where, f"flagged: {issue}") for issue in issues]
    if truncated:
        problems.append(Problem(where, f"truncated: torn last line of metrics.jsonl ignored, {len(evaluations)} "
                                       f"evaluations kept; counted as unfinished"))
    if run.last_step < run.steps:
        problems.append(Problem(where, f"unfinished (step {run.last_step} of {run.steps})"))
    return run, problems


def collect_runs(paths, load_one) -> tuple[list, list[Problem]]:
    """Every run named by ``paths`` (see ``find_run_dirs``) that ``load_one(run_dir) ->
    (run or None, problems)`` can use, and every problem met on the way (none dropped)."""
    dirs, problems = find_run_dirs(paths)
    runs = []
    for d in dirs:
        run, probs = load_one(d)
        problems += probs
        if run is not None:
            runs.append(run)
    return runs, problems


def load_runs(paths) -> tuple[list[Run], list[Problem]]:
    """Find and load every run named by ``paths`` (see ``find_run_dirs``).  Returns the
    usable runs (finished or not) and the problems: unusable runs (no config, no
    evaluation yet, a malformed ``metrics.jsonl`` line), truncated and unfinished runs."""
    return collect_runs(paths, load_run)


# ------------------------------------------------------------------------------ grouping

def config_key(config: dict, ignored: frozenset[str], **extra) -> tuple:
    """A hashable key of ``config`` without the ``ignored`` keys (plus ``extra`` entries):
    runs with equal keys are seeds of one experiment."""
    flat = {k: v for k, v in flatten_config(config).items() if k not in ignored}
    flat.update(extra)
    return tuple(sorted((k, json.dumps(v, sort_keys=True, default=str)) for k, v in flat.items()))


def variant_labels(keys: list[tuple]) -> list[str]:
    """For groups that share a label: 'key=value, ...' of the config values that differ."""
    dicts = [dict(k) for k in keys]
    all_keys = sorted(set().union(*dicts))
    differing = [k for k in all_keys if len({d.get(k) for d in dicts}) > 1]

    def show(d, k):
        if k not in d:
            return "<unset>"
        value = json.loads(d[k])
        return value if isinstance(value, str) else d[k]

    return [", ".join(f"{k}={show(d, k)}" for k in differing) for d in dicts]


def _flag(best: np.ndarray, seeds: list, unfinished: int, with_issues: int = 0) -> str:
    notes = []
    if with_issues:
        notes.append(f"{with_issues} run(s) with duplicated, missing or non-finite evaluations (see problems)")
    zero = int(np.sum(best == 0))
    if 0 < zero < best.size:
        notes.append(f"{zero}/{best.size} seeds never succeeded")
    if best.size > 1 and best.max() - best.min() > 0.5:
        notes.append(f"best mean success ranges {best.min():.2f}-{best.max():.2f} over seeds")
    dupes = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if dupes:
        notes.append(f"seed(s) {', '.join(map(str, dupes))} appear in more than one run")
    if unfinished:
        notes.append(f"includes {unfinished} unfinished run(s)")
    return "; ".join(notes)


def seed_order(seed) -> tuple:
    return (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed))


def _summarize_group(runs: list[Run], variant: str, n_resamples: int, seed: int, taus) -> GroupSummary:
    runs = sorted(runs, key=lambda r: (seed_order(r.config.get("seed")), str(r.path)))
    best = np.array([max(e["mean_success"] for e in r.evaluations) for r in runs], dtype=float)
    final = np.array([r.evaluations[-1]["mean_success"] for r in runs], dtype=float)
    scores = np.array([r.evaluations[-1]["success"] for r in runs], dtype=float)
    low, high = stratified_bootstrap_iqm(scores, n_resamples=n_resamples, seed=seed)
    taus = np.asarray(taus, dtype=float)
    profile, profile_low, profile_high = performance_profile(scores, taus, n_resamples=n_resamples, seed=seed)
    shared = sorted(set.intersection(*({e["step"] for e in r.evaluations} for r in runs)))
    by_step = [{e["step"]: e["mean_success"] for e in r.evaluations} for r in runs]
    curves = np.array([[d[s] for s in shared] for d in by_step], dtype=float).reshape(len(runs), len(shared))
    flat = flatten_config(runs[0].config)
    seeds = [r.config.get("seed") for r in runs]
    unfinished = sum(not r.finished for r in runs)
    return GroupSummary(
        env=str(flat["env.name"]), protocol=str(flat["env.protocol"]), agent=str(flat["agent.kind"]),
        aggregator=str(flat["aggregator.name"]), steps=int(flat["train.steps"]), variant=variant, runs=runs,
        seeds=seeds, tasks=runs[0].tasks, best=best, final=final, task_scores=scores, iqm=float(iqm(scores)),
        iqm_low=low, iqm_high=high, curve_steps=np.array(shared), curve_mean=curves.mean(axis=0),
        curve_halfwidth=t_halfwidth(curves), unfinished=unfinished, profile_taus=taus, profile=profile,
        profile_low=profile_low, profile_high=profile_high, flag=_flag(best, seeds, unfinished, sum(bool(r.issues) for r in runs)))


def summarize(runs: list[Run], include_unfinished: bool = False, n_resamples: int = 2000,
              seed: int = 0, taus=PROFILE_TAUS) -> list[GroupSummary]:
    """Pool runs over seeds and summarise each group (see the module docstring).

    Runs are grouped by their config with ``IGNORED_KEYS`` removed (and their task list),
    so different protocols, step budgets or hyper-parameters are never pooled; groups that
    share (env, protocol, agent, aggregator, steps) get a ``variant`` naming the config
    values that tell them apart.  Unfinished runs are left out unless
    ``include_unfinished``.  Groups are returned sorted by label."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.finished or include_unfinished:
            groups.setdefault(config_key(run.config, IGNORED_KEYS, tasks=run.tasks), []).append(run)
    by_label: dict[tuple, list[tuple]] = {}
    for key in groups:
        d = dict(key)
        by_label.setdefault(tuple(d[k] for k in LABEL_KEYS), []).append(key)
    variant = {}
    for keys in by_label.values():
        names = variant_labels(keys) if len(keys) > 1 else [""]
        variant.update(zip(keys, names))
    out = [_summarize_group(groups[k], variant[k], n_resamples, seed, taus) for k in groups]
    return sorted(out, key=lambda g: (g.label_fields, g.variant))


def baselines(groups: list[GroupSummary], baseline: str = DEFAULT_BASELINE) -> dict[tuple, GroupSummary]:
    """The baseline group of each experiment (:attr:`GroupSummary.experiment`): the first
    (in ``groups``' order) whose aggregator or full name is ``baseline``, else the
    experiment's first group."""
    chosen: dict[tuple, GroupSummary] = {}
    for g in groups:
        current = chosen.get(g.experiment)
        if current is None or (baseline not in (current.aggregator, current.name)
                               and baseline in (g.aggregator, g.name)):
            chosen[g.experiment] = g
    return chosen


def improvements(groups: list[GroupSummary], baseline: str = DEFAULT_BASELINE, n_resamples: int = 2000,
                 seed: int = 0) -> list[Improvement]:
    """The probability of improvement of every group over its experiment's baseline (see
    :func:`baselines`), from their (runs x tasks) final per-task success, in ``groups``'
    order; the baselines themselves and experiments of one group are left out."""
    chosen = baselines(groups, baseline)
    out = []
    for g in groups:
        base = chosen[g.experiment]
        if g is not base:
            p, low, high = probability_of_improvement(g.task_scores, base.task_scores, n_resamples=n_resamples,
                                                      seed=seed)
            out.append(Improvement(g, base, p, low, high))
    return out
