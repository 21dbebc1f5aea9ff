"""QM9 as PyG stores it, turned into the graphs of the QM9 benchmark
(:mod:`mtrl.supervised.benchmarks.qm9`): complete directed graphs with bond-type and distance
edge features, and z-scored targets."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch_geometric.transforms as T
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.datasets import QM9


NODE_FEATURES = 11     # atom-type one-hot (5), atomic number, aromatic, sp, sp2, sp3, #H


EDGE_FEATURES = 5      # bond-type one-hot (4), distance


class CompleteGraph(T.BaseTransform):
    """Replaces the bond graph by the complete directed graph without self-loops (pairs in
    row-major order); a pair's edge attribute is its bond one-hot, zero where unbonded."""

    def forward(self, data: Data) -> Data:
        n, device = data.num_nodes, data.edge_index.device
        row, col = torch.meshgrid(torch.arange(n, device=device), torch.arange(n, device=device),
                                  indexing="ij")
        off_diagonal = row != col
        row, col = row[off_diagonal], col[off_diagonal]
        dense = data.edge_attr.new_zeros(n, n, data.edge_attr.size(-1))
        dense[data.edge_index[0], data.edge_index[1]] = data.edge_attr
        data.edge_index = torch.stack([row, col])
        data.edge_attr = dense[row, col]
        return data


class ScaledTargets(T.BaseTransform):
    """Keeps the chosen target columns of ``data.y`` and z-scores them: (y - mean) / std."""

    def __init__(self, targets: Sequence[int], mean: Tensor, std: Tensor):
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.mean, self.std = mean, std

    def forward(self, data: Data) -> Data:
        data.y = (data.y[:, self.targets] - self.mean) / self.std
        return data


def missing_files_message(root: str) -> str | None:
    """None when the raw files PyG's QM9 reads are under ``root``, else a one-line
    ``DatasetNotFound`` message saying what is missing and where to get it."""
    names = QM9.raw_file_names.fget(None)     # the same files QM9 itself would look for
    paths = [os.path.join(root, "raw", name) for name in names]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not missing:
        return None
    if names == ["qm9_v3.pt"]:
        source = f"unzip PyG's pre-processed QM9 archive {QM9.processed_url} into {root}/raw"
    else:
        source = (f"unzip {QM9.raw_url} into {root}/raw and save {QM9.raw_url2} there as "
                  "uncharacterized.txt")
    return (f"QM9 not found: missing {', '.join(missing)}; {source} "
            "(nothing can be downloaded here)")
