"""What every supervised model is: a shared encoder and task-specific heads."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import Tensor, nn

from ... import components


class MultiTaskModel(nn.Module, ABC):
    """A shared encoder and one head per task: ``forward(x) = decode(encode(x))``.

    Subclasses put every shared module under ``self.encoder`` and every task-specific
    module under ``self.heads`` (an ``nn.ModuleList`` with one entry per task, or a module
    that is task-specific as a whole), so the trainer can tell the parameters apart.
    """

    encoder: nn.Module
    heads: nn.Module

    @abstractmethod
    def encode(self, inputs: Any) -> Tensor:
        """The shared representation z."""

    @abstractmethod
    def decode(self, z: Tensor) -> list[Tensor]:
        """The k task outputs from z."""

    def forward(self, inputs: Any) -> list[Tensor]:
        return self.decode(self.encode(inputs))

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def task_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def last_shared_parameters(self) -> list[nn.Parameter]:
        """The last shared layer's parameters (Guo et al. (arXiv 2025) measure the per-task gradient
        norms there): the encoder's last convolution or linear layer in module order."""
        layers = [m for m in self.encoder.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d))]
        if not layers:
            raise ValueError(f"{type(self).__name__} has no convolution or linear layer in its encoder")
        return [p for p in layers[-1].parameters() if p.requires_grad]


def build_model(section: dict, tasks) -> MultiTaskModel:
    """The model a config's ``model`` section names for ``tasks``: its ``_target_`` with the
    section's options (``name`` is the label); a section with only a ``name`` takes
    ``configs/model/<name>.yaml`` under its options."""
    if components.TARGET not in section:
        section = {**components.group_option("model", section.get("name", "(none)")), **section}
    return components.build(section, f"model {section.get('name')}", tasks, base=MultiTaskModel, labels=("name",))
