#!/usr/bin/env python
"""Evaluate saved agents: load each run's checkpoint, run N episodes per task, print and
save per-task success (``RUN_DIR/evaluations/<protocol>-<N>ep-seed<seed>.json``).

    python scripts/evaluate.py runs/mt10/paper/mh_sac/pivrg/seed0
    python scripts/evaluate.py 'runs/sweeps/mt10/paper/mh_sac/*/seed*' --protocol paper
    python scripts/evaluate.py RUN_DIR --episodes 10 --device cuda

Protocols: ``metaworld3`` (default for MetaWorld runs): the MetaWorld package's own
evaluation, 50 episodes per task, each with a fresh goal variant; ``paper``: the
published numbers' evaluation (one fixed goal per task, 150-step episodes, the run's
``train.eval_episodes``).  Exit code 1 if any run could not be evaluated.
"""

from __future__ import annotations

import argparse
import glob
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_dirs(patterns: list[str]) -> list[Path]:
    """Directories named or matched by the arguments (globs expanded here too)."""
    out = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) or [pattern]
        out += [Path(m) for m in matches]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories or glob patterns")
    parser.add_argument("--protocol", choices=("metaworld3", "paper"), default=None,
                        help="metaworld3 (default for MetaWorld runs) or paper")
    parser.add_argument("--episodes", type=int, default=None,
                        help="episodes per task (default: 50 for metaworld3, the run's eval_episodes for paper)")
    parser.add_argument("--seed", type=int, default=None, help="benchmark seed (default: the run's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_args(argv)

    from mtrl.run_files import CheckpointError
    from mtrl.saved_runs import evaluate_run
    from mtrl.trainer import format_success_table

    failed = 0
    for run_dir in run_dirs(args.runs):
        try:
            rec = evaluate_run(run_dir, args.protocol, args.episodes, args.seed, args.device)
        except (ValueError, CheckpointError) as exc:  # ConfigError is a ValueError
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{run_dir}: checkpoint step {rec['checkpoint_step']}, protocol {rec['evaluation_protocol']}, "
              f"{rec['episodes_per_task']} episodes per task, seed {rec['seed']} ({rec['seconds']:.0f} s)")
        print(format_success_table({**rec, "step": rec["checkpoint_step"]}))
        print(f"saved: {rec['path']}\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
