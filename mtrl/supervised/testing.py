"""Random data in every on-disk layout the readers take (the tests, the speed benchmarks
and the ``_small`` smoke runs): the MTAN scene layout, NYUD-v2 / PASCAL-Context as the
public MTL code stores them, the official Cityscapes folders, CelebA (its
released files, in each of its layouts) and QM9 (PyG's pre-processed archive).  Targets are
learnable functions of the inputs, so that a small model can fit them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data.celeba import ATTR_FILE, ATTRIBUTES, IMAGE_DIR, PARTITION_FILE
from .data.nyud_pascal import PERSON_CLASS, VOC_CONTEXT_IDS, png_normals


def write_scene(root: str | Path, folders: dict[str, str], num_classes: int, sizes: dict[str, int],
                shape: tuple[int, int], seed: int = 0) -> Path:
    """Random data in the MTAN layout (tests, speed benchmarks, smoke runs): ``sizes``
    {"train": n, "val": m} images of ``shape`` under ``root``; ``folders`` maps a target
    kind (segmentation, depth, normal) to its folder name.  Labels have about 10% ignored
    pixels, depths about 10% invalid ones, normals about 10% zero vectors; everything else
    is smooth enough to learn (targets are blurred functions of the image)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = shape
    for split, n in sizes.items():
        for folder in ["image", *folders.values()]:
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = rng.random((h, w, 3)).astype(np.float32)
            coarse = image.reshape(h // 4, 4, w // 4, 4, 3).mean((1, 3)).repeat(4, 0).repeat(4, 1)
            invalid = rng.random((h, w)) < 0.1
            np.save(root / split / "image" / f"{i}.npy", image)
            for kind, folder in folders.items():
                if kind == "segmentation":
                    a = np.minimum((coarse[..., 0] * num_classes).astype(np.int64), num_classes - 1).astype(np.float32)
                    a[invalid] = -1
                elif kind == "depth":
                    a = (0.5 + 3 * coarse[..., 1:2]).astype(np.float32)
                    a[invalid] = 0
                else:
                    v = coarse - 0.5 + np.array([0, 0, 1.0])
                    a = (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)
                    a[invalid] = 0
                np.save(root / split / folder / f"{i}.npy", a)
    return root


def _smooth(rng: np.random.Generator, shape: tuple[int, int], channels: int, cell: int = 4) -> np.ndarray:
    """Blocky random field in [0, 1], (H, W, C): uniform per cell x cell block."""
    h, w = shape
    coarse = rng.random((-(-h // cell), -(-w // cell), channels))
    return coarse.repeat(cell, 0).repeat(cell, 1)[:h, :w]


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(array)).save(path)


def _save_jpg(path: Path, array: np.ndarray) -> None:
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(array)).save(path, quality=95)


def _check_shape(shape) -> tuple[int, int]:
    if len(shape) != 2 or min(shape) < 4:
        raise ValueError(f"shape must be [height, width] with sides >= 4, got {shape}")
    return int(shape[0]), int(shape[1])


def write_nyud(root: str | Path, n_train: int, n_val: int, shape: Sequence[int] = (32, 48),
               release: str = "npy", seed: int = 0) -> Path:
    """Random NYUD-v2 data in the ``NYUD_MT`` layout under ``root/NYUD_MT`` (returned).
    ``release="npy"``: images .jpg, normals and edges .npy; ``"png"``: images, normals and
    edges .png.  The same seed gives the same targets in both releases (normals are drawn
    on the 8-bit grid, so the .npy holds exactly what the .png decodes to; invalid normals
    are zero vectors in .npy and mid-grey (128) in .png).  About 10% of the labels are 0
    (ignored), of the depths 0 (invalid) and of the normals invalid; targets are blocky
    functions of the image, so a model can learn them."""
    if release not in ("npy", "png"):
        raise ValueError(f"release must be 'npy' or 'png', got {release!r}")
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    h, w = _check_shape(shape)
    base = Path(root) / "NYUD_MT"
    for folder in ("images", "segmentation", "depth", "normals", "edge", "gt_sets"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"{i:04d}" for i in range(n_train + n_val)]
    (base / "gt_sets" / "train.txt").write_text("".join(f"{i}\n" for i in ids[:n_train]))
    (base / "gt_sets" / "val.txt").write_text("".join(f"{i}\n" for i in ids[n_train:]))
    for i in ids:
        field = _smooth(rng, (h, w), 3)
        image = np.clip(field * 255 + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)
        invalid = rng.random((h, w)) < 0.1
        label = np.minimum((field[..., 0] * 40).astype(np.uint8), 39) + 1
        label[rng.random((h, w)) < 0.1] = 0
        depth = (0.5 + 4 * field[..., 1]).astype(np.float32)
        depth[invalid] = 0
        v = field - 0.5 + np.array([0.0, 0.0, 1.0])
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
        normal_png = np.clip(np.round((v + 1) * 255 / 2), 0, 255).astype(np.uint8)
        normal_png[invalid] = 128
        normals = png_normals(normal_png)          # exactly what the .png release decodes to
        edge = np.zeros((h, w), dtype=np.uint8)
        edge[:, 1:] |= label[:, 1:] != label[:, :-1]
        edge[1:, :] |= label[1:, :] != label[:-1, :]
        _save_png(base / "segmentation" / f"{i}.png", label)
        np.save(base / "depth" / f"{i}.npy", depth)
        if release == "npy":
            _save_jpg(base / "images" / f"{i}.jpg", image)
            np.save(base / "normals" / f"{i}.npy", normals)
            np.save(base / "edge" / f"{i}.npy", edge.astype(np.float32))
        else:
            _save_png(base / "images" / f"{i}.png", image)
            _save_png(base / "normals" / f"{i}.png", normal_png)
            _save_png(base / "edge" / f"{i}.png", edge * 255)
    return base


def write_human_parts_mat(path: str | Path, imname: str, objects: Sequence[dict]) -> None:
    """A PASCAL-Part annotation ``.mat`` as the reference reads it: ``anno`` (imname,
    objects), each object (class, class_ind, mask, parts), each part (part_name, mask).
    ``objects``: dicts with ``class_name``, ``class_ind``, ``mask`` (H, W) and ``parts``
    ({part name: mask}; empty for none)."""
    import scipy.io
    objs = np.empty((1, len(objects)), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"), ("parts", "O")])
    for j, obj in enumerate(objects):
        parts_in = obj.get("parts") or {}
        if parts_in:
            parts = np.empty((1, len(parts_in)), dtype=[("part_name", "O"), ("mask", "O")])
            for k, (name, mask) in enumerate(parts_in.items()):
                parts[0, k] = (np.array([name]), np.asarray(mask, dtype=np.uint8))
        else:
            parts = np.zeros((0, 0))
        objs[0, j] = (np.array([obj["class_name"]]), np.array([[obj["class_ind"]]], dtype=np.uint8),
                      np.asarray(obj["mask"], dtype=np.uint8), parts)
    anno = np.empty((1, 1), dtype=[("imname", "O"), ("objects", "O")])
    anno[0, 0] = (np.array([imname]), objs)
    scipy.io.savemat(Path(path), {"anno": anno})


def write_label_map(path: str | Path, label_map: np.ndarray) -> None:
    """A PASCAL-Context ``.mat`` with the (H, W) ``LabelMap`` (uint16 context class ids)."""
    import scipy.io
    scipy.io.savemat(Path(path), {"LabelMap": np.asarray(label_map, dtype=np.uint16)})


def write_pascal_context(root: str | Path, n_train: int, n_val: int, shape: Sequence[int] = (32, 32),
                         seed: int = 0) -> Path:
    """Random PASCAL-Context data in the ``PASCAL_MT`` layout under ``root/PASCAL_MT``
    (returned).  Each image is a grid of blocks, each block one PASCAL-Context class drawn
    from the 20 VOC objects, background classes on which normals count (wall, floor, ...)
    and ones on which they do not (sky, grass, ...); the ``LabelMap`` holds those ids, the
    semantic map their VOC index (0 for non-VOC classes).  Every other image has a person
    block annotated with head / torso / leg parts in ``human_parts/*.mat``; the others have
    a dog without parts (no person -> all parts ignored).  Saliency is high on VOC objects;
    normals are a blocky unit field.  The image colour follows the class, so the targets
    are learnable."""
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    h, w = _check_shape(shape)
    base = Path(root) / "PASCAL_MT"
    folders = ("JPEGImages", "semseg/pascal-context", "human_parts", "sal_distill", "normals_distill",
               "pascal-context/trainval", "ImageSets/Context")
    for folder in folders:
        (base / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ids = [f"2008_{i:06d}" for i in range(n_train + n_val)]
    (base / "ImageSets" / "Context" / "train.txt").write_text("".join(f"{i}\n" for i in ids[:n_train]))
    (base / "ImageSets" / "Context" / "val.txt").write_text("".join(f"{i}\n" for i in ids[n_train:]))
    classes = np.array([*VOC_CONTEXT_IDS[1:], 440, 158, 68, 397, 360, 187, 189, 44], dtype=np.int64)
    palette = np.random.default_rng(12345).integers(0, 256, (460, 3))
    cell_h, cell_w = max(h // 4, 2), max(w // 4, 2)
    person = VOC_CONTEXT_IDS[PERSON_CLASS]
    for n, image_id in enumerate(ids):
        grid = rng.choice(classes, size=(-(-h // cell_h), -(-w // cell_w)))
        grid[grid == person] = 440
        with_person = n % 2 == 0
        if with_person:
            grid[1 % grid.shape[0], 1 % grid.shape[1]] = person
        label_map = grid.repeat(cell_h, 0).repeat(cell_w, 1)[:h, :w]
        voc = np.zeros((h, w), dtype=np.uint8)
        for k, cid in enumerate(VOC_CONTEXT_IDS[1:], start=1):
            voc[label_map == cid] = k
        image = np.clip(palette[label_map] + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
        saliency = np.where(voc > 0, 230, 20).astype(np.uint8)
        v = _smooth(rng, (h, w), 3, cell=max(cell_h, 2)) - 0.5 + np.array([0.0, 0.0, 1.0])
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
        normals = np.clip(np.round((v + 1) * 255 / 2), 0, 255).astype(np.uint8)
        if with_person:
            mask = label_map == person
            rows = np.where(mask.any(1))[0]
            third = max(len(rows) // 3, 1)
            top, mid = rows[:third], rows[third:2 * third]
            parts = {"head": mask & np.isin(np.arange(h), top)[:, None],
                     "torso": mask & np.isin(np.arange(h), mid)[:, None],
                     "llleg": mask & ~np.isin(np.arange(h), np.concatenate([top, mid]))[:, None]}
            objects = [{"class_name": "person", "class_ind": PERSON_CLASS, "mask": mask, "parts": parts}]
        else:
            mask = label_map == VOC_CONTEXT_IDS[12]
            objects = [{"class_name": "dog", "class_ind": 12, "mask": mask, "parts": {}}]
        _save_jpg(base / "JPEGImages" / f"{image_id}.jpg", image)
        _save_png(base / "semseg" / "pascal-context" / f"{image_id}.png", voc)
        _save_png(base / "sal_distill" / f"{image_id}.png", saliency)
        _save_png(base / "normals_distill" / f"{image_id}.png", normals)
        write_label_map(base / "pascal-context" / "trainval" / f"{image_id}.mat", label_map)
        write_human_parts_mat(base / "human_parts" / f"{image_id}.mat", image_id, objects)
    return base


#: the synthetic scenes' stuff layout (label ids): sky, building, vegetation, road, sidewalk
_SKY, _BUILDING, _VEGETATION, _ROAD, _SIDEWALK = 23, 11, 21, 7, 8
_COLOURS = {0: (0, 0, 0), 7: (128, 64, 128), 8: (244, 35, 232), 11: (70, 70, 70), 21: (107, 142, 35),
            23: (70, 130, 180), 24: (220, 20, 60), 26: (0, 0, 142), 29: (0, 0, 90), 33: (119, 11, 32)}


def write_cityscapes_official(root: str | Path, sizes: dict[str, int] | None = None, shape: tuple[int, int] = (64, 128),
                              seed: int = 0) -> Path:
    """Random scenes in exactly the official layout (tests, smoke runs): ``sizes``
    {"train": n, "val": m} images of ``shape`` (H, W), stems ``<city>_<seq>_<frame>``.
    Each scene: sky / building / vegetation on top, sidewalk and road below, a void band
    (id 0) at the bottom; hand-placed things in instanceIds: two cars (26000, 26001), a
    person (24000), a crowd of persons (value 24), a bicycle (33000) and a caravan (29000,
    void in the 19 classes); the image is each class's colour plus noise; disparity PNG
    p = 1 + 256 d with d growing towards the bottom, about 10% invalid (0) pixels."""
    sizes = {"train": 2, "val": 1} if sizes is None else sizes
    h, w = shape
    if h < 16 or w < 32:
        raise ValueError(f"shape must be at least (16, 32) to place the objects, got {shape}")
    unknown = set(sizes) - {"train", "val"}
    if unknown:
        raise ValueError(f"sizes keys must be 'train' and/or 'val', got {sorted(unknown)}")
    from PIL import Image
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = np.arange(h)[:, None].repeat(w, 1)
    for split, n in sizes.items():
        for i in range(n):
            city = f"city{i % 2}"
            stem = f"{city}_{i:06d}_000019"
            horizon = int(h * rng.uniform(0.35, 0.5))
            labels = np.full((h, w), _SKY, np.uint8)
            labels[horizon // 2:horizon] = _BUILDING
            cut = int(rng.integers(w // 4, w // 2))
            labels[horizon // 2:horizon, cut:cut + w // 8] = _VEGETATION
            labels[horizon:] = _ROAD
            labels[horizon:horizon + h // 10, : w // 5] = _SIDEWALK
            labels[h - h // 16:] = 0
            instances = labels.astype(np.int32)
            objects = [(26000, 26), (26001, 26), (24000, 24), (24, 24), (33000, 33), (29000, 29)]
            slots = rng.permutation(6)
            for (value, label), slot in zip(objects, slots):
                bh, bw = max(2, h // 8), max(3, w // 12)
                top = int(rng.integers(horizon - bh // 2, h - h // 16 - bh))
                left = int(slot * (w // 6) + rng.integers(0, max(1, w // 6 - bw)))
                labels[top:top + bh, left:left + bw] = label
                instances[top:top + bh, left:left + bw] = value
                if value == 24:                         # a crowd region is often in pieces
                    below = slice(top + bh + 1, min(top + 2 * bh + 1, h - h // 16))
                    labels[below, left:left + bw] = label
                    instances[below, left:left + bw] = value
            colour = np.array([_COLOURS.get(int(v), (90, 90, 90)) for v in range(34)], np.float64)[labels]
            image = np.clip(colour + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
            d = 2.0 + 60.0 * np.clip(rows - horizon, 0, None) / h + rng.uniform(0, 1, (h, w))
            disparity = np.where(rows < horizon // 2, 0.5, d)
            png = np.round(1 + 256 * disparity).astype(np.uint16)
            png[rng.random((h, w)) < 0.1] = 0
            for top, suffix, array in (("leftImg8bit", "leftImg8bit", image), ("gtFine", "gtFine_labelIds", labels),
                                       ("gtFine", "gtFine_instanceIds", instances.astype(np.uint16)),
                                       ("disparity", "disparity", png)):
                folder = root / top / split / city
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(folder / f"{stem}_{suffix}.png")
    return root


# -- QM9: PyG's layout without rdkit: root/raw/qm9_v3.pt, one dict per molecule (x, edge_index,
# edge_attr, y, pos, z, name, idx), as in the pre-processed archive qm9_v3.zip

ATOMIC_NUMBERS = torch.tensor([1, 6, 7, 8, 9])   # H, C, N, O, F: PyG's atom-type one-hot order
#: rough location and spread of QM9's 19 targets in PyG's units (D, a0^3, eV, a0^2, ...)
TARGET_LOCATION = torch.tensor([2.7, 75.0, -6.5, 0.3, 6.9, 1190.0, 4.1, -11180.0, -11180.0,
                                -11180.0, -11180.0, 31.6, -76.1, -76.6, -77.2, -70.8, 9.8,
                                1.4, 1.1])
TARGET_SPREAD = torch.tensor([1.5, 8.2, 0.6, 1.3, 1.3, 280.0, 0.9, 1090.0, 1090.0, 1090.0,
                              1090.0, 4.1, 10.3, 10.4, 10.5, 9.5, 1.9, 0.3, 0.2])


def _molecule(index: int, weights: torch.Tensor, gen: torch.Generator) -> dict:
    """One random molecule: 3-9 atoms bonded as a random tree, with targets that depend on
    its atom-type composition (so a model can learn them)."""
    n = int(torch.randint(3, 10, (1,), generator=gen))
    kind = torch.randint(0, 5, (n,), generator=gen)
    z = ATOMIC_NUMBERS[kind]
    pos = 1.5 * torch.randn(n, 3, generator=gen)

    child = torch.arange(1, n)
    parent = torch.stack([torch.randint(0, int(j), (1,), generator=gen)[0] for j in child])
    bond = torch.randint(0, 4, (n - 1,), generator=gen)
    row, col = torch.cat([child, parent]), torch.cat([parent, child])
    order = (row * n + col).argsort()
    edge_index = torch.stack([row, col])[:, order]
    bond_type = torch.cat([bond, bond])[order]

    aromatic = torch.zeros(n).index_add_(0, edge_index[1], (bond_type == 3).float()).clamp(max=1)
    hybrid = F.one_hot(torch.randint(0, 3, (n,), generator=gen), 3).float()
    num_hs = torch.zeros(n).index_add_(0, edge_index[1], (z[edge_index[0]] == 1).float())
    x = torch.cat([F.one_hot(kind, 5).float(), z[:, None].float(), aromatic[:, None], hybrid,
                   num_hs[:, None]], dim=1)

    composition = F.one_hot(kind, 5).float().mean(0)
    signal = 2.0 * composition @ weights + 0.1 * torch.randn(19, generator=gen)
    y = (TARGET_LOCATION + TARGET_SPREAD * signal)[None, :]
    return {"x": x, "edge_index": edge_index, "edge_attr": F.one_hot(bond_type, 4).float(),
            "y": y, "pos": pos, "z": z, "name": f"gdb_{index + 1}", "idx": index}


def write_qm9(root: str | Path, num_molecules: int = 40, seed: int = 0) -> list[dict]:
    """Writes ``num_molecules`` random molecules to ``root/raw/qm9_v3.pt`` and returns them."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.randn(5, 19, generator=gen)
    molecules = [_molecule(i, weights, gen) for i in range(num_molecules)]
    raw = Path(root) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    torch.save(molecules, raw / "qm9_v3.pt")
    return molecules


# -- CelebA: small JPEGs 000001.jpg, ..., list_attr_celeba.txt (count line, the 40 names, then
# right-aligned -1/1 values) and list_eval_partition.txt (contiguous train, val, test blocks);
# layouts torchvision (root/celeba/...), folder (directly under root), raw (Img, Anno, Eval)

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
    from PIL import Image
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
