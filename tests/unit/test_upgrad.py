"""UPGrad: projections onto the dual cone, averaged; never conflicts with a task."""

import pytest
import torch
from properties import assert_homogeneous, assert_non_conflicting, assert_weighted

import aggregators
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
