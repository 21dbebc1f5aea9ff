"""Cityscapes three-task data from the official folders (mtrl/supervised/data/cityscapes_official.py):
trainIds, instance offsets, disparity decoding, image preprocessing, augmentation and file
discovery, checked against hand-computed values."""

import numpy as np
import pytest
import torch
from PIL import Image

from mtrl.supervised.data.errors import DatasetNotFound
from mtrl.supervised.data.cityscapes_official import CityscapesOfficialSplit, decode_disparity, find_samples, instance_offsets, preprocess_image, rotate_flip, train_ids
from mtrl.supervised.testing import write_cityscapes_official
from mtrl.supervised.benchmarks.dense import collate

I = 250.0


def write_one(root, split, stem, rgb, labels, instances, disparity):
    """One hand-made sample in the official layout."""
    city = stem.split("_")[0]
    for top, suffix, a in (("leftImg8bit", "leftImg8bit", rgb), ("gtFine", "gtFine_labelIds", labels),
                           ("gtFine", "gtFine_instanceIds", instances), ("disparity", "disparity", disparity)):
        (root / top / split / city).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / top / split / city / f"{stem}_{suffix}.png")


def test_train_ids_hand_map():
    labels = np.array([[0, 1, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21],
                       [22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 100, 250, 255, 7, 33]], np.uint8)
    expected = [[I, I, I, 0, 1, I, I, 2, 3, 4, I, I, I, 5, I, 6, 7, 8],
                [9, 10, 11, 12, 13, 14, 15, I, I, 16, 17, 18, I, I, I, I, 0, 18]]
    out = train_ids(labels)
    assert out.dtype == np.int64 and out.shape == labels.shape
    np.testing.assert_array_equal(out, np.array(expected, np.int64))
    np.testing.assert_array_equal(train_ids(np.array([-1, 300, 26])), [250, 250, 13])
    with pytest.raises(ValueError, match="integers"):
        train_ids(np.array([7.0]))


def hand_instances():
    """6 x 8: car 26000 (rows 0-1, cols 0-2), person 24001 (L-shape), a crowd of cars
    (value 26) in two pieces, a caravan 29000 (void in 19 classes), road 7, void 0 and 1."""
    m = np.full((6, 8), 7, np.uint16)
    m[0:2, 0:3] = 26000
    m[3, 0] = m[4, 0] = m[4, 1] = 24001
    m[0, 6] = m[0, 7] = m[5, 7] = 26
    m[5, 0] = 29000
    m[2, 2] = 0
    m[5, 3] = 1
    return m


def hand_offsets(sy=1.0, sx=1.0):
    out = np.full((2, 6, 8), I)
    for y in (0, 1):                       # car: mean (0.5, 1)
        for x in (0, 1, 2):
            out[:, y, x] = ((y - 0.5) * sy, (x - 1.0) * sx)
    for y, x in ((3, 0), (4, 0), (4, 1)):  # person: mean (11/3, 1/3)
        out[:, y, x] = ((y - 11 / 3) * sy, (x - 1 / 3) * sx)
    for y, x in ((0, 6), (0, 7), (5, 7)):  # crowd = one instance: mean (5/3, 20/3)
        out[:, y, x] = ((y - 5 / 3) * sy, (x - 20 / 3) * sx)
    return out


def test_instance_offsets_hand_map_both_scales():
    m = hand_instances()
    out = instance_offsets(m)
    assert out.dtype == np.float32 and out.shape == (2, 6, 8)
    np.testing.assert_allclose(out, hand_offsets(), atol=1e-6)
    # a few values written out: car corner, person elbow, the crowd's far piece
    np.testing.assert_allclose(out[:, 0, 0], [-0.5, -1.0])
    np.testing.assert_allclose(out[:, 4, 1], [1 / 3, 2 / 3], atol=1e-6)
    np.testing.assert_allclose(out[:, 5, 7], [10 / 3, 1 / 3], atol=1e-6)
    assert (out[:, 5, 0] == I).all() and (out[:, 2, 2] == I).all() and (out[:, 3, 5] == I).all()
    np.testing.assert_allclose(instance_offsets(m, (0.5, 0.25)), hand_offsets(0.5, 0.25), atol=1e-6)
    with pytest.raises(ValueError, match="integer"):
        instance_offsets(m.astype(np.float32))


def test_disparity_decoding_by_hand():
    p = np.array([[0, 1, 257, 2729], [513, 65535, 0, 2]], np.uint16)
    np.testing.assert_allclose(decode_disparity(p, "corrected"),
                               [[0, 0, 1, 2728 / 256], [2, 65534 / 256, 0, 1 / 256]], rtol=1e-6)
    d = 2729.0680031169923
    np.testing.assert_allclose(decode_disparity(p, "faithful"), [[0, 1 / d, 257 / d, 2729 / d],
                                                                 [513 / d, 65535 / d, 0, 2 / d]], rtol=1e-6)
    assert decode_disparity(p, "faithful").dtype == np.float32
    with pytest.raises(ValueError, match="variant"):
        decode_disparity(p, "official")


def test_image_preprocessing_one_pixel():
    px = np.array([[[10, 20, 30]]], np.uint8)
    faithful = preprocess_image(px, "faithful")
    assert faithful.shape == (3, 1, 1) and faithful.dtype == torch.float32
    np.testing.assert_allclose(faithful.flatten(), [(30 - 123.675) / 255, (20 - 116.28) / 255, (10 - 103.53) / 255],
                               rtol=1e-6)
    corrected = preprocess_image(px, "corrected")
    np.testing.assert_allclose(corrected.flatten(), [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224,
                                                     (30 / 255 - 0.406) / 0.225], rtol=1e-6)


def hand_dataset(root):
    """An 8 x 16 sample: car 26000 rows 0-1 cols 0-5 (mean (0.5, 2.5)); a crowd of persons
    (value 24) at rows 3-4 cols 7-9 plus (7, 15) (mean (4, 9)); void 0 at (4, 12); road."""
    labels = np.full((8, 16), 7, np.uint8)
    labels[0:2, 0:6] = 26
    labels[3:5, 7:10] = 24
    labels[7, 15] = 24
    labels[4, 12] = 0
    instances = labels.astype(np.uint16)
    instances[0:2, 0:6] = 26000
    disparity = (np.arange(128).reshape(8, 16) * 16 + 1).astype(np.uint16)
    disparity[4, 4] = 0
    rgb = np.zeros((8, 16, 3), np.uint8)
    rgb[..., 0] = 200
    write_one(root, "val", "hand_000000_000019", rgb, labels, instances, disparity)
    for top in ("leftImg8bit", "gtFine", "disparity"):
        (root / top / "train").mkdir(parents=True, exist_ok=True)
    return root


def test_dataset_item_both_variants_with_resize(tmp_path):
    root = hand_dataset(tmp_path)
    # image 16 x 32, targets at 1/8 = 2 x 4: nearest picks raw rows 0, 4 and columns 0, 4, 8, 12
    out = {}
    for variant in ("faithful", "corrected"):
        ds = CityscapesOfficialSplit(root, "test", variant, image_size=(16, 32), target_scale=8)
        image, (semantic, offsets, disparity) = ds[0]
        assert image.shape == (3, 16, 32) and image.dtype == torch.float32
        assert semantic.dtype == torch.int64 and offsets.dtype == torch.float32 and disparity.shape == (1, 2, 4)
        np.testing.assert_array_equal(semantic, [[13, 13, 0, 0], [0, 0, 11, 250]])
        out[variant] = (image, offsets, disparity)
    f_img, f_off, f_disp = out["faithful"]
    c_img, c_off, c_disp = out["corrected"]
    # faithful: full-resolution pixels, never rescaled
    np.testing.assert_allclose(f_off, [[[-0.5, -0.5, I, I], [I, I, 0, I]], [[-2.5, 1.5, I, I], [I, I, -1, I]]])
    # corrected: target pixels = raw pixels * (2 / 8, 4 / 16)
    np.testing.assert_allclose(c_off, [[[-0.125, -0.125, I, I], [I, I, 0, I]],
                                       [[-0.625, 0.375, I, I], [I, I, -0.25, I]]])
    raw = np.array([[0, 4, 8, 12], [64, 68, 72, 76]]) * 16 + 1
    raw[1, 1] = 0
    np.testing.assert_allclose(c_disp[0], np.where(raw > 0, (raw - 1) / 256, 0), rtol=1e-6)
    np.testing.assert_allclose(f_disp[0], raw / 2729.0680031169923, rtol=1e-6)
    # a constant image stays constant under the bilinear resize: pixel (200, 0, 0) RGB
    np.testing.assert_allclose(f_img[:, 5, 7], [-123.675 / 255, -116.28 / 255, (200 - 103.53) / 255], rtol=1e-5)
    np.testing.assert_allclose(c_img[:, 5, 7], [(200 / 255 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225],
                               rtol=1e-5)


def test_flip_negates_dx_and_zero_rotation_is_identity(tmp_path):
    root = write_cityscapes_official(tmp_path, {"train": 2}, shape=(32, 64), seed=3)
    ds = CityscapesOfficialSplit(root, "train", "faithful", image_size=(32, 64), target_scale=1)
    image, (sem, off, disp) = ds.sample(0)
    f_image, (f_sem, f_off, f_disp) = ds.sample(0, flip=True)
    valid = off[0] != I
    assert valid.sum() > 20 and (off[1][valid] != 0).any()
    torch.testing.assert_close(f_image, image.flip(-1))
    torch.testing.assert_close(f_sem, sem.flip(-1))
    torch.testing.assert_close(f_disp, disp.flip(-1))
    torch.testing.assert_close(f_off[0], off[0].flip(-1), atol=1e-5, rtol=0)
    expected_dx = torch.where(valid, -off[1], off[1]).flip(-1)
    torch.testing.assert_close(f_off[1], expected_dx, atol=1e-5, rtol=0)
    # rotating by 0 degrees changes nothing, on the maps and on the item
    rgb = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    maps = (rgb, np.array([[7, 26, 0, 24]] * 2, np.uint8), np.full((2, 4), 26001, np.int32), np.ones((2, 4), np.int32))
    for a, b in zip(rotate_flip(*maps, degrees=0.0), maps):
        np.testing.assert_array_equal(a, b)
    image0, targets0 = ds.sample(0, degrees=0.0)
    torch.testing.assert_close(image0, image)
    for a, b in zip(targets0, (sem, off, disp)):
        torch.testing.assert_close(a, b)


def test_rotation_resampling_and_fill():
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4)
    ones = np.ones((4, 4), np.int32)
    rgb = np.zeros((4, 4, 3), np.uint8)
    _, rotated, _, _ = rotate_flip(rgb, labels, labels.astype(np.int32), ones, degrees=90.0)
    np.testing.assert_array_equal(rotated, np.rot90(labels))       # counter-clockwise, nearest
    road = np.full((20, 20), 7, np.uint8)
    _, lab, ins, disp = rotate_flip(np.zeros((20, 20, 3), np.uint8), road, np.full((20, 20), 26000, np.int32),
                                    np.full((20, 20), 500, np.int32), degrees=10.0)
    assert lab[0, 0] == 0 and ins[0, 0] == 0 and disp[0, 0] == 0      # uncovered corners: void / none / invalid
    assert train_ids(lab)[0, 0] == 250 and (instance_offsets(ins)[:, 0, 0] == I).all()
    assert lab[10, 10] == 7 and ins[10, 10] == 26000 and disp[10, 10] == 500


def test_augmentation_draws_from_rng(tmp_path):
    root = write_cityscapes_official(tmp_path, {"train": 2}, shape=(32, 64), seed=1)
    ds = CityscapesOfficialSplit(root, "train", "corrected", image_size=(32, 64), target_scale=8, augment=True)
    ds.rng = np.random.default_rng(7)
    image, targets = ds[1]
    draw = np.random.default_rng(7)
    degrees, flip = draw.uniform(-10, 10), draw.random() < 0.5
    ref_image, ref_targets = ds.sample(1, degrees, flip)
    torch.testing.assert_close(image, ref_image)
    for a, b in zip(targets, ref_targets):
        torch.testing.assert_close(a, b)
    images, batch_targets = collate([ds[0], ds[1]])
    assert images.shape == (2, 3, 32, 64)
    assert [t.shape for t in batch_targets] == [(2, 4, 8), (2, 2, 4, 8), (2, 1, 4, 8)]


def test_generator_layout_and_discovery(tmp_path):
    root = write_cityscapes_official(tmp_path, {"train": 3, "val": 2}, shape=(16, 32))
    train, val = find_samples(root, "train"), find_samples(root, "val")
    assert len(train) == 3 and len(val) == 2 and find_samples(root, "test") == val
    assert [s.image for s in train] == sorted(s.image for s in train)
    s = train[0]
    assert s.label_ids.name == s.image.name.replace("leftImg8bit", "gtFine_labelIds")
    assert s.disparity.parent == root / "disparity" / "train" / s.image.parent.name
    with Image.open(s.instance_ids) as im:
        ids = set(np.unique(np.asarray(im)).tolist())
    assert {26000, 26001, 24000, 24, 33000, 29000} <= ids      # things, a crowd region, a caravan
    with Image.open(s.disparity) as im:
        assert im.mode.startswith("I;16") and (np.asarray(im) == 0).any()


def test_missing_files_and_bad_options(tmp_path):
    with pytest.raises(DatasetNotFound, match=r"no leftImg8bit/train/ folder.*gtFine_instanceIds"):
        find_samples(tmp_path, "train")
    root = write_cityscapes_official(tmp_path / "cs", {"train": 2}, shape=(16, 32))
    with pytest.raises(DatasetNotFound, match="no leftImg8bit/val/ folder"):
        CityscapesOfficialSplit(root, "val")
    (root / "leftImg8bit" / "val").mkdir()
    (root / "gtFine" / "val").mkdir()
    (root / "disparity" / "val").mkdir()
    with pytest.raises(DatasetNotFound, match="has no <city>/<stem>_leftImg8bit.png"):
        find_samples(root, "val")
    victim = find_samples(root, "train")[1].instance_ids
    victim.unlink()
    with pytest.raises(DatasetNotFound, match=f"has no gtFine/train/.*/{victim.name}"):
        find_samples(root, "train")
    with pytest.raises(ValueError, match="unknown split"):
        find_samples(root, "validation")
    with pytest.raises(ValueError, match="variant"):
        CityscapesOfficialSplit(root, "train", variant="paper")
    with pytest.raises(ValueError, match="target_scale"):
        CityscapesOfficialSplit(root, "train", target_scale=4)
    with pytest.raises(ValueError, match="divisible"):
        CityscapesOfficialSplit(root, "train", image_size=(20, 32))


def test_eight_bit_disparity_rejected(tmp_path):
    z = np.zeros((4, 8), np.uint8)
    write_one(tmp_path, "train", "bad_000000_000019", np.zeros((4, 8, 3), np.uint8), z + 7, z.astype(np.uint16) + 7, z)
    for top in ("leftImg8bit", "gtFine", "disparity"):
        (tmp_path / top / "val").mkdir(parents=True, exist_ok=True)
    ds = CityscapesOfficialSplit(tmp_path, "train", image_size=(8, 16), target_scale=1)
    with pytest.raises(ValueError, match="16-bit"):
        ds[0]
