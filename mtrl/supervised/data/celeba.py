"""CelebA's released files (``img_align_celeba/``, ``list_attr_celeba.txt``,
``list_eval_partition.txt``) in any of its three layouts, and the split datasets of the
CelebA benchmark (:mod:`mtrl.supervised.benchmarks.celeba`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .errors import DataError, DatasetNotFound


#: The 40 attributes, in the column order of ``list_attr_celeba.txt``.
ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair",
    "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair",
    "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)


IMAGE_DIR, ATTR_FILE, PARTITION_FILE = "img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"


SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class CelebAFiles:
    image_dir: Path
    attr_file: Path
    partition_file: Path


def find_files(root: str | Path) -> CelebAFiles:
    """The image folder and the two annotation files under ``root``, in the first layout
    that has all three:

    1. torchvision's ``root/celeba/{img_align_celeba/, list_attr_celeba.txt, list_eval_partition.txt}``;
    2. the same three directly under ``root`` (``root`` is the ``celeba`` folder);
    3. the raw release: ``root/Img/img_align_celeba/``, ``root/Anno/list_attr_celeba.txt``,
       ``root/Eval/list_eval_partition.txt``.

    Raises :class:`DatasetNotFound` naming both layouts when none is complete.
    """
    root = Path(root).expanduser()
    candidates = [
        CelebAFiles(root / "celeba" / IMAGE_DIR, root / "celeba" / ATTR_FILE, root / "celeba" / PARTITION_FILE),
        CelebAFiles(root / IMAGE_DIR, root / ATTR_FILE, root / PARTITION_FILE),
        CelebAFiles(root / "Img" / IMAGE_DIR, root / "Anno" / ATTR_FILE, root / "Eval" / PARTITION_FILE),
    ]
    for files in candidates:
        if files.image_dir.is_dir() and files.attr_file.is_file() and files.partition_file.is_file():
            return files
    raise DatasetNotFound(
        f"CelebA not found under {root}: put either {root}/celeba/{{{IMAGE_DIR}/, {ATTR_FILE}, "
        f"{PARTITION_FILE}}} (torchvision layout; or those three directly under root) or "
        f"{root}/Img/{IMAGE_DIR}/, {root}/Anno/{ATTR_FILE}, {root}/Eval/{PARTITION_FILE} (raw layout)")


def read_attributes(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt``: line 1 the image count, line 2 the attribute names,
    then one ``<image> <v_1> ... <v_40>`` line per image with v in {-1, 1}, fields separated
    by runs of blanks. Returns (attribute names, image names, labels (N, A) uint8 in {0, 1})."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if len(lines) < 2:
        raise DataError(f"{path}: expected the image count and the attribute names on the first two lines")
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise DataError(f"{path}: line 1 must be the image count, got {lines[0].strip()!r}") from None
    attributes = lines[1].split()
    body = lines[2:]
    if len(body) != count:
        raise DataError(f"{path}: line 1 says {count} images but {len(body)} are listed")
    rows = [line.split(None, 1) for line in body]
    short = next((i for i, row in enumerate(rows) if len(row) != 2), None)
    if short is not None:
        raise DataError(f"{path}, line {short + 3}: expected an image name and {len(attributes)} values")
    images = [row[0] for row in rows]
    try:
        values = (np.loadtxt([row[1] for row in rows], dtype=np.int8, ndmin=2) if rows
                  else np.zeros((0, len(attributes)), np.int8))
    except ValueError as err:
        raise DataError(f"{path}: {err} (row 1 is line 3)") from None
    if values.shape[1] != len(attributes):
        raise DataError(f"{path}: {values.shape[1]} values per image but {len(attributes)} attribute names")
    bad = (values != 1) & (values != -1)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(f"{path}, line {i + 3}: attribute {attributes[j]} is {values[i, j]}, expected -1 or 1")
    return attributes, images, (values == 1).astype(np.uint8)


def read_partition(path: str | Path) -> dict[str, int]:
    """Parse ``list_eval_partition.txt``: one ``<image> <0|1|2>`` line per image
    (0 train, 1 val, 2 test). Returns {image name: code}."""
    partition = {}
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path}, line {i + 1}: expected '<image> <0|1|2>', got {line.strip()!r}")
        partition[fields[0]] = int(fields[1])
    return partition


def load_image(path: str | Path, image_size: int) -> Tensor:
    """One image as a (3, image_size, image_size) uint8 tensor: RGB, bilinear resize."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
            return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()
    except FileNotFoundError:
        raise DatasetNotFound(f"{path} is missing; the CelebA list files name it") from None
    except OSError as exc:
        raise DataError(f"{path}: not a readable image ({exc}); re-extract img_align_celeba") from None


class CelebASplit(Dataset):
    """One split: item i is (image (3, S, S) float32 in [0, 1], attributes (40,) float32 in
    {0, 1}). Images are decoded on access unless :meth:`cache_images` has stored the whole
    split as uint8 (12 KiB per 64 x 64 image, 2.0 GB for the training split)."""

    def __init__(self, image_dir: Path, images: list[str], labels: np.ndarray, image_size: int):
        self.image_dir = image_dir
        self.images = images
        self.labels = torch.from_numpy(labels.astype(np.float32))
        self.image_size = image_size
        self.cache: Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)

    def image_uint8(self, index: int) -> Tensor:
        if self.cache is not None:
            return self.cache[index]
        return load_image(self.image_dir / self.images[index], self.image_size)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.image_uint8(index).float().div_(255.0), self.labels[index]

    def cache_images(self, num_workers: int = 0, batch_size: int = 256) -> None:
        """Decode every image once (with ``num_workers`` loader processes) and keep them."""
        if self.cache is not None:
            return
        cache = torch.empty(len(self), 3, self.image_size, self.image_size, dtype=torch.uint8)
        start = 0
        for batch in DataLoader(_Uint8View(self), batch_size=batch_size, shuffle=False, num_workers=num_workers):
            cache[start:start + len(batch)] = batch
            start += len(batch)
        self.cache = cache


class _Uint8View(Dataset):
    """The decoded uint8 images of a split (what :meth:`CelebASplit.cache_images` stores)."""

    def __init__(self, split: CelebASplit):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> Tensor:
        return self.split.image_uint8(index)
