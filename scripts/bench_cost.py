#!/usr/bin/env python
"""Cost versus quality of every gradient method under the cost knobs (``aggregators.cost``).

    OMP_NUM_THREADS=1 python scripts/bench_cost.py                      # the README table (~40 min, 2 cores)
    python scripts/bench_cost.py --methods nash_mtl,pcgrad --seeds 0    # a slice
    python scripts/bench_cost.py --quick                                # a smoke run (seconds)

For each gradient method and each cost setting (``every`` = 1, 5, 20; ``tasks_per_step`` =
k/4, k/2; the representation mode ``mode=rep``, "-UB"), and for the loss-only methods as
reference rows:

* **step time relative to LS** on two shapes, measured in this process, one thread, the
  settings taking turns one timed ``SupervisedTrainer.train_step`` each per round (so the
  drifts of a shared machine hit all alike), the mean over 20 rounds (so that ``every``'s
  solve steps count at their share): ``multidigits`` (k = 4,
  its real batch of 128 pairs, DigitsCNN) and CelebA's shapes (k = 40, the 9-layer CNN on
  random 64 x 64 images, ``--celeba-batch`` images; no data set is read);
* **final dm%** on ``benchmark=multidigits`` (its protocol, 20 epochs; real data), one
  full run per seed in ``--jobs`` worker processes of one thread each (after the timing,
  never during it), as mean +- s.e.m. over the seeds.  A run directory under ``--out``
  that holds a ``results.json`` for the same config is read back instead of trained again.

The settings a method does not take are left out (``every`` / ``tasks_per_step`` for the
methods that are not Gram-matrix methods, ConsMTL and CosReg; ``tasks_per_step`` for MGDA,
whose min-norm point is 0 once a gradient is zero).  Writes ``cost.csv`` and ``cost.md``
under ``--out`` (atomically, ``mtrl.run_files``) and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import aggregators  # noqa: E402
from aggregators.registry import takes_cost_knobs  # noqa: E402
from aggregators.cost import subsample_support  # noqa: E402
from bench_supervised import Entry, SyntheticCelebA, celeba_batch, time_group  # noqa: E402
from mtrl.supervised.trainer import SupervisedTrainer  # noqa: E402

#: the gradient methods of the table (the optional upgrad joins where torchjd is installed)
GRADIENT = ("mgda", "pcgrad", "cagrad", "imtl_g", "nash_mtl", "fairgrad", "aligned_mtl", "pivrg", "sdmgrad",
            "ntkmtl", "gradvac", "graddrop", "moco", "db_mtl", "excess_mtl", "consmtl")
#: loss-only reference rows (cost about that of LS)
LOSS_ONLY = ("ls", "si", "rlw", "dwa", "uw", "famo", "stch", "go4align")
EVERY = (5, 20)


def settings(name: str, k: int, keep: set[str] | None = None) -> list[tuple[str, dict, str]]:
    """(label, aggregator knobs, mode) of every cost setting ``name`` takes with k tasks
    (those in ``keep`` only, by their k-relative label, where given)."""
    if keep is not None:
        return [row for row in settings(name, k) if relative(row[0], k) in keep]
    rows = [("plain", {}, "param")]
    agg = aggregators.make(name, k)
    if not agg.requires_grads:
        return rows
    if takes_cost_knobs(name):
        rows += [(f"every={n}", {"every": n}, "param") for n in EVERY]
        if subsample_support(agg) is None:
            rows += [(f"tasks_per_step={m}", {"tasks_per_step": m}, "param")
                     for m in dict.fromkeys((max(1, k // 4), max(1, k // 2)))]
    if not agg.coordinate_state:   # per-coordinate state needs the shared parameters (mode=param)
        rows.append(("rep", {}, "rep"))
    return rows


def relative(label: str, k: int) -> str:
    """``tasks_per_step=10`` -> ``tasks_per_step=k/4`` (the table's rows are per k)."""
    if label.startswith("tasks_per_step="):
        m = int(label.split("=")[1])
        return "tasks_per_step=k/4" if m == max(1, k // 4) else "tasks_per_step=k/2"
    return label


# -- step times ---------------------------------------------------------------------------------

def step_times(bench, batch, methods, batch_size: int, args, run_root: Path) -> dict[tuple[str, str], float]:
    """Mean seconds of one train step per (method, relative setting) on ``batch`` (the mean,
    not the median: with one warm-up step and 20 rounds, the timed steps 1..20 hold exactly
    the 4 / 1 solves of every=5 / every=20)."""
    entries = {}
    for name in methods:
        for label, knobs, mode in settings(name, bench.num_tasks, args.settings):
            cfg = {"seed": 0, "device": "cpu", "mode": mode, "aggregator": {"name": name, **knobs},
                   "aggregator_preset": bench.name, "benchmark": {"name": bench.name}, "model": {},
                   "train": {"epochs": 1, "batch_size": batch_size, "lr": 1e-4, "diagnostics_every": 0}}
            run_dir = run_root / f"{bench.name}-{name}-{label}"
            trainer = SupervisedTrainer(cfg, run_dir, benchmark=bench)
            entries[(name, relative(label, bench.num_tasks))] = Entry(name, False, trainer, batch)
    time_group(list(entries.values()), args, lambda: None)
    return {key: statistics.fmean(e.times) for key, e in entries.items()}


# -- quality on multidigits ------------------------------------------------------------------

def train_one(job: tuple[str, dict, str, int, str, int | None]) -> dict:
    """One multidigits run (in a worker of one thread): its results and training seconds."""
    name, knobs, mode, seed, run_dir, epochs = job
    torch.set_num_threads(1)
    results_path = Path(run_dir) / "results.json"
    config_path = Path(run_dir) / "bench_cost_config.json"
    overrides = ["benchmark=multidigits", f"aggregator={name}", f"mode={mode}", f"seed={seed}",
                 *[f"aggregator.{k}={v}" for k, v in knobs.items()]]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    from mtrl import launch
    from mtrl.run_files import write_json_atomic
    from mtrl.supervised.trainer import prepare_config

    cfg = prepare_config(launch.compose("supervised", overrides, resolve=True))
    if results_path.exists() and config_path.exists() and json.loads(config_path.read_text()) == overrides:
        results = json.loads(results_path.read_text())
        return {"delta_m": results["delta_m"], "seconds": results.get("bench_seconds", float("nan"))}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(config_path, overrides)
    trainer = SupervisedTrainer(cfg, run_dir)
    t0 = time.perf_counter()
    results = trainer.train()
    seconds = time.perf_counter() - t0
    trainer.close()
    write_json_atomic(results_path, {**results, "bench_seconds": seconds})
    return {"delta_m": results["delta_m"], "seconds": seconds}


def mean_sem(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:+.2f}"
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.mean(values):+.2f} ± {sem:.2f}"


# -- main ----------------------------------------------------------------------------------------

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join((*GRADIENT, *LOSS_ONLY)),
                    help="comma-separated registry names (ls is always included: the ratios' baseline)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the multidigits runs")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel training runs")
    ap.add_argument("--celeba-batch", type=int, default=8, help="images per CelebA-shaped step (default 8)")
    ap.add_argument("--repeats", type=int, default=20, help="timed rounds per setting (default 20, a multiple of "
                    "every's 5 and 20)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per setting first (default 1)")
    ap.add_argument("--epochs", type=int, default=None, help="multidigits epochs (default: its protocol's 20)")
    ap.add_argument("--settings", default=None,
                    help="comma-separated settings to keep (plain, every=5, every=20, tasks_per_step=k/4, "
                         "tasks_per_step=k/2, rep; default all)")
    ap.add_argument("--shapes", default="multidigits,celeba",
                    help="comma-separated shapes whose step times are measured (default both)")
    ap.add_argument("--no-train", action="store_true", help="step times only")
    ap.add_argument("--no-timing", action="store_true", help="multidigits runs only")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 methods, 1 seed, 1 epoch, 1 round")
    ap.add_argument("--out", default="results/cost", help="where runs, cost.csv and cost.md go")
    args = ap.parse_args(argv)
    known = set(aggregators.available())
    args.methods = ["ls"] + [m for m in dict.fromkeys(args.methods.split(",")) if m and m != "ls"]
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        ap.error(f"unknown method(s) {unknown}; valid: {', '.join(sorted(known))}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        ap.error(f"--seeds must be comma-separated ints, got {args.seeds!r}")
    for flag in ("jobs", "celeba_batch", "repeats"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1")
    args.settings = None if args.settings is None else set(args.settings.split(","))
    args.shapes = [b for b in args.shapes.split(",") if b]
    if not args.shapes or set(args.shapes) - {"multidigits", "celeba"}:
        ap.error(f"--shapes must name multidigits and/or celeba, got {','.join(args.shapes)!r}")
    if args.quick:
        args.methods, args.seeds, args.epochs, args.repeats = args.methods[:1] + ["nash_mtl"], args.seeds[:1], 1, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    from mtrl.run_files import write_text_atomic
    from mtrl.supervised.registry import build_benchmark
    from mtrl import launch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    digits_cfg = launch.compose("supervised", ["benchmark=multidigits"], resolve=True)
    digits = build_benchmark(digits_cfg["benchmark"], None)
    digits_batch = next(iter(digits.loader("train", 128, shuffle=True, seed=0)))
    celeba = SyntheticCelebA(64)
    print(f"step times: one thread, mean of {args.repeats} interleaved rounds after {args.warmup} warm-up step(s)")
    times = {"multidigits": {}, "celeba": {}}
    if not args.no_timing:
        if "multidigits" in args.shapes:
            times["multidigits"] = step_times(digits, digits_batch, args.methods, 128, args, out / "timing")
        if "celeba" in args.shapes:
            times["celeba"] = step_times(celeba, celeba_batch(args.celeba_batch), args.methods, args.celeba_batch,
                                         args, out / "timing")
    torch.set_num_threads(threads)

    quality: dict[tuple[str, str], list[float]] = {}
    if not args.no_train:
        jobs, keys = [], []
        for name in args.methods:
            for label, knobs, mode in settings(name, digits.num_tasks, args.settings):
                for seed in args.seeds:
                    rel = relative(label, digits.num_tasks)
                    jobs.append((name, knobs, mode, seed, str(out / "runs" / f"{name}-{label}" / f"seed{seed}"),
                                 args.epochs))
                    keys.append((name, rel))
        print(f"multidigits: {len(jobs)} runs in {args.jobs} worker(s)")
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            for key, res in zip(keys, pool.imap(train_one, jobs)):
                quality.setdefault(key, []).append(res["delta_m"])
                print(f"  {key[0]} {key[1]}: dm% {res['delta_m']:+.2f} ({res['seconds']:.0f} s)", flush=True)

    rows = []
    for name in args.methods:
        for label, _, _ in settings(name, digits.num_tasks, args.settings):
            rel = relative(label, digits.num_tasks)
            ratio = {b: times[b][(name, rel)] / times[b][("ls", "plain")] if (name, rel) in times[b] else None
                     for b in times}
            rows.append((name, rel, ratio["multidigits"], ratio["celeba"], quality.get((name, rel))))
    header = ("| method | setting | step time / LS, multidigits (k=4) | step time / LS, CelebA shapes (k=40) "
              f"| multidigits dm% ({len(args.seeds)} seeds, mean ± s.e.m.) |")
    lines = [header, "|---|---|---|---|---|"]
    csv = ["method,setting,ratio_multidigits,ratio_celeba,delta_m_mean,delta_m_sem,seeds"]
    for name, rel, r_d, r_c, q in rows:
        fmt = lambda r: "n/a" if r is None else f"{r:.2f}"  # noqa: E731
        lines.append(f"| {name} | {rel} | {fmt(r_d)} | {fmt(r_c)} | {'' if q is None else mean_sem(q)} |")
        m = "" if q is None else f"{statistics.mean(q):.4f}"
        s = "" if q is None or len(q) < 2 else f"{statistics.stdev(q) / math.sqrt(len(q)):.4f}"
        csv.append(f"{name},{rel},{fmt(r_d)},{fmt(r_c)},{m},{s},{0 if q is None else len(q)}")
    table = "\n".join(lines)
    print()
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "cost.md", table + "\n")
    write_text_atomic(out / "cost.csv", "\n".join(csv) + "\n")
    if quality:
        ranked = sorted(((statistics.mean(q), name, rel) for (name, rel), q in quality.items() if rel == "plain"))
        print("\nmultidigits ranking (plain settings, lower dm% is better):")
        for i, (dm, name, _) in enumerate(ranked, 1):
            print(f"{i:2d}. {name:12s} {mean_sem(quality[(name, 'plain')])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
