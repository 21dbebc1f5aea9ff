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
from torch import Tensor
from torch.utils.data import DistributedSampler, RandomSampler, Sampler, SequentialSampler

from ..models.base import MultiTaskModel


@dataclass(frozen=True)
class Metric:
    name: str
    task: str
    higher_is_better: bool
    baseline: float            # the single-task-learning value the papers compare against


class MetricState(Protocol):
    def update(self, outputs: Any, batch: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...


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
    #: False where the data ship with a package (multidigits): the trainer then builds the
    #: benchmark without ``data.root`` instead of asking for it
    needs_root: bool = True

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", "val", "test")

    @staticmethod
    @abstractmethod
    def metric_list(**options) -> list[Metric]:
        """The metrics the benchmark reports with these options (the keyword arguments of
        its constructor that change them), without reading any data: what the tables and
        the run checks use."""

    @abstractmethod
    def loader(self, split: str, batch_size: int, shuffle: bool, seed: int = 0,
               shard: tuple[int, int] | None = None) -> Iterable:
        """Batches of one split (a seeded order when ``shuffle``); ``shard=(r, R)``: process
        r's share of each of the R processes' batches (:func:`sample_order`)."""

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


def sample_order(data, shuffle: bool, seed: int, shard: tuple[int, int] | None = None) -> Sampler:
    """The order of a split's samples: a permutation drawn from a generator seeded with
    ``seed`` (``shuffle``) or the stored order.  With ``shard=(r, R)`` and R > 1, process
    r's share of it (``DistributedSampler``: the same permutation, padded to a multiple of
    R by repeating its first samples, every R-th sample from r): the union of the R
    processes' j-th batches of b samples is the one-process j-th batch of R b samples."""
    if shard is not None and shard[1] > 1:
        rank, world = shard
        return DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
    if shuffle:
        return RandomSampler(data, generator=torch.Generator().manual_seed(seed))
    return SequentialSampler(data)
