"""Run configs for the supervised-driver tests, one call that trains a run, and the check
of a paper's printed dm% against our metric lists."""

import numpy as np

from mtrl.metrics import delta_m
from mtrl.supervised.registry import benchmark_metrics
from mtrl.supervised.trainer import SupervisedTrainer


def run_config(bench: str, root, aggregator: str, mode: str, epochs: int, train: dict, options: dict,
               batch_size: int) -> dict:
    """A trainer config: ``bench`` read from ``root`` with ``options``, ``aggregator`` with
    the benchmark's preset, ``epochs`` of batches of ``batch_size``; ``train`` overrides."""
    t = {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3, "diagnostics_every": 2, "log_every": 1, **train}
    return {"seed": 0, "device": "cpu", "mode": mode, "aggregator_preset": bench,
            "data": {"root": str(root)}, "benchmark": {"name": bench, **options},
            "aggregator": {"name": aggregator}, "train": t}


def train_run(cfg: dict, run_dir):
    """(trainer, results) of a finished run of ``cfg`` in ``run_dir``."""
    tr = SupervisedTrainer(cfg, run_dir)
    try:
        return tr, tr.train()
    finally:
        tr.close()


def printed_dm_matches(bench: str, printed: str, dm_printed: float, sign: float = 1.0) -> bool:
    """Whether the metric values ``printed`` (a paper's row, space-separated, in our metric
    order) give ``sign * dm_printed`` with our directions and single-task baselines, to
    within the rounding of the printed numbers (``sign`` -1 for papers whose dm% is
    higher-is-better)."""
    metrics = benchmark_metrics({"name": bench})
    baselines = np.array([m.baseline for m in metrics])
    values = [float(v) for v in printed.split()]
    half_units = np.array([0.5 * 10.0 ** -len(v.split(".")[1]) if "." in v else 0.5 for v in printed.split()])
    tolerance = 0.005 + 100 * np.mean(half_units / np.abs(baselines))
    dm = delta_m(values, baselines, [m.higher_is_better for m in metrics])
    return abs(dm - sign * dm_printed) <= tolerance
