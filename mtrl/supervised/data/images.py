"""What the image readers share: the ImageNet statistics the reference code normalises with
(torchvision's, in 0-1 units)."""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
