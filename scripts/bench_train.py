#!/usr/bin/env python
"""Time the MT10 training loop end to end: env steps, updates, and the projected hours of
a published-protocol run (2M steps).

    python scripts/bench_train.py                               # mt10_paper shapes, CPU, ls and pivrg
    python scripts/bench_train.py --device cuda --steps 3000    # one GPU: a few minutes
    python scripts/bench_train.py --experiment mt10_quick --vector sync async --steps 400

Each configuration is a real :class:`mtrl.trainer.Trainer` run (a temporary run
directory) of ``--seed-steps`` random steps (the last of them runs the first update), then
``--warmup`` and ``--steps`` steps with one update each.
The loop's environment wait and update are timed inside the run, over the steps after
``--warmup`` updates, so construction, the random phase, the final evaluation and the
checkpoint cancel out.  Configurations run one after the other, with the same thread
count.  Columns:

* ``steps/s``: vector steps per second in the steady state (k transitions each);
* ``update ms``: the update (sampling, critic, actor, temperature, aggregators, optimisers);
* ``env wait ms``: the time the loop waits for the envs (the whole simulation with
  ``sync``; what the update did not hide with ``async``);
* ``sim share``: env wait / step time;
* ``2M h``: projected hours for the published protocol's 2M steps at this rate.

``--compile`` (default ``off default``: eager and compiled) sets ``train.compile`` per row
(the whole update under ``torch.compile``, see :mod:`mtrl.compiled_update`); the first
calls, with the compile, fall in the warm-up.  ``max`` adds CUDA graphs on a GPU.

``--skip host device`` also compares where a non-finite update is skipped
(``train.nonfinite_skip``; the device-side skip copies and restores the step's state).
The simulator floor follows: the vector env alone, each strategy of ``--vector``, with
uniform random actions for the same number of steps (episodes reset as in training),
after ``--warmup`` steps; the trainer's steps/s against it show what the update costs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import envs  # noqa: E402
from mtrl import launch  # noqa: E402
from mtrl.compiled_update import MODES as COMPILE_MODES  # noqa: E402
from mtrl.trainer import Trainer, build_env, uniform_actions, vector_strategy  # noqa: E402

PROTOCOL_STEPS = 2_000_000


def compose(experiment: str, overrides: list[str]) -> dict:
    return launch.compose("train", [f"experiment={experiment}", *overrides])


class Timed:
    """Wraps a bound method and records the duration of each call after ``skip`` calls."""

    def __init__(self, fn, skip: int, device: torch.device):
        self.fn, self.skip, self.device = fn, skip, device
        self.calls, self.times, self.first, self.last_end = 0, [], None, None

    def __call__(self, *args, **kwargs):
        self.calls += 1
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self.calls > self.skip:
            self.last_end = time.perf_counter()
            self.times.append(self.last_end - t0)
            if self.first is None:
                self.first = t0
        return out


def run_one(args, method: str, vector: str, skip: str, compile_mode: str = "off") -> dict:
    overrides = [f"aggregator={method}", f"device={args.device}", f"env.vector={vector}", f"train.nonfinite_skip={skip}",
                 f"train.compile={compile_mode}",
                 f"train.steps={args.seed_steps + args.warmup + args.steps - 1}", f"train.seed_steps={args.seed_steps}",
                 "train.initial_updates=1", "train.eval_every=100000000", "train.checkpoint_every=100000000", *args.override]
    cfg = compose(args.experiment, overrides)
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        trainer = Trainer(cfg, tmp)
        try:
            # the update of step s runs between its step_async and step_wait: the first
            # update is in the seed_steps-th step, so the timed waits follow the timed updates
            update = Timed(trainer._update, args.warmup, trainer.device)
            wait = Timed(trainer.env.step_wait, args.seed_steps + args.warmup - 1, trainer.device)
            trainer._update, trainer.env.step_wait = update, wait
            trainer.train()
        finally:
            trainer.close()
    n = len(update.times)
    if n != args.steps or len(wait.times) != n:
        raise RuntimeError(f"{n} timed updates and {len(wait.times)} timed env waits, expected {args.steps}")
    span = wait.last_end - update.first        # from the first timed update to the last timed wait
    step_s = span / n
    return {"method": method, "vector": trainer.vector, "skip": trainer.nonfinite_skip, "compile": compile_mode,
            "device": str(trainer.device), "steps": n,
            "steps_per_s": 1.0 / step_s, "update_ms": 1e3 * sum(update.times) / n,
            "env_wait_ms": 1e3 * sum(wait.times) / n, "sim_share": sum(wait.times) / span,
            "protocol_hours": PROTOCOL_STEPS * step_s / 3600.0}


def simulator_floor(args, vector: str) -> dict:
    """Steps/s of the experiment's vector env alone under ``vector``, random actions."""
    env_cfg = compose(args.experiment, [f"env.vector={vector}"])["env"]
    strategy = vector_strategy(env_cfg)
    env = build_env(env_cfg, seed=0, vector=strategy)
    rng = torch.Generator().manual_seed(0)
    try:
        env.reset(seed=0)
        left, episode, t0 = env.max_episode_steps, 0, None
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                t0 = time.perf_counter()
            env.step(uniform_actions(env, rng))
            left -= 1
            if left == 0:
                episode += 1
                env.reset(seed=episode)
                left = env.max_episode_steps
        span = time.perf_counter() - t0
    finally:
        env.close()
    return {"vector": strategy, "steps": args.steps, "steps_per_s": args.steps / span,
            "step_ms": 1e3 * span / args.steps}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="mt10_paper", help="the config whose shapes are timed")
    p.add_argument("--methods", nargs="+", default=["ls", "pivrg"])
    p.add_argument("--vector", nargs="+", default=["auto"], choices=["auto", *envs.VECTOR_STRATEGIES])
    p.add_argument("--skip", nargs="+", default=["auto"], choices=["auto", "host", "device"],
                   help="train.nonfinite_skip: where a non-finite update is skipped")
    p.add_argument("--compile", nargs="+", default=["off", "default"],
                   choices=list(COMPILE_MODES), help="train.compile: also time the compiled update")
    p.add_argument("--no-floor", action="store_true", help="leave out the simulator floor")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=300, help="timed steps (one update each) per configuration")
    p.add_argument("--warmup", type=int, default=30, help="updates before timing starts")
    p.add_argument("--seed-steps", type=int, default=300, help="random steps first (fill the buffer)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("override", nargs="*", help="extra config overrides, e.g. train.batch_size=640")
    args = p.parse_args(argv)
    if min(args.steps, args.seed_steps) < 1 or args.warmup < 0:
        p.error("--steps and --seed-steps must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [run_one(args, method, vector, skip, mode) for method in args.methods for vector in args.vector
            for skip in args.skip for mode in args.compile]
    floor = [] if args.no_floor else [simulator_floor(args, vector) for vector in args.vector]
    print(f"\n{args.experiment} shapes, {args.steps} timed steps each, {torch.get_num_threads()} torch threads, "
          f"{len(os.sched_getaffinity(0))} cores")
    print(f"{'method':<10} {'vector':<6} {'skip':<6} {'compile':<8} {'device':<6} {'steps/s':>8} {'update ms':>10} "
          f"{'env wait ms':>12} {'sim share':>10} {'2M h':>7}")
    for r in rows:
        print(f"{r['method']:<10} {r['vector']:<6} {r['skip']:<6} {r['compile']:<8} {r['device']:<6} "
              f"{r['steps_per_s']:8.1f} {r['update_ms']:10.1f} {r['env_wait_ms']:12.1f} {r['sim_share']:10.2f} "
              f"{r['protocol_hours']:7.1f}")
    for r in floor:
        print(f"{'env alone':<10} {r['vector']:<6} {'':<6} {'':<8} {'':<6} {r['steps_per_s']:8.1f} {'':>10} "
              f"{r['step_ms']:12.1f} {1.0:10.2f} {PROTOCOL_STEPS / r['steps_per_s'] / 3600.0:7.1f}")
    if args.json:
        args.json.write_text(json.dumps({"trainer": rows, "simulator_floor": floor}, indent=2))


if __name__ == "__main__":
    main()
