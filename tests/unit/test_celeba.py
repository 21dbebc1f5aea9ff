import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mtrl.supervised.data.errors import DatasetNotFound
from mtrl.supervised.benchmarks.celeba import STL_F1, CelebABenchmark
from mtrl.supervised.tasks.classification import MultiLabelF1
from mtrl.supervised.data.celeba import ATTRIBUTES, read_attributes, read_partition
from mtrl.supervised.models.celeba_cnn import CelebACNN
from mtrl.supervised.testing import layout_paths, write_celeba




@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_celeba(tmp_path_factory.mktemp("celeba"), "torchvision")


@pytest.fixture(scope="module")
def bench(tiny):
    return CelebABenchmark(tiny.root)


def test_attribute_file_parsing_hand_written(tmp_path):
    names = " ".join(ATTRIBUTES)
    lines = ["3", names + " ",
             "000001.jpg  1 -1" + " -1" * 37 + "  1",
             "000002.jpg -1  1" + "  1" * 37 + " -1",
             "000003.jpg\t-1   1" + " -1" * 38 + "\r"]
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("\n".join(lines) + "\n\n")
    attributes, images, labels = read_attributes(path)
    assert attributes == list(ATTRIBUTES)
    assert images == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert labels.shape == (3, 40) and labels.dtype == np.uint8
    assert labels[0].tolist() == [1] + [0] * 38 + [1]
    assert labels[1].tolist() == [0] + [1] * 38 + [0]
    assert labels[2].tolist() == [0, 1] + [0] * 38


@pytest.mark.parametrize("body, message", [
    ("2\nA B\nx.jpg 1 -1\n", "line 1 says 2 images"),
    ("1\nA B\nx.jpg 1 0\n", "line 3: attribute B is 0"),
    ("1\nA B\nx.jpg\n", "line 3: expected an image name and 2 values"),
    ("1\nA B\nx.jpg 1\n", "1 values per image but 2 attribute names"),
    ("2\nA B\nx.jpg 1 1\ny.jpg -1\n", "columns changed from 2 to 1 at row 2"),
    ("1\nA B\nx.jpg 1 yes\n", "could not convert string 'yes'"),
    ("one\nA B\nx.jpg 1 1\n", "line 1 must be the image count"),
])
def test_attribute_file_errors(tmp_path, body, message):
    path = tmp_path / "attr.txt"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        read_attributes(path)


def test_partition_parsing(tmp_path):
    path = tmp_path / "list_eval_partition.txt"
    path.write_text("000001.jpg 0\n000002.jpg   1\r\n000003.jpg 2\n")
    assert read_partition(path) == {"000001.jpg": 0, "000002.jpg": 1, "000003.jpg": 2}
    path.write_text("000001.jpg 3\n")
    with pytest.raises(ValueError, match="line 1"):
        read_partition(path)


def test_splits_follow_partition_file(tiny, bench):
    assert bench.tasks == list(ATTRIBUTES) and bench.num_tasks == 40
    for split, code in (("train", 0), ("val", 1), ("test", 2)):
        data = bench.dataset(split)
        rows = np.flatnonzero(tiny.partition == code)
        assert data.images == [tiny.images[i] for i in rows]
        assert torch.equal(data.labels, torch.from_numpy(tiny.labels[rows]).float())
    assert [len(bench.dataset(s)) for s in bench.splits] == [24, 6, 6]
    with pytest.raises(ValueError, match="unknown split"):
        bench.loader("validation", 4, False)


def test_all_layouts_load_the_same_data(tmp_path, bench):
    reference = next(iter(bench.loader("train", 24, shuffle=False)))
    for layout in ("raw", "folder"):
        write_celeba(tmp_path / layout, layout)
        images, labels = next(iter(CelebABenchmark(tmp_path / layout).loader("train", 24, shuffle=False)))
        assert torch.equal(images, reference[0]) and torch.equal(labels, reference[1])
    assert CelebABenchmark(tmp_path / "folder").files.attr_file == tmp_path / "folder" / "list_attr_celeba.txt"


def test_images_are_resized_rgb_in_unit_range(tiny, bench):
    image, label = bench.dataset("val")[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.max() > 0.5
    with Image.open(layout_paths(tiny.root, "torchvision")[0] / tiny.images[24]) as img:
        expected = np.asarray(img.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)) / 255.0
    np.testing.assert_allclose(image.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert torch.equal(label, torch.from_numpy(tiny.labels[24]).float())
    small = CelebABenchmark(tiny.root, image_size=32).dataset("val")[0][0]
    assert small.shape == (3, 32, 32)


def test_loader_seeded_shuffle_workers_and_cache(tiny, bench):
    def order(b, seed, shuffle=True):
        return torch.cat([y for _, y in b.loader("train", 5, shuffle=shuffle, seed=seed)])

    assert torch.equal(order(bench, 3), order(bench, 3))
    assert not torch.equal(order(bench, 3), order(bench, 4))
    assert torch.equal(order(bench, 0, shuffle=False), bench.dataset("train").labels)
    assert [len(y) for _, y in bench.loader("train", 5, shuffle=True)] == [5, 5, 5, 5, 4]
    workers = CelebABenchmark(tiny.root, num_workers=2)
    assert torch.equal(order(workers, 3), order(bench, 3))
    cached = CelebABenchmark(tiny.root, cache=True)
    plain_batch, cached_batch = (next(iter(b.loader("test", 6, shuffle=True, seed=1))) for b in (bench, cached))
    assert cached.dataset("test").cache.dtype == torch.uint8
    assert torch.equal(plain_batch[0], cached_batch[0]) and torch.equal(plain_batch[1], cached_batch[1])


def test_f1_from_hand_counts():
    metric = MultiLabelF1(["a", "b", "c", "d"])
    # logits > 0 predict 1; columns a..d
    logits = torch.tensor([[2.0, -1.0, -3.0, 1.0],
                           [1.0, -2.0, -1.0, -1.0],
                           [-1.0, 3.0, -2.0, 2.0],
                           [-0.5, -1.0, -1.0, -1.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0],
                           [1.0, 1.0, 0.0, 0.0],
                           [1.0, 0.0, 0.0, 0.0]])
    outputs = list(logits.T)
    metric.update(outputs[:], (None, labels))             # whole split at once ...
    split = MultiLabelF1(["a", "b", "c", "d"])
    for rows in (slice(0, 1), slice(1, 4)):               # ... or over two batches
        split.update([o[rows] for o in outputs], (None, labels[rows]))
    # a: TP 1, FP 1, FN 2 -> 2/5; b: TP 1, FP 0, FN 1 -> 2/3;
    # c: nothing predicted or present -> 0 (degenerate); d: TP 0, FP 2 -> 0
    expected = {"a_f1": 0.4, "b_f1": 2 / 3, "c_f1": 0.0, "d_f1": 0.0}
    for result in (metric.compute(), split.compute()):
        assert result.keys() == expected.keys()
        for name, value in expected.items():
            assert result[name] == pytest.approx(value)


def test_metrics_and_baselines(bench):
    assert [m.name for m in bench.metrics] == [f"{a}_f1" for a in ATTRIBUTES]
    assert all(m.higher_is_better and m.task == a for m, a in zip(bench.metrics, ATTRIBUTES))
    by_name = {m.name: m.baseline for m in bench.metrics}
    assert by_name["Male_f1"] == STL_F1[20] == 0.97034
    assert by_name["5_o_Clock_Shadow_f1"] == 0.6736886 and by_name["Young_f1"] == 0.91907
    assert bench.selection_split == "val"
    assert set(bench.metric_state().compute()) == set(by_name)


def test_model_shapes_and_parameter_split(single_thread):
    model = CelebACNN()
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 128, 256, 256, 512, 512]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)
    kinds = [type(m).__name__ for m in model.encoder if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    assert "".join("C" if k == "Conv2d" else "P" for k in kinds) == "CPCCPCCPCC"
    assert sum(isinstance(m, nn.Linear) for m in model.encoder) == 2
    assert len(model.heads) == 40 and all(h.in_features == 512 and h.out_features == 1 for h in model.heads)
    model.eval()
    for size in (64, 16):
        z = model.encode(torch.rand(2, 3, size, size))
        assert z.shape == (2, 512)
        out = model.decode(z)
        assert len(out) == 40 and all(o.shape == (2,) for o in out)
    shared, task = model.shared_parameters(), model.task_parameters()
    assert {id(p) for p in shared}.isdisjoint(id(p) for p in task)
    assert len(shared) + len(task) == len(list(model.parameters()))
    assert sum(p.numel() for p in task) == 40 * 513


def test_missing_files_raise_dataset_not_found(tmp_path):
    with pytest.raises(DatasetNotFound, match=r"celeba/\{img_align_celeba/.*Anno/list_attr_celeba\.txt"):
        CelebABenchmark(tmp_path)
    for layout in ("torchvision", "raw"):
        write_celeba(tmp_path / layout, layout, split_sizes=(2, 1, 1))
        layout_paths(tmp_path / layout, layout)[2].unlink()   # the partition file
        with pytest.raises(DatasetNotFound, match="Eval/list_eval_partition.txt"):
            CelebABenchmark(tmp_path / layout)


def test_missing_image_or_partition_entry_is_named(tmp_path):
    tiny = write_celeba(tmp_path, "raw", split_sizes=(2, 1, 1))
    image_dir, _, partition_file = layout_paths(tmp_path, "raw")
    (image_dir / tiny.images[2]).unlink()
    with pytest.raises(FileNotFoundError, match="1 images .* e.g. 000003.jpg"):
        CelebABenchmark(tmp_path)
    partition_file.write_text("000001.jpg 0\n")
    with pytest.raises(ValueError, match="no split for 3 images"):
        CelebABenchmark(tmp_path)


def test_wrong_attribute_header_and_bad_options(tmp_path, tiny):
    with pytest.raises(ValueError, match="image_size"):
        CelebABenchmark(tiny.root, image_size=4)
    write_celeba(tmp_path, "folder", split_sizes=(1, 1, 1))
    attr = tmp_path / "list_attr_celeba.txt"
    lines = attr.read_text().splitlines()
    attr.write_text("\n".join([lines[0], lines[1].replace("Young", "Old")] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match="40 CelebA attributes.*'Old' where 'Young' belongs"):
        CelebABenchmark(tmp_path)


def test_task_losses_are_bce_and_training_reduces_them(tiny, single_thread):
    bench = CelebABenchmark(tiny.root, image_size=16)      # the full 64 x 64 CNN is slow on CPU
    torch.manual_seed(0)
    model = bench.build_model()
    batch = bench.to_device(next(iter(bench.loader("train", 12, shuffle=True, seed=0))), torch.device("cpu"))
    losses = bench.task_losses(model(bench.inputs(batch)), batch)
    assert losses.shape == (40,)
    logits = torch.stack(model(bench.inputs(batch)), 1)
    p = torch.sigmoid(logits)
    y = batch[1]
    manual = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean(0)
    torch.testing.assert_close(bench.task_losses(list(logits.T), batch), manual, rtol=1e-5, atol=1e-6)

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        total = bench.task_losses(model(bench.inputs(batch)), batch).sum()
        first = total.item() if first is None else first
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert total.item() < 0.8 * first
