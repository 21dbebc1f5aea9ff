"""The QP solvers of aggregators.qp and what MGDA, CAGrad, IMTL-G, Aligned-MTL and
UPGrad share: permutation equivariance, degenerate inputs, dtypes, the Gram-matrix path,
state, and a small learning problem."""

import numpy as np
import pytest
import torch
from scipy.optimize import nnls

import aggregators
from aggregators.qp import linear_plus_norm_weights, min_norm_weights, nnls_gram
from helpers import ill_conditioned_grads
from properties import assert_homogeneous, assert_permutation_invariant, assert_weighted

METHODS = ["mgda", "cagrad", "imtl_g", "aligned_mtl", "upgrad"]


# ----------------------------------------------------------------------------- solvers
@pytest.mark.parametrize("seed", range(6))
def test_nnls_gram_matches_scipy_nnls(seed):
    rng = np.random.default_rng(seed)
    m, k = (8, 15) if seed % 2 else (30, 12)  # under- and over-determined
    Z = rng.standard_normal((m, k)) * np.logspace(-3, 3, k)[rng.permutation(k)]
    y = rng.standard_normal(m)
    u, passive = nnls_gram(Z.T @ Z, Z.T @ y)
    ref, _ = nnls(Z, y, maxiter=10 * k)
    assert (u >= 0).all()
    r_ours, r_ref = np.linalg.norm(Z @ u - y), np.linalg.norm(Z @ ref - y)
    assert r_ours <= r_ref * (1 + 1e-10) + 1e-13
    # KKT: gradient Z^T (y - Z u) <= 0 off the passive set, = 0 on it
    g = Z.T @ (y - Z @ u) / np.linalg.norm(Z, axis=0)
    assert (g <= 1e-10 * np.linalg.norm(y)).all()
    assert np.abs(g[passive]).max(initial=0) <= 1e-10 * np.linalg.norm(y)


def test_nnls_warm_start_gives_the_same_answer():
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((10, 20))
    y = rng.standard_normal(10)
    cold, passive = nnls_gram(Z.T @ Z, Z.T @ y)
    for guess in (passive, ~passive, np.ones(20, dtype=bool), rng.random(20) < 0.5):
        warm, _ = nnls_gram(Z.T @ Z, Z.T @ y, passive=guess)
        assert np.allclose(Z @ warm, Z @ cold, rtol=1e-9, atol=1e-12)


def test_min_norm_weights_random_stress():
    """KKT of the simplex QP on 200 random problems: conflicting, rank-deficient,
    duplicated and ten-orders-of-magnitude inputs, k from 2 to 50."""
    rng = np.random.default_rng(1)
    worst = 0.0
    for trial in range(200):
        k = int(rng.integers(2, 51))
        n = int(rng.integers(1, 2 * k + 3))
        G = rng.standard_normal((k, n))
        kind = trial % 4
        if kind == 1:
            G = G + 3 * rng.standard_normal(n)
        elif kind == 2:
            G = G * np.logspace(-5, 5, k)[rng.permutation(k)][:, None]
        elif kind == 3:
            G = np.concatenate([G[: k // 2 + 1], G[: k - k // 2 - 1]])
        M = G @ G.T
        w, _ = min_norm_weights(M)
        assert (w >= 0).all() and abs(w.sum() - 1) < 1e-12
        norms = np.sqrt(np.diag(M))
        gap = (M @ w - w @ M @ w) / (norms * (w @ norms))
        worst = max(worst, (-gap).max(), np.abs(gap[w > 1e-9 * w.max()]).max())
    assert worst < 1e-10


def test_linear_plus_norm_handles_edge_cases():
    M = np.eye(3)
    a = np.full(3, 1 / 3)
    w, xn = linear_plus_norm_weights(M, a, r=0.0)  # linear objective: all vertices tie
    assert np.allclose(w, 1 / 3)
    w, xn = linear_plus_norm_weights(np.zeros((3, 3)), a, r=1.0)
    assert np.isfinite(w).all() and xn == 0.0


# ----------------------------------------------------------------------------- shared
@pytest.mark.parametrize("name", METHODS)
def test_permutation_equivariance(name):
    k = 6
    G = ill_conditioned_grads(k, 9, seed=2)
    G[1] = -0.5 * G[0] + 0.1 * G[1]  # a conflict, so that UPGrad projects
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert_permutation_invariant(aggregators.make(name, k), aggregators.make(name, k), G, perm=perm,
                                 check_weights=True, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("k", [3, 50])
def test_degenerate_inputs_give_finite_directions(name, k):
    gen = torch.Generator().manual_seed(k)
    g = torch.randn(k, 20, generator=gen, dtype=torch.float64)
    dup = g.clone()
    dup[1] = dup[0]
    opp = g.clone()
    opp[1] = -opp[0]
    zero_row = g.clone()
    zero_row[1] = 0
    ten = g * torch.logspace(-5, 5, k, dtype=torch.float64)[:, None]
    many_dup = g[torch.arange(k) % 2]  # only two distinct gradients
    cases = {
        "duplicate": dup,
        "opposite": opp,
        "zero_row": zero_row,
        "all_zero": torch.zeros(k, 20, dtype=torch.float64),
        "ten_orders": ten,
        "many_duplicates": many_dup,
        "tiny": 1e-150 * g,
        "huge": 1e150 * g,
    }
    for G in cases.values():
        assert_weighted(aggregators.make(name, k), G)
    d = aggregators.make(name, k)(cases["all_zero"])
    assert (d == 0).all()


@pytest.mark.parametrize("name", METHODS)
def test_global_scaling(name):
    """Every one of these directions is positively homogeneous: G -> s G gives d -> s d."""
    G = ill_conditioned_grads(5, 12, seed=4)
    assert_homogeneous(lambda: aggregators.make(name, 5), G, 1.0, factors=(1e-7, 1e6), rtol=1e-8, atol=0)


@pytest.mark.parametrize("name", METHODS)
def test_float32_and_gram_path_agree(name):
    k = 4
    G = ill_conditioned_grads(k, 50, seed=4, spread=1.0)
    G[2] = -0.3 * G[0] + 0.2 * G[2]
    d32 = aggregators.make(name, k)(G.float())
    assert d32.dtype == torch.float32
    w = aggregators.make(name, k).gram_weights(G @ G.T)
    assert w.dtype == torch.float64
    assert torch.allclose(d32.double(), w @ G, rtol=1e-3, atol=1e-5 * float(G.norm()))


@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_and_reset(name):
    k = 4
    G = ill_conditioned_grads(k, 12, seed=1)
    a = aggregators.make(name, k)
    a(G)
    b = aggregators.make(name, k)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(G), b(G))
    a.reset()
    assert a.weights is None
    assert torch.equal(a(G), b(G))


@pytest.mark.parametrize("name", METHODS)
def test_learning_on_quadratic_tasks(name):
    """Three imbalanced quadratics l_i = s_i / 2 ||x - c_i||^2 (s = 1, 10, 0.1) from a far
    start: 300 steps of x -= lr d cut the mean loss by more than 3x; MGDA never increases
    any single loss (g_i . d >= ||d||^2) and ends Pareto-stationary."""
    gen = torch.Generator().manual_seed(0)
    k, n = 3, 6
    centres = torch.randn(k, n, generator=gen, dtype=torch.float64)
    s = torch.tensor([1.0, 10.0, 0.1], dtype=torch.float64)
    x = torch.full((n,), 5.0, dtype=torch.float64)

    def losses_and_grads(x):
        diff = x - centres
        return 0.5 * s * (diff ** 2).sum(1), s[:, None] * diff

    agg = aggregators.make(name, k)
    l0, G0 = losses_and_grads(x)
    lr = {"mgda": 0.5, "cagrad": 0.05, "imtl_g": 0.5, "aligned_mtl": 0.5, "upgrad": 0.05}[name]
    for _ in range(300):
        l, G = losses_and_grads(x)
        x = x - lr * agg(G, l)
        if name == "mgda":
            assert (losses_and_grads(x)[0] <= l * (1 + 1e-12)).all()
    l, G = losses_and_grads(x)
    assert float(l.mean()) < 0.3 * float(l0.mean())
    if name == "mgda":
        assert float(agg(G).norm()) < 1e-6 * float(agg(G0).norm())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("name", METHODS)
def test_cuda_inputs(name):
    k = 5
    G = ill_conditioned_grads(k, 30, seed=0)
    d_cpu = aggregators.make(name, k)(G)
    d_gpu = aggregators.make(name, k)(G.cuda())
    assert d_gpu.device.type == "cuda"
    assert torch.allclose(d_gpu.cpu(), d_cpu, rtol=1e-7, atol=1e-12 * float(G.norm()))
