"""CelebA: 40 binary face attributes as 40 tasks (PIVRG Table 3, ConsMTL Table 3).

Data: the aligned 178 x 218 JPEGs, the attribute file and the partition file, read from
either on-disk layout met in practice (see :func:`find_files`). Images are resized to
``image_size`` x ``image_size`` with Pillow's bilinear filter and scaled to [0, 1] (CHW, no
normalisation, no augmentation); attributes in {-1, 1} become {0, 1}. Splits come from
``list_eval_partition.txt`` (0 train, 1 val, 2 test: 162,770 / 19,867 / 19,962 images in
the released files).

Model (:class:`CelebACNN`): the 9-layer CNN of the protocol the papers follow (FAMO's
public code): seven conv3x3-BN-ReLU layers and three max-pools, global average pooling and
two Linear-BN-ReLU layers form the shared encoder; 40 ``Linear(512, 1)`` heads give one
logit per attribute.

Losses and metrics: binary cross-entropy per attribute (on logits); per-attribute F1 at
threshold 0.5 over a whole split, from true/false positive and false negative counts. Some
tables report the error 1 - F1 instead; dm% (``mtrl.metrics``) compares the F1 values with
the single-task baselines in :data:`STL_F1`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from mtrl.supervised.benchmark import Benchmark, DataError, DatasetNotFound, Metric, MultiTaskModel

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

#: Single-task test F1 per attribute (same order as :data:`ATTRIBUTES`), the baseline of the
#: CelebA dm% in FAMO's table, whose method rows PIVRG and ConsMTL reuse (LS 4.15, FAMO
#: 1.21, ...). Neither paper prints per-attribute values; these are the ones FAMO's authors
#: published in github.com/Cranial-XIX/FAMO/issues/2 (2023-12-17).
STL_F1: tuple[float, ...] = (
    0.6736886, 0.68121034, 0.81524944, 0.5760289, 0.7205613, 0.8555076,
    0.38203922, 0.58225113, 0.787647, 0.8321292, 0.5029583, 0.68694085,
    0.6781237, 0.5240381, 0.5161666, 0.95694304, 0.6968786, 0.67976356,
    0.8808315, 0.8582131, 0.97034, 0.93267566, 0.5057539, 0.40307626,
    0.9703734, 0.48644206, 0.60786104, 0.5261031, 0.56907415, 0.59815097,
    0.6858371, 0.924108, 0.5424991, 0.7406311, 0.71019936, 0.87365365,
    0.9305602, 0.33704284, 0.7647628, 0.91907,
)

def metric_list() -> list[Metric]:
    """The metrics ``CelebABenchmark`` reports (per-attribute test F1, higher is better,
    against :data:`STL_F1`), without reading any data."""
    return [Metric(f"{a}_f1", a, True, b) for a, b in zip(ATTRIBUTES, STL_F1)]


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


class CelebACNN(MultiTaskModel):
    """The 9-layer CNN: conv3x3 (no bias) - BN - ReLU with 64, 128, 128, 256, 256, 512, 512
    channels, 2 x 2 max-pools after convs 1, 3 and 5 (as in FAMO's public code), global
    average pooling, then 2 x (Linear 512 -> 512 - BN - ReLU); the Linear layers have no bias
    since BN follows. z is (B, 512); each head ``Linear(512, 1)`` gives one logit."""

    CHANNELS = (64, 128, 128, 256, 256, 512, 512)
    POOL_AFTER = (0, 2, 4)

    def __init__(self, num_tasks: int = len(ATTRIBUTES)):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(self.CHANNELS):
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            if i in self.POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            in_ch = out_ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        for _ in range(2):
            layers += [nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(512, 1) for _ in range(num_tasks))

    def encode(self, inputs: Tensor) -> Tensor:
        return self.encoder(inputs)

    def decode(self, z: Tensor) -> list[Tensor]:
        return [head(z).squeeze(-1) for head in self.heads]


class CelebAF1:
    """Per-attribute F1 at threshold 0.5 over a split: counts TP, FP, FN of the predictions
    ``logit > 0`` (sigmoid > 0.5) and returns F1 = 2 TP / (2 TP + FP + FN) per attribute
    (= 2 P R / (P + R)); F1 = 0 when TP + FP + FN = 0 (no positive predicted or present), as
    the reference code's epsilon-guarded formula gives. The error some tables use is 1 - F1."""

    def __init__(self, attributes: list[str]):
        self.attributes = list(attributes)
        k = len(self.attributes)
        self.tp, self.fp, self.fn = (torch.zeros(k, dtype=torch.int64) for _ in range(3))

    def update(self, outputs: list[Tensor], batch: tuple[Tensor, Tensor]) -> None:
        pred = torch.stack(outputs, dim=1).detach() > 0
        truth = batch[1].detach() > 0.5
        self.tp = self.tp + (pred & truth).sum(0).cpu()
        self.fp = self.fp + (pred & ~truth).sum(0).cpu()
        self.fn = self.fn + (~pred & truth).sum(0).cpu()

    def compute(self) -> dict[str, float]:
        denom = (2 * self.tp + self.fp + self.fn).double()
        f1 = torch.where(denom > 0, 2 * self.tp.double() / denom.clamp(min=1), torch.zeros_like(denom))
        return {f"{a}_f1": float(v) for a, v in zip(self.attributes, f1)}


class CelebABenchmark(Benchmark):
    """CelebA from ``root`` (either layout of :func:`find_files`).

    Every image listed in ``list_attr_celeba.txt`` must have a partition entry and a file in
    the image folder; both are checked at construction (one directory listing), so a
    missing image fails here with its name rather than mid-epoch. ``cache=True`` decodes
    each split once, on its first :meth:`loader` call, and serves it from memory afterwards.
    Batches are (images (B, 3, S, S), attributes (B, 40)); the model outputs 40 logits (B,).
    """

    name = "celeba"
    selection_split = "val"

    def selection_value(self, values: dict[str, float], delta_m: float) -> float:
        """The reference code keeps the epoch with the best mean validation F1 (not dm%)."""
        return -float(np.mean([values[m.name] for m in self.metrics]))

    def __init__(self, root: str | Path, image_size: int = 64, num_workers: int = 0, cache: bool = False):
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 (three 2x2 max-pools), got {image_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.files = find_files(root)
        self.image_size, self.num_workers, self.cache = image_size, num_workers, cache
        attributes, images, labels = read_attributes(self.files.attr_file)
        if tuple(attributes) != ATTRIBUTES:
            i = next((i for i, (a, b) in enumerate(zip(attributes, ATTRIBUTES)) if a != b), None)
            found = f"{len(attributes)} names" if i is None else f"{attributes[i]!r} where {ATTRIBUTES[i]!r} belongs"
            raise ValueError(f"{self.files.attr_file}: line 2 must name the 40 CelebA attributes in the released "
                             f"order, found {found}")
        partition = read_partition(self.files.partition_file)
        unassigned = [name for name in images if name not in partition]
        if unassigned:
            raise ValueError(f"{self.files.partition_file} has no split for {len(unassigned)} images of "
                             f"{self.files.attr_file.name}, e.g. {unassigned[0]}")
        on_disk = set(os.listdir(self.files.image_dir))
        missing = [name for name in images if name not in on_disk]
        if missing:
            raise FileNotFoundError(f"{len(missing)} images listed in {self.files.attr_file.name} are not in "
                                    f"{self.files.image_dir}, e.g. {missing[0]}")
        self.tasks = list(attributes)
        self.metrics = metric_list()
        codes = np.array([partition[name] for name in images])
        self.datasets = {
            split: CelebASplit(self.files.image_dir, [images[i] for i in np.flatnonzero(codes == code)],
                               labels[codes == code], image_size)
            for split, code in SPLIT_CODES.items()
        }

    def dataset(self, split: str) -> CelebASplit:
        if split not in self.datasets:
            raise ValueError(f"unknown split {split!r}; CelebA has {self.splits}")
        return self.datasets[split]

    def loader(self, split: str, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
        """Batches of ``split``; with ``shuffle`` the order comes from a generator seeded with
        ``seed``. The last batch may be smaller (nothing is dropped)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        data = self.dataset(split)
        if self.cache:
            data.cache_images(self.num_workers)
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        workers = 0 if data.cache is not None else self.num_workers
        return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=workers)

    def to_device(self, batch: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
        images, labels = batch
        return images.to(device, non_blocking=True), labels.to(device, non_blocking=True)

    def inputs(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        return batch[0]

    def build_model(self) -> CelebACNN:
        return CelebACNN(len(self.tasks))

    def task_losses(self, outputs: list[Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
        """l_i = mean over the batch of BCE(sigmoid(logit_i), y_i), a (40,) tensor."""
        logits = torch.stack(outputs, dim=1)
        return F.binary_cross_entropy_with_logits(logits, batch[1], reduction="none").mean(0)

    def metric_state(self) -> CelebAF1:
        return CelebAF1(self.tasks)
