"""Rendering of computed summaries: Markdown tables, CSV files and plots.

Nothing here computes a statistic: the RL summary's functions take the groups of
:func:`mtrl.summary.summarize` and the improvements of :func:`mtrl.summary.improvements`
(whose numbers come from :mod:`mtrl.statistics`); the generic helpers (:func:`pm`,
:func:`markdown_table`, :func:`problems_markdown`, :func:`write_csv`) also serve the
supervised tables (:mod:`mtrl.supervised.tables`).

``write_outputs(groups, problems, out_dir, improvements)`` writes ``summary.md``,
``summary.csv``, ``per_task.csv``, ``improvement.csv``, ``performance_profile.csv``,
``learning_curves.png`` and ``performance_profile.png``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .run_files import atomic_write, write_text_atomic

if TYPE_CHECKING:
    from .summary import GroupSummary, Improvement, Problem

LABEL_COLUMNS = ("env", "protocol", "agent", "aggregator", "steps", "variant")
SUMMARY_COLUMNS = LABEL_COLUMNS + ("seeds", "best_mean", "best_sem", "final_mean", "final_sem", "iqm", "iqm_low",
                                   "iqm_high", "unfinished_included", "flag")
PER_TASK_COLUMNS = LABEL_COLUMNS + ("task", "seeds", "mean", "sem")
IMPROVEMENT_COLUMNS = LABEL_COLUMNS + ("seeds", "baseline_agent", "baseline_aggregator", "baseline_variant",
                                       "baseline_seeds", "probability", "low", "high")
PROFILE_COLUMNS = LABEL_COLUMNS + ("seeds", "tau", "fraction", "low", "high")
OUTPUT_FILES = ("summary.md", "summary.csv", "per_task.csv", "improvement.csv", "performance_profile.csv",
                "learning_curves.png", "performance_profile.png")


# ------------------------------------------------------------------------------- generic

def _fmt(x: float, digits: int = 3, sign: str = "") -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:{sign}.{digits}f}"


def pm(mean: float, err: float, digits: int = 3, sign: str = "", missing_err: str | None = "n/a") -> str:
    """``mean ± err`` to ``digits`` decimals (``sign="+"``: signed); a missing (non-finite)
    error prints as ``missing_err``, or is left out where that is None."""
    if err is None or not math.isfinite(err):
        return _fmt(mean, digits, sign) if missing_err is None else f"{_fmt(mean, digits, sign)} ± {missing_err}"
    return f"{_fmt(mean, digits, sign)} ± {_fmt(err, digits)}"


def interval(point: float, low: float, high: float, digits: int = 3) -> str:
    """``point [low, high]`` to ``digits`` decimals."""
    return f"{_fmt(point, digits)} [{_fmt(low, digits)}, {_fmt(high, digits)}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def problems_markdown(problems: list[Problem]) -> str:
    return "\n".join(f"- {p}" for p in problems) if problems else "none"


def _csv_value(x):
    return repr(float(x)) if isinstance(x, (float, np.floating)) else x


def write_csv(path: Path, header, rows) -> None:
    """Write a CSV file atomically (:func:`mtrl.run_files.atomic_write`)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([[_csv_value(v) for v in row] for row in rows])
    write_text_atomic(path, buf.getvalue())


# ---------------------------------------------------------------------------- RL summary

def _label(g: GroupSummary) -> list:
    return [*g.label_fields, g.variant]


def group_table_markdown(groups: list[GroupSummary]) -> str:
    """The main table: one row per group, with its protocol, seeds and statistics."""
    with_variant = any(g.variant for g in groups)
    header = ["env", "protocol", "agent", "aggregator", "steps"] + (["variant"] if with_variant else []) + [
        "seeds", "best success (mean ± s.e.m.)", "final success (mean ± s.e.m.)", "IQM [95% CI]", "flag"]
    rows = []
    for g in groups:
        rows.append([g.env, g.protocol, g.agent, g.aggregator, str(g.steps)] + ([g.variant] if with_variant else []) + [
            str(g.n), pm(g.best_mean, g.best_sem), pm(g.final_mean, g.final_sem),
            interval(g.iqm, g.iqm_low, g.iqm_high), g.flag])
    return markdown_table(header, rows)


def per_task_markdown(groups: list[GroupSummary]) -> str:
    """Final per-task success (mean ± s.e.m. over seeds): one table per task set, one row
    per group."""
    by_tasks: dict[tuple, list[GroupSummary]] = {}
    for g in groups:
        by_tasks.setdefault(g.tasks, []).append(g)
    parts = []
    for tasks, gs in by_tasks.items():
        rows = [[g.name, str(g.n)] + [pm(m, s) for m, s in zip(g.task_mean, g.task_sem)] for g in gs]
        parts.append(markdown_table(["group", "seeds"] + list(tasks), rows))
    return "\n\n".join(parts)


def improvement_markdown(improvements: list[Improvement]) -> str:
    """One row per group compared with its experiment's baseline."""
    if not improvements:
        return "none (no experiment has more than one group)"
    rows = [[i.group.name, i.baseline.name, f"{i.group.n} / {i.baseline.n}", interval(i.probability, i.low, i.high)]
            for i in improvements]
    return markdown_table(["group", "baseline", "seeds (group / baseline)", "P(group > baseline) [95% CI]"], rows)


def summary_markdown(groups: list[GroupSummary], problems: list[Problem],
                     improvements: list[Improvement] = ()) -> str:
    """The whole ``summary.md``."""
    flagged = [g for g in groups if g.flag]
    return "\n\n".join([
        "# Summary over seeds",
        ("Best: each run's highest evaluation mean success over training; final: its last "
         "evaluation. Mean ± s.e.m. over seeds (s.e.m. n/a with one seed). IQM: interquartile "
         "mean of the (runs x tasks) final per-task success, 95% stratified bootstrap "
         "interval over runs (rliable; Agarwal et al. 2021)."),
        group_table_markdown(groups),
        "## Final success per task",
        per_task_markdown(groups),
        "## Probability of improvement over the baseline",
        ("P(group > baseline): the probability that a run of the group beats a run of the baseline "
         "on a task (final success; ties count one half), averaged over the tasks, with its 95% "
         "stratified bootstrap interval. Groups are compared with the baseline of the same env, "
         "protocol, steps and task list (`--baseline`, default the `ls` aggregator, else the first "
         "group). 0.5: no difference."),
        improvement_markdown(list(improvements)),
        "## Performance profiles",
        ("The fraction of (run, task) final success values above each threshold tau, with 95% "
         "stratified bootstrap intervals: `performance_profile.csv` and `performance_profile.png`."),
        "## Flags",
        "\n".join(f"- {g.name}: {g.flag}" for g in flagged) if flagged else "none",
        "## Problems",
        "Unfinished runs are left out of the statistics unless `--include-unfinished` is given.\n\n"
        + problems_markdown(problems),
    ]) + "\n"


def _plot_bands(series, path, xlabel: str, ylabel: str, title: str) -> None:
    """One line per ``(label, x, y, low, high)`` of ``series``, shaded between ``low`` and
    ``high`` where those are given (not None)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, x, y, low, high in series:
        (line,) = ax.plot(x, y, label=label)
        if low is not None:
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    plt.close(fig)


def plot_learning_curves(groups: list[GroupSummary], path) -> None:
    """Mean success vs steps, one line per group (labelled with its protocol), shaded with
    the 95% t-interval over seeds at the evaluation steps all its runs share."""
    series = [(f"{g.name} (n={g.n})", g.curve_steps, g.curve_mean,
               *((g.curve_mean - g.curve_halfwidth, g.curve_mean + g.curve_halfwidth) if g.n > 1 else (None, None)))
              for g in groups]
    _plot_bands(series, path, "environment steps", "mean success",
                "Evaluation mean success (mean over seeds, 95% t-interval)")


def plot_performance_profiles(groups: list[GroupSummary], path) -> None:
    """Each group's performance profile (fraction of final per-task success values above
    tau), shaded with its 95% stratified bootstrap interval."""
    series = [(f"{g.name} (n={g.n})", g.profile_taus, g.profile, g.profile_low, g.profile_high) for g in groups]
    _plot_bands(series, path, "success threshold tau", "fraction of runs x tasks with success > tau",
                "Performance profiles of the final success (95% stratified bootstrap CI)")


def write_outputs(groups: list[GroupSummary], problems: list[Problem], out_dir,
                  improvements: list[Improvement] = ()) -> dict[str, Path]:
    """Write the ``OUTPUT_FILES`` to ``out_dir`` (created if needed); returns their paths
    by name."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in OUTPUT_FILES}
    write_text_atomic(paths["summary.md"], summary_markdown(groups, problems, improvements))
    write_csv(paths["summary.csv"], SUMMARY_COLUMNS, [
        _label(g) + [g.n, g.best_mean, g.best_sem, g.final_mean, g.final_sem, g.iqm, g.iqm_low, g.iqm_high,
                     g.unfinished, g.flag] for g in groups])
    write_csv(paths["per_task.csv"], PER_TASK_COLUMNS,
              [_label(g) + [t, g.n, m, s] for g in groups for t, m, s in zip(g.tasks, g.task_mean, g.task_sem)])
    write_csv(paths["improvement.csv"], IMPROVEMENT_COLUMNS, [
        _label(i.group) + [i.group.n, i.baseline.agent, i.baseline.aggregator, i.baseline.variant, i.baseline.n,
                           i.probability, i.low, i.high] for i in improvements])
    write_csv(paths["performance_profile.csv"], PROFILE_COLUMNS, [
        _label(g) + [g.n, tau, f, lo, hi]
        for g in groups for tau, f, lo, hi in zip(g.profile_taus, g.profile, g.profile_low, g.profile_high)])
    plot_learning_curves(groups, paths["learning_curves.png"])
    plot_performance_profiles(groups, paths["performance_profile.png"])
    return paths
