#!/usr/bin/env python
"""Time one training step through ``aggregators.backward`` against one backward per task.

    python scripts/bench_backward.py                      # CPU, 5 interleaved repeats
    python scripts/bench_backward.py --device cuda --repeats 20 --batch 64
    python scripts/bench_backward.py --quick              # tiny sizes, one repeat (smoke run)

Needs torchvision.  Two models, randomly initialised, on synthetic batches:

* Mask R-CNN of ``scripts/example_detection.py``: 5 losses, shared = ResNet-50 body + FPN;
* a torchvision ResNet-18 trunk with 7 heads on its pooled features (4 regression
  heads, mean squared error; 3 ten-class heads, cross-entropy); shared = the trunk.

Methods LS, PIVRG, Nash-MTL and AvgNorm, each along two paths:

* ``aggregators.backward``: LS is one ordinary backward; the gradient methods take one
  batched backward for the per-task gradients on the shared parameters and one backward
  for the other parameters;
* reference: one ``autograd.grad`` per task over all parameters (``retain_graph``), the
  flat per-task gradients stacked into G, ``d = agg(G, losses)`` written to the shared
  ``.grad``, ``sum_i w_i g_i`` to the other parameters' ``.grad``.  G is handed over in
  float64: a float32 ``G G^T`` over the trunk's 11M entries in one product was off by
  0.3% (relative Frobenius error, on an AVX2 CPU), which moved PIVRG's weights by 0.3%,
  while the engine's per-parameter sums were within 7e-6 of the float64 Gram.

A step is forward + backward + SGD step.  Every (model, method, path) keeps its own copy
of the same initial model and its own aggregator; the repeats are interleaved over all
of them after one warm-up step each, and the table reports medians in ms and the ratio
to LS through ``aggregators.backward`` on the same model.  On a CPU shared with other
jobs, ``OMP_NUM_THREADS=1`` gives steadier numbers (spinning OpenMP workers otherwise
compete for the cores).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import aggregators  # noqa: E402
import example_detection as detection  # noqa: E402  (scripts/example_detection.py)

METHODS = ("ls", "pivrg", "nash_mtl", "avgnorm")
LR = 1e-5  # small: every configuration must stay finite over its steps from a random start


@dataclass
class Workload:
    """A model, the loss dict of its forward on a fixed batch, and its shared part."""

    name: str
    num_tasks: int
    model: nn.Module
    losses: Callable[[nn.Module], dict[str, torch.Tensor]]
    shared: Callable[[nn.Module], nn.Module]


class SevenHeads(nn.Module):
    """ResNet-18 trunk (``fc`` removed: 512 pooled features) and 7 linear heads."""

    REGRESSION, CLASSIFICATION, CLASSES = 4, 3, 10

    def __init__(self):
        from torchvision.models import resnet18

        super().__init__()
        self.trunk = resnet18(weights=None)
        self.trunk.fc = nn.Identity()
        self.heads = nn.ModuleList([nn.Linear(512, 1) for _ in range(self.REGRESSION)]
                                   + [nn.Linear(512, self.CLASSES) for _ in range(self.CLASSIFICATION)])

    def losses(self, x, targets) -> dict[str, torch.Tensor]:
        """``reg<i>``: MSE of head i to column i of ``targets["reg"]``; ``cls<j>``:
        cross-entropy of head 4+j to column j of ``targets["cls"]``."""
        z = self.trunk(x)
        out = {f"reg{i}": F.mse_loss(self.heads[i](z).squeeze(1), targets["reg"][:, i])
               for i in range(self.REGRESSION)}
        out.update({f"cls{j}": F.cross_entropy(self.heads[self.REGRESSION + j](z), targets["cls"][:, j])
                    for j in range(self.CLASSIFICATION)})
        return out


def detection_workload(images: int, size: int, device) -> Workload:
    model = detection.build_model(size).to(device)
    ims, targets = detection.synthetic_batch(images, size)
    ims = [im.to(device) for im in ims]
    targets = [{key: v.to(device) for key, v in t.items()} for t in targets]
    return Workload(f"Mask R-CNN ({images} x {size} px, 5 losses)", 5, model, lambda m: m(ims, targets),
                    lambda m: detection.shared_module(m, "backbone+fpn"))


def resnet_workload(batch: int, size: int, device) -> Workload:
    model = SevenHeads().to(device).train()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g).to(device)
    targets = {"reg": torch.randn(batch, SevenHeads.REGRESSION, generator=g).to(device),
               "cls": torch.randint(SevenHeads.CLASSES, (batch, SevenHeads.CLASSIFICATION), generator=g).to(device)}
    return Workload(f"ResNet-18 + 7 heads ({batch} x {size} px)", 7, model, lambda m: m.losses(x, targets),
                    lambda m: m.trunk)


def backward_step(work: Workload, model, agg, optimizer) -> None:
    """One step through ``aggregators.backward``."""
    optimizer.zero_grad(set_to_none=True)
    aggregators.backward(work.losses(model), work.shared(model), agg)
    optimizer.step()


def reference_step(work: Workload, model, agg, optimizer) -> None:
    """One step the reference way: k backward passes, G stacked, aggregated, ``.grad`` written."""
    optimizer.zero_grad(set_to_none=True)
    losses = list(work.losses(model).values())
    shared = [p for p in work.shared(model).parameters() if p.requires_grad]
    ids = {id(p) for p in shared}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    rows, other_grads = [], []
    for i, loss in enumerate(losses):
        grads = torch.autograd.grad(loss, shared + others, retain_graph=i < len(losses) - 1, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(shared + others, grads)]
        rows.append(torch.cat([g.flatten() for g in grads[:len(shared)]]))
        other_grads.append(grads[len(shared):])
    d = agg(torch.stack(rows).double(), torch.stack(losses).detach().double())
    w = (agg.weights if agg.weights is not None else torch.ones(len(losses))).to(d)
    for p, g in zip(shared, d.split([p.numel() for p in shared])):
        p.grad = g.view_as(p).to(p.dtype)
    for j, p in enumerate(others):
        p.grad = sum(w[i] * other_grads[i][j] for i in range(len(losses))).to(p.dtype)
    optimizer.step()


PATHS = {"aggregators.backward": backward_step, "one backward per task": reference_step}


def measure(workloads: list[Workload], repeats: int, warmup: int, device) -> dict:
    """Median seconds per step of every (workload, method, path), repeats interleaved."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    runs = []
    for work in workloads:
        for method in METHODS:
            for path, step in PATHS.items():
                model = copy.deepcopy(work.model)
                agg = aggregators.make(method, work.num_tasks).to(device)
                runs.append(((work.name, method, path), step, work, model, agg,
                             torch.optim.SGD(model.parameters(), lr=LR)))
    times = {key: [] for key, *_ in runs}
    for r in range(warmup + repeats):
        for key, step, work, model, agg, optimizer in runs:
            sync()
            t0 = time.perf_counter()
            step(work, model, agg, optimizer)
            sync()
            if r >= warmup:
                times[key].append(time.perf_counter() - t0)
    return {key: statistics.median(v) for key, v in times.items()}


def markdown_table(workloads: list[Workload], medians: dict) -> str:
    """Rows: model, method; columns: ms/step and ratio to LS for both paths."""
    lines = ["| model | method | aggregators.backward (ms/step) | x LS | one backward per task (ms/step) | x LS |",
             "|---|---|---:|---:|---:|---:|"]
    for work in workloads:
        base = medians[(work.name, "ls", "aggregators.backward")]
        for method in METHODS:
            cells = []
            for path in PATHS:
                t = medians[(work.name, method, path)]
                cells += [f"{t * 1e3:.1f}", f"{t / base:.2f}"]
            lines.append(f"| {work.name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32, help="ResNet-18 batch (images of 64 px)")
    ap.add_argument("--detection-images", type=int, default=2, help="Mask R-CNN batch (images of 128 px)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repeat, no warm-up (a smoke run)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.batch < 1 or args.detection_images < 1:
        print("error: --repeats, --batch and --detection-images must be >= 1", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.quick:
        workloads = [detection_workload(1, 64, device), resnet_workload(4, 32, device)]
        repeats, warmup = 1, 0
    else:
        workloads = [detection_workload(args.detection_images, 128, device), resnet_workload(args.batch, 64, device)]
        repeats, warmup = args.repeats, 1
    medians = measure(workloads, repeats, warmup, device)
    threads = f", {torch.get_num_threads()} CPU thread(s)" if device.type == "cpu" else ""
    print(f"device={device}{threads}, torch {torch.__version__}, median of {repeats} interleaved step(s) "
          "(forward + backward + SGD step)\n")
    print(markdown_table(workloads, medians))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
