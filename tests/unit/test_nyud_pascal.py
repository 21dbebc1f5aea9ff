"""NYUD-v2 / PASCAL-Context data in the MTL reference layouts (mtrl.supervised.data.nyud_pascal):
value conventions checked against hand-computed targets."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mtrl.supervised.data.errors import DatasetNotFound
from mtrl.supervised.benchmarks.dense import collate
from mtrl.supervised.data.images import IMAGENET_MEAN, IMAGENET_STD
from mtrl.supervised.data.images import flip
from mtrl.supervised.data.nyud_pascal import (IGNORE, NYUD_SCALES, NYUDSplit, PascalContextSplit, label_map_boundary,
                                              label_map_edges, read_human_parts, scale_rotate)
from mtrl.supervised.tasks.morphology import thin
from mtrl.supervised.testing import write_human_parts_mat, write_label_map, write_nyud, write_pascal_context

SHAPE = (8, 12)


def _png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


@pytest.fixture(scope="module")
def nyud_npy(tmp_path_factory):
    return write_nyud(tmp_path_factory.mktemp("npy"), 2, 1, SHAPE, release="npy", seed=3)


@pytest.fixture(scope="module")
def nyud_png(tmp_path_factory):
    return write_nyud(tmp_path_factory.mktemp("png"), 2, 1, SHAPE, release="png", seed=3)


@pytest.fixture(scope="module")
def pascal(tmp_path_factory):
    return write_pascal_context(tmp_path_factory.mktemp("pascal"), 2, 1, (16, 16), seed=0)


# ---------------------------------------------------------------- NYUD

def test_nyud_semantic_is_value_minus_one_and_zero_is_ignored(tmp_path):
    root = write_nyud(tmp_path, 1, 1, (4, 4), release="npy", seed=0)
    label = np.array([[0, 1, 2, 40], [5, 0, 0, 1], [1, 1, 1, 1], [40, 39, 3, 0]])
    _png(root / "segmentation" / "0000.png", label)
    target = NYUDSplit(tmp_path, "train", tasks=["semantic"], size=None)[0][1][0]
    expected = [[255, 0, 1, 39], [4, 255, 255, 0], [0, 0, 0, 0], [39, 38, 2, 255]]
    assert target.dtype == torch.int64
    assert target.tolist() == expected


def test_nyud_png_release_edges_and_normals_by_hand(tmp_path):
    root = write_nyud(tmp_path, 1, 1, (4, 4), release="png", seed=0)
    edge = np.zeros((4, 4)); edge[1, :] = 255
    _png(root / "edge" / "0000.png", edge)
    normals = np.full((4, 4, 3), (255, 128, 128))
    normals[0, 0] = (128, 128, 128)        # mid grey: no normal -> invalid
    normals[0, 1] = (128, 128, 255)
    normals[0, 2] = (0, 0, 0)              # black decodes to (-1, -1, -1), length 1.73 -> invalid
    _png(root / "normals" / "0000.png", normals)
    data = NYUDSplit(root, "train", tasks=["normals", "edge"], size=None)
    assert data.ext == {"images": ".png", "segmentation": ".png", "depth": ".npy", "normals": ".png", "edge": ".png"}
    n, e = data[0][1]
    assert e.shape == (1, 4, 4) and e[0].tolist() == [[0] * 4, [1] * 4, [0] * 4, [0] * 4]
    small = 2 * 128 / 255 - 1              # 1/255
    length = math.sqrt(1 + 2 * small ** 2)
    assert n.shape == (3, 4, 4)
    assert torch.allclose(n[:, 2, 3], torch.tensor([1 / length, small / length, small / length]), atol=1e-6)
    assert torch.allclose(n[:, 0, 1], torch.tensor([small / length, small / length, 1 / length]), atol=1e-6)
    assert n[:, 0, 0].tolist() == [0, 0, 0] and n[:, 0, 2].tolist() == [0, 0, 0]


def test_both_nyud_releases_read_to_equal_targets(nyud_npy, nyud_png):
    a, b = NYUDSplit(nyud_npy, "test", size=(6, 8)), NYUDSplit(nyud_png, "test", size=(6, 8))
    assert a.ext["normals"] == ".npy" and b.ext["normals"] == ".png" and b.ext["images"] == ".png"
    (xa, ta), (xb, tb) = a[0], b[0]
    for u, v in zip(ta, tb):
        assert torch.equal(u, v)
    assert (xa - xb).abs().mean() < 0.5    # JPEG vs PNG of the same pixels
    seg, depth, normals, edge = ta
    assert seg.shape == (6, 8) and seg.dtype == torch.int64
    assert depth.shape == (1, 6, 8) and normals.shape == (3, 6, 8) and edge.shape == (1, 6, 8)
    length = normals.norm(dim=0)
    assert torch.all(((length - 1).abs() < 1e-5) | (length == 0))
    assert (length == 0).any() and (length > 0).any()
    assert set(edge.unique().tolist()) <= {0.0, 1.0}


def test_image_is_imagenet_normalised(tmp_path):
    root = write_nyud(tmp_path, 1, 1, (4, 4), release="png", seed=0)
    image = np.zeros((4, 4, 3)); image[2, 1] = (255, 0, 51)
    _png(root / "images" / "0000.png", image)
    x = NYUDSplit(root, "train", tasks=["depth"], size=None)[0][0]
    expected = [(1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], -IMAGENET_MEAN[1] / IMAGENET_STD[1],
                (0.2 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]]
    assert x.dtype == torch.float32 and torch.allclose(x[:, 2, 1], torch.tensor(expected), atol=1e-5)


def test_nyud_flip_negates_normal_x(nyud_npy):
    plain = NYUDSplit(nyud_npy, "train", size=None)
    aug = NYUDSplit(nyud_npy, "train", size=None, augment=True)
    # a seed whose first draws are: flip (< 0.5), then scale index 0 (= 1.0, no zoom)
    seed = next(s for s in range(100) if (lambda g: g.random() < 0.5 and g.integers(len(NYUD_SCALES)) == 0)(
        np.random.default_rng(s)))
    aug.rng = np.random.default_rng(seed)
    (x, t), (y, u) = plain[1], aug[1]
    assert torch.allclose(y, x.flip(-1))
    assert torch.equal(u[0], t[0].flip(-1)) and torch.equal(u[1], t[1].flip(-1)) and torch.equal(u[3], t[3].flip(-1))
    assert torch.equal(u[2][0], -t[2][0].flip(-1)) and torch.equal(u[2][1:], t[2][1:].flip(-1))
    assert u[2][0].abs().sum() > 0


def test_nyud_random_zoom_divides_depth(nyud_npy):
    plain = NYUDSplit(nyud_npy, "train", size=None, tasks=["depth"])
    aug = NYUDSplit(nyud_npy, "train", size=None, tasks=["depth"], augment=True)
    # a seed whose first draws are: no flip, then scale index 2 (= 1.5)
    seed = next(s for s in range(100) if (lambda g: g.random() >= 0.5 and g.integers(len(NYUD_SCALES)) == 2)(
        np.random.default_rng(s)))
    aug.rng = np.random.default_rng(seed)
    depth, zoomed = plain[0][1][0], aug[0][1][0]
    # the zoom centre (W/2, H/2) = (6, 4) maps onto itself; depth is divided by the scale
    assert depth[0, 4, 6] > 0 and zoomed[0, 4, 6] == pytest.approx(float(depth[0, 4, 6]) / 1.5)
    assert not torch.allclose(zoomed, depth / 1.5)


def test_collate_batches_items(nyud_npy):
    data = NYUDSplit(nyud_npy, "train", size=(6, 8), augment=True)
    images, targets = collate([data[0], data[1]])
    assert images.shape == (2, 3, 6, 8)
    assert [tuple(t.shape) for t in targets] == [(2, 6, 8), (2, 1, 6, 8), (2, 3, 6, 8), (2, 1, 6, 8)]


def test_nyud_missing_data_names_the_layout(tmp_path, nyud_npy):
    with pytest.raises(DatasetNotFound, match="NYUD_MT/"):
        NYUDSplit(tmp_path / "nowhere", "train")
    root = write_nyud(tmp_path / "a", 2, 1, (4, 4), release="npy", seed=0)
    (root / "gt_sets" / "val.txt").unlink()
    with pytest.raises(DatasetNotFound, match=r"gt_sets.*val\.txt.*NYUD_MT/"):
        NYUDSplit(root, "test")
    root = write_nyud(tmp_path / "b", 2, 1, (4, 4), release="npy", seed=0)
    (root / "depth" / "0001.npy").unlink()
    with pytest.raises(DatasetNotFound, match=r"depth/0001\.npy is missing.*NYUD_MT/"):
        NYUDSplit(root, "train")
    NYUDSplit(root, "train", tasks=["semantic", "normals"])     # depth not asked for: fine
    (root / "normals" / "0000.npy").unlink()
    with pytest.raises(DatasetNotFound, match=r"normals/0000\.npy\|\.png"):
        NYUDSplit(root, "train", tasks=["normals"])


def test_bad_arguments_are_value_errors(nyud_npy):
    with pytest.raises(ValueError, match="tasks"):
        NYUDSplit(nyud_npy, "train", tasks=["semantic", "saliency"])
    with pytest.raises(ValueError, match="split"):
        NYUDSplit(nyud_npy, "validation")
    with pytest.raises(ValueError, match="size"):
        NYUDSplit(nyud_npy, "train", size=(8,))


# ---------------------------------------------------------------- PASCAL: single conversions

def test_human_parts_from_a_hand_placed_person(tmp_path):
    person = np.zeros((4, 5), bool); person[:, 1:4] = True
    head = np.zeros((4, 5), bool); head[0, 1:4] = True
    torso = np.zeros((4, 5), bool); torso[1:3, 2] = True
    arm = np.zeros((4, 5), bool); arm[1, 1] = True
    lhand = np.zeros((4, 5), bool); lhand[2, 1] = True
    foot = np.zeros((4, 5), bool); foot[3, 3] = True
    dog = np.zeros((4, 5), bool); dog[3, 4] = True
    write_human_parts_mat(tmp_path / "p.mat", "x", [
        {"class_name": "dog", "class_ind": 12, "mask": dog, "parts": {}},
        {"class_name": "person", "class_ind": 15, "mask": person,
         "parts": {"head": head, "torso": torso, "ruarm": arm, "lhand": lhand, "rfoot": foot}}])
    expected = [[0, 1, 1, 1, 0],
                [0, 3, 2, 0, 0],
                [0, 4, 2, 0, 0],
                [0, 0, 0, 6, 0]]
    target = read_human_parts(tmp_path / "p.mat", (4, 5))
    assert target.dtype == np.int64 and target.tolist() == expected
    # no person at all, or a person without part annotations: the image is ignored (255)
    write_human_parts_mat(tmp_path / "d.mat", "y", [{"class_name": "dog", "class_ind": 12, "mask": dog, "parts": {}}])
    assert (read_human_parts(tmp_path / "d.mat", (4, 5)) == IGNORE).all()
    write_human_parts_mat(tmp_path / "q.mat", "z", [{"class_name": "person", "class_ind": 15, "mask": person,
                                                     "parts": {}}])
    assert (read_human_parts(tmp_path / "q.mat", (4, 5)) == IGNORE).all()


def test_thinning_matches_the_skimage_documentation_example():
    square = np.zeros((7, 7), bool)
    square[1:-1, 2:-2] = True
    square[0, 1] = True
    expected = np.zeros((7, 7), bool)
    expected[0, 1] = expected[1, 2] = expected[2, 3] = expected[3, 3] = expected[4, 3] = True
    assert np.array_equal(thin(square), expected)


def test_label_map_boundary_uses_reflect_101_border():
    # |Laplacian| with the outside neighbour mirrored (row -1 = row 1, column -1 = column 1):
    # (1, 0): 1 + 2 + 3 + 3 - 4 * 2 = 1 (a replicated border would give 0);
    # (2, 0): 2 + 2 + 2 + 2 - 4 * 2 = 0; every other pixel has a non-zero sum.
    lm = np.array([[1, 1, 1], [2, 3, 3], [2, 2, 2]])
    assert label_map_boundary(lm).astype(int).tolist() == [[1, 1, 1], [1, 1, 1], [0, 1, 1]]


def test_label_map_edges_by_hand():
    # |Laplacian| > 0 on both sides of the 1 | 3 boundary (columns 1 and 2, all rows; the
    # reflected border adds nothing).  Guo-Hall pass 1, subiteration 1 deletes (0, 1) and
    # the whole column 2 (east side open); subiteration 2 keeps (1..3, 1): the ends have one
    # neighbour, (2, 1) has two gaps.  Pass 2 deletes nothing.
    lm = np.array([[1, 1, 3, 3]] * 4)
    expected = np.zeros((4, 4)); expected[1:, 1] = 1
    assert label_map_edges(lm).tolist() == expected.tolist()
    # a single pixel of class 2 in class 1: the response is a plus (centre and its 4
    # neighbours); the north, east and south arms go in subiteration 1 (one gap, two
    # neighbours, east side open), the west arm is kept by condition G3 (east neighbour
    # set) and the remaining 2-pixel segment has two end points.
    lm = np.ones((5, 5), int); lm[2, 2] = 2
    expected = np.zeros((5, 5)); expected[2, 1:3] = 1
    assert label_map_edges(lm).tolist() == expected.tolist()
    # the reference responds to label values: 1 | 2 | 3 in a row cancels at the middle
    lm = np.array([[1, 1, 2, 3, 3]] * 3)
    lap_mask = label_map_edges(lm)
    assert lap_mask[:, 2].sum() == 0


def test_pascal_targets_from_hand_made_files(tmp_path, pascal):
    root = write_pascal_context(tmp_path, 1, 1, (4, 4), seed=1)
    image_id = "2008_000000"
    label_map = np.array([[440, 440, 360, 360]] * 4)          # wall (normals kept) | sky (not kept)
    write_label_map(root / "pascal-context" / "trainval" / f"{image_id}.mat", label_map)
    normals = np.full((4, 4, 3), (128, 128, 255))
    _png(root / "normals_distill" / f"{image_id}.png", normals)
    _png(root / "sal_distill" / f"{image_id}.png", [[0, 127, 128, 255]] * 4)
    _png(root / "semseg" / "pascal-context" / f"{image_id}.png", [[0, 15, 20, 21]] * 4)
    (root / "semseg" / "VOC12").mkdir()
    data = PascalContextSplit(root, "train", tasks=["semantic", "saliency", "normals", "edge"], size=None)
    seg, sal, n, edge = data[0][1]
    assert seg.tolist() == [[0, 15, 20, 255]] * 4
    assert sal[0].tolist() == [[0, 0, 1, 1]] * 4                # 127/255 < 0.5 < 128/255
    small = 1 / 255
    unit = torch.tensor([small, small, 1.0]) / math.sqrt(1 + 2 * small ** 2)
    assert torch.allclose(n[:, :, :2].reshape(3, -1), unit[:, None].expand(3, 8), atol=1e-6)
    assert n[:, :, 2:].abs().sum() == 0
    assert edge[0].tolist() == [[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0]]
    # semseg/VOC12 is preferred over semseg/pascal-context, as in the reference
    _png(root / "semseg" / "VOC12" / f"{image_id}.png", [[7] * 4] * 4)
    data = PascalContextSplit(root, "train", tasks=["semantic"], size=None)
    assert (data[0][1][0] == 7).all()


def test_pascal_generated_split(pascal):
    data = PascalContextSplit(pascal, "train", size=(12, 12))
    image, (seg, parts, sal, normals, edge) = data[0]
    assert image.shape == (3, 12, 12)
    assert seg.shape == parts.shape == (12, 12) and seg.dtype == parts.dtype == torch.int64
    assert sal.shape == edge.shape == (1, 12, 12) and normals.shape == (3, 12, 12)
    assert set(parts.unique().tolist()) == {0, 1, 2, 6}           # image 0 has a person
    assert (data[1][1][1] == IGNORE).all()                        # image 1 has none
    assert edge.sum() > 0 and set(sal.unique().tolist()) == {0.0, 1.0}
    aug = PascalContextSplit(pascal, "train", size=(12, 12), augment=True)
    aug.rng = np.random.default_rng(5)
    x, t = aug[0]
    assert x.shape == (3, 12, 12) and [tuple(v.shape) for v in t] == [tuple(v.shape) for v in data[0][1]]
    assert PascalContextSplit(pascal, "test", tasks=["edge"], size=None)[0][1][0].shape == (1, 16, 16)


def test_pascal_missing_files_name_the_layout(tmp_path):
    root = write_pascal_context(tmp_path, 2, 1, (4, 4), seed=0)
    (root / "human_parts" / "2008_000001.mat").unlink()
    with pytest.raises(DatasetNotFound, match=r"human_parts/2008_000001\.mat is missing.*PASCAL_MT/"):
        PascalContextSplit(tmp_path, "train")
    PascalContextSplit(tmp_path, "train", tasks=["semantic", "edge"])
    (root / "semseg" / "pascal-context" / "2008_000000.png").unlink()
    with pytest.raises(DatasetNotFound, match=r"semseg/VOC12/2008_000000\.png or semseg/pascal-context"):
        PascalContextSplit(tmp_path, "train", tasks=["semantic"])
    with pytest.raises(DatasetNotFound, match="ImageSets/Context"):
        PascalContextSplit(tmp_path / "nowhere", "val")


# ---------------------------------------------------------------- geometry

def test_rotation_by_90_degrees_by_hand():
    # cv2.getRotationMatrix2D((W/2, H/2) = (2, 2), 90, 1): output (y, x) reads input
    # (row x, column 4 - y); row 0 falls outside and takes the fill.
    lab = torch.arange(16).view(4, 4)
    normals = torch.zeros(3, 4, 4); normals[0] = 1.0                # all pointing +x
    depth = torch.full((1, 4, 4), 2.0)
    image = torch.rand(3, 4, 4)
    _, (l255, n, d) = scale_rotate(image, [lab, normals, depth], ["label", "normal", "depth"], 1.0, 90.0)
    expected = np.full((4, 4), IGNORE)
    expected[1:] = np.rot90(lab.numpy())[:-1]
    assert l255.tolist() == expected.tolist()
    assert torch.allclose(n[:, 2, 2], torch.tensor([0.0, -1.0, 0.0]), atol=1e-6)   # x' = x cos + y sin, y' = y cos - x sin
    assert n[:, 0].abs().sum() == 0 and d[0, 0].sum() == 0 and torch.all(d[0, 1:] == 2.0)
    _, (l0,) = scale_rotate(image, [lab], ["label"], 1.0, 90.0, label_fill=0)      # the reference's warp fill
    assert l0[0].tolist() == [0, 0, 0, 0]
    # zoom by 2 about the centre: depth halves, the centre pixel is kept
    _, (d2,) = scale_rotate(image, [torch.arange(16.0).view(1, 4, 4) + 1], ["depth"], 2.0, 0.0)
    assert d2[0, 2, 2] == (torch.arange(16.0).view(4, 4)[2, 2] + 1) / 2


def test_flip_function_negates_only_normal_x():
    normals = torch.randn(3, 2, 3)
    lab = torch.arange(6).view(2, 3)
    _, (n, l) = flip(torch.zeros(3, 2, 3), [normals, lab], ["normal", "label"])
    assert torch.equal(n[0], -normals[0].flip(-1)) and torch.equal(n[1:], normals[1:].flip(-1))
    assert l.tolist() == [[2, 1, 0], [5, 4, 3]]
