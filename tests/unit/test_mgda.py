"""MGDA: the min-norm element of the convex hull, checked through its KKT conditions."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import aggregators
from aggregators import solvers
from helpers import degenerate_cases, ill_conditioned_grads, no_host_reads
from properties import assert_homogeneous


def kkt_violation(G, w):
    """Largest violation of (M w)_i >= w^T M w (all i) and equality where w_i > 0, each
    relative to the rounding scale ||g_i|| sum_j w_j ||g_j|| of (M w)_i."""
    M = G @ G.T
    nu = w @ M @ w
    norms = M.diagonal().sqrt()
    scale = norms * (w @ norms)
    gap = (M @ w - nu) / scale
    active = w > 1e-9 * w.max()
    return max(float((-gap).clamp_min(0).max()), float(gap[active].abs().max()))


@pytest.mark.parametrize("k", [2, 3, 5, 10, 25, 50])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rank_deficient", [False, True])
def test_kkt_on_ill_conditioned_inputs(k, seed, rank_deficient):
    n = max(k // 2, 1) if rank_deficient else 3 * k + 10
    G = ill_conditioned_grads(k, n, seed, spread=3.0)
    agg = aggregators.make("mgda", k)
    d = agg(G)
    w = agg.weights
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-12
    assert torch.allclose(d, w @ G)
    assert kkt_violation(G, w) < 1e-8


def test_conflicting_inputs_with_a_large_support():
    """Gradients around a common point: the min-norm point has many active tasks."""
    gen = torch.Generator().manual_seed(3)
    k, n = 40, 60
    common = torch.randn(n, generator=gen, dtype=torch.float64)
    G = common + 0.3 * torch.randn(k, n, generator=gen, dtype=torch.float64)
    agg = aggregators.make("mgda", k)
    agg(G)
    assert int((agg.weights > 0).sum()) > 5
    assert kkt_violation(G, agg.weights) < 1e-10


def test_descent_for_every_task():
    """-d decreases every task: g_i . d >= ||d||^2 (up to rounding)."""
    G = ill_conditioned_grads(8, 40, seed=4, spread=2.0)
    d = aggregators.make("mgda", 8)(G)
    assert ((G @ d) >= (d @ d) * (1 - 1e-9)).all()


@pytest.mark.parametrize("seed", range(5))
def test_two_gradients_closed_form(seed):
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor([[1.0], [0.3 + seed]], dtype=torch.float64)
    g1, g2 = torch.randn(2, 7, generator=gen, dtype=torch.float64) * scale
    gamma = float(((g2 - g1) @ g2 / (g1 - g2).pow(2).sum()).clamp(0, 1))
    agg = aggregators.make("mgda", 2)
    d = agg(torch.stack([g1, g2]))
    assert torch.allclose(agg.weights, torch.tensor([gamma, 1 - gamma], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(d, gamma * g1 + (1 - gamma) * g2, atol=1e-12)


def test_known_values():
    # orthogonal gradients with norms 1 and 2: w proportional to 1 / ||g_i||^2
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    agg = aggregators.make("mgda", 2)
    d = agg(G)
    assert torch.allclose(agg.weights, torch.tensor([0.8, 0.2], dtype=torch.float64))
    assert torch.allclose(d, torch.tensor([0.8, 0.4], dtype=torch.float64))
    # one gradient inside the others' hull direction: the shortest vertex wins
    G = torch.tensor([[1.0, 0.0], [3.0, 0.0], [2.0, 5.0]], dtype=torch.float64)
    agg = aggregators.make("mgda", 3)
    agg(G)
    assert torch.allclose(agg.weights, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_pareto_stationary_gives_zero():
    g = torch.randn(2, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    d = aggregators.make("mgda", 2)(torch.stack([g[0], -g[0]]))
    assert float(d.norm()) < 1e-12 * float(g[0].norm())
    # three gradients with 0 strictly inside their hull
    G = torch.stack([g[0], g[1], -(0.7 * g[0] + 1.3 * g[1])])
    agg = aggregators.make("mgda", 3)
    d = agg(G)
    assert float(d.norm()) < 1e-7 * float(G.norm())
    assert torch.allclose(agg.weights, torch.tensor([0.7, 1.3, 1.0], dtype=torch.float64) / 3.0, atol=1e-8)


def test_scaling():
    G = ill_conditioned_grads(6, 30, seed=5)
    assert_homogeneous(lambda: aggregators.make("mgda", 6), G, 1.0, factors=(1e-6, 3.0, 1e5), rtol=1e-9, atol=0)


def test_no_worse_than_slsqp():
    for seed in range(4):
        G = ill_conditioned_grads(6, 5, seed, spread=0.5)
        M = (G @ G.T).numpy()
        agg = aggregators.make("mgda", 6)
        agg(G)
        w = agg.weights.numpy()
        res = minimize(lambda x: x @ M @ x, np.full(6, 1 / 6), bounds=[(0, 1)] * 6,
                       constraints={"type": "eq", "fun": lambda x: 1 - x.sum()}, tol=1e-14)
        assert w @ M @ w <= res.fun + 1e-12 * np.trace(M)


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+"])
def test_normalizations(normalization):
    k = 6
    G = ill_conditioned_grads(k, 25, seed=6, spread=3.0)
    losses = torch.tensor([0.5, 2.0, 1e-3, 7.0, 0.1, 3.0], dtype=torch.float64)
    norms = G.norm(dim=1)
    n = {"l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    agg = aggregators.make("mgda", k, normalization=normalization)
    d = agg(G, losses)
    w = agg.weights
    assert torch.allclose(d, w @ G)
    # d is the min-norm element of the hull of the normalised gradients
    w_tilde = w * n
    assert abs(float(w_tilde.sum()) - 1) < 1e-10 and (w_tilde >= 0).all()
    assert kkt_violation(G / n[:, None], w_tilde) < 1e-9
    # and equals plain MGDA run on g_i / n_i
    plain = aggregators.make("mgda", k)
    assert torch.allclose(plain(G / n[:, None]), d, rtol=1e-8, atol=1e-14)


def test_l2_normalization_is_invariant_to_task_scaling():
    G = ill_conditioned_grads(4, 20, seed=7, spread=0.0)
    s = torch.tensor([1e-4, 2.0, 1e3, 0.3], dtype=torch.float64)
    d1 = aggregators.make("mgda", 4, normalization="l2")(G)
    d2 = aggregators.make("mgda", 4, normalization="l2")(s[:, None] * G)
    assert torch.allclose(d1, d2, rtol=1e-9)


def test_loss_normalizations_need_losses():
    G = ill_conditioned_grads(3, 10, seed=0)
    agg = aggregators.make("mgda", 3, normalization="loss")
    assert agg.needs_losses and not aggregators.make("mgda", 3).needs_losses
    with pytest.raises(ValueError, match="losses"):
        agg(G)
    with pytest.raises(ValueError, match="nonnegative"):
        agg(G, torch.tensor([1.0, -1.0, 2.0]))
    with pytest.raises(ValueError, match="normalization"):
        aggregators.make("mgda", 3, normalization="L2")
    # a zero loss: that task is at its minimum, the point is Pareto-stationary
    d = agg(G, torch.tensor([1.0, 0.0, 2.0]))
    assert (d == 0).all()


def _device_form_cases():
    g = torch.Generator().manual_seed(0)
    cases = dict(degenerate_cases())
    for k in (2, 3, 10, 40):
        for shift in (0.0, 2.0):   # shift: a common component, a larger support of zeros
            cases[f"random k={k} shift={shift}"] = (torch.randn(k, 50, generator=g, dtype=torch.float64)
                                                    + shift * torch.randn(1, 50, generator=g, dtype=torch.float64))
    cases["ill-conditioned k=50"] = ill_conditioned_grads(50, 200)
    cases["rank-deficient k=10 n=5"] = torch.randn(10, 5, generator=g, dtype=torch.float64)
    cases["norms 1e-5..1e5"] = (torch.randn(10, 50, generator=g, dtype=torch.float64)
                                * torch.logspace(-5, 5, 10, dtype=torch.float64)[:, None])
    return cases


@pytest.mark.parametrize("normalization", ["none", "l2"])
def test_the_device_form_gives_the_exact_direction(normalization, monkeypatch):
    """The interior-point device form (a GPU's, forced on the CPU) gives the active set's
    direction d = G^T w to 1e-6 of its length, or to the Gram form's resolution (1e-7 of
    the shortest gradient) where d = 0; it reads nothing on the host."""
    for case, G in _device_form_cases().items():
        agg = aggregators.make("mgda", G.shape[0], normalization=normalization)
        M = G @ G.T
        w_host = agg.weights_from_gram(M)
        with solvers.device_form(), no_host_reads(monkeypatch):
            w_dev = agg.weights_from_gram(M)
        diff = w_dev - w_host
        err = float((diff @ M @ diff).clamp_min(0).sqrt())
        norms = G.norm(dim=1)
        shortest = float(norms[norms > 0].min()) if (norms > 0).any() else 0.0
        assert err <= 1e-6 * float((w_host @ M @ w_host).clamp_min(0).sqrt()) + 1e-7 * shortest, case
