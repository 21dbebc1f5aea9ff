"""QM9: 11 molecular property regressions with an MPNN (Gilmer et al. 2017), in the protocol
of the Nash-MTL / FAMO / PIVRG / ConsMTL experiments.

Data are read by ``torch_geometric.datasets.QM9(root)`` from PyG's own on-disk layout
(``root/raw/qm9_v3.pt`` when rdkit is absent; PyG writes ``root/processed/data_v3.pt`` on
the first load). Each molecule becomes a complete directed graph whose 5-dim edge attributes
are the bond-type one-hot (zero for non-bonded pairs) and the interatomic distance. After a
seeded shuffle the first ``split_sizes[0]`` molecules are the test split, the next
``split_sizes[1]`` the validation split and the rest the training split. Targets are z-scored
with training statistics; the losses are per-target MSEs on the scaled targets; the metrics
are per-target MAEs in the original units, energies in meV.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
import torch_geometric.transforms as T
from torch import Tensor
from torch_geometric.data import Batch
from torch_geometric.datasets import QM9
from torch_geometric.loader import DataLoader

from ..data.errors import DatasetNotFound
from ..data.qm9 import EDGE_FEATURES, NODE_FEATURES, CompleteGraph, ScaledTargets, missing_files_message
from ..models.mpnn import MPNN
from ..tasks.regression import TargetMAE
from .base import Benchmark, Metric, sample_order

#: names of PyG's 19 QM9 targets, by column of ``data.y``
TARGET_NAMES = ("mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "u0", "u", "h", "g", "cv",
                "u0_atom", "u_atom", "h_atom", "g_atom", "a", "b", "c")
#: the 11 targets of the MTL papers (DimeNet's atomization energies for U0, U, H and G)
DEFAULT_TARGETS = (0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11)
#: PyG columns stored in eV; their MAEs are reported in meV (positions 2, 3, 5, 6, 7, 8, 9 of
#: DEFAULT_TARGETS)
EV_TARGETS = frozenset({2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15})
#: single-task-learning MAEs (reported units) of the Nash-MTL paper, by PyG column
STL_MAE = {0: 0.0671, 1: 0.1814, 2: 60.576, 3: 53.915, 5: 0.5027, 6: 4.539, 12: 58.838,
           13: 64.244, 14: 63.852, 15: 66.223, 11: 0.07212}


class QM9Benchmark(Benchmark):
    """QM9 with the targets ``targets`` (PyG columns; task names from ``TARGET_NAMES``)."""

    name = "qm9"
    selection_split = "val"

    @staticmethod
    def metric_list(targets: Sequence[int] = DEFAULT_TARGETS) -> list[Metric]:
        """The metrics ``QM9Benchmark(targets=targets)`` reports (per-target test MAE in the
        reported units, lower is better, against :data:`STL_MAE`), without reading any data."""
        targets = [int(t) for t in targets]
        unknown = [t for t in targets if t not in STL_MAE]
        if not targets or unknown:
            raise ValueError(f"targets {targets} must be PyG QM9 columns with an STL baseline, "
                             f"chosen from {sorted(STL_MAE)}")
        return [Metric(f"{TARGET_NAMES[t]}_mae", TARGET_NAMES[t], False, STL_MAE[t]) for t in targets]

    def __init__(self, root: str, seed: int = 0, targets: Sequence[int] = DEFAULT_TARGETS,
                 split_sizes: tuple[int, int] = (10000, 10000), hidden: int = 64):
        targets = [int(t) for t in targets]
        unknown = [t for t in targets if t not in STL_MAE]
        if not targets or unknown or len(set(targets)) != len(targets):
            raise ValueError(f"targets {targets} must be distinct PyG QM9 columns with an STL "
                             f"baseline, chosen from {sorted(STL_MAE)}")
        n_test, n_val = (int(s) for s in split_sizes)
        if n_test < 1 or n_val < 1:
            raise ValueError(f"split_sizes {tuple(split_sizes)} must be two positive sizes "
                             "(test, val)")
        root = os.path.expanduser(str(root))
        message = missing_files_message(root)
        if message is not None:
            raise DatasetNotFound(message)

        dataset = QM9(root)
        if n_test + n_val + 2 > len(dataset):
            raise ValueError(f"split_sizes {tuple(split_sizes)} leave fewer than 2 of the "
                             f"{len(dataset)} molecules for training; pass smaller sizes")
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        index = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
                 "train": order[n_test + n_val:]}
        train_y = dataset.y[index["train"]][:, targets].double()
        self.target_mean = train_y.mean(0).float()
        self.target_std = train_y.std(0).float()
        if not bool((self.target_std > 0).all()):
            raise ValueError("a target is constant on the training split, so it cannot be "
                             "z-scored; use more molecules or other targets")
        dataset.transform = T.Compose([ScaledTargets(targets, self.target_mean, self.target_std),
                                       CompleteGraph(), T.Distance(norm=False)])
        self._data = {split: dataset[idx] for split, idx in index.items()}

        self.seed, self.hidden, self.targets = seed, hidden, targets
        self.tasks = [TARGET_NAMES[t] for t in targets]
        self.metrics = self.metric_list(targets)
        self.unit_scale = torch.tensor([1000.0 if t in EV_TARGETS else 1.0 for t in targets])

    def _split(self, split: str):
        if split not in self._data:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(self.splits)}")
        return self._data[split]

    def loader(self, split: str, batch_size: int, shuffle: bool, seed: int = 0,
               shard: tuple[int, int] | None = None) -> Iterable:
        """PyG batches of ``split``; when ``shuffle`` the order follows a generator seeded
        with ``seed`` (and advances each time the same loader is iterated again)."""
        data = self._split(split)
        return DataLoader(data, batch_size=batch_size, sampler=sample_order(data, shuffle, seed, shard),
                          generator=torch.Generator().manual_seed(seed))

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        return batch.to(device)

    def inputs(self, batch: Batch) -> Batch:
        return batch

    def build_model(self) -> MPNN:
        return MPNN(self.num_tasks, NODE_FEATURES, EDGE_FEATURES, hidden=self.hidden)

    def task_losses(self, outputs: list[Tensor], batch: Any) -> Tensor:
        """Per-target MSE between predictions and z-scored targets, a (k,) tensor."""
        return F.mse_loss(torch.cat(outputs, dim=1), batch.y, reduction="none").mean(0)

    def metric_state(self) -> TargetMAE:
        return TargetMAE([m.name for m in self.metrics], self.target_std, self.unit_scale)

    def denormalise(self, scaled: Tensor) -> Tensor:
        """Targets in PyG units from z-scored ones (the inverse of the target scaling)."""
        return scaled * self.target_std.to(scaled) + self.target_mean.to(scaled)
