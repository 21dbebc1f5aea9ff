#!/usr/bin/env python
"""Time every gradient aggregator: weight solve (from the Gram matrix) and full
aggregation (gradients -> direction), next to reference solvers measured in the same run.

    python scripts/bench_aggregators.py                  # k in {2, 3, 10, 40}, n = 400,000
    python scripts/bench_aggregators.py --device cuda    # also checks PIVRG/Nash-MTL never sync

References, written here from the papers' descriptions of the public code:
* FairGrad / PIVRG: ``scipy.optimize.least_squares`` on ``M x - x^(-1/alpha)`` (PIVRG:
  ``M x - sqrt(omega / x)``) from ``x = 1/k`` with ``x >= 0``, as those repositories do.
* Nash-MTL: cvxpy (where installed) on the same convex program our solver uses,
  ``min 1/2 a^T M a - sum log a``, built afresh each call as the reference rebuilds and
  recompiles its problem (the reference solves up to 20 such programs per step).

Ratios are reference time / our weight-solve time, measured in the same process.
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
import aggregators  # noqa: E402
from aggregators.base import GramWeighting, gram_matrix  # noqa: E402


def _timeit(fn, repeats: int, sync, inputs=(None,)) -> float:
    """Median seconds of ``fn(x)`` over ``repeats`` calls, cycling through ``inputs``."""
    fn(inputs[0])  # warm-up (allocations, lazy state)
    times = []
    for r in range(repeats):
        x = inputs[(r + 1) % len(inputs)]
        sync()
        t0 = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reference_least_squares(M: np.ndarray, alpha: float = 2.0, omega: np.ndarray | None = None) -> np.ndarray:
    from scipy.optimize import least_squares

    k = M.shape[0]
    if omega is None:
        res = least_squares(lambda x: M @ x - np.power(x, -1.0 / alpha), np.ones(k) / k, bounds=(0, np.inf))
    else:
        res = least_squares(lambda x: M @ x - np.sqrt(omega / x), np.ones(k) / k, bounds=(0, np.inf))
    return res.x


def reference_cvxpy_nash(M: np.ndarray) -> np.ndarray:
    import cvxpy as cp

    k = M.shape[0]
    Mn = M / np.linalg.norm(M)
    a = cp.Variable(k, pos=True)
    prob = cp.Problem(cp.Minimize(0.5 * cp.quad_form(a, cp.psd_wrap(Mn)) - cp.sum(cp.log(a))))
    prob.solve()
    return a.value / np.sqrt(np.linalg.norm(M))


def synthetic_grads(k: int, n: int, device: str, seed: int = 0) -> torch.Tensor:
    """Correlated task gradients with norms spread over two orders of magnitude."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, generator=g)
    own = torch.randn(k, n, generator=g)
    mix = 0.3 + 0.4 * torch.rand(k, 1, generator=g)
    scales = torch.logspace(-1, 1, k)[:, None]
    return (scales * (mix * shared + (1 - mix) * own)).to(device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 10, 40])
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    device = args.device
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    names = args.methods or [m for m in aggregators.available() if aggregators.make(m, 2).requires_grads]
    try:
        import cvxpy  # noqa: F401

        have_cvxpy = True
    except ImportError:
        have_cvxpy = False

    print(f"device={device} n={args.n} repeats={args.repeats} (median ms)")
    header = f"{'method':<14}{'k':>4}{'solve ms':>11}{'full ms':>10}{'reference':>22}{'ref ms':>10}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for k in args.ks:
        grads = synthetic_grads(k, args.n, device)
        losses = torch.rand(k, device=device) + 0.5
        # The solves cycle through Gram matrices of different steps (as in training, so
        # warm starts help only as much as they would there); the shape of M, not n,
        # sets their cost.
        grams = [gram_matrix(synthetic_grads(k, 4096, device, seed=s)) for s in range(8)]
        grams_np = [m.cpu().numpy() for m in grams]
        for name in names:
            agg = aggregators.make(name, k)
            agg.check_inputs = False  # the finite check synchronises on a GPU
            if agg.uses_performance:
                agg.update_performance(torch.linspace(0, 30, k))
            solve = (
                _timeit(lambda m: agg.gram_weights(m, losses), args.repeats, sync, grams)
                if isinstance(agg, GramWeighting) else float("nan")
            )
            full = _timeit(lambda _: agg(grads, losses), max(3, args.repeats // 4), sync)
            ref_name, ref = "", float("nan")
            no_sync = lambda: None  # noqa: E731
            if name == "fairgrad":
                ref_name = "scipy least_squares"
                ref = _timeit(reference_least_squares, args.repeats, no_sync, grams_np)
            elif name == "pivrg":
                om = agg.omega.cpu().numpy()
                ref_name = "scipy least_squares"
                ref = _timeit(lambda m: reference_least_squares(m, omega=om), args.repeats, no_sync, grams_np)
            elif name == "nash_mtl" and have_cvxpy:
                ref_name = "cvxpy"
                ref = _timeit(reference_cvxpy_nash, max(3, args.repeats // 4), no_sync, grams_np)
            ratio = f"{ref / solve:7.1f}x" if ref == ref and solve == solve else ""
            print(f"{name:<14}{k:>4}{solve * 1e3:>11.3f}{full * 1e3:>10.2f}{ref_name:>22}"
                  f"{(ref * 1e3 if ref == ref else float('nan')):>10.2f}{ratio:>8}")
        if cuda:
            # no device-to-host synchronisation in the PIVRG / Nash-MTL update
            torch.cuda.set_sync_debug_mode("error")
            try:
                for name in ("pivrg", "nash_mtl"):
                    agg = aggregators.make(name, k)
                    agg.check_inputs = False
                    agg(grads, losses)
                print(f"k={k}: pivrg and nash_mtl ran with torch.cuda.set_sync_debug_mode('error'): no host sync")
            finally:
                torch.cuda.set_sync_debug_mode("default")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
