"""IMTL-G: equal projections of d on every unit task gradient."""

import pytest
import torch

import aggregators
from helpers import ill_conditioned_grads


def projections(G, d):
    return (G @ d) / G.norm(dim=1)


@pytest.mark.parametrize("k", [2, 3, 5, 10, 30, 50])
@pytest.mark.parametrize("seed", [0, 1])
def test_equal_projections(k, seed):
    G = ill_conditioned_grads(k, 2 * k + 10, seed, spread=3.0)
    agg = aggregators.make("imtl_g", k)
    d = agg(G)
    w = agg.weights
    assert abs(float(w.sum()) - 1) < 1e-12
    assert torch.allclose(d, w @ G)
    p = projections(G, d)
    assert float((p - p.mean()).abs().max()) <= 1e-8 * float(p.abs().max())


def test_matches_the_papers_closed_form():
    """alpha_{2:k} = g_1 U^T (D U^T)^(-1), alpha_1 = 1 - sum alpha_{2:k} (IMTL sec. 3.2)."""
    k = 5
    G = ill_conditioned_grads(k, 20, seed=3, spread=1.0)
    U = G / G.norm(dim=1, keepdim=True)
    D = G[:1] - G[1:]
    Ud = U[:1] - U[1:]
    a = G[0] @ Ud.T @ torch.linalg.inv(D @ Ud.T)
    alpha = torch.cat([1 - a.sum().reshape(1), a])
    agg = aggregators.make("imtl_g", k)
    agg(G)
    assert torch.allclose(agg.weights, alpha, rtol=1e-8, atol=1e-12)


def test_known_values():
    # orthogonal gradients: d . u_i = alpha_i ||g_i|| equal -> alpha proportional to 1/||g_i||
    G = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    agg = aggregators.make("imtl_g", 3)
    agg(G)
    assert torch.allclose(agg.weights, torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64) / 7)


def test_direction_invariant_to_task_scaling():
    """Rescaling a task's loss leaves the unit vectors, hence the direction of d, unchanged."""
    G = ill_conditioned_grads(4, 15, seed=4, spread=1.0)
    s = torch.tensor([1e-3, 5.0, 1e2, 0.2], dtype=torch.float64)
    d1 = aggregators.make("imtl_g", 4)(G)
    d2 = aggregators.make("imtl_g", 4)(s[:, None] * G)
    cos = float(d1 @ d2 / (d1.norm() * d2.norm()))
    assert cos > 1 - 1e-10


def test_degenerate_inputs():
    g = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # duplicates: still equal projections, the duplicates share their weight
    G = torch.stack([g[0], g[0], g[1], g[2]])
    agg = aggregators.make("imtl_g", 4)
    d = agg(G)
    p = projections(G, d)
    assert torch.isfinite(d).all() and float((p - p.mean()).abs().max()) < 1e-8 * float(p.abs().max())
    assert abs(float(agg.weights[0] - agg.weights[1])) < 1e-8 and abs(float(agg.weights.sum()) - 1) < 1e-10
    # scaled duplicate
    G = torch.stack([g[0], 3 * g[0], g[1]])
    d = aggregators.make("imtl_g", 3)(G)
    p = projections(G, d)
    assert float((p - p.mean()).abs().max()) < 1e-8 * float(p.abs().max())
    # opposite gradients: the only equal projection is 0
    agg = aggregators.make("imtl_g", 2)
    d = agg(torch.stack([g[0], -2 * g[0]]))
    assert float(d.norm()) < 1e-10 and abs(float(agg.weights.sum()) - 1) < 1e-10
    # zero row: weight 0, the others as without it
    agg = aggregators.make("imtl_g", 3)
    d = agg(torch.stack([g[0], torch.zeros(12, dtype=torch.float64), g[1]]))
    assert agg.weights[1] == 0
    assert torch.allclose(d, aggregators.make("imtl_g", 2)(torch.stack([g[0], g[1]])))
