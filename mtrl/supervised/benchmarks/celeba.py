"""CelebA: 40 binary face attributes as 40 tasks (PIVRG Table 3, ConsMTL Table 3).

Data: the aligned 178 x 218 JPEGs, the attribute file and the partition file, read from
either on-disk layout met in practice (see :func:`find_files`). Images are resized to
``image_size`` x ``image_size`` with Pillow's bilinear filter and scaled to [0, 1] (CHW, no
normalisation, no augmentation); attributes in {-1, 1} become {0, 1}. Splits come from
``list_eval_partition.txt`` (0 train, 1 val, 2 test: 162,770 / 19,867 / 19,962 images in
the released files).

Model (:class:`CelebACNN`): the 9-layer CNN of the protocol the papers follow (FAMO's
public code): seven conv3x3-BN-ReLU layers and three max-pools, global average pooling and
two Linear-BN-ReLU layers form the shared encoder; 40 ``Linear(512, 1)`` heads give one
logit per attribute.

Losses and metrics: binary cross-entropy per attribute (on logits); per-attribute F1 at
threshold 0.5 over a whole split, from true/false positive and false negative counts. Some
tables report the error 1 - F1 instead; dm% (``mtrl.metrics``) compares the F1 values with
the single-task baselines in :data:`STL_F1`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from ..data.celeba import ATTRIBUTES, SPLIT_CODES, CelebASplit, find_files, read_attributes, read_partition
from ..models.celeba_cnn import CelebACNN
from ..tasks.classification import MultiLabelF1
from .base import Benchmark, Metric, sample_order


#: Single-task test F1 per attribute (same order as :data:`ATTRIBUTES`), the baseline of the
#: CelebA dm% in FAMO's table, whose method rows PIVRG and ConsMTL reuse (LS 4.15, FAMO
#: 1.21, ...). Neither paper prints per-attribute values; these are the ones FAMO's authors
#: published in github.com/Cranial-XIX/FAMO/issues/2 (2023-12-17).
STL_F1: tuple[float, ...] = (
    0.6736886, 0.68121034, 0.81524944, 0.5760289, 0.7205613, 0.8555076,
    0.38203922, 0.58225113, 0.787647, 0.8321292, 0.5029583, 0.68694085,
    0.6781237, 0.5240381, 0.5161666, 0.95694304, 0.6968786, 0.67976356,
    0.8808315, 0.8582131, 0.97034, 0.93267566, 0.5057539, 0.40307626,
    0.9703734, 0.48644206, 0.60786104, 0.5261031, 0.56907415, 0.59815097,
    0.6858371, 0.924108, 0.5424991, 0.7406311, 0.71019936, 0.87365365,
    0.9305602, 0.33704284, 0.7647628, 0.91907,
)

class CelebABenchmark(Benchmark):
    """CelebA from ``root`` (either layout of :func:`find_files`).

    Every image listed in ``list_attr_celeba.txt`` must have a partition entry and a file in
    the image folder; both are checked at construction (one directory listing), so a
    missing image fails here with its name rather than mid-epoch. ``cache=True`` decodes
    each split once, on its first :meth:`loader` call, and serves it from memory afterwards.
    Batches are (images (B, 3, S, S), attributes (B, 40)); the model outputs 40 logits (B,).
    """

    name = "celeba"
    selection_split = "val"

    @staticmethod
    def metric_list() -> list[Metric]:
        """The metrics ``CelebABenchmark`` reports (per-attribute test F1, higher is better,
        against :data:`STL_F1`), without reading any data."""
        return [Metric(f"{a}_f1", a, True, b) for a, b in zip(ATTRIBUTES, STL_F1)]

    def selection_value(self, values: dict[str, float], delta_m: float) -> float:
        """The reference code keeps the epoch with the best mean validation F1 (not dm%)."""
        return -float(np.mean([values[m.name] for m in self.metrics]))

    def __init__(self, root: str | Path, image_size: int = 64, num_workers: int = 0, cache: bool = False):
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 (three 2x2 max-pools), got {image_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.files = find_files(root)
        self.image_size, self.num_workers, self.cache = image_size, num_workers, cache
        attributes, images, labels = read_attributes(self.files.attr_file)
        if tuple(attributes) != ATTRIBUTES:
            i = next((i for i, (a, b) in enumerate(zip(attributes, ATTRIBUTES)) if a != b), None)
            found = f"{len(attributes)} names" if i is None else f"{attributes[i]!r} where {ATTRIBUTES[i]!r} belongs"
            raise ValueError(f"{self.files.attr_file}: line 2 must name the 40 CelebA attributes in the released "
                             f"order, found {found}")
        partition = read_partition(self.files.partition_file)
        unassigned = [name for name in images if name not in partition]
        if unassigned:
            raise ValueError(f"{self.files.partition_file} has no split for {len(unassigned)} images of "
                             f"{self.files.attr_file.name}, e.g. {unassigned[0]}")
        on_disk = set(os.listdir(self.files.image_dir))
        missing = [name for name in images if name not in on_disk]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images listed in {self.files.attr_file.name} are not in "
                                    f"{self.files.image_dir}, e.g. {missing[0]}")
        self.tasks = list(attributes)
        self.metrics = self.metric_list()
        codes = np.array([partition[name] for name in images])
        self.datasets = {
            split: CelebASplit(self.files.image_dir, [images[i] for i in np.flatnonzero(codes == code)],
                               labels[codes == code], image_size)
            for split, code in SPLIT_CODES.items()
        }

    def dataset(self, split: str) -> CelebASplit:
        if split not in self.datasets:
            raise ValueError(f"unknown split {split!r}; CelebA has {self.splits}")
        return self.datasets[split]

    def loader(self, split: str, batch_size: int, shuffle: bool, seed: int = 0,
               shard: tuple[int, int] | None = None) -> DataLoader:
        """Batches of ``split``; with ``shuffle`` the order comes from a generator seeded with
        ``seed``. The last batch may be smaller (nothing is dropped)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        data = self.dataset(split)
        if self.cache:
            data.cache_images(self.num_workers)
        workers = 0 if data.cache is not None else self.num_workers
        return DataLoader(data, batch_size=batch_size, sampler=sample_order(data, shuffle, seed, shard),
                          generator=torch.Generator().manual_seed(seed), num_workers=workers)

    def to_device(self, batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def inputs(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        return batch[0]

    def build_model(self) -> CelebACNN:
        return CelebACNN(len(self.tasks))

    def task_losses(self, outputs: list[Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
        """l_i = mean over the batch of BCE(sigmoid(logit_i), y_i), a (40,) tensor."""
        logits = torch.stack(outputs, dim=1)
        return F.binary_cross_entropy_with_logits(logits, batch[1], reduction="none").mean(0)

    def metric_state(self) -> MultiLabelF1:
        return MultiLabelF1(self.tasks)
