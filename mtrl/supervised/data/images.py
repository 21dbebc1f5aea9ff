"""What the image readers share: the ImageNet statistics the reference code normalises with
(torchvision's, in 0-1 units), that normalisation, and the horizontal flip of a sample."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise_imagenet(image: Tensor) -> Tensor:
    """A (3, H, W) image in 0-1 units minus the ImageNet mean, over its standard deviation
    (float32)."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((image - mean) / std).float()


def flip(image: Tensor, targets: list[Tensor], kinds: Sequence[str]) -> tuple[Tensor, list[Tensor]]:
    """A sample mirrored left-right: the image and every target flipped along the width, and
    the x component of ``"normal"`` targets (C, H, W) negated (torchvision's
    ``RandomHorizontalFlip`` plus what it does to a surface normal)."""
    out = [t.flip(-1) for t in targets]
    out = [torch.cat((-t[:1], t[1:])) if k == "normal" else t for t, k in zip(out, kinds)]
    return image.flip(-1), out
