"""The dense-vision encoder-decoder models (``mtrl/supervised/models/dense.py``): output shapes
and upsampling, the stride-8 dilation, the shared/task parameter split (with hand-counted
parameter numbers), that z depends on the encoder only, local ImageNet weights (round trip,
missing file, wrong file), the factory, and ``aggregators.backward`` in feature-level mode."""

import pytest
import torch

import aggregators
from mtrl.supervised.models.dense import (PSPNet, WeightsNotFound, load_backbone_weights,
                                          nostride_dilate)
from mtrl.configuration import ConfigError
from mtrl.supervised.models.base import build_model
from mtrl.supervised.tasks.dense import DepthTask, NormalTask, SegmentationTask

B, H, W = 2, 32, 64
HRNET_SMALL = "hrnet_w18_small_v2"   # the reference's "HRNet-18"; smaller than hrnet_w18, so faster here


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_tasks():
    return [SegmentationTask(5), DepthTask(), NormalTask()]


@pytest.fixture(scope="module")
def models():
    """One model of each kind (built once: ResNet-50 takes a second)."""
    pytest.importorskip("torchvision")
    pytest.importorskip("timm")
    torch.manual_seed(0)
    tasks = make_tasks()
    return {"pspnet": build_model({"name": "pspnet", "upsample": 8}, tasks),
            "resnet18_aspp": build_model({"name": "resnet18_aspp"}, tasks),
            "hrnet18": build_model({"name": "hrnet18", "timm_name": HRNET_SMALL}, tasks)}


def image(h=H, w=W, seed=0):
    return torch.randn(B, 3, h, w, generator=torch.Generator().manual_seed(seed))


def targets(h=H, w=W, seed=1):
    g = torch.Generator().manual_seed(seed)
    normals = torch.randn(B, 3, h, w, generator=g)
    return [torch.randint(0, 5, (B, h, w), generator=g), torch.rand(B, 1, h, w, generator=g) + 0.5,
            normals / normals.norm(dim=1, keepdim=True)]


# ----------------------------------------------------------------------------- factory

def test_factory_rejects_unknown_names_and_options():
    with pytest.raises(ConfigError, match="unknown model 'segnet'; valid: .*hrnet18, pspnet, resnet18_aspp, segnet_mtan"):
        build_model({"name": "segnet"}, make_tasks())
    with pytest.raises(ConfigError, match="unknown option.s. depth for .*PSPNet; valid: upsample, upsample_mode, weights"):
        build_model({"name": "pspnet", "depth": 50}, make_tasks())
    with pytest.raises(ConfigError, match="model default config has no _target_"):
        build_model({"name": "default"}, make_tasks())   # QM9's and CelebA's: the benchmark's own model


# ----------------------------------------------------------------------------- outputs

@pytest.mark.parametrize("name", ["pspnet", "resnet18_aspp", "hrnet18"])
def test_outputs_full_resolution_and_activated(models, name):
    model = models[name].eval()
    with torch.no_grad():
        seg, depth, normal = model(image())
    assert seg.shape == (B, 5, H, W) and depth.shape == (B, 1, H, W) and normal.shape == (B, 3, H, W)
    torch.testing.assert_close(seg.exp().sum(1), torch.ones(B, H, W))     # log_softmax
    torch.testing.assert_close(normal.norm(dim=1), torch.ones(B, H, W))   # unit normals


def test_pspnet_upsampling_factor_and_nearest_mode(models):
    model = models["pspnet"].eval()
    with torch.no_grad():
        z = model.encode(image())
        assert z.shape == (B, 2048, H // 8, W // 8)
        model.upsample = 1                                   # Cityscapes: outputs at 1/8
        assert [o.shape[-2:] for o in model.decode(z)] == [(H // 8, W // 8)] * 3
        raw = model.heads[1](z)                              # depth: no activation
        model.upsample, model.upsample_mode = 8, "nearest"   # the reference NYUv2 decoders
        depth = model.decode(z)[1]
        # nearest x8: every 8 x 8 block is the raw value of its 1/8 pixel
        torch.testing.assert_close(depth, raw.repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1))
        model.upsample_mode = "bilinear"
        smooth = model.decode(z)[1]
        assert not torch.allclose(smooth, depth)
        # bilinear, align_corners=False, x8: output row o reads source row (o + 0.5) / 8 - 0.5,
        # clamped at 0: rows/columns 0-3 are the corner value, row 11 is 1/16 raw row 0 + 15/16 row 1
        torch.testing.assert_close(smooth[..., :4, :4], raw[..., :1, :1].expand(-1, -1, 4, 4))
        torch.testing.assert_close(smooth[..., 11, 0], raw[..., 0, 0] / 16 + raw[..., 1, 0] * 15 / 16)
    with pytest.raises(ValueError, match="upsample must be a positive integer"):
        PSPNet(make_tasks(), upsample=0)
    with pytest.raises(ValueError, match="upsample_mode must be one of"):
        PSPNet(make_tasks(), upsample_mode="bicubic")


@pytest.mark.parametrize("name, step", [("pspnet", 8), ("resnet18_aspp", 8), ("hrnet18", 32)])
def test_input_sides_must_fit_the_stride(models, name, step):
    with pytest.raises(ValueError, match=f"divisible by {step}"):
        models[name].encode(image(h=H + 4))


# ----------------------------------------------------------------------------- dilation

@pytest.mark.parametrize("name, channels", [("pspnet", 2048), ("resnet18_aspp", 512)])
def test_dilated_encoder_has_output_stride_8(models, name, channels):
    with torch.no_grad():
        z = models[name].eval().encode(torch.randn(1, 3, 64, 64))
    assert z.shape == (1, channels, 8, 8)


def test_dilation_rule_on_the_built_modules(models):
    r18 = models["resnet18_aspp"].encoder
    conv = lambda m: (m.stride, m.dilation, m.padding)
    assert conv(r18.layer2[0].conv1) == ((2, 2), (1, 1), (1, 1))       # untouched
    assert conv(r18.layer3[0].conv1) == ((1, 1), (1, 1), (1, 1))       # was the stride-2 conv
    assert conv(r18.layer3[0].conv2) == ((1, 1), (2, 2), (2, 2))
    assert r18.layer3[0].downsample[0].stride == (1, 1)
    assert conv(r18.layer3[1].conv1) == ((1, 1), (2, 2), (2, 2))
    assert conv(r18.layer4[0].conv1) == ((1, 1), (2, 2), (2, 2))
    assert conv(r18.layer4[1].conv2) == ((1, 1), (4, 4), (4, 4))
    # for Bottleneck ResNets the references' rule is torchvision's replace_stride_with_dilation
    import torchvision
    plain = torchvision.models.resnet50(weights=None)
    nostride_dilate(plain.layer3, 2)
    nostride_dilate(plain.layer4, 4)
    built = models["pspnet"].encoder
    for layer in ("layer3", "layer4"):
        mine = [conv(m) for m in getattr(plain, layer).modules() if isinstance(m, torch.nn.Conv2d)]
        theirs = [conv(m) for m in getattr(built, layer).modules() if isinstance(m, torch.nn.Conv2d)]
        assert mine == theirs
    assert conv(built.layer4[0].conv2) == ((1, 1), (2, 2), (2, 2))
    assert conv(built.layer4[2].conv2) == ((1, 1), (4, 4), (4, 4))


# ----------------------------------------------------------------------------- parameters

def count(params):
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("name", ["pspnet", "resnet18_aspp", "hrnet18"])
def test_parameter_split_is_disjoint_and_complete(models, name):
    model = models[name]
    shared = {id(p) for p in model.shared_parameters()}
    task = {id(p) for p in model.task_parameters()}
    assert shared and task and not shared & task
    assert shared | task == {id(p) for p in model.parameters()}


def test_parameter_counts_by_hand(models):
    # ResNet-50 / ResNet-18 without the 1000-way fc (torchvision: 25,557,032 / 11,689,512)
    assert count(models["pspnet"].shared_parameters()) == 25_557_032 - (2048 * 1000 + 1000)
    assert count(models["resnet18_aspp"].shared_parameters()) == 11_689_512 - (512 * 1000 + 1000)
    # PPM head for C outputs: 4 x (1x1 2048->512 + BN) + 3x3 4096->512 + BN + 1x1 512->C (+bias)
    ppm = lambda c: 4 * (2048 * 512 + 2 * 512) + (4096 * 512 * 9 + 2 * 512) + 512 * c + c
    assert [count(h.parameters()) for h in models["pspnet"].heads] == [ppm(5), ppm(1), ppm(3)]
    # HRNet head: 270 = 18 + 36 + 72 + 144 channels; 1x1 270->270 (+bias) + BN + 1x1 270->C (+bias)
    hr = lambda c: 270 * 270 + 270 + 2 * 270 + 270 * c + c
    assert [count(h.parameters()) for h in models["hrnet18"].heads] == [hr(5), hr(1), hr(3)]
    assert models["hrnet18"].branch_channels == [18, 36, 72, 144]


@pytest.mark.parametrize("name", ["pspnet", "resnet18_aspp", "hrnet18"])
def test_z_depends_on_every_encoder_parameter_and_no_head(models, name):
    model = models[name].train()
    z = model.encode(image())
    zs = z if isinstance(z, tuple) else (z,)
    if name == "hrnet18":
        assert [t.shape[-2:] for t in zs] == [(H // s, W // s) for s in (4, 8, 16, 32)]
    total = sum((t * torch.randn_like(t)).sum() for t in zs)
    params = model.shared_parameters() + model.task_parameters()
    grads = torch.autograd.grad(total, params, allow_unused=True)
    n = len(model.shared_parameters())
    assert all(g is not None for g in grads[:n])
    assert all(g is None for g in grads[n:])


# ----------------------------------------------------------------------------- weights

@pytest.mark.parametrize("name", ["pspnet", "resnet18_aspp", "hrnet18"])
def test_imagenet_weights_round_trip(tmp_path, name):
    torchvision = pytest.importorskip("torchvision")
    timm = pytest.importorskip("timm")
    torch.manual_seed(1)
    if name == "hrnet18":
        source, options = timm.create_model(HRNET_SMALL, pretrained=False), {"timm_name": HRNET_SMALL}
    else:
        source, options = getattr(torchvision.models, "resnet50" if name == "pspnet" else "resnet18")(), {}
    state = source.state_dict()   # with the classifier (fc / incre_modules, classifier, ...)
    if name == "pspnet":          # the old resnet50-19c8e357.pth has no num_batches_tracked
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "backbone.pth"
    torch.save(state, path)
    model = build_model({"name": name, "weights": str(path), **options}, make_tasks())
    loaded = model.encoder.state_dict()
    for key, value in loaded.items():
        if key in state:
            assert torch.equal(value, state[key]), key
        else:
            assert key.endswith("num_batches_tracked"), key
    assert set(state) - set(loaded) == {k for k in state if k.startswith(("fc.", "classifier.", "incre_modules.",
                                                                              "downsamp_modules.", "final_layer."))}


@pytest.mark.parametrize("name, expected", [
    ("pspnet", r"torchvision resnet50 ImageNet weights \(resnet50-\*\.pth"),
    ("resnet18_aspp", r"torchvision resnet18 ImageNet weights \(resnet18-\*\.pth\)"),
    ("hrnet18", r"timm hrnet_w18 ImageNet weights"),
])
def test_missing_weights_file_says_what_to_put_where(tmp_path, name, expected):
    pytest.importorskip("torchvision")
    pytest.importorskip("timm")
    path = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsNotFound, match=expected + f".* not found at {path}; download them .*"
                       f"set model.weights={path}") as info:
        build_model({"name": name, "weights": path}, make_tasks())
    assert isinstance(info.value, FileNotFoundError)


def test_wrong_weights_file_is_refused(tmp_path, models):
    torchvision = pytest.importorskip("torchvision")
    from mtrl.supervised.models.dense import dilated_resnet
    trunk = dilated_resnet(18)
    state = torchvision.models.resnet18().state_dict()
    missing = dict(state)
    del missing["layer4.1.conv2.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"1 backbone tensors missing \(e.g. \['layer4.1.conv2.weight'\]\)"):
        load_backbone_weights(trunk, tmp_path / "missing.pth", "resnet18 weights")
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match=r"unknown keys .*expected resnet18 weights"):
        load_backbone_weights(trunk, tmp_path / "r34.pth", "resnet18 weights")
    bad = dict(state, **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="size mismatch for conv1.weight"):
        load_backbone_weights(trunk, tmp_path / "shape.pth", "resnet18 weights")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "wrapped.pth")
    load_backbone_weights(trunk, tmp_path / "wrapped.pth", "resnet18 weights")
    assert torch.equal(trunk.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


# ----------------------------------------------------------------------------- aggregators

@pytest.mark.parametrize("name", ["pspnet", "resnet18_aspp", "hrnet18"])
def test_feature_level_pivrg_backward(models, name):
    model = models[name].train()
    model.zero_grad(set_to_none=True)
    tasks = make_tasks()
    torch.manual_seed(0)
    z = model.encode(image())
    outputs = model.decode(z)
    losses = [t.loss(o, y) for t, o, y in zip(tasks, outputs, targets())]
    info = aggregators.backward(losses, model.shared_parameters(), "pivrg", features=z)
    assert info.losses.shape == (3,) and torch.isfinite(info.direction_norm)
    for p in model.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    # a head gets the ordinary gradient of its task's (weighted) loss: w_i dl_i/dtheta_i
    weight = 1.0 if info.weights is None else float(info.weights[1])
    got = [p.grad.clone() for p in model.heads[1].parameters()]
    torch.manual_seed(0)                           # ASPP's dropout: the same mask again
    model.zero_grad(set_to_none=True)
    depth_loss = tasks[1].loss(model.decode(model.encode(image()))[1], targets()[1])
    expected = torch.autograd.grad(weight * depth_loss, list(model.heads[1].parameters()))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
