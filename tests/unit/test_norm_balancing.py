"""GradNorm and AvgNorm: their defining equations, learning, state and invariances."""

import pytest
import torch

import aggregators
from helpers import ill_conditioned_grads
from properties import assert_homogeneous, assert_permutation_invariant, assert_weighted

F64 = torch.float64


def with_norms(norms, n=20, seed=0):
    """Random gradients with the given norms."""
    norms = torch.as_tensor(norms, dtype=F64)
    g = torch.randn(len(norms), n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return g / g.norm(dim=1, keepdim=True) * norms[:, None]


def linear_problem(k, n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(k, 4, n, generator=gen, dtype=F64)
    b = torch.randn(k, 4, generator=gen, dtype=F64)
    scale = torch.logspace(-2, 2, k, dtype=F64)
    theta = torch.randn(n, generator=gen, dtype=F64).requires_grad_(True)

    def losses():
        return scale * (((torch.einsum("kmn,n->km", A, theta) - b) ** 2).mean(1) + 0.1)

    return theta, losses


# --------------------------------------------------------------------------------------
# GradNorm
# --------------------------------------------------------------------------------------
def train_gradnorm(agg, G, l, steps=300):
    """SGD (lr 0.1, decayed) on GradNorm's logits with fixed gradients and losses."""
    opt = torch.optim.SGD(agg.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.98)
    for _ in range(steps):
        opt.zero_grad()
        agg(G, l)
        opt.step()
        sched.step()


def test_gradnorm_known_gradient():
    """k = 2, s = 0 (w = 1), norms (1, 3), r = 1: target (2, 2), L_grad = 2,
    dL/dw = (-1, 3), dw/ds = [[.5, -.5], [-.5, .5]] -> s.grad = (-2, 2)."""
    agg = aggregators.make("gradnorm", 2)
    G = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=F64)
    d = agg(G, torch.tensor([1.0, 2.0]))
    assert torch.equal(agg.weights, torch.ones(2, dtype=F64))
    assert torch.equal(d, G.sum(0))
    assert torch.allclose(agg.logits.grad, torch.tensor([-2.0, 2.0], dtype=F64))


def test_gradnorm_inverse_training_rates():
    agg = aggregators.make("gradnorm", 3)
    G = with_norms([1.0, 1.0, 1.0])
    agg(G, torch.tensor([2.0, 4.0, 1.0], dtype=F64))  # stored as l(0)
    assert torch.equal(agg.initial_losses, torch.tensor([2.0, 4.0, 1.0], dtype=F64))
    l = torch.tensor([1.0, 4.0, 0.25], dtype=F64)  # ratios (0.5, 1, 0.25), mean 7/12
    r = agg.inverse_rates(l)
    assert torch.allclose(r, torch.tensor([0.5, 1.0, 0.25], dtype=F64) * 12 / 7)
    assert float(r.mean()) == pytest.approx(1.0)
    agg(G, l)
    assert torch.equal(agg.initial_losses, torch.tensor([2.0, 4.0, 1.0], dtype=F64))  # kept


def test_gradnorm_gradient_matches_eq_2_by_autograd():
    k = 5
    G = ill_conditioned_grads(k, 30, seed=3, spread=1.0)
    agg = aggregators.make("gradnorm", k, alpha=0.7)
    l0 = torch.rand(k, dtype=F64) + 0.5
    agg(G, l0)
    with torch.no_grad():
        agg.logits.copy_(torch.randn(k, dtype=F64))
    l = l0 * (torch.rand(k, dtype=F64) + 0.2)
    agg(G, l)
    s = agg.logits.detach().clone().requires_grad_(True)
    w = k * torch.softmax(s, 0)
    n = w * G.norm(dim=1)
    rate = (l / l0) / (l / l0).mean()
    loss = (n - n.mean().detach() * rate**0.7).abs().sum()
    loss.backward()
    assert torch.allclose(agg.logits.grad, s.grad, rtol=1e-10)
    assert torch.allclose(agg.weights, w.detach(), rtol=1e-14)


def test_gradnorm_sgd_equalises_weighted_norms():
    k = 4
    G = with_norms([0.5, 1.0, 4.0, 2.0])
    l = torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=F64)  # constant losses: r = 1
    agg = aggregators.make("gradnorm", k)
    spread0 = float((G.norm(dim=1)).std() / G.norm(dim=1).mean())
    train_gradnorm(agg, G, l)
    n = agg.weights * G.norm(dim=1)
    assert float(n.std() / n.mean()) < 1e-3 * spread0
    assert float(agg.weights.sum()) == pytest.approx(k)


def test_gradnorm_alpha_1_tracks_inverse_rates():
    """With alpha = 1, L_grad = 0 is attainable: w_i ||g_i|| proportional to r_i."""
    k = 3
    G = with_norms([1.0, 2.0, 0.5])
    agg = aggregators.make("gradnorm", k, alpha=1.0)
    l0 = torch.tensor([1.0, 1.0, 1.0], dtype=F64)
    agg(G, l0)
    l = torch.tensor([0.5, 1.0, 1.5], dtype=F64)
    train_gradnorm(agg, G, l)
    n = agg.weights * G.norm(dim=1)
    assert torch.allclose(n / n.mean(), agg.inverse_rates(l), rtol=1e-3)


def test_gradnorm_low_memory_path_and_loss_form():
    k = 4
    theta, losses = linear_problem(k, seed=1)
    l = losses()
    G = torch.stack([torch.autograd.grad(l[i], theta, retain_graph=True)[0] for i in range(k)])
    a, b = aggregators.make("gradnorm", k), aggregators.make("gradnorm", k)
    d = a(G, l.detach())
    w = b.gram_weights(G @ G.T, l.detach())
    (w * losses()).sum().backward()
    assert torch.allclose(d, theta.grad, rtol=1e-12)
    assert torch.allclose(a.logits.grad, b.logits.grad, rtol=1e-12)


def test_gradnorm_needs_losses_and_validates():
    agg = aggregators.make("gradnorm", 3)
    assert agg.needs_losses
    with pytest.raises(ValueError, match="losses"):
        agg(torch.randn(3, 5))
    with pytest.raises(ValueError, match="alpha"):
        aggregators.make("gradnorm", 3, alpha=-1.0)


def gradnorm_run(agg, k, steps=4, seed=0, perm=None):
    out = []
    opt = torch.optim.SGD(agg.parameters(), lr=0.05)
    for t in range(steps):
        G = ill_conditioned_grads(k, 15, seed=seed + t, spread=1.0)
        l = (torch.arange(k, dtype=F64) + 1.0) * 0.8**t * (1 + 0.1 * torch.arange(k, dtype=F64) * t)
        if perm is not None:
            G, l = G[perm], l[perm]
        opt.zero_grad()
        out.append(agg(G, l))
        opt.step()
    return torch.stack(out)


def test_gradnorm_state_dict_round_trip_and_reset():
    k = 4
    a = aggregators.make("gradnorm", k)
    gradnorm_run(a, k, seed=0)
    b = aggregators.make("gradnorm", k)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.logits, b.logits) and torch.equal(a.initial_losses, b.initial_losses)
    assert b.initialized
    assert torch.equal(gradnorm_run(a, k, seed=10), gradnorm_run(b, k, seed=10))
    a.reset()
    assert a.weights is None and a.logits.grad is None
    assert torch.equal(gradnorm_run(a, k, seed=20), gradnorm_run(aggregators.make("gradnorm", k), k, seed=20))


def test_gradnorm_permutation_equivariance():
    k = 5
    perm = torch.tensor([3, 0, 4, 1, 2])
    a, b = aggregators.make("gradnorm", k), aggregators.make("gradnorm", k)
    d1, d2 = gradnorm_run(a, k), gradnorm_run(b, k, perm=perm)
    assert torch.allclose(d1, d2, rtol=1e-10, atol=1e-14)
    assert torch.allclose(a.weights[perm], b.weights, rtol=1e-10)
    assert torch.allclose(a.logits.grad[perm], b.logits.grad, rtol=1e-10)


# --------------------------------------------------------------------------------------
# AvgNorm
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3, 10, 50])
def test_avgnorm_equation_6(k):
    G = ill_conditioned_grads(k, 2 * k + 10, seed=k)
    agg = aggregators.make("avgnorm", k)
    d = agg(G)
    S = G.sum(0).norm()
    assert torch.allclose(agg.weights, S / G.norm(dim=1), rtol=1e-10)
    # every weighted gradient has norm S
    assert torch.allclose((agg.weights[:, None] * G).norm(dim=1), S.expand(k), rtol=1e-10)
    # d = S * sum of unit gradients
    assert torch.allclose(d, S * (G / G.norm(dim=1, keepdim=True)).sum(0), rtol=1e-9)


def test_avgnorm_known_values():
    agg = aggregators.make("avgnorm", 2)
    d = agg(torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=F64))
    assert torch.allclose(agg.weights, torch.tensor([5 / 3, 5 / 4], dtype=F64))
    assert torch.allclose(d, torch.tensor([5.0, 5.0], dtype=F64))


def test_avgnorm_scaling():
    k = 4
    G = ill_conditioned_grads(k, 20, seed=1)
    d = aggregators.make("avgnorm", k)(G)
    # global rescaling: weights unchanged, d scales linearly
    assert_homogeneous(lambda: aggregators.make("avgnorm", k), G, 1.0, factors=(1e4,), rtol=1e-10)
    # per-task rescaling only changes the common norm S, never the unit directions
    a = torch.tensor([1e-3, 2.0, 50.0, 1.0], dtype=F64)
    Ga = a[:, None] * G
    d2 = aggregators.make("avgnorm", k)(Ga)
    assert torch.allclose(d2 / Ga.sum(0).norm(), d / G.sum(0).norm(), rtol=1e-9)


def test_avgnorm_degenerate_inputs():
    g = torch.randn(3, 20, dtype=F64, generator=torch.Generator().manual_seed(0))
    agg = aggregators.make("avgnorm", 3)
    d = agg(torch.stack([g[0], torch.zeros(20, dtype=F64), g[1]]))
    assert agg.weights[1] == 0 and torch.isfinite(d).all()
    assert (agg(torch.zeros(3, 20, dtype=F64)) == 0).all()
    d = agg(torch.stack([g[0], -g[0], torch.zeros(20, dtype=F64)]))  # S = 0
    assert (d == 0).all()
    d = agg(torch.stack([1e-5 * g[0], g[1], 1e5 * g[2]]))
    assert torch.isfinite(d).all()
    d = agg(torch.stack([g[0], g[0], g[1]]))
    assert torch.allclose(agg.weights[0], agg.weights[1])
    # a gradient whose squared norm underflows counts as zero
    d = agg(torch.stack([1e-300 * g[0] / g[0].norm(), g[1], g[2]]).mul(1e-10))
    assert agg.weights[0] == 0 and torch.isfinite(d).all() and torch.isfinite(agg.weights).all()


def test_avgnorm_permutation_low_memory_and_float32():
    k = 5
    perm = torch.tensor([3, 0, 4, 1, 2])
    G = ill_conditioned_grads(k, 25, seed=2)
    a, b = aggregators.make("avgnorm", k), aggregators.make("avgnorm", k)
    assert_permutation_invariant(a, b, G, perm=perm, check_weights=True, rtol=1e-10)
    w = aggregators.make("avgnorm", k).gram_weights(G @ G.T)
    assert torch.allclose(w @ G, a(G), rtol=1e-12)
    Gf = ill_conditioned_grads(k, 100, seed=4, spread=1.0).float()
    d = a(Gf)
    assert d.dtype == torch.float32 and a.weights.dtype == F64
    ref = a.weights @ Gf.double()
    assert float((d.double() - ref).norm()) < 1e-5 * float(ref.norm())
    assert a.state_dict().get("_extra_state", {}) == {} and len(a.state_dict()) <= 1  # stateless


@pytest.mark.parametrize("name", ["gradnorm", "avgnorm"])
def test_degenerate_and_large_k_finite(name):
    g = torch.randn(3, 20, dtype=F64, generator=torch.Generator().manual_seed(1))
    l = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    cases = [
        torch.stack([g[0], g[0], g[1]]),
        torch.stack([g[0], -g[0], g[1]]),
        torch.stack([g[0], torch.zeros(20, dtype=F64), g[1]]),
        torch.zeros(3, 20, dtype=F64),
        torch.stack([1e-5 * g[0], g[1], 1e5 * g[2]]),
    ]
    for G in cases:
        agg = aggregators.make(name, 3)
        for losses in (torch.tensor([0.0, 1.0, 2.0], dtype=F64), l, torch.zeros(3, dtype=F64)):
            assert_weighted(agg, G, losses)
            if name == "gradnorm":
                assert torch.isfinite(agg.logits.grad).all()
    k = 50
    G = ill_conditioned_grads(k, 80, seed=1, spread=5.0).float()
    assert_weighted(aggregators.make(name, k), G, torch.rand(k) + 0.1)
