"""Cityscapes three-task data (semantic 19 classes, instance offsets, disparity) read from
the official Cityscapes folders: the data side of Senushkin et al. (CVPR 2023)'s table 1
(``shared/docs/dense_suites.md``, "Cityscapes three-task").

Layout (the official ``leftImg8bit_trainvaltest.zip``, ``gtFine_trainvaltest.zip`` and
``disparity_trainvaltest.zip`` unpacked into one ``root``)::

    root/leftImg8bit/{train,val}/<city>/<stem>_leftImg8bit.png
    root/gtFine/{train,val}/<city>/<stem>_gtFine_labelIds.png
    root/gtFine/{train,val}/<city>/<stem>_gtFine_instanceIds.png
    root/disparity/{train,val}/<city>/<stem>_disparity.png      (16-bit PNG)

``val`` (500 images) is the test split; ``train`` has 2,975 images.

An item is ``(image (3, H, W) float32, [semantic (h, w) int64, offsets (2, h, w) float32,
disparity (1, h, w) float32])`` with ``(H, W) = image_size`` (256 x 512) and ``(h, w) =
(H, W) / target_scale`` (1/8 = 32 x 64, for stride-8 decoders, as the reference's
``transform`` does).  Ignored semantic / offset pixels hold 250, invalid disparity 0.

Two variants (``variant``), following the SamsungLabs/MTL (Aligned-MTL, "SL") loader
``code/data/datasets/cityscapes.py`` whose numbers Senushkin et al. (CVPR 2023) report:

* ``"faithful"`` reproduces SL's quirks: the image in BGR order minus the vector
  (123.675, 116.28, 103.53) (ImageNet's R, G, B means, subtracted from the B, G, R
  channels in that order, as SL does), divided by 255, no std division; instance offsets
  computed at the stored (full, 1024 x 2048) resolution and never rescaled after the
  nearest resize, so they stay in full-resolution pixels; disparity = raw PNG value /
  2729.0680031169923 (SL's ``DEPTH_STD``; p = 0 stays 0).
* ``"corrected"``: RGB, / 255, ImageNet mean / std normalisation; offsets multiplied by
  (h / H_full, w / W_full), i.e. in pixels of the target grid; disparity decoded the
  official way, (p - 1) / 256 for p > 0 and 0 (invalid) for p = 0.

Pipeline per item, in SL's order: read the full-resolution maps; training augmentation
(``augment=True``): a rotation by an angle drawn uniformly from [-10, 10] degrees (PIL,
counter-clockwise about the centre, image bilinear, label / instance / disparity maps
nearest, uncovered pixels 0 = void label / no instance / invalid disparity, hence 250 /
250 / 0 in the targets), then a horizontal flip with probability 1/2; then trainIds and
offsets are computed at full resolution (so a flip negates dx: the offsets of the flipped
maps are the mirrored offsets with dx negated); then the image is resized bilinearly
(half-pixel centres, no antialiasing, as ``cv2.resize``) and the targets by nearest
neighbour (source index floor(i * H_in / H_out), as ``cv2.INTER_NEAREST``).  The angle and
the flip come from the numpy Generator ``rng`` (the loader sets it per epoch and per
worker, like :class:`~mtrl.supervised.data.mtan_scene.SceneSplit`); SL draws them from ``random.SystemRandom``.

Instance targets (SL ``encode_instancemap``): pixels whose semantic label is ignored, whose
instanceIds value is a stuff label id (7-23) or 0 get 250; every other distinct
instanceIds value is one instance, and each of its pixels gets (y, x) minus the mean (y, x)
of the instance's pixels.  In official data, instanceIds holds class * 1000 + k for
individually annotated objects and the bare label id for crowd ("group") regions, so a
crowd region (all pixels of, e.g., value 26 in the image, connected or not) counts as one
instance.  This selects exactly the thing classes of the 19 evaluated ones, label ids
24-28 and 31-33 (person, rider, car, truck, bus, train, motorcycle, bicycle); caravan (29)
and trailer (30) have instances officially but are void in the 19-class set, so SL
ignores them through the semantic mask; :func:`instance_offsets` reads the class off the
instanceIds value (value // 1000, or the value itself below 1000), which is the labelIds
value at that pixel in official data.

Not verified against SL by running it (no cv2 here): the exact float rounding of
``cv2.resize`` on the float64 BGR image (ours is float32 torch ``interpolate``), and PIL's
rotation sampling is the same library but SL rotates a float32 ("F") disparity map while
we rotate the raw 16-bit values (identical under nearest sampling).  SL lists files with
``os.walk`` (file-system order); here they are sorted.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from .errors import DataError, DatasetNotFound
from .images import normalise_imagenet

__all__ = ["CityscapesOfficialSplit", "CityscapesSample", "find_samples", "train_ids", "instance_offsets",
           "decode_disparity", "preprocess_image", "rotate_flip", "read_raw",
           "IGNORE", "VALID_LABEL_IDS", "THING_LABEL_IDS", "VARIANTS"]

IGNORE = 250
#: label ids of the 19 evaluated classes, in trainId order 0..18 (official ``labels.py``)
VALID_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
#: the evaluated classes with instances (person, rider, car, truck, bus, train, motorcycle, bicycle)
THING_LABEL_IDS = (24, 25, 26, 27, 28, 31, 32, 33)
VARIANTS = ("faithful", "corrected")
#: SL's disparity divisor (``DEPTH_STD``)
SL_DISPARITY_DIVISOR = 2729.0680031169923
#: SL's ImageNet mean vector in 0-255 units (torchvision's 0-1 mean / std: data.images)
SL_MEAN = (123.675, 116.28, 103.53)
SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "val"}
MAX_DEGREES = 10.0

_LUT = np.full(256, IGNORE, dtype=np.int64)
_LUT[list(VALID_LABEL_IDS)] = np.arange(len(VALID_LABEL_IDS))


def _layout(split: str) -> str:
    return (f"leftImg8bit/{split}/<city>/<stem>_leftImg8bit.png, gtFine/{split}/<city>/<stem>_gtFine_labelIds.png "
            f"and _gtFine_instanceIds.png, disparity/{split}/<city>/<stem>_disparity.png (unpack the official "
            f"leftImg8bit_trainvaltest, gtFine_trainvaltest and disparity_trainvaltest zips into one root)")


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


class CityscapesSample(NamedTuple):
    """The four files of one image."""
    image: Path
    label_ids: Path
    instance_ids: Path
    disparity: Path


def find_samples(root: str | Path, split: str) -> list[CityscapesSample]:
    """Every image of ``split`` ("train", or "val" = "test") under ``root``, sorted by city
    and file name, with its three annotation files; raises :class:`DatasetNotFound` when
    a folder is missing, the split has no images, or an image lacks an annotation file."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"unknown split {split!r}; Cityscapes has 'train' and 'val' (= 'test')")
    root, folder = Path(root).expanduser(), SPLIT_FOLDERS[split]
    for top in ("leftImg8bit", "gtFine", "disparity"):
        if not (root / top / folder).is_dir():
            raise DatasetNotFound(f"Cityscapes not found under {root}: no {top}/{folder}/ folder; expected the "
                                  f"official layout {_layout(folder)}")
    images = sorted((root / "leftImg8bit" / folder).glob("*/*_leftImg8bit.png"))
    if not images:
        raise DatasetNotFound(f"{root / 'leftImg8bit' / folder} has no <city>/<stem>_leftImg8bit.png files; "
                              f"expected {_layout(folder)}")
    samples, missing = [], []
    for image in images:
        city, stem = image.parent.name, image.name[:-len("_leftImg8bit.png")]
        sample = CityscapesSample(image, root / "gtFine" / folder / city / f"{stem}_gtFine_labelIds.png",
                                  root / "gtFine" / folder / city / f"{stem}_gtFine_instanceIds.png",
                                  root / "disparity" / folder / city / f"{stem}_disparity.png")
        missing += [(image, p) for p in sample[1:] if not p.is_file()]
        samples.append(sample)
    if missing:
        image, path = missing[0]
        raise DatasetNotFound(f"Cityscapes {split}: {image.relative_to(root)} has no {path.relative_to(root)} "
                              f"({len(missing)} annotation files missing in all); every image needs its labelIds, "
                              f"instanceIds and disparity file: {_layout(folder)}")
    return samples


def train_ids(label_ids) -> np.ndarray:
    """Official label ids -> the 19 trainIds (7, 8, 11, 12, 13, 17, 19-28, 31-33 -> 0..18,
    SL's ``encode_segmap``); every other id (void, the classes not evaluated, values
    outside 0..255) -> 250.  Returns int64 of the input's shape."""
    ids = np.asarray(label_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"label ids must be integers, got dtype {ids.dtype}")
    inside = (ids >= 0) & (ids < 256)
    return np.where(inside, _LUT[np.where(inside, ids, 0)], IGNORE)


def instance_offsets(instance_ids, scale: tuple[float, float] = (1.0, 1.0), ignore: int = IGNORE) -> np.ndarray:
    """Per-pixel offsets (2, H, W) float32 from an official instanceIds map (H, W): for
    each thing instance (distinct value whose class, value // 1000 or the value itself
    below 1000, is in :data:`THING_LABEL_IDS`; a crowd region, value = its label id, is
    one instance), channel 0 = (y - mean y) * scale[0], channel 1 = (x - mean x) * scale[1]
    with the means over the instance's pixels (SL ``encode_instancemap``).  Stuff, void,
    caravan / trailer and 0 pixels get ``ignore`` in both channels.  ``scale`` = (1, 1)
    gives full-resolution pixels (faithful); the corrected variant passes (h / H, w / W)."""
    ids = np.asarray(instance_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"instance ids must be an integer (H, W) map, got dtype {ids.dtype}, shape {ids.shape}")
    ids = ids.astype(np.int64)
    cls = np.where(ids >= 1000, ids // 1000, ids)
    thing = np.isin(cls, THING_LABEL_IDS)
    out = np.full((2, *ids.shape), float(ignore), dtype=np.float32)
    if thing.any():
        ys, xs = np.nonzero(thing)                       # row-major, the order of ids[thing]
        _, inverse = np.unique(ids[thing], return_inverse=True)
        counts = np.bincount(inverse)
        mean_y = np.bincount(inverse, weights=ys) / counts
        mean_x = np.bincount(inverse, weights=xs) / counts
        out[0][thing] = (ys - mean_y[inverse]) * scale[0]
        out[1][thing] = (xs - mean_x[inverse]) * scale[1]
    return out


def decode_disparity(png, variant: str = "faithful") -> np.ndarray:
    """Disparity (H, W) float32 from the raw 16-bit PNG values: "corrected" = the official
    decoding (p - 1) / 256 for p > 0; "faithful" = SL's p / 2729.0680031169923.  p = 0
    (invalid) gives 0 in both; p = 1 decodes to 0 in the corrected variant, i.e. reads as
    invalid to the ``target > 0`` masks of the loss and metric."""
    _check_variant(variant)
    p = np.asarray(png)
    if not np.issubdtype(p.dtype, np.integer) or (p.size and p.min() < 0):
        raise ValueError(f"disparity must hold the raw non-negative integer PNG values, got dtype {p.dtype}")
    p = p.astype(np.float64)
    d = p / SL_DISPARITY_DIVISOR if variant == "faithful" else np.where(p > 0, (p - 1) / 256.0, 0.0)
    return d.astype(np.float32)


def preprocess_image(rgb, variant: str = "faithful") -> Tensor:
    """(H, W, 3) RGB values in 0..255 (uint8 or float) -> (3, H, W) float32.  "faithful"
    (SL ``transform``): BGR order, minus (123.675, 116.28, 103.53), / 255; "corrected":
    RGB, / 255, minus ImageNet mean (0.485, 0.456, 0.406), / std (0.229, 0.224, 0.225)."""
    _check_variant(variant)
    x = torch.from_numpy(np.array(rgb, dtype=np.float32))
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {tuple(x.shape)}")
    x = x.permute(2, 0, 1)
    if variant == "faithful":
        return ((x.flip(0) - torch.tensor(SL_MEAN)[:, None, None]) / 255.0).contiguous()
    return normalise_imagenet(x / 255.0)


def read_raw(sample: CityscapesSample) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The stored maps of one image: RGB uint8 (H, W, 3), labelIds (H, W), instanceIds
    (H, W) int32 and raw disparity (H, W) int32; all must share (H, W)."""
    from PIL import Image

    def load(path: Path, what: str) -> Image.Image:
        try:
            return Image.open(path)
        except FileNotFoundError:
            raise DatasetNotFound(f"{path} is missing; every Cityscapes image needs its {what} file") from None
        except OSError as exc:
            raise DataError(f"{path}: not a readable PNG ({exc}); re-extract the Cityscapes zips") from None

    with load(sample.image, "leftImg8bit") as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    with load(sample.label_ids, "gtFine_labelIds") as im:
        labels = np.asarray(im)
    with load(sample.instance_ids, "gtFine_instanceIds") as im:
        instances = np.asarray(im).astype(np.int32)
    with load(sample.disparity, "disparity") as im:
        if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
            raise ValueError(f"{sample.disparity}: mode {im.mode}, expected the official 16-bit disparity PNG")
        disparity = np.asarray(im).astype(np.int32)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{sample.label_ids}: expected a single-channel integer label map, got {labels.shape}")
    for path, a in ((sample.label_ids, labels), (sample.instance_ids, instances), (sample.disparity, disparity)):
        if a.shape != rgb.shape[:2]:
            raise DataError(f"{path}: shape {a.shape} does not match {sample.image.name} ({rgb.shape[:2]})")
    return rgb, labels, instances, disparity


def rotate_flip(rgb: np.ndarray, label_ids: np.ndarray, instance_ids: np.ndarray, disparity: np.ndarray,
                degrees: float = 0.0, flip: bool = False):
    """SL's ``RandomRotate`` then ``RandomHorizontallyFlip`` on the stored maps: PIL
    ``rotate(degrees)`` (counter-clockwise about the centre, no expansion), bilinear for
    the image and nearest for the maps, uncovered pixels 0 (void label, no instance,
    invalid disparity); then a left-right mirror if ``flip``."""
    if degrees:
        from PIL import Image
        rgb = np.asarray(Image.fromarray(rgb).rotate(degrees, Image.BILINEAR, fillcolor=(0, 0, 0)))
        label_ids = np.asarray(Image.fromarray(label_ids.astype(np.uint8)).rotate(degrees, Image.NEAREST, fillcolor=0))
        instance_ids, disparity = (np.asarray(Image.fromarray(a.astype(np.int32)).rotate(degrees, Image.NEAREST,
                                                                                          fillcolor=0))
                                   for a in (instance_ids, disparity))
    if flip:
        rgb, label_ids, instance_ids, disparity = (a[:, ::-1] for a in (rgb, label_ids, instance_ids, disparity))
    return (np.ascontiguousarray(rgb), np.ascontiguousarray(label_ids), np.ascontiguousarray(instance_ids),
            np.ascontiguousarray(disparity))


def _nearest(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest resize of the last two axes: source index floor(i * n_in / n_out), the
    indexing of ``cv2.INTER_NEAREST`` and torch's ``mode="nearest"``."""
    h_in, w_in = a.shape[-2:]
    if (h_in, w_in) == tuple(size):
        return a
    rows = np.minimum((np.arange(size[0]) * (h_in / size[0])).astype(np.int64), h_in - 1)
    cols = np.minimum((np.arange(size[1]) * (w_in / size[1])).astype(np.int64), w_in - 1)
    return a[..., rows[:, None], cols[None, :]]


class CityscapesOfficialSplit(Dataset):
    """One split of the official folders (module docstring): item i is (image (3, H, W)
    float32, [semantic (h, w) int64, offsets (2, h, w) float32, disparity (1, h, w)
    float32]).  ``augment`` turns on the training rotation and flip, drawn from ``rng``."""

    def __init__(self, root: str | Path, split: str, variant: str = "faithful", image_size=(256, 512),
                 target_scale: int = 8, augment: bool = False, max_degrees: float = MAX_DEGREES):
        _check_variant(variant)
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be [height, width], got {image_size}")
        if target_scale not in (1, 8):
            raise ValueError(f"target_scale must be 8 (targets at 1/8, as the reference) or 1, got {target_scale}")
        if image_size[0] % target_scale or image_size[1] % target_scale:
            raise ValueError(f"image_size {tuple(image_size)} must be divisible by target_scale {target_scale}")
        if max_degrees < 0:
            raise ValueError(f"max_degrees must be >= 0, got {max_degrees}")
        self.root, self.split, self.variant = Path(root).expanduser(), split, variant
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.target_size = (self.image_size[0] // target_scale, self.image_size[1] // target_scale)
        self.target_scale, self.augment, self.max_degrees = target_scale, augment, float(max_degrees)
        self.rng = np.random.default_rng(0)
        self.samples = find_samples(self.root, split)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, list[Tensor]]:
        degrees, flip = 0.0, False
        if self.augment:
            degrees = float(self.rng.uniform(-self.max_degrees, self.max_degrees))
            flip = bool(self.rng.random() < 0.5)
        return self.sample(index, degrees, flip)

    def sample(self, index: int, degrees: float = 0.0, flip: bool = False) -> tuple[Tensor, list[Tensor]]:
        """Item ``index`` rotated by ``degrees`` and mirrored if ``flip`` (no draws)."""
        rgb, labels, instances, disparity = rotate_flip(*read_raw(self.samples[index]), degrees, flip)
        full = labels.shape
        image = preprocess_image(rgb, self.variant)
        if tuple(image.shape[-2:]) != self.image_size:
            image = F.interpolate(image[None], size=self.image_size, mode="bilinear", align_corners=False,
                                  antialias=False)[0]
        scale = (1.0, 1.0) if self.variant == "faithful" else (self.target_size[0] / full[0],
                                                               self.target_size[1] / full[1])
        semantic = torch.from_numpy(np.ascontiguousarray(_nearest(train_ids(labels), self.target_size)))
        offsets = torch.from_numpy(np.ascontiguousarray(_nearest(instance_offsets(instances, scale), self.target_size)))
        disp = decode_disparity(_nearest(disparity, self.target_size), self.variant)
        return image.contiguous(), [semantic, offsets, torch.from_numpy(np.ascontiguousarray(disp))[None]]
