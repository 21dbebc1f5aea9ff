"""The MTAN scene-understanding benchmarks (NYU-v2, Cityscapes) on the MTAN layout read by
:mod:`mtrl.supervised.data.mtan_scene`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..data.errors import DatasetNotFound
from ..data.mtan_scene import SCALES, SPLIT_FOLDERS, SceneSplit
from .dense import DenseBenchmark


class SceneBenchmark(DenseBenchmark):
    """A dense scene benchmark in the MTAN layout: subclasses set what
    :class:`DenseBenchmark` asks for plus ``folders`` (the target folder of each task; a
    tuple lists accepted alternatives, first match wins).

    Options: ``image_size`` (H, W) resizes every sample (e.g. a quick CPU preset; sides
    must be divisible by 32 for the 5-level SegNet); ``augment`` the training
    augmentation with ``scales``; and those of :class:`DenseBenchmark`.
    """

    folders: list[str | tuple[str, ...]]

    def __init__(self, root: str | Path, image_size: Sequence[int] | None = None, augment: bool = False,
                 scales: Sequence[float] = SCALES, **options):
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise ValueError(f"image_size must be [height, width], got {image_size}")
        super().__init__(root, **options)
        folders = self.find_folders()
        kinds = [t.kind for t in self.dense_tasks]
        self.datasets = {split: SceneSplit(self.root / SPLIT_FOLDERS[split], folders, kinds, image_size,
                                           augment=augment and split == "train", scales=scales)
                         for split in self.splits}
        empty = [s for s, d in self.datasets.items() if len(d) == 0]
        if empty:
            raise DatasetNotFound(f"{self.root / SPLIT_FOLDERS[empty[0]] / 'image'} has no .npy files")

    def find_folders(self) -> list[str]:
        """Each task's folder name in this copy of the data (``label_7`` or ``label``, ...)."""
        expected = ", ".join(f"{s}/{{image,{','.join(f if isinstance(f, str) else f[0] for f in self.folders)}}}/"
                             for s in SPLIT_FOLDERS.values())
        if not all((self.root / s / "image").is_dir() for s in SPLIT_FOLDERS.values()):
            raise DatasetNotFound(f"{self.name} not found under {self.root}: expected the MTAN preprocessing "
                                  f"{expected} with one <i>.npy per image")
        found = []
        for options in self.folders:
            options = (options,) if isinstance(options, str) else options
            hit = next((o for o in options if all((self.root / s / o).is_dir() for s in SPLIT_FOLDERS.values())), None)
            if hit is None:
                raise DatasetNotFound(f"{self.name} under {self.root}: no {' or '.join(options)} folder in both "
                                      f"train/ and val/ (expected {expected})")
            found.append(hit)
        return found
