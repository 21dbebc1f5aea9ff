"""NYU-v2, three tasks (13-class segmentation, depth, surface normals), MTAN
preprocessing: 795 training and 654 test images of 288 x 384 (PIVRG Table 1, ConsMTL
Table 1).  Layout, augmentation and the shared benchmark logic: :mod:`mtan_scene`;
model: :mod:`segnet_mtan`; losses and metrics: :mod:`dense_tasks`."""

from __future__ import annotations

from .benchmark import Metric
from .dense_tasks import DepthTask, NormalTask, SegmentationTask
from .mtan_scene import SceneBenchmark

#: Single-task-learning rows the papers' dm% uses (mIoU and pixel accuracy in %, depth in
#: the data's units, angles in degrees, within-angle ratios in %).
STL = {"segmentation_miou": 38.30, "segmentation_pix_acc": 63.76, "depth_abs_err": 0.6754, "depth_rel_err": 0.2780,
       "normal_mean_angle": 25.01, "normal_median_angle": 19.21, "normal_within_11.25": 30.14,
       "normal_within_22.5": 57.20, "normal_within_30": 69.15}


class NYUv2Benchmark(SceneBenchmark):
    name = "nyuv2"
    tasks = ["segmentation", "depth", "normal"]
    dense_tasks = [SegmentationTask(13), DepthTask(), NormalTask()]
    folders = ["label", "depth", "normal"]
    baselines = STL
    default_size = (288, 384)


def metric_list() -> list[Metric]:
    """The nine reported metrics (``benchmark_metrics`` reads them without data)."""
    return NYUv2Benchmark.metric_list()
