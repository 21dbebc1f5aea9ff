#!/usr/bin/env python
"""Summarise training runs over seeds: a Markdown/CSV table, per-task success, learning
curves, the probability of improvement over a baseline and performance profiles.

    python scripts/summarize.py runs/sweeps --out results
    python scripts/summarize.py 'runs/mt10/paper/mh_sac/*/seed*' --include-unfinished
    python scripts/summarize.py runs/sweeps --baseline pcgrad

Arguments are run directories, parents searched recursively for run directories, or glob
patterns.  Runs whose configs are equal apart from the seed are pooled; each group gets the
mean ± s.e.m. of the best and of the final evaluation mean success, the interquartile mean
with a 95% stratified bootstrap interval over runs and the performance profile of its final
per-task success; each group is compared with the baseline group of the same env, protocol,
steps and tasks by the probability of improvement (intervals: rliable's stratified
bootstrap, Agarwal et al. 2021).  Writes summary.md, summary.csv, per_task.csv,
improvement.csv, performance_profile.csv, learning_curves.png and performance_profile.png
to --out and prints the tables and every problem (missing, truncated, unfinished or
malformed runs).  Exit code 1 when nothing could be summarised.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mtrl.rendering import group_table_markdown, improvement_markdown, problems_markdown, write_outputs  # noqa: E402
from mtrl.summary import DEFAULT_BASELINE, improvements, load_runs, summarize  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="run directories, parent directories or glob patterns")
    ap.add_argument("--out", default=".", help="directory for the summary files (default: current directory)")
    ap.add_argument("--include-unfinished", action="store_true",
                    help="pool unfinished runs too (their latest evaluation counts as final)")
    ap.add_argument("--resamples", type=int, default=2000,
                    help="bootstrap resamples of every interval (IQM, profiles, probability of improvement; the "
                         "last costs about 0.4 ms per task and resample for each group)")
    ap.add_argument("--baseline", default=DEFAULT_BASELINE,
                    help="the aggregator (or full group name) each group's probability of improvement is taken "
                         "against, within its env, protocol, steps and tasks; where no group of those matches, "
                         f"their first group (default: {DEFAULT_BASELINE})")
    args = ap.parse_args(argv)

    runs, problems = load_runs(args.paths)
    groups = summarize(runs, include_unfinished=args.include_unfinished, n_resamples=args.resamples)
    if groups:
        print(group_table_markdown(groups) + "\n")
    if problems:
        print("problems:\n" + problems_markdown(problems) + "\n")
    if not groups:
        unfinished = sum(not r.finished for r in runs)
        hint = f" ({unfinished} unfinished; pass --include-unfinished to summarise them)" if unfinished else ""
        print(f"error: no finished runs to summarise in {' '.join(args.paths)}{hint}", file=sys.stderr)
        return 1
    better = improvements(groups, baseline=args.baseline, n_resamples=args.resamples)
    if better:
        print("probability of improvement over the baseline:\n" + improvement_markdown(better) + "\n")
    paths = write_outputs(groups, problems, args.out, better)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
