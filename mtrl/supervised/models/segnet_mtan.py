"""SegNet with MTAN attention (Liu et al., CVPR 2019), the model of the NYU-v2 and
Cityscapes rows of Qin et al. (CVPR 2025)'s PIVRG and ConsMTL papers.

* **Backbone** (``self.backbone`` = ``self.encoder["backbone"]``): SegNet with five encoder levels (filters 64, 128, 256,
  512, 512 by default) of conv3x3-BN-ReLU blocks, 2 x 2 max-pooling that keeps its
  indices, and five decoder levels that max-unpool with those indices.  At every level it
  exposes two features: after the level's first block (which the attention reads) and
  after the level's last block (which the attention masks).
* **Attention** (``self.attention[i]`` for task i, plus ``self.attention_blocks`` shared by
  the tasks): at each encoder level a mask ``a = sigmoid-1x1-conv(cat(first-block feature,
  previous attended feature))`` multiplies the level's last feature; a conv block (and a
  max-pool) carries the attended feature to the next level; the decoder side does the
  same with bilinear upsampling.  The output of task i's attention is its feature map
  z_i (``filters[0]`` channels at full resolution).
* **Heads** (``self.heads[i]``): conv3x3 then conv1x1 to the task's channels, then the
  task's activation (``dense_tasks``).

Parameter split as in the public code of Nash-MTL, FAMO, PIVRG and ConsMTL: the shared
parameters theta_s (``self.encoder``) are the backbone *and* the attention modules, the
task-specific parameters theta_i are the prediction heads.  The shared representation is
the tuple ``z = (z_1, ..., z_k)`` of per-task attention features that the heads read
(as the ConsMTL authors take it): the "-UB"/rep mode aggregates ``dl_i/dz`` over it and
ConsMTL's lower level aligns head i through it.  Since head i reads only z_i, the
per-task representation gradients do not overlap.

Weights are initialised Xavier-normal (conv), zero bias, BN weight 1 and bias 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import MultiTaskModel
from ..tasks.dense import DenseTask

FILTERS = (64, 128, 256, 512, 512)


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """conv3x3 - BN - ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def attention_mask(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """1x1 conv - BN - ReLU - 1x1 conv - BN - sigmoid: a soft mask in (0, 1)."""
    return nn.Sequential(nn.Conv2d(c_in, c_mid, 1), nn.BatchNorm2d(c_mid), nn.ReLU(inplace=True),
                         nn.Conv2d(c_mid, c_out, 1), nn.BatchNorm2d(c_out), nn.Sigmoid())


def repeat_block(channels: int, times: int) -> nn.Sequential:
    return nn.Sequential(*(conv_block(channels, channels) for _ in range(times)))


class SegNet(nn.Module):
    """The shared SegNet backbone; ``forward`` returns the per-level features the attention
    modules use (see :class:`SegNetMTAN`)."""

    def __init__(self, filters: Sequence[int] = FILTERS):
        super().__init__()
        f = list(filters)
        n = len(f)
        # level j: encoder block f[j-1] -> f[j], then 1 (j = 0, 1) or 2 more blocks at f[j]
        self.enc_first = nn.ModuleList([conv_block(3, f[0])] + [conv_block(f[j - 1], f[j]) for j in range(1, n)])
        self.enc_rest = nn.ModuleList(repeat_block(f[j], 1 if j < 2 else 2) for j in range(n))
        # decoder level j (deepest first) works at f[n-1-j] in and f[n-2-j] out (f[0] last)
        out = [f[max(n - 2 - j, 0)] for j in range(n)]
        self.dec_first = nn.ModuleList(conv_block(f[n - 1 - j], out[j]) for j in range(n))
        self.dec_rest = nn.ModuleList(repeat_block(out[j], 1 if j >= n - 2 else 2) for j in range(n))

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """(encoder first-block features, encoder last features, decoder unpooled inputs,
        decoder last features), one entry per level (decoder: deepest first)."""
        enc_first, enc_last, indices = [], [], []
        h = x
        for first, rest in zip(self.enc_first, self.enc_rest):
            a = first(h)
            b = rest(a)
            h, idx = F.max_pool2d(b, 2, 2, return_indices=True)
            enc_first.append(a)
            enc_last.append(b)
            indices.append(idx)
        unpooled, dec_last = [], []
        for j, (first, rest) in enumerate(zip(self.dec_first, self.dec_rest)):
            u = F.max_unpool2d(h, indices[-1 - j], 2, 2, output_size=enc_last[-1 - j].shape[-2:])
            h = rest(first(u))
            unpooled.append(u)
            dec_last.append(h)
        return enc_first, enc_last, unpooled, dec_last


class MTANAttention(nn.Module):
    """One task's attention masks: ``encoder[j]`` and ``decoder[j]`` (see the module doc)."""

    def __init__(self, filters: Sequence[int] = FILTERS):
        super().__init__()
        f = list(filters)
        n = len(f)
        self.encoder = nn.ModuleList([attention_mask(f[0], f[0], f[0])]
                                     + [attention_mask(2 * f[j], f[j], f[j]) for j in range(1, n)])
        out = [f[max(n - 2 - j, 0)] for j in range(n)]
        self.decoder = nn.ModuleList(attention_mask(f[n - 1 - j] + out[j], out[j], out[j]) for j in range(n))


class SharedAttentionBlocks(nn.Module):
    """The conv blocks that carry attended features between levels (shared by the tasks in
    MTAN): encoder level j maps f[j] to the next level's width, decoder level j maps the
    upsampled attended feature to the width of the level's mask."""

    def __init__(self, filters: Sequence[int] = FILTERS):
        super().__init__()
        f = list(filters)
        n = len(f)
        self.encoder = nn.ModuleList(conv_block(f[j], f[min(j + 1, n - 1)]) for j in range(n))
        out = [f[max(n - 2 - j, 0)] for j in range(n)]
        self.decoder = nn.ModuleList(conv_block(f[n - 1] if j == 0 else out[j - 1], out[j]) for j in range(n))


class DenseHead(nn.Module):
    """conv3x3 (c -> c) then conv1x1 (c -> task channels), then the task's activation."""

    def __init__(self, channels: int, task: DenseTask):
        super().__init__()
        self.task = task
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, task.out_channels, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.task.activate(self.conv(z))


class SegNetMTAN(MultiTaskModel):
    """SegNet-MTAN for the given dense tasks (see the module docstring); spatial sizes must
    be multiples of 2 ** len(filters)."""

    def __init__(self, tasks: Sequence[DenseTask], filters: Sequence[int] = FILTERS):
        super().__init__()
        filters = [int(c) for c in filters]
        if len(filters) < 2 or min(filters) < 1:
            raise ValueError(f"filters must list at least two positive widths, got {filters}")
        self.filters = filters
        self.encoder = nn.ModuleDict({"backbone": SegNet(filters),
                                      "attention": nn.ModuleList(MTANAttention(filters) for _ in tasks),
                                      "attention_blocks": SharedAttentionBlocks(filters)})
        self.heads = nn.ModuleList(DenseHead(filters[0], t) for t in tasks)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def backbone(self) -> SegNet:
        return self.encoder["backbone"]

    @property
    def attention(self) -> nn.ModuleList:
        """Task i's attention masks: ``attention[i]``."""
        return self.encoder["attention"]

    @property
    def attention_blocks(self) -> SharedAttentionBlocks:
        return self.encoder["attention_blocks"]

    def encode(self, inputs: Tensor) -> tuple[Tensor, ...]:
        """z = (z_1, ..., z_k): each task's attended full-resolution feature map."""
        step = 2 ** len(self.filters)
        if inputs.shape[-2] % step or inputs.shape[-1] % step:
            raise ValueError(f"SegNet-MTAN with {len(self.filters)} levels needs image sides divisible by {step}, "
                             f"got {tuple(inputs.shape[-2:])}; resize the data (benchmark.image_size)")
        enc_first, enc_last, unpooled, dec_last = self.backbone(inputs)
        blocks = self.attention_blocks
        z = []
        for att in self.attention:
            h = None
            for j, mask in enumerate(att.encoder):
                a = mask(enc_first[j] if h is None else torch.cat((enc_first[j], h), dim=1))
                h = F.max_pool2d(blocks.encoder[j](a * enc_last[j]), 2, 2)
            for j, mask in enumerate(att.decoder):
                h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=True)
                h = blocks.decoder[j](h)
                h = mask(torch.cat((unpooled[j], h), dim=1)) * dec_last[j]
            z.append(h)
        return tuple(z)

    def decode(self, z: Sequence[Tensor]) -> list[Tensor]:
        return [head(zi) for head, zi in zip(self.heads, z)]
