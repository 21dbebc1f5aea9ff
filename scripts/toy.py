#!/usr/bin/env python
"""Run aggregators on the two-task toy problem and draw their loss-space trajectories.

    python scripts/toy.py                               # every method, 5 starts
    python scripts/toy.py --methods pivrg nash_mtl mgda --steps 5000 --scale 0.1

Writes a PNG (one panel per method: trajectories in (L1, L2) with the Pareto front) and
prints a table of each method's distance to the front at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import aggregators  # noqa: E402
from mtrl.toy import INITS, pareto_front, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=None, help="registry names (default: all)")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplier of L1 (0.1: imbalanced variant)")
    ap.add_argument("--out", default="toy_trajectories.png")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    args = ap.parse_args(argv)

    methods = args.methods or aggregators.available()
    for m in methods:
        if m not in aggregators.available():
            ap.error(f"unknown method {m!r}; valid: {', '.join(aggregators.available())}")

    front = pareto_front(args.scale)
    jobs = [(m, init) for m in methods for init in INITS]
    kwargs = dict(steps=args.steps, lr=args.lr, scale=args.scale)
    with tqdm(total=len(jobs), desc="toy", unit="run") as bar:
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
                futures = [pool.submit(run, m, init, **kwargs) for m, init in jobs]
                trajectories = []
                for fut in futures:
                    trajectories.append(fut.result())
                    bar.update()
        else:
            trajectories = []
            for m, init in jobs:
                trajectories.append(run(m, init, **kwargs))
                bar.update()
    results = {m: [t for t in trajectories if t.method == m] for m in methods}

    cols = min(6, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    colours = plt.cm.viridis(torch.linspace(0, 0.9, len(INITS)).tolist())
    print(f"\n{'method':<14} {'mean dist. to front':>20} {'final (L1, L2) per start'}")
    for ax, m in zip(axes.flat, methods):
        ax.plot(front[:, 0], front[:, 1], color="0.6", lw=3, label="Pareto front")
        dists = []
        for traj, c in zip(results[m], colours):
            L = torch.tensor(traj.losses)
            ax.plot(L[:, 0], L[:, 1], color=c, lw=1.2)
            ax.scatter(L[0, 0], L[0, 1], color=c, s=12)
            ax.scatter(L[-1, 0], L[-1, 1], color=c, marker="*", s=40, edgecolor="k", linewidth=0.3)
            dists.append(float((front - L[-1].to(front.dtype)).norm(dim=1).min()))
        ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=6)
        finals = "  ".join(f"({t.losses[-1][0]:.2f},{t.losses[-1][1]:.2f})" for t in results[m])
        print(f"{m:<14} {sum(dists) / len(dists):>20.3f} {finals}")
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    fig.suptitle(f"Two-task toy: loss-space trajectories ({args.steps} Adam steps, lr {args.lr}, scale {args.scale})")
    fig.supxlabel("L1")
    fig.supylabel("L2")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"\nwrote {os.path.abspath(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
