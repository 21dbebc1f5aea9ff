"""The shared part of the dense-vision benchmarks: a dataset per split whose items are
(image, [one target per task]), task objects (:mod:`~mtrl.supervised.tasks.dense`) that give each task's
loss and split-level metrics, single-task baselines, and the model chosen by the run
config's ``model`` section.  Subclasses only read their on-disk layout
(:mod:`~mtrl.supervised.data.mtan_scene` for the MTAN .npy sets)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..models.base import MultiTaskModel, build_model
from .base import Benchmark, Metric, sample_order
from ..tasks.dense import DenseTask


def collate(samples):
    images = torch.stack([s[0] for s in samples])
    return images, [torch.stack([s[1][j] for s in samples]) for j in range(len(samples[0][1]))]


class DenseBenchmark(Benchmark):
    """Subclasses set ``name``, ``tasks`` (names), ``dense_tasks`` (task objects of
    :mod:`~mtrl.supervised.tasks.dense`), ``baselines`` ({metric name: single-task value}),
    ``default_model`` (a ``configs/model/<name>.yaml``) and ``default_size``, and fill ``self.datasets`` ({split: a torch
    Dataset whose item is (image (3, H, W), [target of each task])}).

    Options: ``num_workers`` loader processes; ``report_last_epochs`` how many final
    epochs' test metrics the results average (10 in the protocol of Nash-MTL and FAMO
    that Qin et al. (CVPR 2025)'s PIVRG and ConsMTL papers follow; None: the epoch chosen on the selection split).
    """

    selection_split = "train"
    dense_tasks: list[DenseTask]
    baselines: dict[str, float]
    default_model = "segnet_mtan"
    default_size: tuple[int, int]
    datasets: dict[str, Dataset]

    def __init__(self, root: str | Path, num_workers: int = 0, report_last_epochs: int | None = 10):
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        if report_last_epochs is not None and report_last_epochs < 1:
            raise ValueError(f"report_last_epochs must be >= 1 or null, got {report_last_epochs}")
        self.root = Path(root).expanduser()
        self.num_workers, self.report_last_epochs = num_workers, report_last_epochs
        self.metrics = self.metric_list()

    @classmethod
    def metric_list(cls) -> list[Metric]:
        """The reported metrics (those with a single-task baseline in ``baselines``, in
        task order) with their directions; the tasks' other metrics are logged only."""
        metrics = [Metric(f"{name}_{m}", name, higher, cls.baselines[f"{name}_{m}"])
                   for name, task in zip(cls.tasks, cls.dense_tasks) for m, higher in task.metrics
                   if f"{name}_{m}" in cls.baselines]
        missing = set(cls.baselines) - {m.name for m in metrics}
        if missing:
            raise ValueError(f"{cls.__name__}: baselines for metrics no task reports: {sorted(missing)}")
        return metrics

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "test")

    def loader(self, split: str, batch_size: int, shuffle: bool, seed: int = 0,
               shard: tuple[int, int] | None = None) -> DataLoader:
        """Batches (images (B, 3, H, W), [targets]); ``seed`` fixes the order and the
        augmentation (each loader process draws from its own stream of it)."""
        if split not in self.datasets:
            raise ValueError(f"unknown split {split!r}; {self.name} has {self.splits}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        data = self.datasets[split]
        data.rng = np.random.default_rng(seed)

        def reseed(worker: int) -> None:
            torch.utils.data.get_worker_info().dataset.rng = np.random.default_rng([seed, worker])

        return DataLoader(data, batch_size=batch_size, sampler=sample_order(data, shuffle, seed, shard),
                          generator=torch.Generator().manual_seed(seed), collate_fn=collate,
                          num_workers=self.num_workers, worker_init_fn=reseed if self.num_workers else None)

    def to_device(self, batch, device: torch.device):
        images, targets = batch
        return images.to(device, non_blocking=True), [t.to(device, non_blocking=True) for t in targets]

    def inputs(self, batch) -> Tensor:
        return batch[0]

    def build_model(self, **section) -> MultiTaskModel:
        """The model the run config's ``model`` section names (its ``_target_``, or
        ``configs/model/<name>.yaml``; default: the benchmark's ``default_model``) for its
        tasks, with the section's options (SegNet-MTAN's ``filters``, ``weights``, ...)."""
        return build_model({"name": self.default_model, **section}, self.dense_tasks)

    def task_losses(self, outputs: list[Tensor], batch) -> Tensor:
        for name, out, target in zip(self.tasks, outputs, batch[1]):
            if out.shape[-2:] != target.shape[-2:]:
                raise ValueError(f"{self.name}: the model's {name} output is {tuple(out.shape[-2:])} pixels but its "
                                 f"targets are {tuple(target.shape[-2:])}; match them with the model's upsampling "
                                 "(model.upsample) or the benchmark's target size (e.g. benchmark.target_scale)")
        return torch.stack([t.loss(o, y) for t, o, y in zip(self.dense_tasks, outputs, batch[1])])

    def metric_state(self) -> "DenseMetrics":
        return DenseMetrics(self.tasks, self.dense_tasks)

    def train_metric_state(self) -> "DenseMetrics":
        """The metrics accumulated over a training epoch: each task's ``train_metric_state``
        where it has a cheaper one (edge odsF), else its ``metric_state``."""
        return DenseMetrics(self.tasks, self.dense_tasks, train=True)


class DenseMetrics:
    """Every task's split-level metric accumulator, named ``<task>_<metric>``."""

    def __init__(self, names: Sequence[str], tasks: Sequence[DenseTask], train: bool = False):
        self.names = list(names)
        self.states = [t.train_metric_state() if train and hasattr(t, "train_metric_state") else t.metric_state()
                       for t in tasks]

    def update(self, outputs: list[Tensor], batch) -> None:
        for state, out, target in zip(self.states, outputs, batch[1]):
            state.update(out.detach(), target)

    def compute(self) -> dict[str, float]:
        return {f"{name}_{k}": v for name, state in zip(self.names, self.states) for k, v in state.compute().items()}
