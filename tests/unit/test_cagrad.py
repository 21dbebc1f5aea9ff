"""CAGrad: the dual is solved to optimality and the primal guarantee holds."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import aggregators
from aggregators import solvers
from helpers import degenerate_cases, ill_conditioned_grads, no_host_reads
from properties import assert_homogeneous


def dual_objective(M, w, c):
    """w^T M 1/k + sqrt(phi) sqrt(w^T M w), phi = c^2 ||g0||^2 (batched over rows of w)."""
    k = M.shape[0]
    a = np.full(k, 1.0 / k)
    sqrt_phi = c * math.sqrt(max(a @ M @ a, 0.0))
    w = np.atleast_2d(w)
    quad = np.einsum("ij,jk,ik->i", w, M, w)
    return w @ (M @ a) + sqrt_phi * np.sqrt(np.maximum(quad, 0.0))


def cases():
    out = []
    for k, n, spread in [(2, 10, 1.0), (3, 2, 2.0), (5, 30, 3.0), (10, 4, 1.0), (20, 60, 3.0), (40, 15, 1.0)]:
        for seed in (0, 1):
            out.append((k, n, spread, seed))
    return out


@pytest.mark.parametrize("k,n,spread,seed", cases())
@pytest.mark.parametrize("c", [0.4, 0.5, 0.9])
def test_dual_solution_is_optimal(k, n, spread, seed, c):
    G = ill_conditioned_grads(k, n, seed, spread)
    M = (G @ G.T).numpy()
    agg = aggregators.make("cagrad", k, c=c)
    w = agg.dual_weights(G @ G.T).numpy()
    assert (w >= 0).all() and abs(w.sum() - 1) < 1e-12
    f = dual_objective(M, w, c)[0]
    scale = np.sqrt(np.diag(M)).max() * math.sqrt(np.diag(M).max())
    rng = np.random.default_rng(seed)
    for conc in (0.1, 1.0):
        others = dual_objective(M, rng.dirichlet(np.full(k, conc), size=300), c)
        assert (others >= f - 1e-12 * scale).all()
    vertices = dual_objective(M, np.eye(k), c)
    assert (vertices >= f - 1e-12 * scale).all()
    if k <= 10:
        res = minimize(lambda x: dual_objective(M, x, c)[0], np.full(k, 1 / k), bounds=[(0, 1)] * k,
                       constraints={"type": "eq", "fun": lambda x: 1 - x.sum()}, method="SLSQP")
        x = np.clip(res.x, 0, None)
        assert f <= dual_objective(M, x / x.sum(), c)[0] + 1e-12 * scale


@pytest.mark.parametrize("k,n,spread,seed", cases())
def test_primal_guarantee(k, n, spread, seed):
    """d* = (1 + c^2) d maximises min_i g_i . v over the ball ||v - g0|| <= c ||g0||, lies on
    its boundary, and by strong duality min_i g_i . d* equals the dual optimum."""
    c = 0.5
    G = ill_conditioned_grads(k, n, seed, spread)
    agg = aggregators.make("cagrad", k, c=c)
    d_star = (1 + c * c) * agg(G)
    g0 = G.mean(0)
    r = c * float(g0.norm())
    assert abs(float((d_star - g0).norm()) - r) <= 1e-9 * r
    value = float((G @ d_star).min())
    w = agg.dual_weights(G @ G.T).numpy()
    dual = dual_objective((G @ G.T).numpy(), w, c)[0]
    scale = float(G.norm(dim=1).max()) * (float(g0.norm()) + r)
    assert abs(value - dual) <= 1e-10 * scale
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(500, G.shape[1], generator=gen, dtype=torch.float64)
    radius = r * torch.rand(500, 1, generator=gen, dtype=torch.float64).sqrt()
    v = g0 + radius * v / v.norm(dim=1, keepdim=True)
    assert float((v @ G.T).min(dim=1).values.max()) <= value + 1e-10 * scale


def test_c_zero_is_the_mean_gradient():
    G = ill_conditioned_grads(7, 20, seed=3)
    agg = aggregators.make("cagrad", 7, c=0.0)
    assert torch.allclose(agg(G), G.mean(0), rtol=1e-12, atol=0)
    assert torch.allclose(agg.weights, torch.full((7,), 1 / 7, dtype=torch.float64))


def test_known_values_orthogonal_unit_gradients():
    # g_w* = g0 by symmetry, so d* = (1 + c) g0 and d = (1 + c) / (1 + c^2) g0
    G = torch.eye(2, dtype=torch.float64)
    for c in (0.4, 0.5, 0.9):
        d = aggregators.make("cagrad", 2, c=c)(G)
        assert torch.allclose(d, (1 + c) / (1 + c * c) * G.mean(0), rtol=1e-12)


def test_two_tasks_closed_form():
    """k = 2: the dual is one-dimensional; compare with a dense grid."""
    G = torch.tensor([[1.0, 0.2], [-0.6, 1.5]], dtype=torch.float64)
    c = 0.5
    agg = aggregators.make("cagrad", 2, c=c)
    agg(G)
    w = agg.dual_weights(G @ G.T).numpy()
    grid = np.linspace(0, 1, 200001)
    vals = dual_objective((G @ G.T).numpy(), np.stack([grid, 1 - grid], 1), c)
    assert abs(w[0] - grid[vals.argmin()]) < 1e-4
    assert dual_objective((G @ G.T).numpy(), w, c)[0] <= vals.min() + 1e-14


def test_scaling():
    G = ill_conditioned_grads(5, 12, seed=8)
    assert_homogeneous(lambda: aggregators.make("cagrad", 5), G, 1.0, factors=(1e-5, 7.0, 1e4), rtol=1e-9, atol=0)


def test_zero_mean_gradient_and_large_c():
    g = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    d = aggregators.make("cagrad", 2)(torch.stack([g[0], -g[0]]))
    assert float(d.norm()) < 1e-12
    # c > 1 with 0 inside the hull: g_w* = 0 and d = g0 / (1 + c^2)
    G = torch.stack([g[0], g[1], -(g[0] + g[1])]) + 0.1 * g[0]
    agg = aggregators.make("cagrad", 3, c=1.5)
    d = agg(G)
    assert torch.allclose(d, G.mean(0) / (1 + 1.5 ** 2), rtol=1e-9)


def test_presets_and_validation():
    assert aggregators.hyperparameters("cagrad") == {"c": 0.5, "every": 1, "tasks_per_step": None}
    assert aggregators.preset("cagrad", "mt10") == {"c": 0.9}
    assert aggregators.make("cagrad", 3, **aggregators.preset("cagrad", "nyuv2")).c == 0.4
    for bad in (-0.1, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="c must be"):
            aggregators.make("cagrad", 3, c=bad)


# ----------------------------------------------------------------------------- device form
def _device(fn, monkeypatch):
    """``fn()`` in the device form (a GPU's torch solve, forced on the CPU), which must
    read nothing on the host."""
    with solvers.device_form(), no_host_reads(monkeypatch):
        return fn()


def _unique_cases():
    """Random and ill-conditioned gradients with more dimensions than tasks."""
    out = []
    for k in (2, 3, 5, 10, 40):
        n = 2 * k + 5
        gen = torch.Generator().manual_seed(k)
        signs = torch.randint(0, 2, (k, 1), generator=gen, dtype=torch.float64) * 2 - 1
        out.append((f"random k={k}", torch.randn(k, n, generator=gen, dtype=torch.float64)))
        out.append((f"ill-conditioned k={k}", signs * ill_conditioned_grads(k, n, seed=k, spread=3.0)))
    return out


@pytest.mark.parametrize("c", [0.4, 0.9, 1.5])
@pytest.mark.parametrize("case,G", _unique_cases(), ids=[c for c, _ in _unique_cases()])
def test_device_form_gives_the_host_weights(case, G, c, monkeypatch):
    """The barrier-method device form gives the exact host weights (and dual weights) to
    1e-8 (relative, max norm; observed below 1e-9) on random and ill-conditioned (norms
    1e-3 .. 1e3) gradients, reading nothing on the host."""
    k = G.shape[0]
    agg = aggregators.make("cagrad", k, c=c)
    M = G @ G.T
    w_host = agg.weights_from_gram(M)
    w_dev = _device(lambda: agg.weights_from_gram(M), monkeypatch)
    assert w_dev.dtype == torch.float64 and w_dev.shape == (k,)
    assert float((w_dev - w_host).abs().max()) <= 1e-8 * float(w_host.abs().max()), case
    dual_host = agg.dual_weights(M)
    dual_dev = _device(lambda: agg.dual_weights(M), monkeypatch)
    assert float((dual_dev - dual_host).abs().max()) <= 1e-8, case


def _degenerate_cases():
    g = torch.randn(2, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    cases = dict(degenerate_cases())
    cases["conflicting pair g2 = -g1"] = torch.stack([g[0], -g[0]])
    # 0 inside the hull: with c >= 1, g_w* = 0 and d = g0 / (1 + c^2)
    cases["zero in the hull"] = torch.stack([g[0], g[1], -(g[0] + g[1])]) + 0.1 * g[0]
    cases["rank-deficient k=10 n=3"] = torch.randn(10, 3, generator=torch.Generator().manual_seed(2),
                                                   dtype=torch.float64)
    return cases


@pytest.mark.parametrize("c", [0.0, 0.5, 1.5])
@pytest.mark.parametrize("case", list(_degenerate_cases()))
def test_device_form_on_degenerate_inputs(case, c, monkeypatch):
    """Identical rows, g_2 = -g_1, zero gradients, norms ten orders apart, 0 in the hull,
    c = 0 and c >= 1: the device direction is the host's to 1e-9 of its length plus 1e-12
    of the longest gradient (where the weights are not unique, identical rows, only the
    direction is); with c = 0 the weights are exactly 1/k."""
    G = _degenerate_cases()[case]
    k = G.shape[0]
    agg = aggregators.make("cagrad", k, c=c)
    M = G @ G.T
    w_host = agg.weights_from_gram(M)
    w_dev = _device(lambda: agg.weights_from_gram(M), monkeypatch)
    assert bool(torch.isfinite(w_dev).all()), case
    d_host, d_dev = w_host @ G, w_dev @ G
    longest = float(G.norm(dim=1).max())
    assert float((d_dev - d_host).norm()) <= 1e-9 * float(d_host.norm()) + 1e-12 * longest, case
    if c == 0.0:
        assert torch.equal(w_dev, torch.full((k,), 1 / k, dtype=torch.float64))
    if case != "duplicate":   # unique weights
        assert float((w_dev - w_host).abs().max()) <= 1e-9 * float(w_host.abs().max()), case


def test_device_form_zero_hull_point_with_large_c(monkeypatch):
    """c >= 1 with 0 reachable: the device solver reports ||g_w*|| = 0 and the weights are
    exactly the host's (1/k) / (1 + c^2), d = g0 / (1 + c^2); the conflicting pair gives
    d = 0."""
    G = _degenerate_cases()["zero in the hull"]
    c = 1.5
    M = G @ G.T
    a = torch.full((3,), 1 / 3, dtype=torch.float64)
    r = c * (a @ M @ a).sqrt()
    _, norm = _device(lambda: solvers.linear_plus_norm_weights_device(M, a, r), monkeypatch)
    assert float(norm) == 0.0
    agg = aggregators.make("cagrad", 3, c=c)
    w = _device(lambda: agg.weights_from_gram(M), monkeypatch)
    assert torch.equal(w, agg.weights_from_gram(M))
    assert torch.allclose(w @ G, G.mean(0) / (1 + c * c), rtol=1e-12)
    pair = _degenerate_cases()["conflicting pair g2 = -g1"]
    w = _device(lambda: aggregators.make("cagrad", 2).weights_from_gram(pair @ pair.T), monkeypatch)
    assert float((w @ pair).norm()) < 1e-12


def test_device_form_keeps_the_primal_guarantee(monkeypatch):
    """d* = (1 + c^2) d from the device weights lies on the ball ||v - g0|| = c ||g0|| and
    attains the dual optimum min_i g_i . d* (strong duality), as the host's does."""
    c = 0.5
    for k, n, seed in [(5, 30, 0), (20, 60, 1), (40, 15, 2)]:
        G = ill_conditioned_grads(k, n, seed, spread=3.0)
        M = G @ G.T
        agg = aggregators.make("cagrad", k, c=c)
        w = _device(lambda: agg.weights_from_gram(M), monkeypatch)
        d_star = (1 + c * c) * (w @ G)
        g0 = G.mean(0)
        r = c * float(g0.norm())
        assert abs(float((d_star - g0).norm()) - r) <= 1e-9 * r
        dual = dual_objective(M.numpy(), _device(lambda: agg.dual_weights(M), monkeypatch).numpy(), c)[0]
        scale = float(G.norm(dim=1).max()) * (float(g0.norm()) + r)
        assert abs(float((G @ d_star).min()) - dual) <= 1e-10 * scale
