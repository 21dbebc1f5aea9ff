"""MoCo: the tracking / lambda recursion, convergence on constant inputs, state."""

import math

import pytest
import torch

import aggregators
from aggregators.moco import project_to_simplex
from helpers import ill_conditioned_grads
from properties import assert_permutation_invariant, assert_structure

F64 = torch.float64


def t64(x):
    return torch.tensor(x, dtype=F64)


def softmax2(a, b):
    m = max(a, b)
    ea, eb = math.exp(a - m), math.exp(b - m)
    return ea / (ea + eb), eb / (ea + eb)


def project2(a, b):
    """Euclidean projection of (a, b) onto the 2-simplex (shift both by the same amount;
    clip when one coordinate would go negative)."""
    shift = (a + b - 1.0) / 2.0
    x, y = a - shift, b - shift
    if x < 0:
        return 0.0, 1.0
    if y < 0:
        return 1.0, 0.0
    return x, y


@pytest.mark.parametrize("lambda_map, simplex_map", [(None, project2), ("softmax", softmax2)])
def test_moco_two_steps_known_values(lambda_map, simplex_map):
    """Two hand-computed steps; the default maps lambda back with the paper's Euclidean
    projection, ``lambda_map="softmax"`` with the reference code's softmax."""
    agg = aggregators.make("moco", 2) if lambda_map is None else aggregators.make("moco", 2, lambda_map=lambda_map)
    # step 1 (beta_1 = 0.5, gamma_1 = 0.1):
    # g1 = (3, 4), l1 = 2 -> G_hat_1 = (1.2, 1.6); g2 = (0, -2), l2 = 1 -> G_hat_2 = (0, -1)
    # Y = 0.5 G_hat = [[0.6, 0.8], [0, -0.5]]; Y Y^T = [[1, -0.4], [-0.4, 0.25]]
    # (Y Y^T) lambda0 = (0.3, -0.075) -> z = (0.5 - 0.03, 0.5 + 0.0075) = (0.47, 0.5075)
    d = agg(t64([[3.0, 4.0], [0.0, -2.0]]), t64([2.0, 1.0]))
    Y1 = t64([[0.6, 0.8], [0.0, -0.5]])
    lam1 = simplex_map(0.47, 0.5075)
    if lambda_map is None:  # projection: both shifted by (0.9775 - 1) / 2
        assert lam1 == pytest.approx((0.48125, 0.51875), abs=1e-15)
    assert torch.allclose(agg.tracking, Y1, atol=1e-15)
    assert torch.allclose(agg.lambdas, t64(lam1), atol=1e-15)
    assert torch.allclose(d, lam1[0] * Y1[0] + lam1[1] * Y1[1], atol=1e-15)
    assert agg.step == 1 and agg.weights is None

    # step 2 (beta_2 = 0.5 / sqrt 2, gamma_2 = 0.1 / sqrt 2):
    # g1 = (0, 5), l1 = 1 -> G_hat_1 = (0, 1); g2 = (-1, 0), l2 = 3 -> G_hat_2 = (-3, 0)
    b2, c2 = 0.5 / math.sqrt(2), 0.1 / math.sqrt(2)
    d = agg(t64([[0.0, 5.0], [-1.0, 0.0]]), t64([1.0, 3.0]))
    y1 = [0.6 - b2 * (0.6 - 0.0), 0.8 - b2 * (0.8 - 1.0)]
    y2 = [0.0 - b2 * (0.0 + 3.0), -0.5 - b2 * (-0.5 - 0.0)]
    m11 = y1[0] ** 2 + y1[1] ** 2
    m22 = y2[0] ** 2 + y2[1] ** 2
    m12 = y1[0] * y2[0] + y1[1] * y2[1]
    z = (lam1[0] - c2 * (m11 * lam1[0] + m12 * lam1[1]), lam1[1] - c2 * (m12 * lam1[0] + m22 * lam1[1]))
    lam2 = simplex_map(*z)
    assert torch.allclose(agg.tracking, t64([y1, y2]), atol=1e-14)
    assert torch.allclose(agg.lambdas, t64(lam2), atol=1e-14)
    assert torch.allclose(d, t64([lam2[0] * y1[0] + lam2[1] * y2[0], lam2[0] * y1[1] + lam2[1] * y2[1]]), atol=1e-14)


def test_moco_rho_and_projection_map_one_step():
    agg = aggregators.make("moco", 2, rho=0.5, lambda_map="projection", beta=1.0, gamma=2.0)
    # beta = 1: Y = G_hat = [[1, 0], [0, 2]]; (Y Y^T + 0.5 I) lambda0 = (0.75, 2.25)
    # z = 0.5 - 2 (0.75, 2.25) = (-1, -4) -> projection onto the simplex: (1, 0)
    d = agg(t64([[7.0, 0.0], [0.0, 0.5]]), t64([1.0, 2.0]))
    assert torch.allclose(agg.lambdas, t64([1.0, 0.0]))
    assert torch.allclose(d, t64([1.0, 0.0]))


def test_moco_tracking_converges_for_constant_inputs():
    """Constant gradients: Y -> G_hat; with the default (the paper's simplex projection),
    lambda -> the min-norm point of the convex hull of the G_hat rows (the MGDA weights).
    The reference code's softmax keeps lambda near uniform instead."""
    G, losses = t64([[3.0, 0.0], [0.0, -2.0]]), t64([1.0, 2.0])
    g_hat = t64([[1.0, 0.0], [0.0, -2.0]])  # min |lam g1 + (1-lam) g2|^2 = lam^2 + 4 (1-lam)^2 at 0.8
    default, reference = aggregators.make("moco", 2), aggregators.make("moco", 2, lambda_map="softmax")
    for _ in range(1000):
        d = default(G, losses)
        reference(G, losses)
    for agg in (default, reference):
        assert torch.allclose(agg.tracking, g_hat, atol=1e-12)
        assert abs(float(agg.lambdas.sum()) - 1) < 1e-12 and (agg.lambdas >= 0).all()
    assert torch.allclose(default.lambdas, t64([0.8, 0.2]), atol=1e-6)
    assert torch.allclose(d, t64([0.8, -0.4]), atol=1e-6)
    assert torch.allclose(reference.lambdas, t64([0.5, 0.5]), atol=1e-2)


def test_moco_default_lambda_reaches_mgda_optimality_conditions():
    """Constant ill-conditioned gradients (k = 4, 5): under the default lambda map, lambda
    satisfies the KKT conditions of min_{lambda in simplex} |Y^T lambda|^2 with Y = G_hat:
    (M lambda)_i >= lambda^T M lambda for every i, with equality where lambda_i > 0
    (gamma = 1 for a short test; the default gamma = 0.1 gets there more slowly)."""
    for k, seed in ((4, 3), (5, 2)):
        G = ill_conditioned_grads(k, 12, seed=seed)
        losses = torch.linspace(0.5, 1.5, k, dtype=F64)
        agg = aggregators.make("moco", k, gamma=1.0)
        for _ in range(3000):
            agg(G, losses)
        y = agg.tracking
        assert torch.allclose(y, G / G.norm(dim=1, keepdim=True) * losses[:, None], atol=1e-10)
        lam, M = agg.lambdas, y @ y.T
        value, grad = float(lam @ M @ lam), M @ lam
        assert abs(float(lam.sum()) - 1) < 1e-12 and (lam >= 0).all()
        assert (lam > 1e-9).sum() >= 2 and (lam < 1e-9).any()  # a non-trivial active set
        assert (grad >= value - 1e-8).all()
        assert torch.allclose(grad[lam > 1e-9], torch.full_like(grad[lam > 1e-9], value), atol=1e-8)


def test_moco_state_round_trip_into_a_fresh_object():
    k = 4
    gs = [ill_conditioned_grads(k, 30, seed=s) for s in range(5)]
    losses = [torch.rand(k, generator=torch.Generator().manual_seed(s), dtype=F64) + 0.1 for s in range(5)]
    a = aggregators.make("moco", k)
    first = a(gs[0], losses[0]).clone()
    a(gs[1], losses[1])
    b = aggregators.make("moco", k)  # tracking not created yet
    assert b.tracking.numel() == 0
    b.load_state_dict(a.state_dict())  # strict load into the lazily shaped buffer
    assert b.step == 2 and torch.equal(b.tracking, a.tracking) and torch.equal(b.lambdas, a.lambdas)
    for G, l in zip(gs[2:], losses[2:]):
        assert torch.equal(a(G, l), b(G, l))
    b.reset()
    assert b.step == 0 and b.tracking.numel() == 0
    assert torch.equal(b.lambdas, torch.full((k,), 0.25, dtype=F64))
    assert torch.equal(b(gs[0], losses[0]), first)
    # a reset object accepts another parameter count
    assert b.reset() is None and b(torch.ones(k, 3, dtype=F64), losses[0]).shape == (3,)


def test_moco_float32_and_degenerate_inputs():
    k = 3
    g = torch.randn(k, 20, generator=torch.Generator().manual_seed(0))
    losses = torch.tensor([1.0, 0.5, 2.0])
    for G in (g, torch.zeros(k, 20), torch.stack([g[0], torch.zeros(20), 1e5 * g[2]]),
              torch.stack([1e-5 * g[0], g[0], -g[0]])):
        agg = aggregators.make("moco", k)
        for _ in range(3):
            assert_structure(agg, G, losses)
            assert torch.isfinite(agg.lambdas).all()
    d = aggregators.make("moco", k)(g, torch.zeros(k))  # zero losses: G_hat = 0
    assert (d == 0).all()


def test_moco_needs_losses_and_fixed_shape():
    agg = aggregators.make("moco", 2)
    assert agg.needs_losses
    with pytest.raises(ValueError, match="losses"):
        agg(torch.ones(2, 5))
    agg(torch.ones(2, 5), torch.ones(2))
    with pytest.raises(ValueError, match="tracking"):
        agg(torch.ones(2, 6), torch.ones(2))


def test_moco_hyperparameters_and_validation():
    assert aggregators.hyperparameters("moco") == {
        "beta": 0.5, "beta_sigma": 0.5, "gamma": 0.1, "gamma_sigma": 0.5, "rho": 0.0, "lambda_map": "projection",
    }
    for bad in ({"beta": 0.0}, {"beta": 1.5}, {"gamma": 0.0}, {"beta_sigma": -1.0}, {"rho": -0.1},
                {"lambda_map": "sparsemax"}):
        with pytest.raises(ValueError):
            aggregators.make("moco", 3, **bad)


def test_moco_permutation_equivariance():
    k = 5
    G = ill_conditioned_grads(k, 20, seed=6)
    losses = torch.linspace(0.5, 2.0, k, dtype=F64)
    perm = torch.tensor([2, 4, 0, 1, 3])
    a1, a2 = aggregators.make("moco", k), aggregators.make("moco", k)
    for _ in range(3):
        assert_permutation_invariant(a1, a2, G, losses, perm, rtol=1e-12, atol=1e-14)
        assert torch.allclose(a1.lambdas[perm], a2.lambdas, rtol=1e-12)


def test_project_to_simplex():
    assert torch.allclose(project_to_simplex(t64([2.0, 1.0, -1.0])), t64([1.0, 0.0, 0.0]))
    assert torch.allclose(project_to_simplex(t64([0.3, 0.3, 0.3])), torch.full((3,), 1 / 3, dtype=F64))
    assert torch.allclose(project_to_simplex(t64([0.2, 0.8])), t64([0.2, 0.8]))
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        z = 3 * torch.randn(7, generator=gen, dtype=F64)
        x = project_to_simplex(z)
        assert abs(float(x.sum()) - 1) < 1e-12 and (x >= 0).all()
        # optimality: x = max(z - theta, 0) with one theta for all coordinates
        theta = (z - x)[x > 0]
        assert float(theta.max() - theta.min()) < 1e-12
        assert ((z[x == 0] - theta[0]) <= 1e-12).all()
