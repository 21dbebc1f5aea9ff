"""Encoder-decoder models of the other dense-vision benchmarks (``shared/docs/dense_suites.md``):
PSPNet (Senushkin et al., CVPR 2023, Cityscapes three-task and NYUv2), a dilated ResNet with DeepLab ASPP heads
and HRNet with the HRNet head (Guo et al., arXiv 2025, NYUD-v2 and PASCAL-Context).

Every model is a :class:`~mtrl.supervised.benchmark.MultiTaskModel`: the whole backbone is
``self.encoder`` (the shared parameters theta_s), one decoder per task sits in ``self.heads``
(an ``nn.ModuleList``, the task parameters theta_i); ``encode(x)`` returns the backbone output
z that every decoder reads (the shared representation of the "-UB"/feature-level mode),
``decode(z)`` returns ``[task.activate(upsampled head_i(z))]``.

* :class:`PSPNet` follows SamsungLabs/MTL (``code/models/cityscapes.py`` and ``nyu2.py``):
  encoder = ResNet-50 dilated to output stride 8 (layer3 dilation 2, layer4 dilation 4, the
  CSAIL ``_nostride_dilate`` rule, which is what torchvision's
  ``replace_stride_with_dilation=[False, True, True]`` builds), no avgpool / fc, z = the
  2048-channel layer4 map; decoder = pyramid pooling (adaptive average pools of 1, 2, 3 and 6
  bins, each 1x1 conv 2048 -> 512 without bias + BN + ReLU, upsampled bilinear and
  concatenated with the input: 2048 + 4 * 512 = 4096 channels) -> 3x3 conv 4096 -> 512
  without bias + BN + ReLU -> 1x1 conv (with bias) to the task's channels.  The NYUv2
  decoders then upsample by 8 (``upsample=8``); the Cityscapes targets are at 1/8 of the
  image, so there ``upsample=1``.  Quirk: the reference upsamples with
  ``F.interpolate(x, scale_factor=8.0)``, i.e. *nearest*; ``upsample_mode="nearest"``
  reproduces it, the default is bilinear.
* :class:`ResNetASPP` follows SimonVandenhende/Multi-Task-Learning-PyTorch
  (``models/resnet_dilated.py``, ``models/aspp.py``), the code Guo et al. (arXiv 2025) build on:
  torchvision ResNet-18 dilated to stride 8 by the same ``_nostride_dilate`` rule applied to
  the built modules (torchvision's BasicBlock refuses ``replace_stride_with_dilation``), z =
  the 512-channel layer4 map; decoder = DeepLab-v3 head: ASPP (1x1 branch, 3x3 branches with
  rates 12 / 24 / 36, image pooling branch, 256 channels each, 1x1 projection to 256, dropout
  0.5) -> 3x3 conv 256 + BN + ReLU -> 1x1 conv to the task's channels (torchvision's
  ``DeepLabHead``, which is layer for layer the reference head), upsampled bilinear to the
  input size.
* :class:`HRNet` uses timm's HRNet backbone; z = its four high-to-low resolution branches
  (strides 4, 8, 16, 32; 18, 36, 72, 144 channels for the W18 models), taken before timm's
  classification "incre" modules (``feature_location=""``), as the reference segmentation
  HRNet returns them; decoder = the HRNet head of the reference (``models/seg_hrnet.py``,
  ``HighResolutionHead``): branches 2-4 upsampled bilinear to branch 1, concatenated, 1x1 conv
  (with bias) keeping the width + BN + ReLU -> 1x1 conv to the task's channels, then
  upsampled bilinear to the input size.  Note: the reference's "hrnet_w18" is built from the
  config and ImageNet weights of HRNet-W18-*small-v2* (``hrnet_w18_small_model_v2.pth``),
  timm's ``hrnet_w18_small_v2``; ``timm_name`` selects either.

ImageNet weights are never downloaded: ``weights=PATH`` loads a local state dict into the
backbone (:func:`load_backbone_weights`: every backbone tensor must be in the file, the
classifier's keys are ignored); ``weights=None`` leaves the backbone randomly initialised
(torchvision's and timm's own initialisation: He-normal fan-out convs, BN 1 / 0, as the
references' ``ResNet.__init__``); the decoders keep PyTorch's default initialisation, as in
the references.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MultiTaskModel
from ..tasks.dense import DenseTask

OUTPUT_STRIDE = 8          # of the dilated ResNets
PSP_BINS = (1, 2, 3, 6)
PSP_WIDTH = 512
ASPP_RATES = (12, 24, 36)
UPSAMPLE_MODES = ("bilinear", "nearest")
RESNET_DEPTHS = (18, 34, 50, 101)
#: classifier keys of the ImageNet checkpoints, not part of the backbones
RESNET_CLASSIFIER = ("fc.",)
HRNET_CLASSIFIER = ("classifier.", "incre_modules.", "downsamp_modules.", "final_layer.")


class WeightsNotFound(FileNotFoundError):
    """An ImageNet weights file is not where ``model.weights`` says; the message says which file."""


# ----------------------------------------------------------------------------- weights

def load_backbone_weights(backbone: nn.Module, path: str | Path, what: str,
                          ignore: Sequence[str] = RESNET_CLASSIFIER) -> None:
    """Load the state dict in the local file ``path`` into ``backbone``.

    ``what`` names the expected file in the error messages.  Keys starting with one of
    ``ignore`` (the ImageNet classifier) are dropped, a ``module.`` prefix (DataParallel) is
    stripped, and a checkpoint dict holding the weights under ``state_dict`` or ``model`` is
    unwrapped; ``.safetensors`` files are read with :mod:`safetensors`.  Then the load is
    strict: a backbone tensor missing from the file, a key that belongs to neither the backbone
    nor the classifier, or a shape mismatch raises ``ValueError`` (the wrong file).
    BatchNorm's ``num_batches_tracked`` counters may be absent, as in torchvision's older
    files (``resnet50-19c8e357.pth``, the one SamsungLabs/MTL loads).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFound(f"{what} not found at {p}; download them on a machine with internet "
                              f"and set model.weights={p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file
        state: Any = load_file(str(p), device="cpu")
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:   # unpickling errors of every kind: not a weights file
            raise ValueError(f"{p} is not a readable PyTorch state dict ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); expected {what}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{p} does not hold a state dict of tensors; expected {what}")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore))}
    try:
        result = backbone.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        raise ValueError(f"{p} does not fit the backbone ({lines[0] if lines else exc}); "
                         f"expected {what}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{p} does not fit the backbone: {len(result.missing_keys)} backbone tensors missing "
                         f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unknown keys "
                         f"(e.g. {result.unexpected_keys[:3]}); expected {what}")


# ----------------------------------------------------------------------------- ResNet encoders

def _torchvision_models():
    try:
        import torchvision.models as tvm
    except ImportError as exc:   # the /work/venv environment has no torchvision
        raise ImportError("the dilated-ResNet models need torchvision; install it (pip install torchvision)") from exc
    return tvm


def nostride_dilate(layer: nn.Module, dilation: int) -> None:
    """Dilate one ResNet stage in place: the rule of the references' ``_nostride_dilate``.

    Convolutions with stride 2 (the stage's first 3x3 conv, or the first 1x1 / 3x3 of a
    Bottleneck, and the downsample 1x1) get stride 1; a 3x3 conv that had stride 2 gets
    dilation and padding ``dilation // 2``; every other 3x3 conv gets ``dilation``.  For
    Bottleneck stages this is exactly torchvision's ``replace_stride_with_dilation``.
    """
    for m in layer.modules():
        if not isinstance(m, nn.Conv2d):
            continue
        if m.stride == (2, 2):
            m.stride = (1, 1)
            if m.kernel_size == (3, 3):
                m.dilation = m.padding = (dilation // 2, dilation // 2)
        elif m.kernel_size == (3, 3):
            m.dilation = m.padding = (dilation, dilation)


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without avgpool and fc (the same module names, so ImageNet
    state dicts load into it): ``forward(x)`` = layer4's feature map."""

    def __init__(self, resnet: nn.Module):
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))
        self.out_channels = resnet.fc.in_features

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def dilated_resnet(depth: int) -> ResNetTrunk:
    """torchvision ResNet-``depth`` (random init) dilated to output stride 8: layer3 dilation
    2, layer4 dilation 4 (torchvision's ``replace_stride_with_dilation`` for Bottleneck
    depths, :func:`nostride_dilate` on the built modules for BasicBlock depths)."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(f"ResNet depth must be one of {RESNET_DEPTHS}, got {depth}")
    build = getattr(_torchvision_models(), f"resnet{depth}")
    if depth >= 50:
        return ResNetTrunk(build(weights=None, replace_stride_with_dilation=[False, True, True]))
    resnet = build(weights=None)
    nostride_dilate(resnet.layer3, 2)
    nostride_dilate(resnet.layer4, 4)
    return ResNetTrunk(resnet)


def _check_divisible(x: Tensor, step: int, model: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{model} takes images of shape (B, 3, H, W), got {tuple(x.shape)}")
    if x.shape[-2] % step or x.shape[-1] % step:
        raise ValueError(f"{model} needs image sides divisible by {step}, got {tuple(x.shape[-2:])}; "
                         f"resize or pad the data (benchmark.image_size)")


def _upsample(x: Tensor, size: Sequence[int], mode: str) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=tuple(size), mode="nearest")
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


# ----------------------------------------------------------------------------- PSPNet

class PyramidPoolingHead(nn.Module):
    """PSPNet decoder of SamsungLabs/MTL (``SegmentationDecoder``): pyramid pooling over
    ``bins`` (each bin: adaptive average pool, 1x1 conv ``in -> width`` without bias, BN, ReLU,
    bilinear upsampling back), concatenation with the input, 3x3 conv ``in + len(bins) *
    width -> width`` without bias, BN, ReLU, and a 1x1 conv (with bias) to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, bins: Sequence[int] = PSP_BINS,
                 width: int = PSP_WIDTH):
        super().__init__()
        self.pools = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, width, 1, bias=False),
                          nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            for b in bins)
        self.fuse = nn.Sequential(nn.Conv2d(in_channels + len(bins) * width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        parts = [x] + [F.interpolate(pool(x), size=size, mode="bilinear", align_corners=False) for pool in self.pools]
        return self.classifier(self.fuse(torch.cat(parts, dim=1)))


class PSPNet(MultiTaskModel):
    """Dilated ResNet-50 encoder + one pyramid-pooling decoder per task (module docstring).

    Args:
        tasks: the dense tasks (``out_channels``, ``activate``).
        weights: a local torchvision ``resnet50`` ImageNet state dict, or None (random init).
        upsample: the decoders' output upsampling factor: 8 gives full resolution (NYUv2),
            1 keeps 1/8 (Cityscapes, whose targets are at 1/8).
        upsample_mode: "bilinear" (default) or "nearest" (the reference NYUv2 decoders).
    """

    def __init__(self, tasks: Sequence[DenseTask], weights: str | Path | None = None, upsample: int = 1,
                 upsample_mode: str = "bilinear"):
        super().__init__()
        if not tasks:
            raise ValueError("PSPNet needs at least one task")
        if int(upsample) != upsample or upsample < 1:
            raise ValueError(f"upsample must be a positive integer factor (8: full resolution, 1: 1/8), got {upsample}")
        if upsample_mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample_mode must be one of {UPSAMPLE_MODES}, got {upsample_mode!r}")
        self.tasks = list(tasks)
        self.upsample, self.upsample_mode = int(upsample), upsample_mode
        self.encoder = dilated_resnet(50)
        if weights is not None:
            load_backbone_weights(self.encoder, weights, "torchvision resnet50 ImageNet weights (resnet50-*.pth, "
                                  "e.g. resnet50-0676ba61.pth or resnet50-19c8e357.pth)")
        self.heads = nn.ModuleList(PyramidPoolingHead(self.encoder.out_channels, t.out_channels) for t in self.tasks)

    def encode(self, inputs: Tensor) -> Tensor:
        """z = the stride-8 layer4 map, (B, 2048, H/8, W/8)."""
        _check_divisible(inputs, OUTPUT_STRIDE, "PSPNet")
        return self.encoder(inputs)

    def decode(self, z: Tensor) -> list[Tensor]:
        size = (z.shape[-2] * self.upsample, z.shape[-1] * self.upsample)
        return [t.activate(_upsample(head(z), size, self.upsample_mode)) for t, head in zip(self.tasks, self.heads)]


# ----------------------------------------------------------------------------- ResNet + ASPP

class ResNetASPP(MultiTaskModel):
    """ResNet-``depth`` dilated to stride 8 + one DeepLab-v3 ASPP head per task (module docstring).

    Args:
        tasks: the dense tasks.
        depth: 18 (the papers), 34, 50 or 101.
        weights: a local torchvision ``resnet{depth}`` ImageNet state dict, or None.
    """

    def __init__(self, tasks: Sequence[DenseTask], depth: int = 18, weights: str | Path | None = None):
        super().__init__()
        if not tasks:
            raise ValueError("ResNetASPP needs at least one task")
        from torchvision.models.segmentation.deeplabv3 import DeepLabHead
        self.tasks = list(tasks)
        self.depth = int(depth)
        self.encoder = dilated_resnet(self.depth)
        if weights is not None:
            load_backbone_weights(self.encoder, weights, f"torchvision resnet{self.depth} ImageNet weights "
                                  f"(resnet{self.depth}-*.pth)")
        self.heads = nn.ModuleList(DeepLabHead(self.encoder.out_channels, t.out_channels, ASPP_RATES)
                                   for t in self.tasks)

    def encode(self, inputs: Tensor) -> Tensor:
        """z = the stride-8 layer4 map, (B, 512 (18/34) or 2048 (50/101), H/8, W/8)."""
        _check_divisible(inputs, OUTPUT_STRIDE, "ResNetASPP")
        return self.encoder(inputs)

    def decode(self, z: Tensor) -> list[Tensor]:
        size = (z.shape[-2] * OUTPUT_STRIDE, z.shape[-1] * OUTPUT_STRIDE)
        return [t.activate(_upsample(head(z), size, "bilinear")) for t, head in zip(self.tasks, self.heads)]


# ----------------------------------------------------------------------------- HRNet

class HRNetHead(nn.Module):
    """The reference ``HighResolutionHead``: branches 2.. upsampled bilinear to branch 1's size,
    concatenated (sum of the branch widths, 270 for W18), 1x1 conv (with bias) keeping the
    width, BN, ReLU, 1x1 conv (with bias) to ``out_channels``."""

    def __init__(self, branch_channels: Sequence[int], out_channels: int):
        super().__init__()
        width = sum(branch_channels)
        self.last_layer = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
                                        nn.Conv2d(width, out_channels, 1))

    def forward(self, z: Sequence[Tensor]) -> Tensor:
        size = z[0].shape[-2:]
        parts = [z[0]] + [F.interpolate(b, size=size, mode="bilinear", align_corners=False) for b in z[1:]]
        return self.last_layer(torch.cat(parts, dim=1))


class HRNet(MultiTaskModel):
    """A timm HRNet backbone + one HRNet head per task (module docstring).

    Args:
        tasks: the dense tasks.
        timm_name: the timm HRNet ("hrnet_w18"; the reference's HRNet-18 is "hrnet_w18_small_v2";
            config ``model.timm_name``).
        weights: a local ImageNet state dict of timm's ``timm_name`` (classification model; its
            ``classifier``/``incre_modules``/``downsamp_modules``/``final_layer`` keys are
            ignored), or None.
    """

    #: the branch strides of an HRNet (stride of branch 1 is 4)
    STRIDES = (4, 8, 16, 32)

    def __init__(self, tasks: Sequence[DenseTask], timm_name: str = "hrnet_w18",
                 weights: str | Path | None = None):
        super().__init__()
        name = timm_name
        if not tasks:
            raise ValueError("HRNet needs at least one task")
        if not str(name).startswith("hrnet_"):
            raise ValueError(f"HRNet takes a timm HRNet name (hrnet_w18, hrnet_w18_small_v2, hrnet_w32, ...), "
                             f"got {name!r}")
        try:
            import timm
        except ImportError as exc:
            raise ImportError("the HRNet model needs timm; install it (pip install timm)") from exc
        self.tasks, self.name = list(tasks), name
        try:
            self.encoder = timm.create_model(name, features_only=True, pretrained=False, feature_location="",
                                             out_indices=(1, 2, 3, 4))
        except RuntimeError as exc:   # timm: "Unknown model (...)"
            raise ValueError(f"timm has no model {name!r} ({exc}); use e.g. hrnet_w18 or hrnet_w18_small_v2") from None
        reductions = tuple(self.encoder.feature_info.reduction())
        if reductions != self.STRIDES:
            raise ValueError(f"{name} gives features at strides {reductions}, not the HRNet branches {self.STRIDES}")
        self.branch_channels = list(self.encoder.feature_info.channels())
        if weights is not None:
            load_backbone_weights(self.encoder, weights, f"timm {name} ImageNet weights (the timm checkpoint of "
                                  f"{name}: model.safetensors or pytorch_model.bin)", ignore=HRNET_CLASSIFIER)
        self.heads = nn.ModuleList(HRNetHead(self.branch_channels, t.out_channels) for t in self.tasks)

    def encode(self, inputs: Tensor) -> tuple[Tensor, ...]:
        """z = the four branch maps, strides 4, 8, 16, 32 (high to low resolution)."""
        _check_divisible(inputs, self.STRIDES[-1], "HRNet")
        return tuple(self.encoder(inputs))

    def decode(self, z: Sequence[Tensor]) -> list[Tensor]:
        size = (z[0].shape[-2] * self.STRIDES[0], z[0].shape[-1] * self.STRIDES[0])
        return [t.activate(_upsample(head(z), size, "bilinear")) for t, head in zip(self.tasks, self.heads)]
