"""NYU-v2 and Cityscapes (MTAN preprocessing) in the supervised driver: metrics against
hand-computed confusion matrices, errors and angles; the losses; the .npy layout and its
augmentation; SegNet-MTAN's structure and parameter split; a few training steps with
several aggregators (PIVRG fed training-split dm_i, ConsMTL's lower level through the
per-task attention features); resume; the Hydra presets and the CLI; the papers' table."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import aggregators
from aggregators.performance import performance_weights
from mtrl.supervised.data.errors import DatasetNotFound
from mtrl.supervised.benchmarks.cityscapes import CityscapesBenchmark
from mtrl.supervised.tasks.dense import (ConfusionMatrix, DepthErrors, DepthTask, NormalAngles, NormalTask,
                                         SegmentationTask)
from mtrl.supervised.data.mtan_scene import scale_crop_flip
from mtrl.supervised.testing import write_scene
from mtrl.supervised.benchmarks.nyuv2 import NYUv2Benchmark
from mtrl.supervised.registry import benchmark_metrics
from mtrl.supervised.models.segnet_mtan import SegNetMTAN
from mtrl.supervised.tables import load_runs, summarize_runs, table_markdown
from mtrl.supervised.trainer import SupervisedTrainer
from supervised_runs import printed_dm_matches, run_config, train_run
from helpers import ROOT

NYU_FOLDERS = {"segmentation": "label", "depth": "depth", "normal": "normal"}
TINY = [4, 8, 8, 16, 16]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    write_scene(root / "nyuv2", NYU_FOLDERS, 13, {"train": 6, "val": 4}, (32, 64))
    write_scene(root / "cityscapes", {"segmentation": "label_7", "depth": "depth"}, 7, {"train": 6, "val": 4},
                (32, 64), seed=1)
    return root


def config(data, bench, aggregator, mode="param", epochs=2, **train):
    cfg = run_config(bench, data / bench, aggregator, mode, epochs, train, {"report_last_epochs": 2}, batch_size=2)
    return {**cfg, "model": {"name": "segnet_mtan", "filters": TINY}}


# -- metrics and losses ------------------------------------------------------------------

def test_confusion_matrix_miou_and_pixel_accuracy_by_hand():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, -1, 1]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 3]]])
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    # rows = label, cols = prediction; the ignored pixel (-1) is not counted
    expected = torch.tensor([[1, 1, 0, 0], [0, 2, 0, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm.counts, expected)
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (3 + 3 - 2) = 1/2; class 2: 1 / (2 + 1 - 1) = 1/2;
    # class 3: 0 / (0 + 1 - 0) = 0 (predicted, never present: counts); pixel accuracy 4 / 7
    values = cm.compute()
    assert values["miou"] == pytest.approx(100 * (1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)
    assert values["pix_acc"] == pytest.approx(100 * 4 / 7)


def test_confusion_matrix_accumulates_over_a_split_and_skips_absent_classes():
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    t1, t2 = torch.tensor([[0, 1, 1]]), torch.tensor([[1, 0, 0]])
    logits1 = torch.nn.functional.one_hot(torch.tensor([[0, 1, 0]]), 5).permute(0, 2, 1).float()
    a.update(logits1, t1)            # (B, C, W) scores are reduced by argmax over C
    a.update(torch.tensor([[1, 1, 0]]), t2)
    b.update(torch.tensor([[0, 1, 0, 1, 1, 0]]), torch.cat([t1, t2], 1))
    assert torch.equal(a.counts, b.counts)
    # classes 2-4 appear nowhere: mIoU over classes 0 and 1 only (2/4 and 2/4)
    assert a.compute()["miou"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="label 7 outside 0..4"):
        a.update(torch.tensor([[0]]), torch.tensor([[7]]))


def test_depth_errors_by_hand_over_valid_pixels():
    target = torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]])
    pred = torch.tensor([[[[1.0, 9.0], [5.0, 1.5]]]])
    m = DepthErrors()
    m.update(pred, target)
    m.update(torch.tensor([[[[3.0]]]]), torch.tensor([[[[2.0]]]]))
    # |err| on the 4 valid pixels: 1, 1, 0.5, 1; relative: 0.5, 0.25, 0.5, 0.5
    assert m.compute() == pytest.approx({"abs_err": 3.5 / 4, "rel_err": 1.75 / 4})
    task = DepthTask()
    assert float(task.loss(pred, target)) == pytest.approx((1 + 1 + 0.5) / 3)


def _unit(deg):
    r = math.radians(deg)
    return [math.sin(r), 0.0, math.cos(r)]


def test_normal_angles_mean_median_and_within_ratios_by_hand():
    angles = [0.0, 10.0, 20.0, 25.0, 30.5, 45.0, 90.0]
    target = torch.tensor([[0.0, 0.0, 1.0]] * 7 + [[0.0, 0.0, 0.0]], dtype=torch.float64).T.reshape(1, 3, 1, 8)
    pred = torch.tensor([_unit(a) for a in angles] + [_unit(33.0)], dtype=torch.float64).T.reshape(1, 3, 1, 8)
    m = NormalAngles()
    m.update(pred[..., :4], target[..., :4])
    m.update(pred[..., 4:], target[..., 4:])   # the last pixel has no ground truth
    v = m.compute()
    assert v["mean_angle"] == pytest.approx(np.mean(angles), abs=1e-6)
    assert v["median_angle"] == pytest.approx(np.median(angles), abs=2e-3)
    assert v["within_11.25"] == pytest.approx(100 * 2 / 7)
    assert v["within_22.5"] == pytest.approx(100 * 3 / 7)
    assert v["within_30"] == pytest.approx(100 * 4 / 7)
    # loss: 1 - mean cos over the valid pixels
    expected = 1 - np.mean([math.cos(math.radians(a)) for a in angles])
    assert float(NormalTask().loss(pred, target)) == pytest.approx(expected, rel=1e-6)


def test_normal_median_matches_numpy_on_many_angles():
    g = torch.Generator().manual_seed(0)
    pred = NormalTask().activate(torch.randn(2, 3, 16, 16, generator=g))
    target = NormalTask().activate(torch.randn(2, 3, 16, 16, generator=g))
    m = NormalAngles()
    m.update(pred, target)
    angles = np.degrees(np.arccos(np.clip((pred * target).sum(1).double().numpy(), -1, 1))).ravel()
    assert m.compute()["median_angle"] == pytest.approx(np.median(angles), abs=2e-3)
    assert m.compute()["mean_angle"] == pytest.approx(angles.mean(), rel=1e-9)


def test_segmentation_loss_is_nll_with_ignore_index():
    task = SegmentationTask(3)
    raw = torch.randn(1, 3, 2, 2)
    pred = task.activate(raw)
    assert torch.allclose(pred.exp().sum(1), torch.ones(1, 2, 2))
    target = torch.tensor([[[0, -1], [2, 1]]])
    expected = -(pred[0, 0, 0, 0] + pred[0, 2, 1, 0] + pred[0, 1, 1, 1]) / 3
    assert float(task.loss(pred, target)) == pytest.approx(float(expected), rel=1e-6)


# rows of PIVRG's Tables 1 and 2 (Qin et al., CVPR 2025) as printed: metrics and dm%
PAPER_ROWS = {
    "nyuv2": {"LS": ("39.29 65.33 0.5493 0.2263 28.15 23.96 22.09 47.50 61.08", 5.59),
              "PIVRG": ("39.90 65.74 0.5365 0.2243 24.30 18.80 30.95 58.26 70.38", -6.50),
              "FairGrad": ("39.74 66.01 0.5377 0.2236 24.84 19.60 29.26 56.58 69.16", -4.66)},
    "cityscapes": {"LS": ("75.18 93.49 0.0155 46.77", 22.60), "UW": ("72.02 92.85 0.0140 30.13", 5.89),
                   "MGDA": ("68.84 91.54 0.0309 33.50", 44.14)},
}


@pytest.mark.parametrize("bench", ["nyuv2", "cityscapes"])
def test_metric_lists_reproduce_the_papers_dm(bench):
    """Our metric order, directions and single-task baselines give the dm% PIVRG prints,
    to within the rounding of the printed numbers."""
    for method, (printed, dm_printed) in PAPER_ROWS[bench].items():
        assert printed_dm_matches(bench, printed, dm_printed), method


# -- data layout and augmentation ----------------------------------------------------------

def test_nyuv2_reads_the_mtan_layout(data):
    bench = NYUv2Benchmark(data / "nyuv2")
    assert bench.splits == ("train", "test") and bench.selection_split == "train"
    assert len(bench.datasets["train"]) == 6 and len(bench.datasets["test"]) == 4   # test = the val/ folder
    images, (label, depth, normal) = next(iter(bench.loader("test", 3, shuffle=False)))
    assert images.shape == (3, 3, 32, 64) and images.dtype == torch.float32
    assert label.shape == (3, 32, 64) and label.dtype == torch.int64
    assert depth.shape == (3, 1, 32, 64) and normal.shape == (3, 3, 32, 64)
    stored = np.load(data / "nyuv2" / "val" / "label" / "0.npy")
    assert torch.equal(label[0], torch.from_numpy(stored).long())
    assert torch.equal(depth[0, 0], torch.from_numpy(np.load(data / "nyuv2" / "val" / "depth" / "0.npy"))[..., 0])
    assert (label == -1).any() and set(label.unique().tolist()) <= set(range(-1, 13))
    assert [m.name for m in bench.metrics] == [m.name for m in benchmark_metrics({"name": "nyuv2"})]
    assert [m.higher_is_better for m in bench.metrics] == [True, True, False, False, False, False, True, True, True]


def test_cityscapes_accepts_label_7_or_label(data, tmp_path):
    bench = CityscapesBenchmark(data / "cityscapes")
    assert bench.tasks == ["segmentation", "depth"] and len(bench.metrics) == 4
    other = write_scene(tmp_path / "cs", {"segmentation": "label", "depth": "depth"}, 7, {"train": 2, "val": 2}, (32, 32))
    images, (label, depth) = next(iter(CityscapesBenchmark(other).loader("train", 2, shuffle=False)))
    assert label.shape == (2, 32, 32) and depth.shape == (2, 1, 32, 32)


def test_missing_or_broken_data_is_a_clear_error(data, tmp_path):
    with pytest.raises(DatasetNotFound, match=r"nyuv2 not found under .*train/\{image,label,depth,normal\}"):
        NYUv2Benchmark(tmp_path / "nothing")
    root = write_scene(tmp_path / "nolabel", {"depth": "depth"}, 7, {"train": 1, "val": 1}, (32, 32))
    with pytest.raises(DatasetNotFound, match="no label_7 or label folder"):
        CityscapesBenchmark(root)
    root = write_scene(tmp_path / "short", NYU_FOLDERS, 13, {"train": 2, "val": 1}, (32, 32))
    (root / "train" / "normal" / "1.npy").unlink()
    bench = NYUv2Benchmark(root)
    with pytest.raises(DatasetNotFound, match="normal/1.npy is missing"):
        bench.datasets["train"][1]
    np.save(root / "val" / "depth" / "0.npy", np.ones((16, 32, 1), np.float32))
    with pytest.raises(ValueError, match=r"shape \(16, 32, 1\) does not match"):
        bench.datasets["test"][0]


class Draws:
    """A stand-in for numpy's Generator with fixed draws: scale index, top, left, flip."""

    def __init__(self, scale_index, top, left, flip):
        self.ints = [scale_index, top, left]
        self.flip = flip

    def integers(self, n):
        return self.ints.pop(0)

    def random(self):
        return 0.0 if self.flip else 1.0


def test_scale_crop_divides_depth_by_the_scale_and_flip_negates_normal_x():
    h, w = 12, 18
    image = torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w)
    label = torch.arange(h * w).reshape(h, w) % 5
    depth = torch.full((1, h, w), 3.0)
    normal = torch.zeros(3, h, w)
    normal[0], normal[2] = 0.6, 0.8
    kinds = ["segmentation", "depth", "normal"]
    # scale 1.5: a crop of 8 x 12 at (2, 3) resized back to 12 x 18
    img, (lab, dep, nor) = scale_crop_flip(image, [label, depth, normal], kinds, Draws(2, 2, 3, False))
    assert img.shape == image.shape and lab.shape == label.shape
    assert torch.allclose(dep, torch.full_like(depth, 2.0))                       # 3 / 1.5
    assert set(lab.unique().tolist()) <= set(label[2:10, 3:15].unique().tolist())   # nearest: stored values only
    assert torch.allclose(img[:, 0, 0], image[:, 2, 3]) and torch.allclose(img[:, -1, -1], image[:, 9, 14])
    assert torch.allclose(nor, normal)
    # scale 1 with a flip: mirrored, depth unchanged, normal x negated
    img, (lab, dep, nor) = scale_crop_flip(image, [label, depth, normal], kinds, Draws(0, 0, 0, True))
    assert torch.equal(img, image.flip(-1)) and torch.equal(lab, label.flip(-1)) and torch.equal(dep, depth)
    assert torch.allclose(nor[0], torch.full((h, w), -0.6)) and torch.allclose(nor[2], torch.full((h, w), 0.8))


def test_training_augmentation_is_seeded(data):
    bench = NYUv2Benchmark(data / "nyuv2", augment=True)
    first = [b[0] for b in bench.loader("train", 2, shuffle=True, seed=5)]
    again = [b[0] for b in bench.loader("train", 2, shuffle=True, seed=5)]
    other = [b[0] for b in bench.loader("train", 2, shuffle=True, seed=6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    plain = NYUv2Benchmark(data / "nyuv2", augment=False)
    test = [b[0] for b in plain.loader("test", 2, shuffle=False)]
    assert all(torch.equal(a, b) for a, b in zip(test, [b[0] for b in bench.loader("test", 2, shuffle=False)]))


def test_image_size_resizes_samples(data):
    bench = NYUv2Benchmark(data / "nyuv2", image_size=[16, 32])
    images, (label, depth, normal) = next(iter(bench.loader("train", 2, shuffle=False)))
    assert images.shape == (2, 3, 16, 32) and label.shape == (2, 16, 32) and normal.shape == (2, 3, 16, 32)


# -- the model -----------------------------------------------------------------------------

def test_segnet_mtan_size_and_parameter_split():
    tasks = [SegmentationTask(13), DepthTask(), NormalTask()]
    model = SegNetMTAN(tasks)
    n = sum(p.numel() for p in model.parameters())
    assert round(n / 1e6, 1) == 44.2           # the 44.2M of SegNet-MTAN on NYU-v2 (MTAN paper)
    shared = {id(p) for p in model.shared_parameters()}
    heads = {id(p) for p in model.task_parameters()}
    assert not shared & heads and len(shared) + len(heads) == len(list(model.parameters()))
    # the attention masks are theta_s (as in the reference code), the heads are conv3x3 + conv1x1
    assert {id(p) for p in model.attention.parameters()} <= shared
    assert all(len(list(h.parameters())) == 4 for h in model.heads)


def test_segnet_mtan_outputs_and_per_task_features():
    tasks = [SegmentationTask(13), DepthTask(), NormalTask()]
    model = SegNetMTAN(tasks, TINY).eval()
    x = torch.randn(2, 3, 32, 64)
    z = model.encode(x)
    assert isinstance(z, tuple) and [zi.shape for zi in z] == [(2, 4, 32, 64)] * 3
    seg, depth, normal = model.decode(z)
    assert seg.shape == (2, 13, 32, 64) and depth.shape == (2, 1, 32, 64)
    assert torch.allclose(seg.exp().sum(1), torch.ones(2, 32, 64), atol=1e-5)
    norm = normal.norm(dim=1)   # unit length (0 where the raw output is 0: nothing to normalise)
    assert (((norm - 1).abs() < 1e-5) | (norm == 0)).all() and (norm > 0).float().mean() > 0.5
    # head i reads z_i only
    z2 = (z[0], z[1] + 1.0, z[2])
    out2 = model.decode(z2)
    assert torch.equal(out2[0], seg) and torch.equal(out2[2], normal) and not torch.equal(out2[1], depth)
    with pytest.raises(ValueError, match="divisible by 32"):
        model.encode(torch.randn(1, 3, 40, 64))


def test_batched_feature_gradients_of_a_tuple_equal_separate_ones():
    z = (torch.randn(2, 3, requires_grad=True), torch.randn(4, requires_grad=True))
    losses = torch.stack([(z[0] ** 2).sum(), z[1].sum() * z[0].sum(), z[1].prod()])
    got = aggregators.task_gradients(losses, z)
    for i, l in enumerate(losses):
        g = torch.autograd.grad(l, z, retain_graph=True, allow_unused=True, materialize_grads=True)
        assert torch.allclose(got[i], torch.cat([t.flatten() for t in g]))


# -- training --------------------------------------------------------------------------------

@pytest.mark.parametrize("bench,aggregator,mode", [
    ("nyuv2", "ls", "param"), ("nyuv2", "pivrg", "param"), ("nyuv2", "consmtl", "param"),
    ("nyuv2", "nash_mtl", "param"), ("nyuv2", "aligned_mtl", "rep"), ("cityscapes", "pivrg", "param"),
    ("cityscapes", "consmtl", "rep"), ("cityscapes", "famo", "param")])
@pytest.mark.slow
def test_dense_benchmarks_train_and_report_the_last_epochs(data, tmp_path, single_thread, bench, aggregator, mode):
    tr, res = train_run(config(data, bench, aggregator, mode, epochs=3), tmp_path)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines] == [1, 2, 3] and set(lines[0]["metrics"]) == {"train", "test"}
    # reported: the mean test metrics of the last 2 epochs (report_last_epochs)
    assert res["report"] == "mean of the last 2 epochs" and res["reported_epochs"] == [2, 3]
    for name, value in res["metrics"].items():
        assert value == pytest.approx(np.mean([l["metrics"]["test"][name] for l in lines[1:]])), name
    assert len(res["metrics"]) == len(tr.bench.metrics) and all(map(math.isfinite, res["metrics"].values()))
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())


def test_pivrg_is_fed_the_training_drops_once_per_epoch(data, tmp_path):
    tr, _ = train_run(config(data, "nyuv2", "pivrg", epochs=1), tmp_path)
    line = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert "train_delta_m_i" in line and "val_delta_m_i" not in line
    dm_i = torch.tensor([line["train_delta_m_i"][t] for t in tr.bench.tasks], dtype=torch.float64)
    expected, _ = performance_weights(dm_i, bound=tr.agg.bound, min_temperature=tr.agg.min_temperature)
    assert (tr.agg.bound, tr.agg.min_temperature) == (2.0, 10.0)      # the NYU-v2 preset
    assert torch.allclose(tr.agg.omega, expected)


def test_consmtl_lower_level_through_the_attention_features(data, single_thread):
    """Head i gets grad l_i + clip(grad of -lam <dl_i/dz, d_z>) with z = (z_1, z_2, z_3)."""
    tr = SupervisedTrainer(config(data, "nyuv2", "consmtl"), data / "unused_run")
    batch = next(iter(tr.bench.loader("train", 2, shuffle=False)))
    model = tr.model
    z = model.encode(tr.bench.inputs(batch))
    losses = tr.bench.task_losses(model.decode(z), batch)
    shared = model.shared_parameters()
    G = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(l, shared, retain_graph=True,
                                                                        allow_unused=True, materialize_grads=True)])
                     for l in losses])
    ref = aggregators.make("consmtl", 3, **aggregators.preset("consmtl", "nyuv2"))
    ref(G, losses.detach())
    delta = [torch.cat([g.flatten() for g in torch.autograd.grad(l, z, retain_graph=True, create_graph=True,
                                                                 allow_unused=True, materialize_grads=True)])
             for l in losses]
    d_z = sum(w * d.detach() for w, d in zip(ref.weights.to(delta[0].dtype), delta))
    expected = []
    for i, head in enumerate(model.heads):
        params = list(head.parameters())
        task = torch.cat([g.flatten() for g in torch.autograd.grad(losses[i], params, retain_graph=True)])
        extra = torch.cat([g.flatten() for g in torch.autograd.grad(-ref.lam * (delta[i] * d_z).sum(), params,
                                                                    retain_graph=True)])
        extra = extra * min(1.0, float(ref.clip_ratio * task.norm() / extra.norm()))
        expected.append(task + extra)
    tr.train_step(batch)
    for i, head in enumerate(model.heads):
        got = torch.cat([p.grad.flatten() for p in head.parameters()])
        assert torch.allclose(got, expected[i], rtol=1e-4, atol=1e-7), i
    tr.close()


@pytest.mark.slow
def test_ls_learns_the_synthetic_scene(data, tmp_path, single_thread):
    cfg = config(data, "nyuv2", "ls", epochs=12, lr=3e-3)
    tr, _ = train_run(cfg, tmp_path)
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    first, last = lines[0]["train_loss"], lines[-1]["train_loss"]
    # depth and normals are smooth functions of the image; the labels are quantised ones
    assert last["depth"] < 0.5 * first["depth"] and last["normal"] < 0.5 * first["normal"], (first, last)
    assert last["segmentation"] < 0.9 * first["segmentation"], (first, last)
    assert lines[-1]["train_delta_m"] < lines[0]["train_delta_m"] - 50


@pytest.mark.slow
def test_a_killed_run_resumes_with_its_last_epochs(data, tmp_path):
    _, full = train_run(config(data, "cityscapes", "pivrg", epochs=3), tmp_path / "full")
    train_run(config(data, "cityscapes", "pivrg", epochs=2), tmp_path / "cut")
    tr, resumed = train_run(config(data, "cityscapes", "pivrg", epochs=3), tmp_path / "cut")
    assert resumed["reported_epochs"] == [2, 3]
    assert resumed["metrics"] == pytest.approx(full["metrics"], rel=1e-5)


# -- presets, CLI and the papers' table ------------------------------------------------------

def test_presets_compose_with_the_papers_protocol():
    from hydra import compose, initialize_config_dir

    import mtrl.launch  # noqa: F401  (registers the aggregator configs)
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        nyu = compose("supervised", overrides=["benchmark=nyuv2"])
        cs = compose("supervised", overrides=["benchmark=cityscapes"])
        small = compose("supervised", overrides=["benchmark=nyuv2_small"], return_hydra_config=True)
    for c, batch in ((nyu, 2), (cs, 8)):
        assert (c.train.epochs, c.train.batch_size, c.train.lr) == (200, batch, 1e-4)
        assert dict(c.train.scheduler) == {"name": "step", "step_size": 100, "gamma": 0.5}
        assert c.benchmark.report_last_epochs == 10 and c.aggregator_preset == c.benchmark.name
    assert small.benchmark.name == "nyuv2" and small.protocol.preset == "small"
    assert dict(nyu.model) == {"_target_": "mtrl.supervised.models.segnet_mtan.SegNetMTAN", "name": "segnet_mtan",
                               "filters": [64, 128, 256, 512, 512]}
    assert list(small.model.filters) == [16, 32, 64, 128, 128]
    from hydra.core.hydra_config import HydraConfig
    HydraConfig.instance().set_config(small)   # what @hydra.main does: resolves ${hydra:...}
    import mtrl.launch  # noqa: F401  (registers ${run_name:...})
    import re
    assert re.fullmatch(r"runs/supervised/nyuv2-small/param/ls-[0-9a-f]{8}/seed0", small.hydra.run.dir)


@pytest.mark.slow
def test_cli_small_preset_and_the_papers_table(data, tmp_path):
    for agg in ("ls", "pivrg"):
        res = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_supervised.py"), "benchmark=nyuv2_small",
                              f"aggregator={agg}", f"data.root={data / 'nyuv2'}", "benchmark.image_size=[32,64]",
                              "model.filters=[4,8,8,16,16]", "train.epochs=2", "train.max_batches=2",
                              "device=cpu", f"hydra.run.dir={tmp_path / agg}"], capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
    runs, problems = load_runs([str(tmp_path)])
    tables, _ = summarize_runs(runs)
    assert not problems and len(tables) == 1
    rows = tables[0].rows
    assert sorted(r.aggregator for r in rows) == ["ls", "pivrg"]
    assert all(np.isfinite(r.delta_m) for r in rows)
    assert sum(r.mr for r in rows) == pytest.approx(3.0)     # ranks 1 and 2 on each of the 9 metrics
    text = table_markdown(tables[0])
    assert "mean of the last 2 epochs" in text and "normal_within_11.25 ↑" in text and "| STL |" in text
    assert "38.3" in text and "task-weighted dm%" in text
