"""The multidigits benchmark (two overlaid UCI digits from scikit-learn, MultiMNIST-style;
Sener & Koltun, NeurIPS 2018): the deterministic construction, source pools disjoint
across splits, labels from the source images, the canvas, the accuracy metric, the model,
the missing-dependency error, one epoch of LS training through the supervised trainer, and
the config composition."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import mtrl.launch  # noqa: F401  (registers the aggregator configs)
from helpers import ROOT, load_script
from mtrl.configuration import ConfigError
from mtrl.supervised.benchmarks.multidigits import STL_ACCURACY, MultiDigitsBenchmark
from mtrl.supervised.data import digits
from mtrl.supervised.data.digits import (CANVAS, NUM_CLASSES, PAIRS, SPLITS, TASKS, build_splits, load_source,
                                         overlay, pair_labels, split_sources)
from mtrl.supervised.data.errors import DatasetNotFound
from mtrl.supervised.models.digits_cnn import DigitsCNN
from mtrl.supervised.registry import benchmark_metrics
from mtrl.supervised.tasks.classification import Accuracy
from mtrl.supervised.trainer import SupervisedTrainer


@pytest.fixture(scope="module")
def source():
    return load_source()


@pytest.fixture(scope="module")
def bench():
    return MultiDigitsBenchmark()


def run_config(epochs=1, **benchmark):
    return {"seed": 0, "device": "cpu", "mode": "param", "aggregator_preset": "multidigits", "data": {"root": None},
            "benchmark": {"name": "multidigits", **benchmark}, "aggregator": {"name": "ls"},
            "train": {"epochs": epochs, "batch_size": 128, "lr": 1e-3, "diagnostics_every": 0}}


def test_source_is_the_bundled_uci_digits(source):
    images, classes = source
    assert images.shape == (1797, 8, 8) and classes.shape == (1797,)
    assert images.min() == 0 and images.max() == 16 and np.array_equal(images, np.round(images))
    assert np.bincount(classes).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_construction_is_deterministic(bench):
    again = build_splits(0)
    for split in SPLITS:
        a, b = bench.pairs[split], again[split]
        for field in ("images", "labels", "left_source", "right_source"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (split, field)
    other = build_splits(1)
    assert not np.array_equal(other["train"].left_source, bench.pairs["train"].left_source)
    assert [len(bench.pairs[s]) for s in SPLITS] == list(PAIRS) == [10000, 2000, 2000]


def test_source_pools_are_disjoint_and_every_split_draws_from_its_own(bench, source):
    pools = split_sources(1797)
    assert [len(pools[s]) for s in SPLITS] == [1077, 360, 360]
    assert np.array_equal(np.sort(np.concatenate([pools[s] for s in SPLITS])), np.arange(1797))
    for s in SPLITS:
        assert np.array_equal(pools[s], np.sort(pools[s]))
        used = np.union1d(bench.pairs[s].left_source, bench.pairs[s].right_source)
        assert np.isin(used, pools[s]).all(), s
        # every digit class is in every pool
        assert set(source[1][pools[s]].tolist()) == set(range(10)), s
    train_images = np.union1d(bench.pairs["train"].left_source, bench.pairs["train"].right_source)
    for s in ("val", "test"):
        held_out = np.union1d(bench.pairs[s].left_source, bench.pairs[s].right_source)
        assert np.intersect1d(train_images, held_out).size == 0, s
    # no held-out image is a pixel-identical copy of a training one either
    assert not (source[0][pools["test"]].reshape(360, 1, 64) ==
                source[0][pools["train"]].reshape(1, 1077, 64)).all(-1).any()
    with pytest.raises(ValueError, match="source_sizes"):
        split_sources(1797, (1000, 797))


def test_labels_are_the_source_images_classes_their_sum_and_its_parity(bench, source):
    classes = source[1]
    for s in SPLITS:
        p = bench.pairs[s]
        assert p.labels.dtype == np.int64 and p.labels.shape == (len(p), 4)
        left, right, total, parity = p.labels.T
        assert np.array_equal(left, classes[p.left_source]) and np.array_equal(right, classes[p.right_source])
        assert np.array_equal(total, left + right) and np.array_equal(parity, (left + right) % 2)
        for i, t in enumerate(TASKS):
            assert p.labels[:, i].min() == 0 and p.labels[:, i].max() == NUM_CLASSES[t] - 1, (s, t)
    # the parity of the sum is balanced (the product's would be odd for a quarter only)
    assert 0.45 < bench.pairs["train"].labels[:, 3].mean() < 0.55
    # hand-chosen pairs
    assert pair_labels(np.array([7, 4, 9]), np.array([0, 2]), np.array([1, 2])).tolist() == [[7, 4, 11, 1],
                                                                                         [9, 9, 18, 0]]


def test_canvas_overlays_left_top_left_and_right_bottom_right_with_the_maximum(bench, source):
    images = np.stack([np.full((8, 8), 4.0), np.full((8, 8), 12.0)])
    canvas = overlay(images, np.array([0, 1]), np.array([1, 0]))
    assert canvas.shape == (2, 1, CANVAS, CANVAS) and canvas.dtype == np.float32
    first = canvas[0, 0]
    assert (first[:4, :8] == 0.25).all() and (first[:8, :4] == 0.25).all()       # left digit only
    assert (first[4:8, 4:8] == 0.75).all()                                       # overlap: max(4, 12) / 16
    assert (first[8:, 4:] == 0.75).all() and (first[4:, 8:] == 0.75).all()       # right digit only
    assert (first[8:, :4] == 0).all() and (first[:4, 8:] == 0).all()             # the empty corners
    assert (canvas[1, 0, 4:8, 4:8] == 0.75).all()                                # max is symmetric
    # the built pairs: the same construction from their source images
    p = bench.pairs["test"]
    rows = np.arange(0, len(p), 97)
    expected = np.zeros((len(rows), 12, 12))
    expected[:, :8, :8] = source[0][p.left_source[rows]]
    expected[:, 4:, 4:] = np.maximum(expected[:, 4:, 4:], source[0][p.right_source[rows]])
    np.testing.assert_array_equal(p.images[rows, 0], (expected / 16).astype(np.float32))
    for s in SPLITS:
        x = bench.pairs[s].images
        assert x.shape == (len(bench.pairs[s]), 1, 12, 12) and x.min() == 0 and x.max() == 1


def test_a_split_s_pairs_depend_only_on_the_seed_its_pool_and_its_own_size(source):
    a = build_splits(0, pairs=(100, 50, 60), source=source)
    b = build_splits(0, pairs=(100, 70, 60), source=source)
    for s in ("train", "test"):
        assert np.array_equal(a[s].images, b[s].images) and np.array_equal(a[s].labels, b[s].labels)
    assert len(b["val"]) == 70
    with pytest.raises(ValueError, match="pairs"):
        build_splits(0, pairs=(100, 0, 60), source=source)


def test_metric_list_names_directions_and_baselines(bench):
    assert bench.tasks == list(TASKS) and bench.num_tasks == 4 and bench.selection_split == "val"
    assert [m.name for m in bench.metrics] == ["left_acc", "right_acc", "sum_acc", "parity_acc"]
    assert all(m.higher_is_better and m.task == t for m, t in zip(bench.metrics, TASKS))
    assert {m.task: m.baseline for m in bench.metrics} == STL_ACCURACY
    assert STL_ACCURACY == {"left": 0.9648, "right": 0.9673, "sum": 0.5755, "parity": 0.9562}
    assert all(1 / NUM_CLASSES[t] < v < 1 for t, v in STL_ACCURACY.items())
    # the tables' view: from the config section alone, no data built
    assert benchmark_metrics({"name": "multidigits"}) == bench.metrics
    assert [m.name for m in benchmark_metrics({"name": "multidigits", "tasks": ["parity", "sum"]})] == \
        ["sum_acc", "parity_acc"]
    assert set(bench.metric_state().compute()) == {m.name for m in bench.metrics}
    for bad in (["product"], [], ["left", "left"]):
        with pytest.raises(ValueError, match="tasks"):
            MultiDigitsBenchmark.metric_list(bad)


def test_accuracy_from_hand_counts_is_the_same_however_the_split_is_batched():
    logits_a = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [4.0, 1.0, 0.0]])
    logits_b = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [0.5, 0.0], [0.0, 2.0]])
    labels = torch.tensor([[0, 1], [1, 1], [0, 0], [0, 0]])
    whole = Accuracy(["a", "b"])
    whole.update([logits_a, logits_b], (None, labels))
    parts = Accuracy(["a", "b"])
    for rows in (slice(0, 1), slice(1, 4)):
        parts.update([logits_a[rows], logits_b[rows]], (None, labels[rows]))
    # a: predictions 0, 1, 2, 0 against 0, 1, 0, 0 -> 3/4; b: 0, 1, 0, 1 against 1, 1, 0, 0 -> 2/4
    for metric in (whole, parts):
        assert metric.compute() == {"a_acc": 0.75, "b_acc": 0.5}
    assert Accuracy(["a"]).compute() == {"a_acc": 0.0}
    with pytest.raises(ValueError, match="2 tasks"):
        whole.update([logits_a], (None, labels))


def test_loader_batches_seeded_order_and_task_subsets(bench):
    def labels(b, seed, shuffle=True):
        return torch.cat([y for _, y in b.loader("val", 300, shuffle=shuffle, seed=seed)])

    x, y = next(iter(bench.loader("train", 128, shuffle=True, seed=0)))
    assert x.shape == (128, 1, 12, 12) and x.dtype == torch.float32 and y.shape == (128, 4) and y.dtype == torch.int64
    assert len(bench.loader("train", 128, shuffle=True)) == 79
    assert [len(y) for _, y in bench.loader("val", 300, shuffle=True)] == [300] * 6 + [200]
    assert torch.equal(labels(bench, 3), labels(bench, 3)) and not torch.equal(labels(bench, 3), labels(bench, 4))
    assert torch.equal(labels(bench, 0, shuffle=False), torch.from_numpy(bench.pairs["val"].labels))
    assert sorted(labels(bench, 3)[:, 2].tolist()) == sorted(bench.pairs["val"].labels[:, 2].tolist())
    with pytest.raises(ValueError, match="unknown split"):
        bench.loader("validation", 4, False)
    sub = MultiDigitsBenchmark(tasks=["parity", "left"], pairs=(50, 20, 20))
    assert sub.tasks == ["left", "parity"] and [m.name for m in sub.metrics] == ["left_acc", "parity_acc"]
    _, y = next(iter(sub.loader("test", 20, shuffle=False)))
    assert torch.equal(y, torch.from_numpy(sub.pairs["test"].labels[:, [0, 3]]))
    assert [h.out_features for h in sub.build_model().heads] == [10, 2]


def test_model_shapes_parameters_and_last_shared_layer(bench):
    model = bench.build_model()
    assert isinstance(model, DigitsCNN)
    assert sum(p.numel() for p in model.shared_parameters()) == 160 + 4640 + 18496 == 23296
    assert sum(p.numel() for p in model.task_parameters()) == 64 * 41 + 41 == 2665
    x, y = next(iter(bench.loader("test", 16, shuffle=False)))
    z = model.encode(x)
    outputs = model.decode(z)
    assert z.shape == (16, 64) and [tuple(o.shape) for o in outputs] == [(16, 10), (16, 10), (16, 19), (16, 2)]
    last = model.last_shared_parameters()
    assert [tuple(p.shape) for p in last] == [(64, 288), (64,)]
    losses = bench.task_losses(outputs, (x, y))
    assert losses.shape == (4,)
    # cross-entropy per task, by hand
    for i, o in enumerate(outputs):
        expected = -(o.log_softmax(1)[torch.arange(16), y[:, i]]).mean()
        assert torch.allclose(losses[i], expected, atol=1e-6)
    with pytest.raises(ValueError, match="multiple of 4"):
        DigitsCNN(canvas=10)


def test_without_scikit_learn_the_error_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sklearn", None)          # import sklearn -> ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DatasetNotFound) as exc:
        digits.load_source()
    message = str(exc.value)
    assert "pip install -e '.[digits]'" in message and "scikit-learn" in message and "\n" not in message
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[digits\]'"):
        SupervisedTrainer(run_config(), tmp_path)


def test_one_epoch_of_ls_through_the_trainer_beats_chance_on_the_left_digit(tmp_path, single_thread):
    tr = SupervisedTrainer(run_config(epochs=1), tmp_path)
    try:
        before = tr.evaluate("test")
        res = tr.train()
    finally:
        tr.close()
    chance = 1 / NUM_CLASSES["left"]
    assert before["left_acc"] < 1.5 * chance                  # the untrained model is at chance
    assert res["metrics"]["left_acc"] > 3 * chance            # one epoch (79 steps) learns the left digit
    assert res["benchmark"] == "multidigits" and res["selected_epoch"] == 1 and set(res["delta_m_i"]) == set(TASKS)
    assert all(0 <= v <= 1 for v in res["metrics"].values())
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(line["metrics"]) == {"train", "val", "test"} and line["metrics"]["test"] == res["metrics"]


def test_config_composition_benchmark_multidigits_needs_no_data_root(tmp_path):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("supervised", overrides=["benchmark=multidigits", "aggregator=ls", "device=cpu"])
        subset = compose("supervised", overrides=["benchmark=multidigits", "+benchmark.tasks=[sum]"])
    assert cfg.benchmark._target_ == "mtrl.supervised.benchmarks.multidigits.MultiDigitsBenchmark"
    assert (cfg.benchmark.name, cfg.protocol.preset, cfg.aggregator_preset) == ("multidigits", "default", "multidigits")
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.train.scheduler.name) == (20, 128, 1e-3, "none")
    assert cfg.data.root is None and cfg.model == {}
    assert list(subset.benchmark.tasks) == ["sum"]
    run = OmegaConf.to_container(cfg, resolve=True)
    tr = SupervisedTrainer(run, tmp_path)     # the registry builds it without data.root
    try:
        assert isinstance(tr.bench, MultiDigitsBenchmark) and isinstance(tr.model, DigitsCNN)
    finally:
        tr.close()
    # a benchmark that reads files still asks for its data
    with pytest.raises(ConfigError, match="needs its data"):
        SupervisedTrainer({**run, "benchmark": {"name": "celeba"}, "aggregator_preset": "celeba"}, tmp_path / "c")


def test_stl_script_trains_one_task_through_the_trainer(tmp_path, single_thread, capsys):
    stl = load_script("stl_multidigits")
    cfg = stl.stl_config("parity", 2)
    assert cfg["benchmark"]["tasks"] == ["parity"] and cfg["seed"] == 2 and cfg["train"]["epochs"] == 20
    values = stl.main(["--tasks", "left", "--seeds", "0", "--out", str(tmp_path), "--", "train.epochs=1"])
    assert list(values) == ["left"] and len(values["left"]) == 1 and values["left"][0] > 0.3
    results = json.loads((tmp_path / "left" / "seed0" / "results.json").read_text())
    assert list(results["metrics"]) == ["left_acc"] and results["metrics"]["left_acc"] == values["left"][0]
    assert 'STL_ACCURACY = {"left": ' in capsys.readouterr().out


@pytest.mark.slow
def test_cli_trains_multidigits_and_writes_results(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_supervised.py"), "benchmark=multidigits",
                          "aggregator=pcgrad", "train.epochs=1", "device=cpu", f"hydra.run.dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["benchmark"] == "multidigits" and results["aggregator"] == "pcgrad"
    assert set(results["metrics"]) == {"left_acc", "right_acc", "sum_acc", "parity_acc"}
    assert results["metrics"]["left_acc"] > 0.3
    assert json.loads((tmp_path / "config.json").read_text())["aggregator_preset"] == "multidigits"
