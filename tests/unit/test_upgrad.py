"""UPGrad: projections onto the dual cone, averaged; never conflicts with a task."""

import pytest
import torch
from helpers import degenerate_cases, ill_conditioned_grads, no_host_reads
from properties import assert_homogeneous, assert_non_conflicting, assert_weighted

import aggregators
from aggregators import solvers
from aggregators.qp import dual_cone_projections


def conflicting_grads(k, n, seed, spread=2.0):
    """Gradients with negative inner products (random directions, g_1 against g_0)."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-spread, spread, k, dtype=torch.float64)[torch.randperm(k, generator=gen)]
    raw = torch.randn(k, n, generator=gen, dtype=torch.float64)
    raw[1] = -raw[0] + 0.5 * raw[1]
    return scales[:, None] * raw


@pytest.mark.parametrize("k,n", [(2, 5), (3, 2), (5, 3), (10, 6), (30, 10), (50, 60)])
@pytest.mark.parametrize("seed", [0, 1])
def test_never_conflicts(k, n, seed):
    G = conflicting_grads(k, n, seed)
    assert float((G @ G.T).min()) < 0
    agg = aggregators.make("upgrad", k)
    assert_weighted(agg, G)
    assert_non_conflicting(agg, G, rtol=1e-10, scale=float(G.norm(dim=1).max()))


@pytest.mark.parametrize("k,n", [(3, 2), (10, 6), (30, 10)])
def test_kkt_of_each_projection(k, n):
    G = conflicting_grads(k, n, seed=k, spread=3.0)
    M = G @ G.T
    U = torch.from_numpy(dual_cone_projections(M.numpy()))
    norms = G.norm(dim=1)
    for i in range(k):
        u = U[i]
        v = G[i] + u @ G
        slack = G @ v  # constraint values, must be >= 0
        tol = 1e-10 * norms * norms[i]
        assert (u >= 0).all()
        assert (slack >= -tol).all()
        assert ((slack * (u > 0)).abs() <= tol).all()  # complementary slackness
        # stationarity of min ||v - g_i||^2 s.t. G v >= 0: v - g_i = G^T u (by construction);
        # v is the projection: no feasible point on the segment to g_i is closer
        for t in (0.25, 0.5, 0.75):
            z = t * v + (1 - t) * G[i]
            if t < 1 and bool(((G @ z) >= 0).all()):
                assert float((z - G[i]).norm()) >= float((v - G[i]).norm()) - 1e-10 * float(norms[i])


def test_no_conflict_gives_the_mean():
    gen = torch.Generator().manual_seed(0)
    scales = torch.logspace(-3, 3, 6, dtype=torch.float64)[:, None]
    G = torch.rand(6, 20, generator=gen, dtype=torch.float64) * scales
    agg = aggregators.make("upgrad", 6)
    d = agg(G)
    assert torch.equal(agg.weights, torch.full((6,), 1 / 6, dtype=torch.float64))
    assert torch.allclose(d, G.mean(0))


def test_two_tasks_closed_form():
    """k = 2: each conflicting g_i loses its component along the other gradient."""
    g1 = torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-2.0, 1.0, 3.0], dtype=torch.float64)
    v1 = g1 - (g1 @ g2) / (g2 @ g2) * g2
    v2 = g2 - (g1 @ g2) / (g1 @ g1) * g1
    d = aggregators.make("upgrad", 2)(torch.stack([g1, g2]))
    assert torch.allclose(d, (v1 + v2) / 2, rtol=1e-12)


def test_projection_onto_the_dual_cone_against_brute_force():
    """Three gradients in the plane: compare each projection with a dense search."""
    G = torch.tensor([[1.0, 0.0], [-0.8, 0.6], [0.5, -0.2]], dtype=torch.float64)
    M = G @ G.T
    U = torch.from_numpy(dual_cone_projections(M.numpy()))
    xs = torch.linspace(-3, 3, 601, dtype=torch.float64)
    grid = torch.cartesian_prod(xs, xs)
    feasible = grid[((grid @ G.T) >= 0).all(1)]
    for i in range(3):
        v = G[i] + U[i] @ G
        best = float((feasible - G[i]).norm(dim=1).min())
        assert best - 0.01 <= float((v - G[i]).norm()) <= best + 1e-12
        assert bool(((G @ v) >= -1e-12).all())


def test_scaling_and_zero_rows():
    G = conflicting_grads(5, 3, seed=3)
    assert_homogeneous(lambda: aggregators.make("upgrad", 5), G, 1.0, factors=(1e3,), rtol=1e-9)
    G0 = G.clone()
    G0[2] = 0
    assert_non_conflicting(aggregators.make("upgrad", 5), G0, rtol=1e-10, scale=float(G0.norm()))


# ----------------------------------------------------------------------------- device form
def _device_weights(agg, M, monkeypatch):
    """The device form (a GPU's torch solve, forced on the CPU), which must read nothing
    on the host."""
    with solvers.device_form(), no_host_reads(monkeypatch):
        return agg.weights_from_gram(M)


def _unique_cases():
    """Gradient matrices with more dimensions than tasks (unique weights) and conflicts."""
    out = []
    for k in (2, 3, 5, 10, 40):
        for seed in (0, 1):
            n = 2 * k + 5
            gen = torch.Generator().manual_seed(100 * k + seed)
            signs = torch.randint(0, 2, (k, 1), generator=gen, dtype=torch.float64) * 2 - 1
            out.append((f"random k={k} s{seed}", torch.randn(k, n, generator=gen, dtype=torch.float64)))
            out.append((f"ill-conditioned k={k} s{seed}", signs * ill_conditioned_grads(k, n, seed, spread=3.0)))
            out.append((f"conflicting k={k} s{seed}", conflicting_grads(k, n, seed, spread=3.0)))
    return out


@pytest.mark.parametrize("case,G", _unique_cases(), ids=[c for c, _ in _unique_cases()])
def test_device_form_gives_the_host_weights(case, G, monkeypatch):
    """Random and ill-conditioned gradients (norms 1e-3 .. 1e3): the batched interior-point
    device form gives the exact active-set weights to 1e-9 (relative, max norm; observed
    below 1e-12), and its direction does not conflict with any task."""
    k = G.shape[0]
    agg = aggregators.make("upgrad", k)
    M = G @ G.T
    w_host = agg.weights_from_gram(M)
    w_dev = _device_weights(agg, M, monkeypatch)
    assert w_dev.dtype == torch.float64 and w_dev.shape == (k,)
    assert float((w_dev - w_host).abs().max()) <= 1e-9 * float(w_host.abs().max()), case
    norms = G.norm(dim=1)
    assert bool((G @ (w_dev @ G) >= -1e-10 * norms * float(norms.max())).all()), case


def _degenerate_cases():
    g = torch.randn(2, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    cases = dict(degenerate_cases())
    cases["conflicting pair g2 = -g1"] = torch.stack([g[0], -g[0]])
    cases["pair plus a third"] = torch.stack([g[0], -g[0], g[1]])
    cases["rank-deficient k=10 n=3"] = torch.randn(10, 3, generator=torch.Generator().manual_seed(6),
                                                   dtype=torch.float64)
    cases["rank-deficient k=40 n=5"] = conflicting_grads(40, 5, seed=7, spread=3.0)
    # u >= 0 with G^T u = 0 makes the solution set unbounded (what NNQP_RIDGE is for)
    cases["rank-deficient k=5 n=2"] = conflicting_grads(5, 2, seed=7, spread=3.0)
    return cases


@pytest.mark.parametrize("case", list(_degenerate_cases()))
def test_device_form_on_degenerate_inputs(case, monkeypatch):
    """Identical rows, g_2 = -g_1, zero gradients, norms ten orders apart and more tasks
    than dimensions: where the weights are not unique (0 in the hull of some gradients)
    the directions agree, to 1e-9 of ``||d||`` plus 1e-11 of the longest gradient (the
    device form's ridge ``NNQP_RIDGE`` and the Gram form's rounding; ``d = 0`` at a
    Pareto-stationary point), and the device direction conflicts with no task."""
    G = _degenerate_cases()[case]
    k = G.shape[0]
    agg = aggregators.make("upgrad", k)
    M = G @ G.T
    w_host = agg.weights_from_gram(M)
    w_dev = _device_weights(agg, M, monkeypatch)
    assert bool(torch.isfinite(w_dev).all()), case
    norms = G.norm(dim=1)
    longest = float(norms.max())
    d_host, d_dev = w_host @ G, w_dev @ G
    assert float((d_dev - d_host).norm()) <= 1e-9 * float(d_host.norm()) + 1e-11 * longest, case
    assert bool((G @ d_dev >= -1e-10 * norms * longest).all()), case
    if case in ("zero_row", "all_zero", "ten_orders"):   # unique weights
        assert float((w_dev - w_host).abs().max()) <= 1e-9 * float(w_host.abs().max()), case
    if case in ("zero_row", "all_zero"):
        # a zero gradient imposes no constraint and keeps its 1/k
        zero = norms == 0
        assert torch.equal(w_dev[zero], torch.full_like(w_dev[zero], 1 / k))


def test_device_form_without_conflict_is_exactly_the_mean(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    G = torch.rand(6, 20, generator=gen, dtype=torch.float64) * torch.logspace(-3, 3, 6, dtype=torch.float64)[:, None]
    w = _device_weights(aggregators.make("upgrad", 6), G @ G.T, monkeypatch)
    assert torch.equal(w, torch.full((6,), 1 / 6, dtype=torch.float64))


def test_nonneg_qp_device_against_the_host_projections(monkeypatch):
    """The batched solver itself: every row of the dual-cone multipliers U, where the
    host solves (conflicting rows), to 1e-9 of the row's largest entry."""
    G = conflicting_grads(12, 30, seed=3, spread=3.0)
    M = G @ G.T
    U = torch.from_numpy(dual_cone_projections(M.numpy()))
    with no_host_reads(monkeypatch):
        V = solvers.nonneg_qp_device(M, M)
    assert bool((V >= 0).all())
    rows = (M < 0).any(1)
    err = (V - U).abs().amax(1) / U.abs().amax(1).clamp_min(1e-300)
    assert bool((err[rows] <= 1e-9).all()), err[rows].tolist()
