#!/usr/bin/env python
"""Time one full multi-task SAC update (critic, actor, temperature) at MT10 shapes, beside
Stable-Baselines3's SAC used as MTL-SAC (one network, one-hot task id in the observation).

    python scripts/bench_update.py                          # k = 10, batches 250 and 1,280, 3 x 400, CPU
    python scripts/bench_update.py --threads 1 2 --repeats 20
    python scripts/bench_update.py --device cuda --methods ls pivrg nash_mtl

The update is timed with the sampling from a filled replay buffer included, for SB3 and for
ours alike.  Each round times every program in turn, ``--repeats`` updates each, after
warm-up updates.  The table gives the median over ``--rounds`` rounds of the ms per update,
and the rate relative to SB3 (> 1: faster than SB3).  Batch B is the total number of
transitions per update, B / k per task, so B must be a multiple of k (256 -> 250).

Per-task gradient paths of our rows (``--paths``, see ``aggregators.engine``):

* ``split`` (the trainer's default): the k per-task weight gradients ``A_i^T delta_i`` per
  shared layer, from one backward on the task-split batch;
* ``batched``: one vmapped backward;
* ``loop``: one backward per task.

Loss-only methods (``ls``) do one ordinary backward on every path.  SB3 is the optional
``bench`` extra (``pip install -e '.[bench]'``); without it its row is left out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from agents import MultiTaskSAC  # noqa: E402
from mtrl.aggregation import component_backwards  # noqa: E402
from mtrl.host_memory import keep_freed_memory  # noqa: E402
from mtrl.replay import ReplayBuffer  # noqa: E402

OBS_DIM, ACT_DIM = 39, 4


def filled_buffer(k: int, size: int, device) -> ReplayBuffer:
    buf = ReplayBuffer(k, OBS_DIM, ACT_DIM, size, device)
    rng = np.random.default_rng(0)
    for _ in range(size):
        buf.add(rng.standard_normal((k, OBS_DIM), dtype=np.float32),
                rng.uniform(-1, 1, (k, ACT_DIM)).astype(np.float32), rng.random(k).astype(np.float32),
                rng.standard_normal((k, OBS_DIM), dtype=np.float32), np.zeros(k, dtype=bool))
    return buf


class Ours:
    """Our agent, ``method`` on every component, per-task gradients by ``path``."""

    def __init__(self, method: str, path: str, args, batch: int, device):
        torch.manual_seed(0)
        self.agent = MultiTaskSAC(OBS_DIM, ACT_DIM, args.k, kind="mh_sac", hidden=args.hidden, layers=args.layers,
                                  backward=component_backwards(method, args.k, per_task=path), device=device)
        self.buffer = filled_buffer(args.k, 2 * batch // args.k + 10, device)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.batch = batch

    def update(self) -> None:
        self.agent.update(self.buffer.sample(self.batch, self.gen))


class SB3:
    """SB3's SAC as MTL-SAC: observation ++ one-hot task id, ``net_arch`` layers x hidden."""

    def __init__(self, args, batch: int, device):
        import gymnasium as gym
        from stable_baselines3 import SAC
        from stable_baselines3.common.logger import configure

        obs_dim = OBS_DIM + args.k
        env = _Box(gym, obs_dim)
        self.model = SAC("MlpPolicy", env, batch_size=batch, buffer_size=4 * batch, learning_starts=0,
                         policy_kwargs=dict(net_arch=[args.hidden] * args.layers), device=device, seed=0)
        self.model.set_logger(configure(None, []))
        rng = np.random.default_rng(0)
        for _ in range(2 * batch):
            o = rng.standard_normal((1, obs_dim), dtype=np.float32)
            self.model.replay_buffer.add(o, o, rng.uniform(-1, 1, (1, ACT_DIM)).astype(np.float32),
                                         rng.random(1).astype(np.float32), np.zeros(1), [{}])
        self.batch = batch

    def update(self) -> None:
        self.model.train(gradient_steps=1, batch_size=self.batch)


def _Box(gym, obs_dim: int):
    class Box(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        action_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

        def reset(self, *, seed=None, options=None):
            return np.zeros(obs_dim, np.float32), {}

        def step(self, action):
            return np.zeros(obs_dim, np.float32), 0.0, False, False, {}

    return Box()


def sb3_available() -> bool:
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        return False
    return True


def measure(programs: dict, repeats: int, rounds: int, sync) -> dict[str, float]:
    """Median over rounds of the mean seconds per update; programs timed in turn."""
    for p in programs.values():
        for _ in range(2):
            p.update()
    times: dict[str, list[float]] = {name: [] for name in programs}
    for _ in range(rounds):
        for name, p in programs.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(repeats):
                p.update()
            sync()
            times[name].append((time.perf_counter() - t0) / repeats)
    return {name: statistics.median(v) for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["ls", "pivrg", "nash_mtl", "cagrad", "pcgrad", "aligned_mtl"])
    ap.add_argument("--paths", nargs="+", default=["split"], choices=["split", "batched", "loop"])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batches", nargs="+", type=int, default=[250, 1280])
    ap.add_argument("--hidden", type=int, default=400)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, torch.get_num_threads()])
    ap.add_argument("--repeats", type=int, default=5, help="updates per program per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-sb3", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's malloc settings as they are (the trainers keep freed memory)")
    args = ap.parse_args(argv)
    if not args.default_malloc:
        keep_freed_memory()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    bad = [b for b in args.batches if b % args.k]
    if bad:
        ap.error(f"--batches must be multiples of k = {args.k}: {bad}")
    use_sb3 = not args.no_sb3 and sb3_available()
    if not args.no_sb3 and not use_sb3:
        print("stable-baselines3 is not installed (pip install -e '.[bench]'): no SB3 row")

    print(f"device={device} k={args.k} MLP {args.layers} x {args.hidden}; ms per update (critic + actor + "
          f"temperature, sampling included), median of {args.rounds} rounds x {args.repeats} updates")
    print(f"{'threads':>7} {'batch':>6}  {'program':<24}{'ms/update':>10}{'x SB3 rate':>11}{'x ls':>7}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batches:
            programs = {"sb3 mtl_sac": SB3(args, batch, device)} if use_sb3 else {}
            for m in args.methods:
                for path in (["split"] if m == "ls" else args.paths):
                    programs[f"{m} ({path})" if m != "ls" else "ls"] = Ours(m, path, args, batch, device)
            ms = measure(programs, args.repeats, args.rounds, sync)
            ls = ms.get("ls")
            for name, t in ms.items():
                vs_sb3 = f"{ms['sb3 mtl_sac'] / t:11.2f}" if use_sb3 else f"{'':>11}"
                vs_ls = f"{t / ls:7.2f}" if ls else ""
                print(f"{threads:>7} {batch:>6}  {name:<24}{t * 1e3:>10.1f}{vs_sb3}{vs_ls}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
