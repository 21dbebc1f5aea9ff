#!/usr/bin/env python
"""Summarise training runs over seeds: a Markdown/CSV table, per-task success and learning curves.

    python scripts/summarize.py runs/sweeps --out results
    python scripts/summarize.py 'runs/mt10/paper/mh_sac/*/seed*' --include-unfinished

Arguments are run directories, parents searched recursively for run directories, or glob
patterns.  Runs whose configs are equal apart from the seed are pooled; each group gets the
mean ± s.e.m. of the best and of the final evaluation mean success, and the interquartile
mean with a 95% stratified bootstrap interval over runs.  Writes summary.md, summary.csv,
per_task.csv and learning_curves.png to --out and prints the table and every problem
(missing, truncated, unfinished or malformed runs).  Exit code 1 when nothing could be
summarised.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mtrl.summary import group_table_markdown, load_runs, problems_markdown, summarize, write_outputs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="run directories, parent directories or glob patterns")
    ap.add_argument("--out", default=".", help="directory for the summary files (default: current directory)")
    ap.add_argument("--include-unfinished", action="store_true",
                    help="pool unfinished runs too (their latest evaluation counts as final)")
    ap.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples for the IQM interval")
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
    paths = write_outputs(groups, problems, args.out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
