"""Multidigits: four classification tasks on pairs of overlaid handwritten digits, a
CPU-sized real-data benchmark in the spirit of MultiMNIST (Sener & Koltun, "Multi-Task
Learning as Multi-Objective Optimization", NeurIPS 2018, Sec. 5).

Data: scikit-learn's bundled UCI digits (1,797 8 x 8 images; no download, ``pip install
-e '.[digits]'``), made into pairs by :func:`mtrl.supervised.data.digits.build_splits`:
the source images are first split into disjoint train / val / test pools (360 val, 360
test, 1,077 train images, a permutation seeded with ``seed``), then 10,000 / 2,000 / 2,000
pairs are drawn within each pool (``np.random.default_rng([seed, split number])``); the
left digit sits at the top left of a 12 x 12 canvas, the right digit at the bottom right,
overlapping on the central 4 x 4 block (pixel-wise maximum), values scaled to [0, 1]. The
module docstring of ``data/digits.py`` gives every step.

Tasks (all from the same pair): ``left`` digit (10 classes), ``right`` digit (10), their
``sum`` (19 classes) and the ``parity`` of the sum (2 classes, balanced). Losses: cross-
entropy per task; metrics: per-task test accuracy (higher is better), dm% (``mtrl.metrics``)
against the single-task baselines :data:`STL_ACCURACY`. The reported epoch is the one with
the best validation dm%. ``tasks`` selects a subset (in :data:`TASKS` order), which is how
the single-task baselines are trained (``scripts/stl_multidigits.py``).

Model: :class:`~mtrl.supervised.models.digits_cnn.DigitsCNN` (two convolutions and a
64-unit layer shared, 23k parameters; one linear head per task).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, TensorDataset

from ..data.digits import CANVAS, NUM_CLASSES, PAIRS, SOURCE_SIZES, SPLITS, TASKS, build_splits
from ..models.digits_cnn import DigitsCNN
from ..tasks.classification import Accuracy
from .base import Benchmark, Metric, sample_order

#: Single-task test accuracy per task: DigitsCNN with one head, trained alone with LS under
#: the multidigits protocol (configs/protocol/multidigits.yaml: 20 epochs, batch 128, Adam
#: 1e-3), mean over seeds 0, 1, 2 of the test accuracy at the epoch chosen on the validation
#: split (standard deviations 0.0055, 0.0028, 0.0164, 0.0119; torch 2.13 on CPU). Reproduce with
#:     OMP_NUM_THREADS=1 python scripts/stl_multidigits.py
STL_ACCURACY: dict[str, float] = {"left": 0.9648, "right": 0.9673, "sum": 0.5755, "parity": 0.9562}


def _check_tasks(tasks: Sequence[str]) -> list[str]:
    tasks = [str(t) for t in tasks]
    if not tasks or len(set(tasks)) != len(tasks) or not set(tasks) <= set(TASKS):
        raise ValueError(f"tasks {tasks} must be distinct names chosen from {', '.join(TASKS)}")
    return [t for t in TASKS if t in tasks]


class MultiDigitsBenchmark(Benchmark):
    """The pairs of :func:`~mtrl.supervised.data.digits.build_splits` (``seed``,
    ``source_sizes`` = (val, test) pool sizes, ``pairs`` = (train, val, test) pair counts),
    held in memory. ``root`` is accepted and unused: the data ship with scikit-learn
    (``needs_root``). Batches are (images (B, 1, 12, 12), labels (B, k) int64, one column
    per selected task); the model outputs k logit tensors (B, classes of task i)."""

    name = "multidigits"
    selection_split = "val"
    needs_root = False

    @staticmethod
    def metric_list(tasks: Sequence[str] = TASKS) -> list[Metric]:
        """The metrics ``MultiDigitsBenchmark(tasks=tasks)`` reports (per-task test
        accuracy, higher is better, against :data:`STL_ACCURACY`), without building any data."""
        return [Metric(f"{t}_acc", t, True, STL_ACCURACY[t]) for t in _check_tasks(tasks)]

    def __init__(self, root=None, seed: int = 0, tasks: Sequence[str] = TASKS,
                 source_sizes: Sequence[int] = SOURCE_SIZES, pairs: Sequence[int] = PAIRS):
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.tasks = _check_tasks(tasks)
        self.metrics = self.metric_list(self.tasks)
        self.seed = int(seed)
        self.columns = [TASKS.index(t) for t in self.tasks]
        self.pairs = build_splits(self.seed, source_sizes, pairs)
        self.datasets = {split: TensorDataset(torch.from_numpy(p.images),
                                              torch.from_numpy(p.labels[:, self.columns].copy()))
                         for split, p in self.pairs.items()}

    def dataset(self, split: str) -> TensorDataset:
        if split not in self.datasets:
            raise ValueError(f"unknown split {split!r}; multidigits has {', '.join(SPLITS)}")
        return self.datasets[split]

    def loader(self, split: str, batch_size: int, shuffle: bool, seed: int = 0,
               shard: tuple[int, int] | None = None) -> DataLoader:
        """Batches of ``split``, whole-tensor indexing (no per-sample collation); with
        ``shuffle`` the order comes from a generator seeded with ``seed``. The last batch
        may be smaller (nothing is dropped)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        data = self.dataset(split)
        order = sample_order(data, shuffle, seed, shard)
        return DataLoader(data, sampler=BatchSampler(order, batch_size, drop_last=False), batch_size=None)

    def to_device(self, batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def inputs(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        return batch[0]

    def build_model(self) -> DigitsCNN:
        return DigitsCNN([NUM_CLASSES[t] for t in self.tasks], canvas=CANVAS)

    def task_losses(self, outputs: list[Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
        """l_i = mean over the batch of the cross-entropy of task i's logits, a (k,) tensor."""
        labels = batch[1]
        return torch.stack([F.cross_entropy(o, labels[:, i]) for i, o in enumerate(outputs)])

    def metric_state(self) -> Accuracy:
        return Accuracy(self.tasks)
