"""Guo et al. (arXiv 2025)'s benchmarks: NYUD-v2 with four tasks (semantic 40 classes, depth, normals,
edges) and PASCAL-Context with five (semantic 21 classes, human parts, saliency, normals,
edges), read from the MTL code's ``NYUD_MT`` / ``PASCAL_MT`` layouts
(:mod:`~mtrl.supervised.data.nyud_pascal`).  Metrics (Table II): mIoU, depth RMSE, normal mean angle, saliency
maxF, edge odsF at the benchmark's matching tolerance (:mod:`~mtrl.supervised.tasks.boundary`); dm% against
the ResNet-18 single-task row.  Guo et al. (arXiv 2025) print dm% with the opposite sign (higher is
better there); here, as everywhere in this project, lower is better.  Default model: a
stride-8 dilated ResNet-18 with a DeepLab ASPP head per task; ``model=hrnet18`` for the
HRNet-18 rows.

Edge odsF is costly (a bipartite matching per image and threshold); ``edge_thresholds``
sets the threshold count (19 by default, the reference's 99 for reported numbers).
"""

from __future__ import annotations

from pathlib import Path

from ..tasks.boundary import EDGE_MAX_DIST, EDGE_THRESHOLDS, DepthRMSETask, EdgeTask, NormalL1Task, SaliencyTask
from .dense import DenseBenchmark
from ..tasks.dense import SegmentationTask
from ..data.nyud_pascal import IGNORE, NYUD_SIZE, NYUD_TASKS, PASCAL_SIZE, PASCAL_TASKS, NYUDSplit, PascalContextSplit

#: Guo et al., arXiv 2025, Table II, ResNet-18 single-task rows.
STL_NYUD = {"semantic_miou": 39.38, "depth_rmse": 0.6111, "normals_mean_angle": 21.94, "edge_odsf": 72.40}
STL_PASCAL = {"semantic_miou": 66.59, "human_parts_miou": 61.29, "normals_mean_angle": 13.67,
              "saliency_maxf": 84.77, "edge_odsf": 66.90}


def _tasks(names, semantic_classes: int, edge_dist: float, edge_thresholds: int) -> list:
    """The task objects of ``names`` (targets as :mod:`~mtrl.supervised.data.nyud_pascal` gives them)."""
    make = {"semantic": lambda: SegmentationTask(semantic_classes, IGNORE),
            "human_parts": lambda: SegmentationTask(7, IGNORE), "depth": DepthRMSETask, "normals": NormalL1Task,
            "saliency": SaliencyTask, "edge": lambda: EdgeTask(edge_dist, num_thresholds=edge_thresholds)}
    return [make[n]() for n in names]


class _MTLBenchmark(DenseBenchmark):
    """The two benchmarks' common construction: ``split_class`` read with ``size`` and the
    training augmentation; the edge tolerance ``edge_dist``."""

    default_model = "resnet18_aspp"
    split_class: type
    semantic_classes: int
    edge_dist: float

    def __init__(self, root: str | Path, size=None, augment: bool = False, edge_thresholds: int = EDGE_THRESHOLDS,
                 **options):
        super().__init__(root, **options)
        self.dense_tasks = _tasks(self.tasks, self.semantic_classes, self.edge_dist, edge_thresholds)
        size = tuple(size) if size else self.default_size
        self.datasets = {split: self.split_class(self.root, split, self.tasks, size, augment=augment and split == "train")
                         for split in self.splits}


class NYUDBenchmark(_MTLBenchmark):
    name = "nyud"
    tasks = list(NYUD_TASKS)
    semantic_classes, edge_dist = 40, EDGE_MAX_DIST["nyud"]
    dense_tasks = _tasks(tasks, semantic_classes, edge_dist, EDGE_THRESHOLDS)
    baselines = STL_NYUD
    default_size = tuple(NYUD_SIZE)
    split_class = NYUDSplit


class PascalContextBenchmark(_MTLBenchmark):
    name = "pascal_context"
    tasks = list(PASCAL_TASKS)
    semantic_classes, edge_dist = 21, EDGE_MAX_DIST["pascal"]
    dense_tasks = _tasks(tasks, semantic_classes, edge_dist, EDGE_THRESHOLDS)
    baselines = STL_PASCAL
    default_size = tuple(PASCAL_SIZE)
    split_class = PascalContextSplit
