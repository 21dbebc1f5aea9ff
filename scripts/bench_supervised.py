#!/usr/bin/env python
"""Time one supervised training step per aggregator at QM9 (k = 11), CelebA (k = 40),
NYU-v2 (k = 3) and Cityscapes (k = 2) shapes.

    python scripts/bench_supervised.py                                  # CPU defaults
    python scripts/bench_supervised.py --device cuda --modes param,rep  # paper batch sizes
    python scripts/bench_supervised.py --benchmarks celeba --aggregators pivrg,famo --repeats 5
    python scripts/bench_supervised.py --benchmarks nyuv2 --aggregators pivrg,nash_mtl,consmtl
    python scripts/bench_supervised.py --nproc 2                        # data parallelism (gloo on the CPU)

A step is ``SupervisedTrainer.train_step`` itself (forward, ``aggregators.backward``,
ConsMTL's lower level, optimiser step) on a fixed synthetic batch of the benchmark's
shapes, with the benchmark's own model and losses; no data set is read.

* QM9: random molecules of 12-24 atoms (18 on average, as in QM9) as complete directed
  graphs with 11-dim node and 5-dim edge features, built by the benchmark's own
  transforms; MPNN with hidden size 64 (``--qm9-batch`` molecules, the papers' 120).
* CelebA: random 64 x 64 images and 0/1 labels for the 40 attributes; the 9-layer CNN
  (``--celeba-batch`` images, the papers' 256).
* NYU-v2 / Cityscapes: random images and targets of 288 x 384 / 128 x 256 written in the
  MTAN .npy layout and read by the benchmark's own loader; SegNet-MTAN (44.2M parameters;
  ``--nyuv2-batch`` / ``--cityscapes-batch``, the papers' 2 / 8).
* Cityscapes three-task / PASCAL-Context: random scenes of 256 x 512 / 512 x 512 in the
  official Cityscapes / PASCAL_MT layouts; PSPNet (dilated ResNet-50) / dilated ResNet-18
  with ASPP heads (``--cityscapes3-batch`` / ``--pascal-context-batch``, the papers' 8).

On a CPU the defaults are far smaller batches (QM9 4 molecules, CelebA 2 images,
NYU-v2 1 image, Cityscapes 2 images), 1
warm-up step and 3 repeats, so that the run takes minutes: a parameter-level step costs
about k backward passes, and the MPNN's edge network alone is tens of GFLOP per
backward at batch 120.  The ratios grow with the batch, so CPU ratios understate those
at the papers' shapes.

For each benchmark and mode (``param``: aggregate the shared-parameter gradients;
``rep``: the representation gradients) every aggregator gets a trainer, warm-up steps,
then the methods take turns, one timed step each per repeat, so that drifts of a shared
machine hit all of them alike.  The table gives the median ms/step and its ratio to
linear scalarisation (``ls``, one ordinary backward) of the same benchmark and mode,
measured in this run.  ``--reference`` adds rows for the reference approach: the k
per-task gradients from k separate backward passes instead of one batched pass, then the
same aggregation.

``--nproc N`` times data parallelism instead (:mod:`aggregators.distributed`): the same
global batch (``--dp-batch``) in one process with N threads and in N processes of one
thread each (a ``gloo`` group on this machine; ``--device cuda`` gives each process a GPU
and ``nccl``), for LS, PIVRG with the exact all-reduce of the k per-task gradients and
PIVRG with ``gram_only``, on multidigits (k = 4, real data) and CelebA shapes (k = 40);
it prints ms/step, the ratio to one process, and the bytes each process all-reduces per
step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import aggregators  # noqa: E402
from mtrl.supervised.benchmarks.celeba import CelebABenchmark  # noqa: E402
from mtrl.supervised.data.celeba import ATTRIBUTES  # noqa: E402
from mtrl.supervised.benchmarks.qm9 import DEFAULT_TARGETS, TARGET_NAMES, QM9Benchmark  # noqa: E402
from mtrl.supervised.data.qm9 import NODE_FEATURES, CompleteGraph  # noqa: E402
from mtrl.supervised.trainer import MODES, SupervisedTrainer  # noqa: E402

AGGREGATORS = ("ls", "pivrg", "consmtl", "nash_mtl", "fairgrad", "cagrad", "pcgrad", "famo", "mgda", "aligned_mtl")
BENCHMARKS = ("qm9", "celeba", "nyuv2", "cityscapes", "cityscapes3", "pascal_context")
PAPER_BATCH = {"qm9": 120, "celeba": 256, "nyuv2": 2, "cityscapes": 8, "cityscapes3": 8, "pascal_context": 8}
CPU_BATCH = {"qm9": 4, "celeba": 2, "nyuv2": 1, "cityscapes": 2, "cityscapes3": 2, "pascal_context": 2}
#: the benchmarks of Senushkin et al. (CVPR 2023) and Guo et al. (arXiv 2025): shape of the
#: written images, their default models (PSPNet, ResNet-18 + ASPP)
SUITES = {"cityscapes3": (256, 512), "pascal_context": (512, 512)}
SCENE = {"nyuv2": ("mtrl.supervised.benchmarks.nyuv2:NYUv2Benchmark", {"segmentation": "label", "depth": "depth",
                                                            "normal": "normal"}, 13, (288, 384)),
         "cityscapes": ("mtrl.supervised.benchmarks.cityscapes:CityscapesBenchmark", {"segmentation": "label_7",
                                                                           "depth": "depth"}, 7, (128, 256))}
QUICK = {"qm9_batch": 4, "qm9_atoms": (4, 8), "qm9_hidden": 16, "celeba_batch": 2, "image_size": 16,
         "nyuv2_batch": 1, "cityscapes_batch": 2, "scene_size": (32, 64), "scene_filters": (4, 8, 8, 16, 16),
         "cityscapes3_batch": 2, "pascal_context_batch": 2, "suite_size": {"cityscapes3": (64, 128),
                                                                            "pascal_context": (32, 32)},
         "repeats": 1, "warmup": 1}


class SyntheticQM9(QM9Benchmark):
    """QM9's tasks, MPNN and losses without the data set: what a train step reads."""

    def __init__(self, hidden: int = 64):
        self.hidden, self.targets = hidden, list(DEFAULT_TARGETS)
        self.tasks = [TARGET_NAMES[t] for t in self.targets]


class SyntheticCelebA(CelebABenchmark):
    """CelebA's 40 tasks, CNN and losses without the data set: what a train step reads."""

    def __init__(self, image_size: int = 64):
        self.image_size, self.tasks = image_size, list(ATTRIBUTES)


def qm9_batch(num_molecules: int, atoms: tuple[int, int] = (12, 24), seed: int = 0):
    """A PyG batch of random molecules (``atoms`` = min, max atom count) in the layout the
    QM9 benchmark feeds its MPNN: complete graphs whose edge attributes are the bond
    one-hot of a random chain of bonds and the interatomic distance, z-scored targets."""
    import torch_geometric.transforms as T
    from torch_geometric.data import Batch, Data

    g = torch.Generator().manual_seed(seed)
    to_complete = T.Compose([CompleteGraph(), T.Distance(norm=False)])
    k = len(DEFAULT_TARGETS)
    molecules = []
    for _ in range(num_molecules):
        n = int(torch.randint(atoms[0], atoms[1] + 1, (1,), generator=g))
        kind = torch.randint(0, 5, (n,), generator=g)
        x = torch.cat([F.one_hot(kind, 5).float(), torch.rand(n, NODE_FEATURES - 5, generator=g)], dim=1)
        chain = torch.arange(n - 1)
        edge_index = torch.cat([torch.stack([chain, chain + 1]), torch.stack([chain + 1, chain])], dim=1)
        bond = F.one_hot(torch.randint(0, 4, (n - 1,), generator=g), 4).float()
        data = Data(x=x, edge_index=edge_index, edge_attr=torch.cat([bond, bond]),
                    pos=1.5 * torch.randn(n, 3, generator=g), y=torch.randn(1, k, generator=g))
        molecules.append(to_complete(data))
    return Batch.from_data_list(molecules)


def celeba_batch(batch_size: int, image_size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 3, S, S) in [0, 1], attributes (B, 40) in {0, 1}), random."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch_size, 3, image_size, image_size, generator=g),
            torch.randint(0, 2, (batch_size, len(ATTRIBUTES)), generator=g).float())


def scene_setup(name: str, batch_size: int, size, filters, data_root: str):
    """The benchmark built on random data written in its real .npy layout, one batch, its
    shape and the model options (SegNet-MTAN with ``filters``)."""
    import importlib

    from mtrl.supervised.testing import write_scene
    from mtrl.supervised.models.segnet_mtan import FILTERS

    target, folders, classes, default = SCENE[name]
    shape = tuple(size or default)
    root = write_scene(os.path.join(data_root, name), folders, classes, {"train": batch_size, "val": 1}, shape)
    module, cls = target.split(":")
    bench = getattr(importlib.import_module(module), cls)(root)
    model = {"name": "segnet_mtan", "filters": list(filters or FILTERS)}
    return bench, next(iter(bench.loader("train", batch_size, shuffle=False))), shape, model


def suite_setup(name: str, batch_size: int, shape, data_root: str):
    """The benchmarks of Senushkin et al. (CVPR 2023) and Guo et al. (arXiv 2025) on random data written in their real
    layouts (official Cityscapes folders, PASCAL_MT), with their default models; returns what
    :func:`scene_setup` does."""
    from mtrl.supervised.registry import benchmark_class

    root = os.path.join(data_root, name)
    if name == "cityscapes3":
        from mtrl.supervised.testing import write_cityscapes_official
        write_cityscapes_official(root, {"train": batch_size, "val": 1}, shape)
        bench = benchmark_class({"name": name})(root, image_size=shape)
    else:
        from mtrl.supervised.testing import write_pascal_context
        write_pascal_context(root, batch_size, 1, shape)
        bench = benchmark_class({"name": name})(root, size=shape)
    return bench, next(iter(bench.loader("train", batch_size, shuffle=False))), shape, {}


class Entry:
    """One row: a trainer, its batch, whether it uses the reference per-task gradients,
    and the seconds of its timed steps."""

    def __init__(self, aggregator: str, reference: bool, trainer: SupervisedTrainer, batch):
        self.aggregator, self.reference, self.trainer, self.batch = aggregator, reference, trainer, batch
        self.times: list[float] = []

    def step(self, sync) -> float:
        """Seconds for one ``train_step`` (device work included)."""
        sync()
        t0 = time.perf_counter()
        self.trainer.train_step(self.batch)
        sync()
        return time.perf_counter() - t0


def build_entries(bench, batch, mode: str, args, run_root: str) -> list[Entry]:
    """One trainer per aggregator (two for those in ``args.reference``), all on ``batch``,
    with the aggregator's hyper-parameters for this benchmark (``aggregator_preset``)."""
    entries = []
    for name in args.aggregators:
        for reference in (False, True) if name in args.reference else (False,):
            cfg = {"seed": 0, "device": args.device, "mode": mode, "aggregator": {"name": name},
                   "aggregator_preset": bench.name, "benchmark": {"name": bench.name},
                   "model": args.model_of.get(bench.name, {}),
                   "train": {"epochs": 1, "batch_size": args.batch_of[bench.name], "lr": 1e-4,
                             "diagnostics_every": 0, "per_task_grads": "loop" if reference else "batched"}}
            run_dir = os.path.join(run_root, f"{bench.name}-{mode}-{name}{'-ref' if reference else ''}")
            trainer = SupervisedTrainer(cfg, run_dir, benchmark=bench)
            entries.append(Entry(name, reference, trainer, bench.to_device(batch, trainer.device)))
    return entries


def time_group(entries: list[Entry], args, sync) -> None:
    """Warm-up steps for each, then ``repeats`` rounds in which every entry takes one timed step."""
    for e in entries:
        for _ in range(args.warmup):
            e.step(sync)
    for _ in range(args.repeats):
        for e in entries:
            e.times.append(e.step(sync))


def grads_label(entry: Entry, mode: str) -> str:
    """How the row's step gets its per-task gradients."""
    if not entry.trainer.agg.requires_grads:
        return "none: one backward"
    level = "z" if mode == "rep" else "shared params"
    return f"{'k backward passes' if entry.reference else 'one batched pass'} ({level})"


def paper_note(name: str, args) -> str:
    """'' at the papers' batch size, else a reminder of it."""
    return "" if args.batch_of[name] == PAPER_BATCH[name] else f" (the papers' batch: {PAPER_BATCH[name]})"


def comma_list(choices):
    def parse(text: str) -> list[str]:
        items = [s for s in text.split(",") if s]
        unknown = [s for s in items if s not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"{text!r}: choose a comma-separated list from {', '.join(choices)}")
        return items
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmarks", type=comma_list(BENCHMARKS), default=list(BENCHMARKS),
                    help="comma-separated (default: all)")
    ap.add_argument("--aggregators", type=comma_list(aggregators.available()), default=list(AGGREGATORS),
                    help=f"comma-separated registry names (default {','.join(AGGREGATORS)}); ls is always "
                         "timed too, as the ratios' baseline")
    ap.add_argument("--modes", type=comma_list(MODES), default=["param"], help="param and/or rep (default param)")
    ap.add_argument("--reference", type=comma_list(aggregators.available()), default=["pivrg"],
                    help="aggregators (those among --aggregators) that also get a row with one backward "
                         "pass per task (default pivrg)")
    ap.add_argument("--no-reference", action="store_true", help="no one-backward-per-task rows")
    ap.add_argument("--qm9-batch", type=int, default=None, help="molecules per batch (default 120; 4 on CPU)")
    ap.add_argument("--celeba-batch", type=int, default=None, help="images per batch (default 256; 2 on CPU)")
    ap.add_argument("--nyuv2-batch", type=int, default=None, help="images per batch (default 2; 1 on CPU)")
    ap.add_argument("--cityscapes-batch", type=int, default=None, help="images per batch (default 8; 2 on CPU)")
    ap.add_argument("--cityscapes3-batch", type=int, default=None, help="images per batch (default 8; 2 on CPU: batch norm after global pooling needs 2)")
    ap.add_argument("--pascal-context-batch", type=int, default=None, help="images per batch (default 8; 2 on CPU: batch norm after global pooling needs 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps per method (default 5; 3 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per method first (default 2; 1 on CPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--quick", action="store_true",
                    help="tiny shapes (QM9 4 molecules of 4-8 atoms, hidden 16; CelebA 2 images of 16 x 16; "
                         "NYU-v2 / Cityscapes 32 x 64 with a narrow SegNet-MTAN), 1 repeat")
    ap.add_argument("--nproc", type=int, default=None,
                    help="time data parallelism: 1 process against this many (gloo on the CPU), see above")
    ap.add_argument("--dp-batch", type=int, default=None,
                    help="--nproc: the global batch (default multidigits 256, CelebA 32)")
    ap.add_argument("--dp-benchmarks", type=comma_list(tuple(DP_BATCH)), default=list(DP_BATCH),
                    help="--nproc: multidigits and/or celeba")
    args = ap.parse_args(argv)
    if args.nproc is not None and args.nproc < 2:
        ap.error(f"--nproc must be >= 2, got {args.nproc}")
    for name in ("qm9_batch", "celeba_batch", "nyuv2_batch", "cityscapes_batch", "cityscapes3_batch",
                 "pascal_context_batch", "repeats", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.warmup is not None and args.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {args.warmup}")
    gpu = args.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        ap.error("--device cuda but no CUDA device is available; use --device cpu")
    quick = QUICK if args.quick else {}
    args.batch_of = {name: getattr(args, f"{name}_batch") or quick.get(f"{name}_batch") or
                     (PAPER_BATCH[name] if gpu else CPU_BATCH[name]) for name in BENCHMARKS}
    args.repeats = args.repeats or quick.get("repeats") or (5 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else quick.get("warmup", 2 if gpu else 1)
    args.qm9_atoms = quick.get("qm9_atoms", (12, 24))
    args.qm9_hidden = quick.get("qm9_hidden", 64)
    args.image_size = quick.get("image_size", 64)
    args.scene_size, args.scene_filters = quick.get("scene_size"), quick.get("scene_filters")
    args.model_of = {}
    args.suite_size = quick.get("suite_size", {})
    args.aggregators = ["ls"] + [a for a in dict.fromkeys(args.aggregators) if a != "ls"]
    args.reference = [] if args.no_reference else [a for a in args.reference if a in args.aggregators]
    return args


#: ``--nproc``: (label, method, gram_only) rows, and the global batch per benchmark
DP_ROWS = (("ls", "ls", False), ("pivrg", "pivrg", False), ("pivrg gram_only", "pivrg", True))
DP_BATCH = {"multidigits": 256, "celeba": 32}


def _dp_process(process, bench_name: str, batch_size: int, threads: int, args: dict, out: str) -> None:
    """One process of a ``--nproc`` measurement: a trainer per row on this process's rows of
    the same global batch, warm-up steps, then the rows take turns; process 0 writes the
    median ms/step and the bytes all-reduced per step of each row to ``out``."""
    import json

    import torch.distributed as dist

    from mtrl.supervised.benchmarks.multidigits import MultiDigitsBenchmark

    torch.set_num_threads(threads)
    if bench_name == "multidigits":
        bench = MultiDigitsBenchmark()
        batch = next(iter(bench.loader("train", batch_size, shuffle=True, seed=0)))
    else:
        bench = SyntheticCelebA(args["image_size"])
        batch = celeba_batch(batch_size, args["image_size"])
    device = torch.device(args["device"], process.local_rank) if args["device"].startswith("cuda") else torch.device("cpu")
    shard = bench.to_device(tuple(t[process.rank::process.world] for t in batch), device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    barrier = dist.barrier if process.parallel else (lambda: None)
    rows = []
    with tempfile.TemporaryDirectory() as run_root:
        for label, method, gram_only in DP_ROWS:
            cfg = {"seed": 0, "device": device.type, "mode": "param", "aggregator": {"name": method},
                   "aggregator_preset": bench.name, "benchmark": {"name": bench.name}, "dist": {"gram_only": gram_only},
                   "train": {"epochs": 1, "batch_size": batch_size, "lr": 1e-4, "diagnostics_every": 0}}
            rows.append((label, SupervisedTrainer(cfg, os.path.join(run_root, label), benchmark=bench, process=process)))
        times = {label: [] for label, _ in rows}
        sent = {label: 0 for label, _ in rows}
        for repeat in range(args["warmup"] + args["repeats"]):
            for label, trainer in rows:
                before = trainer.reducer.bytes if trainer.reducer is not None else 0
                barrier()
                sync()
                t0 = time.perf_counter()
                trainer.train_step(shard)
                sync()
                if repeat >= args["warmup"]:
                    times[label].append(time.perf_counter() - t0)
                    sent[label] = (trainer.reducer.bytes if trainer.reducer is not None else 0) - before
        for _, trainer in rows:
            trainer.close()
    if process.main:
        with open(out, "w") as f:
            json.dump({label: {"ms": 1e3 * statistics.median(t), "bytes": sent[label]} for label, t in times.items()}, f)


def data_parallel_table(args: argparse.Namespace) -> None:
    """``--nproc N``: one process with N threads against N processes of one thread each,
    at the same global batch, per benchmark and row of :data:`DP_ROWS`."""
    import json

    from mtrl.distributed import run_local

    n = args.nproc
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:   # the processes import this script by name to find _dp_process
        sys.path.insert(0, here)
    opts = {"image_size": args.image_size, "device": args.device, "warmup": args.warmup, "repeats": args.repeats}
    print(f"device={args.device}; median of {args.repeats} interleaved steps after {args.warmup} warm-up step(s); "
          f"1 process x {n} threads against {n} processes x 1 thread, the same global batch")
    print()
    print("| benchmark | k | global batch | method | processes | ms/step | x 1 process | MB all-reduced / process / step |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.dp_benchmarks:
            batch = args.dp_batch or DP_BATCH[name]
            if batch % n:
                raise SystemExit(f"error: --dp-batch {batch} must be a multiple of --nproc {n}")
            k = 4 if name == "multidigits" else len(ATTRIBUTES)
            results = {}
            for world in (1, n):
                out = os.path.join(tmp, f"{name}-{world}.json")
                run_local(_dp_process, world, name, batch, max(1, n // world), opts, out)
                with open(out) as f:
                    results[world] = json.load(f)
            for label, _, _ in DP_ROWS:
                for world in (1, n):
                    r = results[world][label]
                    print(f"| {name} | {k} | {batch} | {label} | {world} | {r['ms']:.1f} | "
                          f"{r['ms'] / results[1][label]['ms']:.2f} | {r['bytes'] / 1e6:.2f} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nproc:
        data_parallel_table(args)
        return 0
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        print_table(args)
    finally:
        torch.set_num_threads(threads)
    return 0


def print_table(args: argparse.Namespace) -> None:
    """Build the synthetic batches, time every group (benchmark, mode) and print the table."""
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"device={args.device} threads={torch.get_num_threads()} median of {args.repeats} interleaved steps "
          f"per method after {args.warmup} warm-up step(s); ratios to ls of the same benchmark and mode, this run")
    setups = {}
    if "qm9" in args.benchmarks:
        batch = qm9_batch(args.batch_of["qm9"], args.qm9_atoms)
        setups["qm9"] = (SyntheticQM9(args.qm9_hidden), batch)
        print(f"qm9: k=11, batch {batch.num_graphs} molecules of {args.qm9_atoms[0]}-{args.qm9_atoms[1]} atoms "
              f"({batch.num_nodes} atoms, {batch.num_edges} directed edges), MPNN hidden {args.qm9_hidden}"
              f"{paper_note('qm9', args)}")
    if "celeba" in args.benchmarks:
        setups["celeba"] = (SyntheticCelebA(args.image_size), celeba_batch(args.batch_of["celeba"], args.image_size))
        print(f"celeba: k=40, batch {args.batch_of['celeba']} images of {args.image_size} x {args.image_size}, "
              f"9-layer CNN{paper_note('celeba', args)}")
    with tempfile.TemporaryDirectory() as run_root:
        for name in SCENE:
            if name in args.benchmarks:
                bench, batch, shape, model = scene_setup(name, args.batch_of[name], args.scene_size,
                                                         args.scene_filters, os.path.join(run_root, "data"))
                setups[name] = (bench, batch)
                args.model_of[name] = model
                n = sum(p.numel() for p in bench.build_model(**model).parameters())
                print(f"{name}: k={bench.num_tasks}, batch {args.batch_of[name]} images of {shape[0]} x {shape[1]}, "
                      f"SegNet-MTAN filters {model['filters']} ({n / 1e6:.1f}M parameters){paper_note(name, args)}")
        for name, default in SUITES.items():
            if name in args.benchmarks:
                shape = args.suite_size.get(name, default)
                bench, batch, shape, model = suite_setup(name, args.batch_of[name], shape,
                                                         os.path.join(run_root, "data"))
                setups[name] = (bench, batch)
                built = bench.build_model()
                n = sum(p.numel() for p in built.parameters())
                print(f"{name}: k={bench.num_tasks}, batch {args.batch_of[name]} images of {shape[0]} x {shape[1]}, "
                      f"{type(built).__name__} ({n / 1e6:.1f}M parameters){paper_note(name, args)}")
        print()
        print("| benchmark | mode | aggregator | per-task gradients | ms/step | x ls |")
        print("|---|---|---|---|---:|---:|")
        for bench_name, (bench, batch) in setups.items():
            for mode in args.modes:
                entries = build_entries(bench, batch, mode, args, run_root)
                try:
                    time_group(entries, args, sync)
                finally:
                    for e in entries:
                        e.trainer.close()
                base = statistics.median(entries[0].times)
                for e in entries:
                    t = statistics.median(e.times)
                    print(f"| {bench_name} | {mode} | {e.aggregator} | {grads_label(e, mode)} | "
                          f"{t * 1e3:.1f} | {t / base:.2f} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
