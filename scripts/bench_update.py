#!/usr/bin/env python
"""Time one full multi-task SAC update (critic, actor, temperature) at MT10 shapes.

    python scripts/bench_update.py                       # k = 10, batch 1,280, MLP 3 x 400, CPU
    python scripts/bench_update.py --device cuda --methods pivrg nash_mtl

Rows, all measured in this run: plain MH-SAC with linear scalarisation (one ordinary
backward), every requested gradient aggregator with the per-task gradients from one
vectorised pass (``torch.func.vmap``), and the reference approach for the same
aggregators: one backward pass per task (``autograd.grad`` k times with
``retain_graph``).  Ratios are to plain MH-SAC.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import mtrl.per_task_grads as ptg  # noqa: E402
from agents import MultiTaskSAC, make_aggregators  # noqa: E402


def loop_per_task_grads(loss_fn, shared, task, *batch):
    """The reference approach: k separate backward passes through the batched losses."""
    sh = {n: p.detach().requires_grad_(True) for n, p in shared.items()}
    tk = {n: p.detach().requires_grad_(True) for n, p in task.items()}
    losses = ptg.per_task_losses(loss_fn, sh, tk, *batch)
    k = losses.shape[0]
    g_sh = {n: [] for n in sh}
    g_tk = {n: torch.zeros_like(p) for n, p in tk.items()}
    params = list(sh.values()) + list(tk.values())
    for i in range(k):
        grads = torch.autograd.grad(losses[i], params, retain_graph=i < k - 1, allow_unused=True)
        for n, g in zip(sh, grads[: len(sh)]):
            g_sh[n].append(torch.zeros_like(sh[n]) if g is None else g)
        for n, g in zip(tk, grads[len(sh):]):
            if g is not None:
                g_tk[n][i] = g[i]
    return losses.detach(), {n: torch.stack(v) for n, v in g_sh.items()}, g_tk


def make_batch(k: int, per_task: int, obs_dim: int, act_dim: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(k, per_task, obs_dim, generator=g).to(device),
        "action": (torch.rand(k, per_task, act_dim, generator=g) * 2 - 1).to(device),
        "reward": torch.rand(k, per_task, generator=g).to(device),
        "next_obs": torch.randn(k, per_task, obs_dim, generator=g).to(device),
        "done": torch.zeros(k, per_task).to(device),
    }


def time_updates(method: str, args, device, sync) -> float:
    torch.manual_seed(0)
    agent = MultiTaskSAC(args.obs_dim, args.act_dim, args.k, kind="mh_sac", hidden=args.hidden, layers=args.layers,
                         aggregators=make_aggregators(method, args.k), device=device)
    batch = make_batch(args.k, args.batch // args.k, args.obs_dim, args.act_dim, device)
    for _ in range(2):
        agent.update(batch)
    times = []
    for _ in range(args.repeats):
        sync()
        t0 = time.perf_counter()
        agent.update(batch)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["pivrg", "nash_mtl", "fairgrad", "cagrad", "pcgrad",
                                                      "aligned_mtl", "mgda"])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1280)
    ap.add_argument("--obs-dim", type=int, default=39)
    ap.add_argument("--act-dim", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=400)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--no-reference", action="store_true", help="skip the one-backward-per-task rows")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--end-to-end", type=int, default=450, metavar="STEPS",
                    help="also run this many update steps of experiment=mt10_quick and print steps/s (0: skip)")
    ap.add_argument("--end-to-end-method", default="pivrg")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    print(f"device={device} k={args.k} batch={args.batch} MLP {args.layers} x {args.hidden} "
          f"(median of {args.repeats} updates: critic + actor + temperature)")
    plain = time_updates("ls", args, device, sync)
    print(f"{'method':<14}{'per-task grads':>22}{'ms/update':>12}{'x plain':>9}")
    print(f"{'ls (plain)':<14}{'none: one backward':>22}{plain * 1e3:>12.1f}{1.0:>9.2f}")
    vectorised = ptg.per_task_grads
    for m in args.methods:
        t = time_updates(m, args, device, sync)
        print(f"{m:<14}{'vmap (one pass)':>22}{t * 1e3:>12.1f}{t / plain:>9.2f}")
        if not args.no_reference:
            ptg.per_task_grads = loop_per_task_grads
            try:
                t = time_updates(m, args, device, sync)
            finally:
                ptg.per_task_grads = vectorised
            print(f"{m:<14}{'k backward passes':>22}{t * 1e3:>12.1f}{t / plain:>9.2f}")
    if args.end_to_end > 0:
        rate = end_to_end_steps_per_second(args.end_to_end, args.end_to_end_method, args.device)
        print(f"end to end, experiment=mt10_quick aggregator={args.end_to_end_method}: {rate:.1f} steps/s "
              f"(env step + action + update, k = 10 transitions per step; {args.end_to_end} update steps)")
    return 0


def end_to_end_steps_per_second(steps: int, method: str, device: str) -> float:
    """Steps/s of the real trainer on ``experiment=mt10_quick`` after its random phase."""
    import tempfile

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mtrl.trainer import Trainer

    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=mt10_quick", f"aggregator={method}", f"device={device}",
                                          "train.seed_steps=150", f"train.steps={150 + steps}",
                                          "train.eval_every=1000000", "train.checkpoint_every=1000000"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(OmegaConf.to_container(cfg, resolve=True), run_dir)
        trainer.total_steps = 150  # the random phase, timed separately
        trainer.train()
        seed_time = trainer.wall_time
        trainer.total_steps = 150 + steps
        trainer.train()
        rate = steps / (trainer.wall_time - seed_time)
        trainer.close()
    return rate


if __name__ == "__main__":
    raise SystemExit(main())
