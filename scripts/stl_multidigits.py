#!/usr/bin/env python
"""The single-task (STL) baselines of the multidigits benchmark.

    OMP_NUM_THREADS=1 python scripts/stl_multidigits.py                 # 4 tasks x seeds 0, 1, 2
    OMP_NUM_THREADS=1 python scripts/stl_multidigits.py --tasks sum --seeds 0 1 2 3 4
    OMP_NUM_THREADS=1 python scripts/stl_multidigits.py --seeds 0 -- train.epochs=2   # Hydra overrides after --

Each run trains the benchmark's own architecture (DigitsCNN) with one head on one task
(``benchmark.tasks=[<task>]``) through the supervised trainer, under the benchmark's
protocol (``configs/protocol/multidigits.yaml``: the same epochs, batch size, lr and
schedule as the multi-task runs) and LS, which with one task is plain single-task training.
The reported value of a run is its test accuracy at the epoch with the best validation
accuracy (the trainer's selection); the script prints each run, the mean and standard
deviation over the seeds per task, and the ``STL_ACCURACY`` line for
``mtrl/supervised/benchmarks/multidigits.py``. Run directories go under ``--out`` (a
temporary directory by default, removed afterwards).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtrl import launch  # noqa: E402  (registers the aggregator configs)
from mtrl.supervised.data.digits import TASKS  # noqa: E402


def stl_config(task: str, seed: int, overrides: list[str] = ()) -> dict:
    """The composed run config of one single-task run (LS, CPU)."""
    cfg = launch.compose("supervised", ["benchmark=multidigits", "aggregator=ls", f"+benchmark.tasks=[{task}]",
                                        f"seed={seed}", "device=cpu", *overrides], resolve=True)
    return cfg


def run_one(task: str, seed: int, run_dir: Path, overrides: list[str] = ()) -> float:
    """Test accuracy of one single-task run at its selected epoch."""
    from mtrl.supervised.trainer import SupervisedTrainer

    trainer = SupervisedTrainer(stl_config(task, seed, overrides), run_dir)
    try:
        results = trainer.train()
    finally:
        trainer.close()
    return float(results["metrics"][f"{task}_acc"])


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="keep the run directories here")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides after -- (e.g. -- train.epochs=2)")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(1)
    values: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for task in args.tasks:
            for seed in args.seeds:
                t0 = time.perf_counter()
                acc = run_one(task, seed, out / task / f"seed{seed}", args.overrides)
                values.setdefault(task, []).append(acc)
                print(f"{task} seed {seed}: test accuracy {acc:.4f} ({time.perf_counter() - t0:.1f} s)", flush=True)
    print("\ntask     mean    std (over seeds " + ", ".join(map(str, args.seeds)) + ")")
    for task, accs in values.items():
        print(f"{task:8s} {np.mean(accs):.4f}  {np.std(accs):.4f}")
    print("\nSTL_ACCURACY = {" + ", ".join(f'"{t}": {np.mean(a):.4f}' for t, a in values.items()) + "}")
    return values


if __name__ == "__main__":
    main()
