"""A tiny CelebA on disk, in the real file formats and either real layout.

``write_celeba(root, layout)`` writes ``sum(split_sizes)`` small JPEGs named ``000001.jpg``,
``000002.jpg``, ... with random attributes, ``list_attr_celeba.txt`` (count line, the 40
names, then ``<image>`` followed by right-aligned -1/1 values, i.e. runs of blanks, as in
the released file) and ``list_eval_partition.txt`` (contiguous train, val, test blocks, as
released). Layouts: ``"torchvision"`` (``root/celeba/...``), ``"folder"`` (the three entries
directly under ``root``) and ``"raw"`` (``root/Img``, ``root/Anno``, ``root/Eval``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mtrl.supervised.celeba import ATTR_FILE, ATTRIBUTES, IMAGE_DIR, PARTITION_FILE


@dataclass
class TinyCelebA:
    root: Path
    images: list[str]          # file names, in file order
    labels: np.ndarray         # (N, 40) in {0, 1}
    partition: np.ndarray      # (N,) in {0, 1, 2}


def layout_paths(root: Path, layout: str) -> tuple[Path, Path, Path]:
    """(image folder, attribute file, partition file) of ``layout`` under ``root``."""
    if layout == "torchvision":
        base = root / "celeba"
        return base / IMAGE_DIR, base / ATTR_FILE, base / PARTITION_FILE
    if layout == "folder":
        return root / IMAGE_DIR, root / ATTR_FILE, root / PARTITION_FILE
    if layout == "raw":
        return root / "Img" / IMAGE_DIR, root / "Anno" / ATTR_FILE, root / "Eval" / PARTITION_FILE
    raise ValueError(f"unknown layout {layout!r}; use 'torchvision', 'folder' or 'raw'")


def write_celeba(root: str | Path, layout: str = "torchvision", split_sizes: tuple[int, int, int] = (24, 6, 6),
                 image_hw: tuple[int, int] = (44, 36), seed: int = 0) -> TinyCelebA:
    """Write the tiny data set (same content for the same seed in every layout)."""
    root = Path(root)
    image_dir, attr_file, partition_file = layout_paths(root, layout)
    for path in (image_dir, attr_file.parent, partition_file.parent):
        path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = sum(split_sizes)
    images = [f"{i + 1:06d}.jpg" for i in range(n)]
    labels = (rng.random((n, len(ATTRIBUTES))) < 0.4).astype(np.int64)
    partition = np.repeat([0, 1, 2], split_sizes)
    h, w = image_hw
    for name in images:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(image_dir / name, quality=90)
    rows = [name + "".join(f"{2 * v - 1:>3d}" for v in row) for name, row in zip(images, labels)]
    attr_file.write_text(f"{n}\n" + " ".join(ATTRIBUTES) + " \n" + "\n".join(rows) + "\n")
    partition_file.write_text("".join(f"{name} {code}\n" for name, code in zip(images, partition)))
    return TinyCelebA(root, images, labels, partition)
