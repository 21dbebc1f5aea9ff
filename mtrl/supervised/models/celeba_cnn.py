"""The CelebA model of the FAMO / PIVRG experiments."""

from __future__ import annotations

from torch import Tensor, nn

from .base import MultiTaskModel


class CelebACNN(MultiTaskModel):
    """The 9-layer CNN: conv3x3 (no bias) - BN - ReLU with 64, 128, 128, 256, 256, 512, 512
    channels, 2 x 2 max-pools after convs 1, 3 and 5 (as in FAMO's public code), global
    average pooling, then 2 x (Linear 512 -> 512 - BN - ReLU); the Linear layers have no bias
    since BN follows. z is (B, 512); each head ``Linear(512, 1)`` gives one logit."""

    CHANNELS = (64, 128, 128, 256, 256, 512, 512)
    POOL_AFTER = (0, 2, 4)

    def __init__(self, num_tasks: int = 40):   # the 40 CelebA attributes
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for i, out_ch in enumerate(self.CHANNELS):
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            if i in self.POOL_AFTER:
                layers.append(nn.MaxPool2d(2))
            in_ch = out_ch
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        for _ in range(2):
            layers += [nn.Linear(512, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(512, 1) for _ in range(num_tasks))

    def encode(self, inputs: Tensor) -> Tensor:
        return self.encoder(inputs)

    def decode(self, z: Tensor) -> list[Tensor]:
        return [head(z).squeeze(-1) for head in self.heads]
