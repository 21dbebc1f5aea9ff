"""Cityscapes with three tasks (Senushkin et al., CVPR 2023, Table 1): 19-class semantic segmentation,
instance segmentation as (dy, dx) offset regression, disparity; read from the official
Cityscapes folders (:mod:`~mtrl.supervised.data.cityscapes_official`: ``leftImg8bit``, ``gtFine`` label and
instance ids, ``disparity``; ``val`` is the test split).  Default model: PSPNet on a
dilated ResNet-50 (:mod:`~mtrl.supervised.models.dense`), decoders at 1/8 of the 256 x 512 input, where
the targets are.

``variant`` (recorded in every run's config): ``faithful`` reproduces the reference
code's quirks that its published numbers depend on (BGR input with ImageNet means
subtracted then /255, disparity = raw / 2729.07, offsets in full-resolution pixels, the
instance metric on int32-truncated values); ``corrected`` uses RGB mean/std
normalisation, the official disparity decoding (p - 1) / 256, offsets in the target
resolution's pixels and float errors.
"""

from __future__ import annotations

from pathlib import Path

from ..data.cityscapes_official import IGNORE, CityscapesOfficialSplit
from .dense import DenseBenchmark
from ..tasks.dense import DisparityTask, InstanceOffsetTask, SegmentationTask

#: Senushkin et al. (CVPR 2023)'s Table 1 single-task row (mIoU %, instance L1 in pixels, disparity MSE).
STL = {"semantic_miou": 66.73, "instance_l1": 10.55, "disparity_mse": 0.33}


class Cityscapes3Benchmark(DenseBenchmark):
    name = "cityscapes3"
    tasks = ["semantic", "instance", "disparity"]
    dense_tasks = [SegmentationTask(19, ignore_index=IGNORE), InstanceOffsetTask(IGNORE), DisparityTask()]
    baselines = STL
    default_model = "pspnet"
    default_size = (256, 512)

    def __init__(self, root: str | Path, variant: str = "faithful", image_size=(256, 512), target_scale: int = 8,
                 augment: bool = False, **options):
        super().__init__(root, **options)
        self.variant = variant
        self.dense_tasks = [SegmentationTask(19, ignore_index=IGNORE),
                            InstanceOffsetTask(IGNORE, faithful=variant == "faithful"), DisparityTask()]
        self.datasets = {split: CityscapesOfficialSplit(self.root, split, variant, image_size, target_scale,
                                                        augment=augment and split == "train")
                         for split in self.splits}
