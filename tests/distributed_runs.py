"""Data-parallel runs for the tests: a few aggregated steps of a small multi-task model, in
one process on the whole batch or in R ``gloo`` processes on its shards (rows r, r + R,
...), and the launcher that spawns the R processes.

The model is float64 so that the comparison with one process is tight (the all-reduce
changes only the order of the sums)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

import aggregators
from aggregators.distributed import Reducer
from mtrl.distributed import run_local

K, BATCH, STEPS = 3, 12, 4


class TinyMultiTask(nn.Module):
    """trunk: 5 -> 16 -> 8 (tanh); head i: 8 -> 1."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(K))


def initial_params() -> dict:
    """The model's parameters before the first step of :func:`run`."""
    torch.manual_seed(0)
    return {n: p.detach().clone() for n, p in TinyMultiTask().double().named_parameters()}


def data(batch: int = BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 5, generator=g, dtype=torch.float64)
    coef = torch.randn(5, K, generator=g, dtype=torch.float64)
    noise = 0.1 * torch.randn(batch, K, generator=g, dtype=torch.float64)
    return x, (x @ coef + noise) * torch.tensor([1.0, 3.0, 0.3], dtype=torch.float64)   # three scales


def run(method: str, rank: int = 0, world: int = 1, mode: str = "param", gram_only: bool = False,
        options: dict | None = None, batch: int = BATCH) -> dict:
    """The model's parameters, the aggregator's state and the logged losses and weights
    after ``STEPS`` steps (SGD, lr 0.1) of ``method`` on rows ``rank::world`` of the batch
    (``batch`` rows);
    ``world > 1`` needs the process group."""
    torch.manual_seed(0)
    model = TinyMultiTask().double()
    agg = aggregators.make(method, K, **(options or {})).double()
    params = list(model.parameters()) + [p for p in agg.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    reducer = Reducer(gram_only=gram_only) if world > 1 else None
    x, y = data(batch)
    x, y = x[rank::world], y[rank::world]
    losses_log, weights_log = [], []
    for step in range(STEPS):
        opt.zero_grad(set_to_none=True)
        z = model.trunk(x)
        losses = [((head(z).squeeze(1) - y[:, i]) ** 2).mean() for i, head in enumerate(model.heads)]
        info = aggregators.backward(losses, model.trunk, agg, features=z if mode == "rep" else None,
                                    heads=[list(h.parameters()) for h in model.heads], representation=z,
                                    reducer=reducer)
        opt.step()
        if agg.uses_performance:   # the same evaluation signal on every process
            agg.update_performance(torch.tensor([10.0, -5.0 + step, 2.0], dtype=torch.float64))
        losses_log.append(info.losses.tolist())
        weights_log.append(None if info.weights is None else info.weights.tolist())
    return {"params": {n: p.detach().clone() for n, p in model.named_parameters()},
            "aggregator": {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in agg.state_dict().items()},
            "losses": losses_log, "weights": weights_log,
            "bytes": reducer.bytes if reducer is not None else 0}


def supervised_config(method: str, epochs: int = 1, batch: int = 32, max_batches: int = 3, **train) -> dict:
    """A short multidigits run (real data, shipped with scikit-learn) of ``method``."""
    return {"seed": 0, "device": "cpu", "mode": "param", "aggregator_preset": "multidigits",
            "benchmark": {"name": "multidigits", "_target_": "mtrl.supervised.benchmarks.multidigits.MultiDigitsBenchmark"},
            "aggregator": {"name": method}, "dist": {"gram_only": False},
            "train": {"epochs": epochs, "batch_size": batch, "max_batches": max_batches, "lr": 1e-3,
                      "log_every": 1, "diagnostics_every": 0, **train}}


def train_supervised(cfg: dict, run_dir: str, rank: int = 0, world: int = 1) -> dict:
    """The trainer's final model parameters, aggregator state and evaluation records after
    ``cfg`` in ``run_dir`` (process ``rank`` of ``world``; the group must be open when
    ``world > 1``); the trainer resumes a checkpoint it finds there."""
    from mtrl.distributed import Process
    from mtrl.supervised.trainer import SupervisedTrainer

    torch.set_num_threads(1)
    trainer = SupervisedTrainer(cfg, run_dir, process=Process(rank, world))
    try:
        trainer.train()
    finally:
        trainer.close()
    return {"params": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
            "aggregator": trainer.agg.state_dict(), "evaluations": trainer.evaluations,
            "bytes": trainer.reducer.bytes if trainer.reducer is not None else 0}


def evaluate_supervised(cfg: dict, run_dir: str, rank: int = 0, world: int = 1) -> dict | None:
    """The val and test metrics of ``cfg``'s freshly built model (process 0; None on the
    others), evaluated by ``world`` processes."""
    from mtrl.distributed import Process
    from mtrl.supervised.trainer import SupervisedTrainer

    torch.set_num_threads(1)
    trainer = SupervisedTrainer(cfg, run_dir, process=Process(rank, world))
    try:
        values = {split: trainer.evaluate(split) for split in ("val", "test")}
    finally:
        trainer.close()
    return values if rank == 0 else None


def _cases(process, cases: list[dict], out: str) -> None:
    torch.set_num_threads(1)
    rank, world = process.rank, process.world
    results = []
    for case in cases:
        if "cfg" in case:
            act = evaluate_supervised if case.get("evaluate") else train_supervised
            results.append(act(case["cfg"], case["run_dir"].format(rank=rank), rank, world))
        else:
            results.append(run(rank=rank, world=world, **case))
    with open(Path(out) / f"rank{rank}.pkl", "wb") as f:
        pickle.dump(results, f)


def run_ranks(cases: list[dict], world: int, out: Path) -> list[list[dict]]:
    """Every case of ``cases`` (keyword arguments of :func:`run`, or of
    :func:`train_supervised` where it has ``cfg``, :func:`evaluate_supervised` where it also
    has ``evaluate``; ``{rank}`` in its ``run_dir`` becomes the process's rank) in ``world``
    gloo processes; per rank, the list of results."""
    run_local(_cases, world, cases, str(out))
    results = []
    for rank in range(world):
        with open(out / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
    return results
