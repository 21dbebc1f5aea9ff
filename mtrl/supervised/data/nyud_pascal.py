"""NYUD-v2 four-task and PASCAL-Context five-task data (Guo et al., arXiv 2025) in the layouts of the
public MTL code (SimonVandenhende/Multi-Task-Learning-PyTorch, "MTL";
``shared/docs/dense_suites.md``, section "NYUD-v2 four-task and PASCAL-Context five-task").

A dataset item is ``(image (3, H, W) float32, [target per task])`` as in
:mod:`mtrl.supervised.data.mtan_scene`, batched by :func:`~mtrl.supervised.benchmarks.dense.collate`.  Targets:

* ``semantic`` / ``human_parts``: (H, W) int64, 255 = ignore;
* ``depth``: (1, H, W) float32, 0 = invalid;
* ``normals``: (3, H, W) float32 unit vectors, the zero vector = invalid;
* ``edge`` / ``saliency``: (1, H, W) float32 in {0, 1}.

The image is scaled to [0, 1] and normalised with the ImageNet mean (0.485, 0.456, 0.406)
and std (0.229, 0.224, 0.225), as the reference's ``ToTensor`` + ``Normalize``.

NYUD-v2 (``NYUD_MT/``; 795 train / 654 test, ``val`` is the test split)
    ``images/<id>.jpg``; ``segmentation/<id>.png`` (0 = ignore -> 255, else value - 1:
    40 classes); ``depth/<id>.npy`` (metres, 0 = invalid); ``normals/<id>.npy`` (H, W, 3)
    in [-1, 1], zero vectors invalid; ``edge/<id>.npy`` {0, 1}; ``gt_sets/{train,val}.txt``
    (one id per line).  The second common release (the ATRC / InvPT copy) stores
    ``images/<id>.png``, ``edge/<id>.png`` (edges = png / 255) and ``normals/<id>.png``
    (normals = 2 png / 255 - 1); the format is detected per folder.  A PNG cannot hold the
    zero vector, so a decoded PNG normal whose length is outside [0.5, 1.5] (mid-grey or
    black pixels) is taken as invalid (our rule; the reference has none).

PASCAL-Context (``PASCAL_MT/``; 4,998 train / 5,105 test, ``val`` is the test split)
    ``JPEGImages/<id>.jpg``; ``semseg/VOC12/<id>.png``, else
    ``semseg/pascal-context/<id>.png`` (tried in that order per image, as the reference;
    values 0-20 used as they are, 0 = background; any other value except 255 is made 255);
    ``human_parts/<id>.mat`` (PASCAL-Part ``anno``, see :func:`read_human_parts`);
    ``sal_distill/<id>.png`` (saliency = png / 255 > 0.5); ``normals_distill/<id>.png``
    (2 png / 255 - 1, kept only on the 170 PASCAL-Context classes of
    :data:`NORMALS_VALID_CONTEXT_CLASSES`, zero elsewhere); ``pascal-context/trainval/<id>.mat``
    with ``LabelMap`` (459 context classes; edges by :func:`label_map_edges`);
    ``ImageSets/Context/{train,val}.txt``.

Size (the reference's ``FixedResize``, used for training and testing alike): every sample
is resized, not padded, to ``size`` -- NYUD 480 x 640, PASCAL 512 x 512 (other repos pad
NYUD to 448 x 576; not done here).  Image bicubic, labels / depth / edges / saliency nearest,
normals bicubic then renormalised to unit length (invalid pixels kept invalid by a nearest-
resized validity mask).  ``size=None`` keeps each image's own size.

Augmentation (``augment=True``; the reference's training transforms, in its order):
horizontal flip with probability 1/2 (normal x negated); then a zoom about the image centre
at the same output size (``cv2.getRotationMatrix2D`` + ``warpAffine`` geometry) by a scale
drawn from {1.0, 1.2, 1.5} (NYUD) or uniform in [0.75, 1.25) (PASCAL), for PASCAL combined
with a rotation uniform in [-20, 20) degrees, the normals' (x, y) rotated with it as the
reference does; depth divided by the scale; then the resize to ``size``.  Nearest for labels
with the uncovered border filled with ``label_fill`` (255 = ignore; the reference's warp
fills 0, i.e. background/class 0 -- pass ``label_fill=0`` for that faithful variant); depth,
normals, edges, saliency filled with 0, the image with black.  Draws come from ``self.rng``
(a numpy Generator; :class:`~mtrl.supervised.benchmarks.scene.SceneBenchmark`-style loaders reseed it).
Human parts: as the reference's ``AddIgnoreRegions`` (which runs after augmentation), a
part map with no part pixel left becomes all 255.

Verified against the reference code (SimonVandenhende/Multi-Task-Learning-PyTorch
``data/nyud.py``, ``data/pascal_context.py``, ``data/custom_transforms.py``,
``utils/config.py``, ``utils/common_config.py``, ``data/db_info/*.json``; the PNG NYUD
release against prismformore/Multi-Task-Transformer ``TaskPrompter/data/nyud.py``): every
file name and folder above, the value conventions, the part table, the normal classes,
the edge derivation, sizes, flip / scale / rotation ranges and the interpolation modes.
Taken from the doc only: the split sizes (795 / 654, 4,998 / 5,105).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..tasks.morphology import thin
from .errors import DataError, DatasetNotFound
from .images import flip, normalise_imagenet

__all__ = ["NYUDSplit", "PascalContextSplit", "read_human_parts", "label_map_boundary", "label_map_edges",
           "nyud_semantic", "pascal_semantic", "png_edges", "png_normals", "png_normals_raw", "saliency_from_png", "mask_normals",
           "NYUD_TASKS", "PASCAL_TASKS", "NYUD_SIZE", "PASCAL_SIZE", "IGNORE"]

IGNORE = 255
NYUD_TASKS = ("semantic", "depth", "normals", "edge")
PASCAL_TASKS = ("semantic", "human_parts", "saliency", "normals", "edge")
NYUD_SIZE = (480, 640)
PASCAL_SIZE = (512, 512)
NYUD_SCALES = (1.0, 1.2, 1.5)          # reference: ScaleNRotate(rots=[0], scales=[1.0, 1.2, 1.5])
PASCAL_SCALE_RANGE = (0.75, 1.25)      # reference: ScaleNRotate(rots=(-20, 20), scales=(.75, 1.25))
PASCAL_MAX_ROTATION = 20.0
NUM_CLASSES = {"nyud": 40, "pascal": 21, "human_parts": 7}

#: how each task's target is resampled
KIND = {"semantic": "label", "human_parts": "label", "depth": "depth", "normals": "normal",
        "edge": "binary", "saliency": "binary"}

#: PASCAL-Part class index of "person" (the reference's ``human_parts_category``)
PERSON_CLASS = 15
#: the reference's 6-part grouping of the PASCAL-Part person parts (``HUMAN_PART[6]``):
#: 1 head, 2 torso (with neck), 3 upper arms, 4 lower arms and hands, 5 upper legs,
#: 6 lower legs and feet; 0 = background
HUMAN_PARTS_6 = {
    "hair": 1, "head": 1, "lear": 1, "lebrow": 1, "leye": 1, "mouth": 1, "nose": 1, "rear": 1, "rebrow": 1,
    "reye": 1, "neck": 2, "torso": 2, "luarm": 3, "ruarm": 3, "llarm": 4, "lhand": 4, "rlarm": 4, "rhand": 4,
    "luleg": 5, "ruleg": 5, "llleg": 6, "lfoot": 6, "rlleg": 6, "rfoot": 6,
}
#: PASCAL-Context (459-class) id of each of the 21 VOC classes, background first (the
#: reference's ``CONTEXT_CATEGORY_LABELS``); used by the generator
VOC_CONTEXT_IDS = (0, 2, 23, 25, 31, 34, 45, 59, 65, 72, 98, 397, 113, 207, 258, 284, 308, 347, 368, 416, 427)
#: PASCAL-Context classes on which the distilled normals count: the reference takes every
#: class name of its ``nyu_classes.json`` that is also in ``context_classes.json`` (except
#: "unknown") plus "tvmonitor" (427); these are those names' context ids (170 classes,
#: computed from the two files), e.g. 440 wall, 158 floor, 68 ceiling, 72 chair, 397 table
NORMALS_VALID_CONTEXT_CLASSES = frozenset((
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50, 51, 53, 55,
    56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104, 105, 107, 111, 113, 115,
    122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172, 174, 181, 183, 184, 191, 193, 195,
    197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228, 230, 232, 233, 238, 239, 242, 243, 246, 250, 251,
    252, 255, 260, 261, 263, 269, 272, 273, 275, 281, 283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295,
    304, 307, 309, 310, 314, 315, 319, 323, 329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368,
    370, 371, 374, 379, 380, 383, 384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423,
    427, 429, 430, 432, 440, 441, 442, 443, 444, 446, 454, 457))

NYUD_LAYOUT = ("NYUD_MT/{images/<id>.jpg|png, segmentation/<id>.png, depth/<id>.npy, normals/<id>.npy|png, "
               "edge/<id>.npy|png, gt_sets/{train,val}.txt}")
PASCAL_LAYOUT = ("PASCAL_MT/{JPEGImages/<id>.jpg, semseg/{VOC12|pascal-context}/<id>.png, human_parts/<id>.mat, "
                 "sal_distill/<id>.png, normals_distill/<id>.png, pascal-context/trainval/<id>.mat, "
                 "ImageSets/Context/{train,val}.txt}")


# ----------------------------------------------------------------------------------------
# file readers and value conventions (numpy)

def _read_png(path: Path) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(path) as im:
            return np.array(im)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}); re-extract the data set") from None


def _read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1]."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}); re-extract the data set") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy file ({exc}); re-extract the data set") from None


def _read_mat(path: Path) -> dict:
    import scipy.io
    try:
        return scipy.io.loadmat(path)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable .mat file ({exc}); re-extract the data set") from None


def _plane(a: np.ndarray) -> np.ndarray:
    """(H, W) from (H, W) or (H, W, 1)."""
    return a[..., 0] if a.ndim == 3 else a


def nyud_semantic(png: np.ndarray) -> np.ndarray:
    """NYUD labels: stored 0 = unlabelled -> 255 (ignore), class c in 1..40 -> c - 1 (the
    reference's ``_load_semseg``: ``semseg[semseg == 0] = 256; semseg - 1``)."""
    a = _plane(np.asarray(png)).astype(np.int64)
    return np.where(a == 0, IGNORE, a - 1)


def pascal_semantic(png: np.ndarray) -> np.ndarray:
    """PASCAL labels as stored (0 background, 1-20 the VOC classes, 255 ignore); any other
    value is made 255 so that a loss never sees an out-of-range class."""
    a = _plane(np.asarray(png)).astype(np.int64)
    return np.where((a >= 0) & (a < NUM_CLASSES["pascal"]), a, IGNORE)


def png_edges(png: np.ndarray) -> np.ndarray:
    """PNG-release edges: png / 255 (the ATRC release's ``_load_edge``)."""
    return _plane(np.asarray(png)).astype(np.float32) / 255.0


def png_normals(png: np.ndarray) -> np.ndarray:
    """PNG normals: 2 png / 255 - 1 (the references' decoding); a decoded vector whose
    length is outside [0.5, 1.5] (a mid-grey or black pixel, i.e. no normal) becomes the
    zero vector = invalid."""
    n = 2.0 * np.asarray(png)[..., :3].astype(np.float32) / 255.0 - 1.0
    length = np.linalg.norm(n, axis=-1)
    n[(length < 0.5) | (length > 1.5)] = 0
    return n


def saliency_from_png(png: np.ndarray) -> np.ndarray:
    """Distilled saliency: png / 255 > 0.5 -> {0, 1} (the reference's ``_load_sal_distilled``)."""
    return (_plane(np.asarray(png)).astype(np.float32) / 255.0 > 0.5).astype(np.float32)


def mask_normals(normals: np.ndarray, label_map: np.ndarray,
                 valid_classes: frozenset[int] = NORMALS_VALID_CONTEXT_CLASSES) -> np.ndarray:
    """Distilled normals kept only where the PASCAL-Context ``LabelMap`` class is one of
    ``valid_classes`` (zero vector elsewhere), as the reference's ``_load_normals_distilled``."""
    keep = np.isin(label_map, np.fromiter(valid_classes, dtype=np.int64))
    return np.where(keep[..., None], normals, 0).astype(np.float32)


def label_map_boundary(label_map: np.ndarray) -> np.ndarray:
    """``|cv2.Laplacian(LabelMap, CV_64F)| > 0`` (the reference's edge response before
    thinning): ksize 1, i.e. the 4-neighbour kernel [[0, 1, 0], [1, -4, 1], [0, 1, 0]] on
    the label values, with OpenCV's default border (reflect-101: the outside neighbour is
    the mirrored inner one).  Bool (H, W)."""
    lm = np.asarray(label_map, dtype=np.float64)
    if lm.ndim != 2:
        raise ValueError(f"LabelMap must be 2-D, got shape {lm.shape}")
    p = np.pad(lm, 1, mode="reflect")      # numpy 'reflect' = OpenCV BORDER_REFLECT_101
    lap = p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * lm
    return np.abs(lap) > 0


def label_map_edges(label_map: np.ndarray) -> np.ndarray:
    """PASCAL-Context edge ground truth from the ``LabelMap``, as the reference's
    ``_load_edge``: ``thin(|cv2.Laplacian(LabelMap, CV_64F)| > 0)`` (see
    :func:`label_map_boundary` and :func:`thin`).  Both sides of a class boundary get a
    non-zero response (a 2-pixel band) that the thinning reduces to one pixel.  The
    response is on label *values*: a pixel whose neighbours' labels sum to 4x its own
    (e.g. ... 1 | 2 | 3 ... in a row) is no edge -- a quirk kept for fidelity.  Returns
    float32 {0, 1}."""
    return thin(label_map_boundary(label_map)).astype(np.float32)


def read_human_parts(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The 7-class human-part map (0 background, 1-6 :data:`HUMAN_PARTS_6`) of a PASCAL-Part
    ``.mat``, as the reference's ``_load_human_parts`` + ``AddIgnoreRegions``.

    The file holds ``anno`` with fields (imname, objects); each object has (class,
    class_ind, mask, parts) and each part (part_name, mask); the reference reads them by
    position: ``anno[0][0][1][0]`` the objects, ``obj[1][0][0]`` the class index,
    ``obj[2]`` the instance mask, ``obj[3]`` the parts (empty when none),
    ``part[0][0]`` the name, ``part[1]`` the mask.  If no person (class 15) object has a
    non-empty mask, or no person with parts paints a part, the whole map is 255 (the
    image is ignored for this task); otherwise pixels of the parts of every person with
    parts get the part id (later parts overwrite earlier ones) and everything else is 0
    (also other people's pixels without part annotations, as in the reference).
    ``shape`` is the expected (H, W) (an image without people gets that shape)."""
    path = Path(path)
    mat = _read_mat(path)
    try:
        objects = mat["anno"][0][0][1][0]
        people = [o for o in objects if int(np.asarray(o[1]).ravel()[0]) == PERSON_CLASS]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: not a PASCAL-Part annotation (anno.objects with class_ind, mask, parts; "
                         f"{exc!r}); re-extract human_parts/") from None
    if shape is None:
        masks = [np.asarray(o[2]) for o in objects if np.asarray(o[2]).ndim == 2]
        if not masks:
            raise DataError(f"{path}: no object mask to take the image size from; pass shape")
        shape = masks[0].shape
    target = np.zeros(shape, dtype=np.int64)
    if not any(np.asarray(o[2]).sum() > 0 for o in people):
        return np.full(shape, IGNORE, dtype=np.int64)
    for person in people:
        parts = person[3]
        if len(parts) == 0:
            continue
        for part in parts[0]:
            name = str(np.asarray(part[0]).ravel()[0])
            if name not in HUMAN_PARTS_6:
                raise DataError(f"{path}: unknown person part {name!r}; expected one of {sorted(HUMAN_PARTS_6)}")
            mask = np.asarray(part[1]).astype(bool)
            if mask.shape != tuple(shape):
                raise DataError(f"{path}: part mask {mask.shape} does not match the image {tuple(shape)}")
            target[mask] = HUMAN_PARTS_6[name]
    if not target.any():
        target[:] = IGNORE
    return target


# ----------------------------------------------------------------------------------------
# geometry (torch): targets are (C, H, W) float tensors except labels, (H, W) int64

def _sample(t: Tensor, grid: Tensor, mode: str) -> Tensor:
    return F.grid_sample(t[None], grid, mode=mode, padding_mode="zeros", align_corners=True)[0]


def _length(n: Tensor) -> Tensor:
    """(1, H, W) vector lengths of (3, H, W) normals (a plain sum: much faster than
    ``Tensor.norm(dim=0)`` on CPU)."""
    return (n[0:1] * n[0:1] + n[1:2] * n[1:2] + n[2:3] * n[2:3]).sqrt()


def _unit(n: Tensor, valid: Tensor) -> Tensor:
    """Normals rescaled to unit length where ``valid`` (and non-zero), zero elsewhere."""
    length = _length(n)
    keep = valid & (length > 0)
    return torch.where(keep, n / length.clamp_min(1e-12), torch.zeros_like(n))


def _resample(t: Tensor, kind: str, how, fill: int) -> Tensor:
    """Apply ``how(x, mode)`` (a grid sample or a resize of (C, H, W) float) to one target
    with the interpolation of its kind; uncovered pixels get ``fill`` (labels) or 0."""
    if kind == "label":
        out = how((t.float() + 1)[None], "nearest")[0].round().long()
        return torch.where(out == 0, torch.full_like(out, fill), out - 1)
    if kind == "normal":
        valid = how((_length(t) > 0).float(), "nearest") > 0.5
        return _unit(how(t, "bicubic"), valid)
    if kind == "image":
        return how(t, "bicubic").clamp(0, 1)
    return how(t, "nearest")


def resize(image: Tensor, targets: list[Tensor], kinds: Sequence[str], size: tuple[int, int],
           label_fill: int = IGNORE) -> tuple[Tensor, list[Tensor]]:
    """The reference's ``FixedResize``: image bicubic, normals bicubic + renormalised,
    everything else nearest (OpenCV's and torch's nearest both take source pixel
    floor(i * in / out))."""
    def how(x: Tensor, mode: str) -> Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        kw = {"align_corners": False} if mode == "bicubic" else {}
        return F.interpolate(x[None], size=size, mode=mode, **kw)[0]
    return (_resample(image, "image", how, label_fill),
            [_resample(t, k, how, label_fill) for t, k in zip(targets, kinds)])


def scale_rotate(image: Tensor, targets: list[Tensor], kinds: Sequence[str], scale: float, angle: float,
                 label_fill: int = IGNORE) -> tuple[Tensor, list[Tensor]]:
    """The reference's ``ScaleNRotate`` for one draw: ``warpAffine`` with
    ``getRotationMatrix2D((W / 2, H / 2), angle, scale)`` at the same size (a positive angle
    turns the content counter-clockwise; scale > 1 zooms in).  Before warping, the normals'
    (x, y) are turned by ``angle`` as the reference does: with phi = atan2(x, y) and r the
    in-plane length, x' = r sin(phi + angle), y' = r cos(phi + angle).  Depth is divided by
    the scale."""
    h, w = image.shape[-2:]
    if h < 2 or w < 2:
        raise ValueError(f"scale/rotation needs images of at least 2 x 2 pixels, got {h} x {w}")
    th = math.radians(angle)
    a, b = scale * math.cos(th), scale * math.sin(th)
    cx, cy = w / 2, h / 2
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    dx, dy = xs - cx, ys - cy
    # destination p = A (s - c) + c with A = [[a, b], [-b, a]]; source s = c + A^-1 (p - c)
    sx = cx + (a * dx - b * dy) / scale ** 2
    sy = cy + (b * dx + a * dy) / scale ** 2
    grid = torch.stack((2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1), -1)[None].float()

    def how(x: Tensor, mode: str) -> Tensor:
        return _sample(x, grid, mode)

    out = []
    for t, kind in zip(targets, kinds):
        if kind == "normal" and angle:
            c, s = math.cos(th), math.sin(th)
            t = torch.cat((t[:1] * c + t[1:2] * s, t[1:2] * c - t[:1] * s, t[2:]))
        t = _resample(t, kind, how, label_fill)
        out.append(t / scale if kind == "depth" else t)
    return _resample(image, "image", how, label_fill), out


# ----------------------------------------------------------------------------------------
# datasets

def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or min(int(s) for s in size) < 2:
        raise ValueError(f"size must be [height, width] with sides >= 2, or null, got {size}")
    return int(size[0]), int(size[1])


def _check_tasks(tasks, allowed: tuple[str, ...], name: str) -> list[str]:
    tasks = list(tasks)
    bad = [t for t in tasks if t not in allowed]
    if not tasks or bad or len(set(tasks)) != len(tasks):
        raise ValueError(f"{name} tasks must be distinct names from {allowed}, got {tasks}")
    return tasks


class _DenseSplit(Dataset):
    """Shared item pipeline: ``load`` (native size, numpy decoded) -> augmentation ->
    resize -> human-part ignore rule -> image normalisation."""

    dataset_name: str
    layout: str
    folder_name: str

    def __init__(self, root, split: str, tasks, size, augment: bool, label_fill: int):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test' (= val), got {split!r}")
        if not 0 <= int(label_fill) <= 255:
            raise ValueError(f"label_fill must be in 0..255, got {label_fill}")
        self.split, self.size, self.augment = split, _check_size(size), bool(augment)
        self.label_fill = int(label_fill)
        self.kinds = [KIND[t] for t in self.tasks]
        self.rng = np.random.default_rng(0)
        root = Path(root).expanduser()
        self.root = root / self.folder_name if (root / self.folder_name).is_dir() else root
        if not self.root.is_dir():
            raise DatasetNotFound(f"{self.dataset_name} not found: {root} does not exist; expected {self.layout}")

    def _read_ids(self, list_file: Path) -> list[str]:
        if not list_file.is_file():
            raise DatasetNotFound(f"{self.dataset_name} under {self.root}: no split list {list_file}; "
                                  f"expected {self.layout}")
        ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetNotFound(f"{list_file} lists no images; expected one id per line")
        return ids

    def _require(self, paths: Sequence[Path]) -> None:
        missing = next((p for p in paths if not p.is_file()), None)
        if missing is not None:
            raise DatasetNotFound(f"{self.dataset_name} under {self.root}: {missing} is missing "
                                  f"(every id of the split list needs its files); expected {self.layout}")

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        raise NotImplementedError

    def augmentation(self) -> tuple[float, float]:
        """(scale, angle in degrees) for one training sample."""
        raise NotImplementedError

    def read(self, index: int) -> tuple[Tensor, list[Tensor]]:
        """Sample ``index`` decoded at its own size (image in [0, 1], not normalised),
        targets resized (nearest) to the image where a file's size differs, as the reference."""
        image, arrays = self.load(index)
        h, w = image.shape[:2]
        img = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        targets = []
        for a, kind in zip(arrays, self.kinds):
            if kind == "label":
                t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
            else:
                a = a[..., None] if a.ndim == 2 else a
                t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32))
            if tuple(t.shape[-2:]) != (h, w):
                t = _resample(t, kind, lambda x, mode: F.interpolate(x[None], size=(h, w), mode="nearest")[0],
                              self.label_fill)
            if kind == "normal":
                t = _unit(t, _length(t) > 0)
            targets.append(t)
        return img, targets

    def __getitem__(self, index: int) -> tuple[Tensor, list[Tensor]]:
        image, targets = self.read(index)
        if self.augment:
            if self.rng.random() < 0.5:
                image, targets = flip(image, targets, self.kinds)
            scale, angle = self.augmentation()
            if scale != 1.0 or angle != 0.0:
                image, targets = scale_rotate(image, targets, self.kinds, scale, angle, self.label_fill)
        if self.size is not None:
            image, targets = resize(image, targets, self.kinds, self.size, self.label_fill)
        for j, task in enumerate(self.tasks):
            t = targets[j]
            if task == "human_parts" and not ((t > 0) & (t != IGNORE)).any():
                targets[j] = torch.full_like(t, IGNORE)   # reference AddIgnoreRegions, after augmentation
        return normalise_imagenet(image), targets


class NYUDSplit(_DenseSplit):
    """One NYUD-v2 split in the ``NYUD_MT`` layout (module docstring); ``root`` is the
    ``NYUD_MT`` folder or its parent.  Item: (image, [targets of ``tasks`` in order])."""

    dataset_name, layout, folder_name = "NYUD-v2", NYUD_LAYOUT, "NYUD_MT"

    def __init__(self, root, split: str, tasks: Sequence[str] = NYUD_TASKS,
                 size: Sequence[int] | None = NYUD_SIZE, augment: bool = False, label_fill: int = IGNORE,
                 scales: Sequence[float] = NYUD_SCALES):
        self.tasks = _check_tasks(tasks, NYUD_TASKS, "NYUD")
        super().__init__(root, split, tasks, size, augment, label_fill)
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales must be positive, got {scales}")
        self.scales = tuple(float(s) for s in scales)
        self.ids = self._read_ids(self.root / "gt_sets" / f"{'val' if split == 'test' else split}.txt")
        # the file format of each folder, from the split's first id (".npy" or ".png" release)
        self.ext = {"images": self._detect("images", (".jpg", ".png")), "segmentation": ".png", "depth": ".npy"}
        folders = {"semantic": "segmentation", "depth": "depth", "normals": "normals", "edge": "edge"}
        for task in self.tasks:
            if folders[task] not in self.ext:
                self.ext[folders[task]] = self._detect(folders[task], (".npy", ".png"))
        self.folders = ["images", *(folders[t] for t in self.tasks)]
        self._require([self.root / f / f"{i}{self.ext[f]}" for f in self.folders for i in self.ids])

    def _detect(self, folder: str, extensions: tuple[str, ...]) -> str:
        first = self.ids[0]
        for ext in extensions:
            if (self.root / folder / f"{first}{ext}").is_file():
                return ext
        raise DatasetNotFound(f"NYUD-v2 under {self.root}: no {folder}/{first}{'|'.join(extensions)}; "
                              f"expected {self.layout}")

    def path(self, folder: str, index: int) -> Path:
        return self.root / folder / f"{self.ids[index]}{self.ext[folder]}"

    def load(self, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        image = _read_rgb(self.path("images", index))
        out = []
        for task in self.tasks:
            if task == "semantic":
                out.append(nyud_semantic(_read_png(self.path("segmentation", index))))
            elif task == "depth":
                out.append(_plane(_read_npy(self.path("depth", index))).astype(np.float32))
            elif task == "normals":
                p = self.path("normals", index)
                out.append(png_normals(_read_png(p)) if p.suffix == ".png" else _read_npy(p).astype(np.float32))
            else:
                p = self.path("edge", index)
                out.append(png_edges(_read_png(p)) if p.suffix == ".png" else _plane(_read_npy(p)).astype(np.float32))
        return image, out

    def augmentation(self) -> tuple[float, float]:
        return self.scales[int(self.rng.integers(len(self.scales)))], 0.0


class PascalContextSplit(_DenseSplit):
    """One PASCAL-Context split in the ``PASCAL_MT`` layout (module docstring); ``root`` is
    the ``PASCAL_MT`` folder or its parent."""

    dataset_name, layout, folder_name = "PASCAL-Context", PASCAL_LAYOUT, "PASCAL_MT"

    def __init__(self, root, split: str, tasks: Sequence[str] = PASCAL_TASKS,
                 size: Sequence[int] | None = PASCAL_SIZE, augment: bool = False, label_fill: int = IGNORE,
                 scale_range: Sequence[float] = PASCAL_SCALE_RANGE, max_rotation: float = PASCAL_MAX_ROTATION):
        self.tasks = _check_tasks(tasks, PASCAL_TASKS, "PASCAL-Context")
        super().__init__(root, split, tasks, size, augment, label_fill)
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be [low, high] with 0 < low <= high, got {scale_range}")
        if max_rotation < 0:
            raise ValueError(f"max_rotation must be >= 0 degrees, got {max_rotation}")
        self.scale_range, self.max_rotation = (float(scale_range[0]), float(scale_range[1])), float(max_rotation)
        self.ids = self._read_ids(self.root / "ImageSets" / "Context" / f"{'val' if split == 'test' else split}.txt")
        required = [self.image_path(i) for i in range(len(self.ids))]
        if "semantic" in self.tasks:
            self.semseg = [self._semseg_path(i) for i in self.ids]
        for task in self.tasks:
            for i in range(len(self.ids)):
                required += self._files(task, i)
        self._require(required)

    def _semseg_path(self, image_id: str) -> Path:
        for sub in ("VOC12", "pascal-context"):   # the reference's order
            p = self.root / "semseg" / sub / f"{image_id}.png"
            if p.is_file():
                return p
        raise DatasetNotFound(f"PASCAL-Context under {self.root}: no semseg/VOC12/{image_id}.png or "
                              f"semseg/pascal-context/{image_id}.png; expected {self.layout}")

    def image_path(self, index: int) -> Path:
        return self.root / "JPEGImages" / f"{self.ids[index]}.jpg"

    def label_map_path(self, index: int) -> Path:
        return self.root / "pascal-context" / "trainval" / f"{self.ids[index]}.mat"

    def _files(self, task: str, index: int) -> list[Path]:
        i = self.ids[index]
        return {"semantic": [],
                "human_parts": [self.root / "human_parts" / f"{i}.mat"],
                "saliency": [self.root / "sal_distill" / f"{i}.png"],
                "normals": [self.root / "normals_distill" / f"{i}.png", self.label_map_path(index)],
                "edge": [self.label_map_path(index)]}[task]

    def label_map(self, index: int) -> np.ndarray:
        path = self.label_map_path(index)
        mat = _read_mat(path)
        if "LabelMap" not in mat:
            raise DataError(f"{path}: no LabelMap variable; re-extract pascal-context/trainval/")
        return np.asarray(mat["LabelMap"])

    def load(self, index: int) -> tuple[np.ndarray, list[np.ndarray]]:
        image = _read_rgb(self.image_path(index))
        shape = image.shape[:2]
        out, label_map = [], None
        for task in self.tasks:
            if task == "semantic":
                out.append(pascal_semantic(_read_png(self.semseg[index])))
            elif task == "human_parts":
                out.append(read_human_parts(self._files(task, index)[0], shape))
            elif task == "saliency":
                out.append(saliency_from_png(_read_png(self._files(task, index)[0])))
            else:
                label_map = self.label_map(index) if label_map is None else label_map
                if task == "edge":
                    out.append(label_map_edges(label_map))
                else:
                    normals = png_normals_raw(_read_png(self._files(task, index)[0]))
                    if normals.shape[:2] != label_map.shape:
                        raise ValueError(f"{self._files(task, index)[0]}: {normals.shape[:2]} pixels but the "
                                         f"LabelMap has {label_map.shape}")
                    out.append(mask_normals(normals, label_map))
        return image, out

    def augmentation(self) -> tuple[float, float]:
        lo, hi = self.scale_range
        scale = (hi - lo) * float(self.rng.random()) + lo
        angle = 2 * self.max_rotation * float(self.rng.random()) - self.max_rotation
        return scale, angle


def png_normals_raw(png: np.ndarray) -> np.ndarray:
    """2 png / 255 - 1 without the invalid-pixel rule (PASCAL's distilled normals are dense;
    validity comes from the LabelMap classes)."""
    return 2.0 * np.asarray(png)[..., :3].astype(np.float32) / 255.0 - 1.0




