"""The small CNN of the multidigits benchmark (two overlaid 8 x 8 digits on a 12 x 12
canvas): a shared two-convolution encoder and one linear classifier per task, the
shared-bottom layout of the MultiMNIST experiments (Sener & Koltun, NeurIPS 2018), scaled
to a CPU-sized problem."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .base import MultiTaskModel


class DigitsCNN(MultiTaskModel):
    """Encoder: conv3x3 (1 -> c1, padding 1) - ReLU - 2 x 2 max-pool - conv3x3 (c1 -> c2,
    padding 1) - ReLU - 2 x 2 max-pool - flatten - Linear(c2 (S/4)^2 -> hidden) - ReLU, so z
    is (B, hidden); head i is ``Linear(hidden, num_classes[i])`` (logits). With the defaults
    (c1, c2) = (16, 32), hidden 64 and a 12 x 12 canvas: 23,296 shared parameters and
    41 x 65 = 2,665 in the four heads (10, 10, 19, 2 classes)."""

    def __init__(self, num_classes: Sequence[int] = (10, 10, 19, 2), channels: Sequence[int] = (16, 32),
                 hidden: int = 64, canvas: int = 12):
        super().__init__()
        c1, c2 = (int(c) for c in channels)
        if canvas % 4 or canvas < 4:
            raise ValueError(f"canvas must be a positive multiple of 4 (two 2 x 2 max-pools), got {canvas}")
        if not num_classes or min(int(c) for c in num_classes) < 2:
            raise ValueError(f"every task needs at least 2 classes, got {tuple(num_classes)}")
        side = canvas // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(inplace=True))
        self.heads = nn.ModuleList(nn.Linear(hidden, int(c)) for c in num_classes)

    def encode(self, inputs: Tensor) -> Tensor:
        return self.encoder(inputs)

    def decode(self, z: Tensor) -> list[Tensor]:
        return [head(z) for head in self.heads]
