"""Cityscapes, two tasks (7-class segmentation, depth), MTAN preprocessing: 2,975
training and 500 test images of 128 x 256 (PIVRG Table 2, ConsMTL Table 2).  The label
folder is ``label_7`` in the MTAN release and ``label`` in some re-packagings; both are
accepted.  Shared logic: :mod:`~mtrl.supervised.data.mtan_scene`."""

from __future__ import annotations

from ..tasks.dense import DepthTask, SegmentationTask
from .scene import SceneBenchmark

#: Single-task-learning rows of the papers' dm% (mIoU, pixel accuracy in %; depth errors
#: in the data's units, the relative error as a plain ratio, as the tables print it).
STL = {"segmentation_miou": 74.01, "segmentation_pix_acc": 93.16, "depth_abs_err": 0.0125, "depth_rel_err": 27.77}


class CityscapesBenchmark(SceneBenchmark):
    name = "cityscapes"
    tasks = ["segmentation", "depth"]
    dense_tasks = [SegmentationTask(7), DepthTask()]
    folders = [("label_7", "label"), "depth"]
    baselines = STL
    default_size = (128, 256)
