"""What the supervised trainer needs from a benchmark.

A benchmark supplies:

* ``tasks``: the k task names; ``metrics``: the K reported metrics, each with the task it
  belongs to, its direction and its single-task-learning baseline value (dm% is computed
  against those baselines, ``mtrl.metrics``);
* data: ``loader(split, batch_size, shuffle, seed)`` for the splits in ``splits``
  (``train``, ``val`` where the benchmark has one, ``test``), read from the real on-disk
  layout under ``root``; a missing data set raises :class:`DatasetNotFound` saying where
  the files must go (nothing can be downloaded);
* a model: ``build_model()`` returns a :class:`MultiTaskModel`, whose ``encode`` gives the
  shared representation z (the feature-level "-UB"/rep mode and ConsMTL's lower level act
  on it) and whose ``decode`` maps z to the k task outputs through task-specific heads;
* ``task_losses(outputs, batch)``: the k training losses (a (k,) tensor);
* ``metric_state()``: an accumulator with ``update(outputs, batch)`` and ``compute() ->
  {metric name: value}`` over a whole split (e.g. F1 from counts, MAE from sums).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

import torch
from torch import Tensor, nn


class DatasetNotFound(FileNotFoundError):
    """A data set is not on disk where the config says; the message says what to put where."""


class DataError(ValueError):
    """A data file that is there but cannot be read or does not fit (corrupt, truncated,
    wrong shape); the message names the file and the fix.  The training script reports it
    as one line with exit code 2."""


@dataclass(frozen=True)
class Metric:
    name: str
    task: str
    higher_is_better: bool
    baseline: float            # the single-task-learning value the papers compare against


class MetricState(Protocol):
    def update(self, outputs: Any, batch: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...


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
        """The last shared layer's parameters (paper 004 measures the per-task gradient
        norms there): the encoder's last convolution or linear layer in module order."""
        layers = [m for m in self.encoder.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Conv1d))]
        if not layers:
            raise ValueError(f"{type(self).__name__} has no convolution or linear layer in its encoder")
        return [p for p in layers[-1].parameters() if p.requires_grad]


class Benchmark(ABC):
    """Base class of the supervised benchmarks (see the module docstring)."""

    name: str
    tasks: list[str]
    metrics: list[Metric]
    #: the split that selects the reported epoch and feeds PIVRG: "val", or "train" where
    #: the benchmark has no validation split
    selection_split: str = "val"
    #: None: report the test metrics of the epoch chosen on the selection split; N: report
    #: the mean test metrics of the last N epochs (the dense-vision protocol)
    report_last_epochs: int | None = None

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "val", "test")

    @abstractmethod
    def loader(self, split: str, batch_size: int, shuffle: bool, seed: int = 0) -> Iterable:
        """Batches of one split (a seeded order when ``shuffle``)."""

    @abstractmethod
    def to_device(self, batch: Any, device: torch.device) -> Any:
        """The batch on ``device``."""

    @abstractmethod
    def inputs(self, batch: Any) -> Any:
        """What the model takes from a batch."""

    @abstractmethod
    def build_model(self) -> MultiTaskModel:
        """The benchmark's model; benchmarks with a choice of models take the run config's
        ``model`` section as keyword arguments."""

    @abstractmethod
    def task_losses(self, outputs: list[Tensor], batch: Any) -> Tensor:
        """The k training losses, a (k,) tensor."""

    @abstractmethod
    def metric_state(self) -> MetricState: ...

    def train_metric_state(self) -> MetricState:
        """The accumulator of the metrics over a training epoch (the selection split of
        benchmarks without a validation split): ``metric_state()`` unless a metric has a
        cheaper training estimate."""
        return self.metric_state()

    def selection_value(self, values: dict[str, float], delta_m: float) -> float:
        """What the reported epoch minimises on the selection split: dm% by default."""
        return delta_m
