"""Run configs for the supervised-driver tests, and one call that trains a run."""

from mtrl.supervised.trainer import SupervisedTrainer


def run_config(bench: str, root, aggregator: str, mode: str, epochs: int, train: dict, options: dict,
               batch_size: int) -> dict:
    """A trainer config: ``bench`` read from ``root`` with ``options``, ``aggregator`` with
    the benchmark's preset, ``epochs`` of batches of ``batch_size``; ``train`` overrides."""
    t = {"epochs": epochs, "batch_size": batch_size, "lr": 1e-3, "diagnostics_every": 2, "log_every": 1, **train}
    return {"seed": 0, "device": "cpu", "mode": mode, "aggregator_preset": bench,
            "benchmark": {"name": bench, "root": str(root), **options},
            "aggregator": {"name": aggregator}, "train": t}


def train_run(cfg: dict, run_dir):
    """(trainer, results) of a finished run of ``cfg`` in ``run_dir``."""
    tr = SupervisedTrainer(cfg, run_dir)
    try:
        return tr, tr.train()
    finally:
        tr.close()
