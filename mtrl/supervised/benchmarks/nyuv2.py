"""NYU-v2, three tasks (13-class segmentation, depth, surface normals), MTAN
preprocessing: 795 training and 654 test images of 288 x 384 (PIVRG Table 1, ConsMTL
Table 1).  Layout, augmentation and the shared benchmark logic: :mod:`~mtrl.supervised.data.mtan_scene`;
model: :mod:`~mtrl.supervised.models.segnet_mtan`; losses and metrics: :mod:`~mtrl.supervised.tasks.dense`."""

from __future__ import annotations

from ..tasks.dense import DepthTask, NormalTask, SegmentationTask
from .scene import SceneBenchmark

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


#: Senushkin et al. (CVPR 2023)'s Table 3 single-task row for PSPNet on NYU-v2 (the within-angle ratios, printed
#: there as fractions, in % here like the other NYU-v2 tables).
STL_PSPNET = {"segmentation_miou": 49.37, "segmentation_pix_acc": 72.03, "depth_abs_err": 0.52, "depth_rel_err": 0.24,
              "normal_mean_angle": 22.97, "normal_median_angle": 16.94, "normal_within_11.25": 34.0,
              "normal_within_22.5": 62.0, "normal_within_30": 73.0}


class NYUv2PSPNetBenchmark(NYUv2Benchmark):
    """NYU-v2 with a PSPNet (Senushkin et al., CVPR 2023, Table 3): the same data and metrics, its own
    single-task baselines, PSPNet on a dilated ResNet-50 by default (decoders upsampled x8)."""

    name = "nyuv2_pspnet"
    baselines = STL_PSPNET
    default_model = "pspnet"
