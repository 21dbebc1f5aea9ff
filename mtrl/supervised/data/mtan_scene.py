"""Scene-understanding benchmarks in the MTAN preprocessing (NYU-v2, Cityscapes): the
on-disk layout, augmentation, and the benchmark class they share (a
:class:`~mtrl.supervised.benchmarks.dense.DenseBenchmark`).

Layout (``shared/docs/supervised_benchmarks.md``): ``root/{train,val}/<folder>/<i>.npy``
with one folder per target plus ``image``; the sample count is the number of
``image/*.npy`` files and sample i is ``<i>.npy`` in every folder.  Arrays: image
(H, W, 3) float; segmentation label (H, W) with -1 = ignore; depth (H, W, 1) or (H, W)
with 0 = invalid; normal (H, W, 3).  These sets have no validation split: ``val`` holds
the test images (NYU-v2 795 train / 654 test, Cityscapes 2,975 / 500), so the benchmark's
splits are ``train`` and ``test`` and the selection split (what PIVRG's dm_i come from,
Qin et al., CVPR 2025, sec. 5) is ``train``.

Augmentation (training split, ``augment=True``), as in the public code these papers use:
a random scale s from ``scales`` (1.0, 1.2, 1.5), a random crop of size (H/s, W/s)
resized back to (H, W) (bilinear for the image, nearest for the targets; depth divided by
s, since zooming in by s brings the scene s times closer); then a horizontal flip with
probability 1/2, which negates the normal's x component.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .errors import DataError, DatasetNotFound
from .images import flip

#: the test images live in the ``val`` folder of the MTAN preprocessing
SPLIT_FOLDERS = {"train": "train", "test": "val"}
SCALES = (1.0, 1.2, 1.5)


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc}); re-extract the data set") from None


class SceneSplit(Dataset):
    """One split: item i is (image (3, H, W) float32, [target_1, ..., target_k]) with
    segmentation (H, W) int64, depth (1, H, W) and normals (3, H, W) float32."""

    def __init__(self, directory: Path, folders: Sequence[str], kinds: Sequence[str],
                 image_size: Sequence[int] | None = None, augment: bool = False, scales: Sequence[float] = SCALES):
        self.directory, self.folders, self.kinds = directory, list(folders), list(kinds)
        self.image_size = tuple(image_size) if image_size else None
        self.augment, self.scales = augment, tuple(scales)
        self.rng = np.random.default_rng(0)
        names = sorted((directory / "image").glob("*.npy"), key=lambda p: (len(p.stem), p.stem))
        self.ids = [p.stem for p in names]
        missing = [f"{folder}/{i}.npy" for folder in self.folders for i in self.ids[:1]
                   if not (directory / folder / f"{i}.npy").is_file()]
        if missing:
            raise DatasetNotFound(f"{directory}: image/{self.ids[0]}.npy has no {missing[0]}; every folder "
                                  f"({', '.join(['image', *self.folders])}) needs one file per image")

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, index: int) -> tuple[Tensor, list[Tensor]]:
        """Sample ``index`` as stored (CHW, no resizing or augmentation)."""
        i = self.ids[index]
        image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(_load(self.directory / "image" / f"{i}.npy"), -1, 0),
                                                      dtype=np.float32))
        targets = []
        for folder, kind in zip(self.folders, self.kinds):
            path = self.directory / folder / f"{i}.npy"
            if not path.is_file():
                raise DatasetNotFound(f"{path} is missing; every folder needs one file per image/*.npy")
            a = _load(path)
            if kind == "segmentation":
                t = torch.from_numpy(np.asarray(a).astype(np.int64))
            else:
                a = a[..., None] if a.ndim == 2 else a
                t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 0), dtype=np.float32))
            if t.shape[-2:] != image.shape[-2:]:
                raise DataError(f"{path}: shape {tuple(a.shape)} does not match image/{i}.npy "
                                 f"({tuple(image.shape[-2:])} pixels)")
            targets.append(t)
        return image, targets

    def __getitem__(self, index: int) -> tuple[Tensor, list[Tensor]]:
        image, targets = self.read(index)
        if self.image_size and tuple(image.shape[-2:]) != self.image_size:
            image, targets = resize(image, targets, self.kinds, self.image_size)
        if self.augment:
            image, targets = scale_crop_flip(image, targets, self.kinds, self.rng, self.scales)
        return image, targets


def _resample(t: Tensor, kind: str, size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> Tensor:
    """Crop ``t`` (C, H, W) or (H, W) to ``box`` = (top, left, h, w) and resize to ``size``:
    bilinear (corners aligned) for the image, nearest for targets."""
    x = t if box is None else t[..., box[0]:box[0] + box[2], box[1]:box[1] + box[3]]
    if kind == "segmentation":
        return F.interpolate(x[None, None].float(), size=size, mode="nearest")[0, 0].long()
    if kind == "image":
        return F.interpolate(x[None], size=size, mode="bilinear", align_corners=True)[0]
    return F.interpolate(x[None], size=size, mode="nearest")[0]


def resize(image: Tensor, targets: list[Tensor], kinds: Sequence[str], size: tuple[int, int]):
    """The sample at another resolution (depth values are kept: the field of view is)."""
    return _resample(image, "image", size), [_resample(t, k, size) for t, k in zip(targets, kinds)]


def scale_crop_flip(image: Tensor, targets: list[Tensor], kinds: Sequence[str], rng: np.random.Generator,
                    scales: Sequence[float] = SCALES):
    """The training augmentation (module docstring); ``rng`` draws the scale, the crop and
    the flip."""
    height, width = image.shape[-2:]
    s = float(scales[rng.integers(len(scales))])
    h, w = int(height / s), int(width / s)
    box = (int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w)
    image = _resample(image, "image", (height, width), box)
    out = []
    for t, kind in zip(targets, kinds):
        t = _resample(t, kind, (height, width), box)
        out.append(t / s if kind == "depth" else t)
    if rng.random() < 0.5:
        image, out = flip(image, out, kinds)
    return image, out


