#!/usr/bin/env python
"""The papers' tables of the supervised benchmarks (metrics, MR, dm%), mean over seeds.

    python scripts/summarize_supervised.py runs/sweeps/supervised --out results
    python scripts/summarize_supervised.py 'runs/supervised/qm9/*/*/seed*'

Arguments are run directories of scripts/train_supervised.py, parents searched recursively
for run directories, or glob patterns.  Runs whose configs are equal apart from the seed
are one method; each table (one per benchmark) has the seed-mean test metrics, the mean
rank (MR), dm% (mean ± s.e.m. over seeds) and Var[dm_i] of every method
(mtrl/supervised/tables.py).  Writes <benchmark>_table.md and <benchmark>_table.csv to
--out, prints the tables and every problem (failed, unfinished or malformed runs).  Exit
code 1 when no run could be tabulated.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mtrl.rendering import problems_markdown  # noqa: E402
from mtrl.supervised.tables import load_runs, summarize_runs, table_markdown, write_tables  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", metavar="RUN_DIR|GLOB",
                    help="run directories, parent directories or glob patterns")
    ap.add_argument("--out", default=".", help="directory for the table files (default: current directory)")
    args = ap.parse_args(argv)

    runs, problems = load_runs(args.paths)
    tables, group_problems = summarize_runs(runs)
    problems += group_problems
    for table in tables:
        print(table_markdown(table) + "\n")
    if problems:
        print("problems:\n" + problems_markdown(problems) + "\n")
    if not tables:
        print(f"error: no finished supervised run with a usable results.json in {' '.join(args.paths)}",
              file=sys.stderr)
        return 1
    paths = write_tables(tables, problems, args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
