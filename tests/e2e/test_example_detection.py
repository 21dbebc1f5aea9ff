"""The Mask R-CNN example and the backward benchmark (need torchvision: the vision extra).

The synthetic scenes have the masks and boxes they claim; on Mask R-CNN the shared
``.grad`` is the aggregator's combination of per-task gradients taken one backward at a
time and the heads get the gradient of the weighted sum; the script trains two steps
with PIVRG and Nash-MTL and prints the loss/weight table; the benchmark's reference path
writes the same gradients as ``aggregators.backward`` and its quick run prints a row per
method with LS at ratio 1.00."""

import re

import pytest
import torch

pytest.importorskip("torchvision")

import aggregators  # noqa: E402
from helpers import load_script

TASKS = ("loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg")


def _script(name):
    return load_script(name)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are large and their batches tiny: one intra-op thread keeps the file
    fast on a busy CI runner (OpenMP worker threads spin when the cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ex():
    return _script("example_detection")


@pytest.fixture(scope="module")
def bench():
    return _script("bench_backward")


def test_synthetic_masks_are_disjoint_and_boxes_are_their_extent(ex):
    images, targets = ex.synthetic_batch(4, 64, seed=3)
    for image, t in zip(images, targets):
        assert image.shape == (3, 64, 64) and 0 <= image.min() and image.max() <= 1
        masks = t["masks"]
        assert masks.dtype == torch.uint8 and masks.shape[1:] == (64, 64) and len(masks) >= 1
        assert set(t["labels"].tolist()) <= {1, 2} and len(t["labels"]) == len(masks) == len(t["boxes"])
        assert int(masks.sum(0).max()) == 1  # occlusion: a pixel shows one object
        for mask, box in zip(masks, t["boxes"]):
            ys, xs = mask.nonzero(as_tuple=True)
            assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    again = ex.synthetic_batch(4, 64, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(images, again[0]))
    assert not torch.equal(images[0], ex.synthetic_batch(4, 64, seed=4)[0][0])


@pytest.mark.slow
def test_shared_grad_is_nash_combination_of_one_backward_per_task(ex):
    """Mask R-CNN through ``train_step``: shared .grad = w^T G with G from five separate
    backward passes (same sampled proposals: same seed), w the Nash solution
    w_i (M w)_i = 1, and the heads' .grad = grad of sum_i w_i l_i."""
    torch.manual_seed(0)
    model = ex.build_model(64)
    images, targets = ex.synthetic_batch(1, 64)
    shared = [p for p in ex.shared_module(model, "backbone").parameters()]
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.body.")]

    torch.manual_seed(1)
    losses = model(images, targets)
    assert tuple(losses) == TASKS
    G = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(l, shared, retain_graph=True)])
                     for l in losses.values()]).double()

    torch.manual_seed(1)
    agg = aggregators.make("nash_mtl", 5)
    info = ex.train_step(model, images, targets, agg, torch.optim.SGD(model.parameters(), lr=0.0),
                         ex.shared_module(model, "backbone"))
    w = info.weights
    torch.testing.assert_close(w * (G @ G.T @ w), torch.ones(5, dtype=torch.float64), rtol=2e-2, atol=0)
    d = torch.cat([p.grad.flatten() for p in shared]).double()
    torch.testing.assert_close(d, w @ G, rtol=1e-3, atol=1e-4 * float((w @ G).abs().max()))

    torch.manual_seed(1)
    weighted = sum(float(wi) * l for wi, l in zip(w, model(images, targets).values()))
    expected = torch.autograd.grad(weighted, heads, allow_unused=True)
    for p, e in zip(heads, expected):
        assert (p.grad is None) == (e is None)
        if e is not None:
            torch.testing.assert_close(p.grad, e, rtol=1e-3, atol=1e-6 + 1e-4 * float(e.abs().max()))


def _table_rows(out):
    return [line for line in out.splitlines() if re.match(r"\s+\d+ \|", line)]


@pytest.mark.parametrize("method", ["pivrg", "nash_mtl"])
def test_example_trains_two_steps_and_prints_losses_and_weights(ex, capsys, method):
    assert ex.main(["--aggregator", method, "--steps", "2", "--images", "1", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("step |"))
    assert [c.strip() for c in header.split("|")[1:6]] == [t.removeprefix("loss_") for t in TASKS]
    rows = _table_rows(out)
    assert [int(r.split("|")[0]) for r in rows] == [0, 1]
    for row in rows:
        cells = re.findall(r"([-\d.e+]+) \(w ([-\d.e+]+)\)", row)
        assert len(cells) == 5
        losses, weights = zip(*((float(l), float(w)) for l, w in cells))
        assert all(l > 0 for l in losses) and all(w > 0 for w in weights)  # alpha-fair weights are positive


def test_example_rejects_missing_weights_and_unknown_method(ex, capsys, tmp_path):
    assert ex.main(["--weights", str(tmp_path / "none.pth"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --weights") and "no such file" in err and "\n" not in err
    assert ex.main(["--aggregator", "nope"]) == 2
    assert "unknown aggregator 'nope'" in capsys.readouterr().err


def test_weights_file_restores_the_model(ex, tmp_path):
    torch.manual_seed(5)
    source = ex.build_model(64)
    path = tmp_path / "maskrcnn.pth"
    torch.save(source.state_dict(), path)
    loaded = ex.build_model(64, str(path))
    for (name, a), b in zip(source.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    bn = loaded.backbone.body.bn1
    assert not bn.training and loaded.roi_heads.training  # stored BN statistics are kept
    torch.save({"roi_heads.box_predictor.cls_score.weight": torch.zeros(3, 4)}, path)
    with pytest.raises(ValueError, match="does not fit maskrcnn_resnet50_fpn"):
        ex.build_model(64, str(path))


@pytest.mark.parametrize("method", ["ls", "pivrg", "avgnorm"])
def test_bench_reference_step_writes_the_same_gradients(bench, method):
    """The one-backward-per-task reference and ``aggregators.backward`` give every
    parameter of the ResNet-18 with 7 heads the same gradient."""
    torch.manual_seed(0)
    work = bench.resnet_workload(4, 32, torch.device("cpu"))
    grads = []
    for step in (bench.backward_step, bench.reference_step):
        model = bench.copy.deepcopy(work.model)
        step(work, model, aggregators.make(method, 7), torch.optim.SGD(model.parameters(), lr=0.0))
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6 + 1e-4 * float(b.abs().max()))


@pytest.mark.slow
def test_bench_quick_prints_every_method_relative_to_ls(bench, capsys):
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| model")]
    assert len(rows) == 2 * len(bench.METHODS)
    for model in ("Mask R-CNN", "ResNet-18"):
        mine = {r[1]: r for r in rows if r[0].startswith(model)}
        assert set(mine) == set(bench.METHODS)
        assert mine["ls"][3] == "1.00"
        for r in mine.values():
            t_backward, ratio, t_reference, ratio_reference = map(float, r[2:])
            assert t_backward > 0 and t_reference > 0
            # the printed ms are rounded to 0.1
            assert ratio == pytest.approx(t_backward / float(mine["ls"][2]), rel=0.01, abs=0.01)
            assert ratio_reference == pytest.approx(t_reference / float(mine["ls"][2]), rel=0.01, abs=0.01)
