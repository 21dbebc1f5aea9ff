"""SI, RLW, RGW, DWA, UW and FAMO: defining equations, loss form = matrix form, state."""

import math

import pytest
import torch

import aggregators
from aggregators.random_weighting import random_simplex_weights
from helpers import ill_conditioned_grads, degenerate_cases
from properties import assert_permutation_invariant, assert_weighted

F64 = torch.float64
LOSS_METHODS = ["si", "rlw", "dwa", "dwa_iter", "uw", "famo"]
STATEFUL = ["rlw", "rgw", "dwa", "dwa_iter", "uw", "famo"]


def build(name, k):
    if name == "dwa_iter":
        return aggregators.make("dwa", k, mode="iteration", window=2)
    return aggregators.make(name, k)


def loss_sequence(k, steps=7, seed=0):
    gen = torch.Generator().manual_seed(seed)
    base = 0.5 + torch.rand(k, generator=gen, dtype=F64)
    rates = 0.6 + 0.4 * torch.rand(k, generator=gen, dtype=F64)
    return [base * rates**t for t in range(steps)]


def warm_up(agg, k, steps=7, perm=None):
    """A deterministic history: losses, FAMO updates, epoch ends, a trained UW."""
    seq = loss_sequence(k, steps + 1)
    for t in range(steps):
        l = seq[t] if perm is None else seq[t][perm]
        if isinstance(agg, aggregators.LossWeighting):
            agg.loss(l)
        else:
            agg.gram_weights(torch.eye(k, dtype=F64), l)
        nxt = seq[t + 1] if perm is None else seq[t + 1][perm]
        agg.after_step(nxt)
        if t % 2 == 1:
            agg.end_epoch()
    if agg.name == "uw":
        s = torch.linspace(-1.0, 2.0, k, dtype=F64)
        with torch.no_grad():
            agg.log_vars.copy_(s if perm is None else s[perm])
    return agg


def linear_problem(k, n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(k, 4, n, generator=gen, dtype=F64)
    b = torch.randn(k, 4, generator=gen, dtype=F64)
    c = torch.rand(k, generator=gen, dtype=F64) + 0.1
    scale = torch.logspace(-2, 2, k, dtype=F64)
    theta = torch.randn(n, generator=gen, dtype=F64).requires_grad_(True)

    def losses():
        r = torch.einsum("kmn,n->km", A, theta) - b
        return scale * ((r**2).mean(1) + c)

    return theta, losses


# --------------------------------------------------------------------------------------
# loss form == matrix form
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", LOSS_METHODS)
@pytest.mark.parametrize("k", [2, 5])
def test_matrix_form_is_the_gradient_of_combine(name, k):
    theta, losses = linear_problem(k, seed=k)
    l = losses()
    G = torch.stack([torch.autograd.grad(l[i], theta, retain_graph=True)[0] for i in range(k)])
    a, b = warm_up(build(name, k), k), warm_up(build(name, k), k)
    d = a(G, l.detach())
    theta.grad = None
    b.loss(losses()).backward()
    assert torch.allclose(d, theta.grad, rtol=1e-10, atol=1e-14)
    assert torch.allclose(a.weights, b.weights, rtol=1e-12)
    for pa, pb in zip(a.parameters(), b.parameters()):  # UW: s.grad from both forms
        assert torch.allclose(pa.grad, pb.grad, rtol=1e-12)


def test_rgw_low_memory_path_matches_matrix_form():
    k = 4
    theta, losses = linear_problem(k, seed=3)
    l = losses()
    G = torch.stack([torch.autograd.grad(l[i], theta, retain_graph=True)[0] for i in range(k)])
    d = aggregators.make("rgw", k, seed=5)(G)
    w = aggregators.make("rgw", k, seed=5).gram_weights(G @ G.T)
    (w * losses()).sum().backward()
    assert torch.allclose(d, theta.grad, rtol=1e-12)


# --------------------------------------------------------------------------------------
# SI
# --------------------------------------------------------------------------------------
def test_si_weights_and_scale_invariance():
    k = 4
    G = ill_conditioned_grads(k, 30, seed=1)
    l = torch.tensor([0.3, 2.0, 1e-2, 50.0], dtype=F64)
    agg = aggregators.make("si", k)
    d = agg(G, l)
    assert torch.allclose(agg.weights, 1 / (l + 1e-8), rtol=1e-14)
    assert torch.allclose(d, (G / (l + 1e-8)[:, None]).sum(0))
    # l_i -> a_i l_i (so g_i -> a_i g_i): the direction does not change
    a = torch.tensor([1e-2, 7.0, 1e3, 0.2], dtype=F64)
    d2 = aggregators.make("si", k)(a[:, None] * G, a * l)
    assert float((d - d2).norm()) < 1e-5 * float(d.norm())  # up to eps / min(l) = 1e-6
    # combine is sum log(l + eps)
    assert float(agg.combine(l)) == pytest.approx(float(torch.log(l + 1e-8).sum()))


def test_si_rejects_negative_losses_and_survives_zero():
    agg = aggregators.make("si", 2)
    with pytest.raises(ValueError, match="log"):
        agg(torch.randn(2, 5), torch.tensor([1.0, -0.5]))
    d = agg(torch.randn(2, 5, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64))
    assert torch.isfinite(d).all()
    with pytest.raises(ValueError, match="eps"):
        aggregators.make("si", 2, eps=0.0)


# --------------------------------------------------------------------------------------
# RLW / RGW
# --------------------------------------------------------------------------------------
def test_rlw_weights_are_softmax_of_normal_draws_each_step():
    k = 5
    agg = aggregators.make("rlw", k, seed=3)
    gen = torch.Generator().manual_seed(3)
    l = torch.rand(k, dtype=F64) + 0.5
    seen = []
    for _ in range(4):
        total = agg.loss(l)
        expected = torch.softmax(torch.randn(k, generator=gen, dtype=F64), 0)
        assert torch.allclose(agg.weights, expected, rtol=1e-14)
        assert float(total) == pytest.approx(float(expected @ l))
        assert float(agg.weights.sum()) == pytest.approx(1.0) and (agg.weights > 0).all()
        seen.append(agg.weights.clone())
    assert not torch.equal(seen[0], seen[1])
    # combine is deterministic between draws (the base evaluates it twice per step)
    assert torch.equal(agg.combine(l), agg.combine(l))


def test_rlw_mean_weight_is_uniform():
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([random_simplex_weights(gen, 3) for _ in range(4000)])
    assert torch.allclose(draws.mean(0), torch.full((3,), 1 / 3, dtype=F64), atol=0.02)


def test_rgw_draws_rlw_weights_and_ignores_the_gram_matrix():
    k = 4
    rlw, rgw = aggregators.make("rlw", k, seed=7), aggregators.make("rgw", k, seed=7)
    for s in range(3):
        G = ill_conditioned_grads(k, 12, seed=s)
        rlw.loss(torch.ones(k, dtype=F64))
        d = rgw(G)
        assert torch.equal(rgw.weights, rlw.weights)
        assert torch.allclose(d, rgw.weights @ G)
    a, b = aggregators.make("rgw", k), aggregators.make("rgw", k)
    a(ill_conditioned_grads(k, 12, seed=0))
    b(ill_conditioned_grads(k, 12, seed=1, spread=0.0))
    assert torch.equal(a.weights, b.weights)
    with pytest.raises(ValueError, match="seed"):
        aggregators.make("rgw", k, seed=-1)


# --------------------------------------------------------------------------------------
# DWA
# --------------------------------------------------------------------------------------
def test_dwa_epoch_mode_known_values():
    k = 3
    agg = aggregators.make("dwa", k)
    ones = torch.ones(k, dtype=F64)
    epochs = [
        [torch.tensor([4.0, 2.0, 1.0]), torch.tensor([2.0, 2.0, 3.0])],  # mean (3, 2, 2)
        [torch.tensor([3.0, 1.0, 2.0])],                                 # mean (3, 1, 2)
        [torch.tensor([1.5, 1.0, 1.0])],
    ]
    for e, batch in enumerate(epochs[:2]):
        for l in batch:
            agg.loss(l.to(F64))
            assert torch.equal(agg.weights, ones)  # first two epochs: weights 1
        agg.end_epoch()
    r = torch.tensor([3 / 3, 1 / 2, 2 / 2], dtype=F64)
    expected = k * torch.softmax(r / 2.0, 0)
    agg.loss(epochs[2][0].to(F64))
    assert torch.allclose(agg.weights, expected, rtol=1e-14)
    assert float(agg.weights.sum()) == pytest.approx(k)
    agg.end_epoch()
    r = torch.tensor([1.5 / 3, 1 / 1, 1 / 2], dtype=F64)
    agg.loss(torch.ones(k, dtype=F64))
    assert torch.allclose(agg.weights, k * torch.softmax(r / 2.0, 0), rtol=1e-14)
    # an epoch without steps changes nothing
    before = agg.weights.clone()
    agg.end_epoch(); agg.end_epoch()
    agg.loss(torch.ones(k, dtype=F64))
    assert torch.allclose(agg.weights, k * torch.softmax(torch.tensor([1 / 1.5, 1.0, 1.0], dtype=F64) / 2.0, 0))
    assert not torch.equal(before, agg.weights)  # the epoch with one step of ones closed


def test_dwa_iteration_mode_windows():
    k, w = 2, 3
    agg = aggregators.make("dwa", k, mode="iteration", window=w, temperature=0.5)
    seq = [torch.tensor([float(t + 1), 10.0 / (t + 1)], dtype=F64) for t in range(8)]
    for t, l in enumerate(seq):
        agg.loss(l)
        if t + 1 < 2 * w:
            assert torch.equal(agg.weights, torch.ones(k, dtype=F64))
        else:
            hist = torch.stack(seq[t + 1 - 2 * w : t + 1])
            r = hist[w:].mean(0) / hist[:w].mean(0)
            assert torch.allclose(agg.weights, k * torch.softmax(r / 0.5, 0), rtol=1e-13)
    # the growing task gets more weight
    assert agg.weights[0] > agg.weights[1]
    agg.end_epoch()  # a no-op in iteration mode
    assert agg.periods == 0


def test_dwa_zero_and_tiny_losses_stay_finite():
    agg = aggregators.make("dwa", 3, mode="iteration", window=1)
    for l in ([0.0, 1e-300, 5.0], [3.0, 1e10, 0.0], [0.0, 0.0, 0.0]):
        d = agg(torch.randn(3, 4, dtype=F64), torch.tensor(l, dtype=F64))
        assert torch.isfinite(d).all() and torch.isfinite(agg.weights).all()


def test_dwa_validation():
    for hp in ({"temperature": 0.0}, {"mode": "epochs"}, {"window": 0}):
        with pytest.raises(ValueError):
            aggregators.make("dwa", 3, **hp)


# --------------------------------------------------------------------------------------
# UW
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["loss", "matrix"])
def test_uw_log_variances_converge_to_log_losses(form):
    k = 4
    l = torch.tensor([0.05, 1.0, 3.0, 20.0], dtype=F64)
    agg = aggregators.make("uw", k)
    assert [p.shape for p in agg.parameters()] == [(k,)]
    opt = torch.optim.SGD(agg.parameters(), lr=1.0)
    G = ill_conditioned_grads(k, 8, seed=0)
    for _ in range(200):
        opt.zero_grad()
        if form == "loss":
            agg.loss(l).backward()
        else:
            agg(G, l)
        opt.step()
    assert torch.allclose(agg.log_vars.detach(), l.log(), atol=1e-8)
    assert torch.allclose(agg.weights, 0.5 * torch.exp(-agg.log_vars.detach()), rtol=1e-6)
    # at the optimum every weighted loss is 1/2
    assert torch.allclose(agg.weights * l, torch.full((k,), 0.5, dtype=F64), rtol=1e-6)


# --------------------------------------------------------------------------------------
# FAMO
# --------------------------------------------------------------------------------------
def test_famo_step_objective_and_weights():
    k = 3
    agg = warm_up(aggregators.make("famo", k), k)
    z = torch.softmax(agg.logits, 0)
    l = torch.tensor([0.5, 2.0, 8.0], dtype=F64)
    total = agg.loss(l)
    D = l + 1e-8
    c = (z / D).sum()
    assert float(total) == pytest.approx(float((z * D.log()).sum() / c), rel=1e-12)
    assert torch.allclose(agg.weights, z / (D * c), rtol=1e-12)
    assert float(agg.weights.sum()) == pytest.approx(1.0)
    agg.loss(torch.full((k,), 3.0, dtype=F64))  # equal losses: w = z
    assert torch.allclose(agg.weights, z, rtol=1e-12)


def test_famo_internal_adam_matches_torch_adam():
    k = 4
    agg = aggregators.make("famo", k, gamma=0.01)
    xi = torch.zeros(k, dtype=F64, requires_grad=True)
    opt = torch.optim.Adam([xi], lr=0.025, weight_decay=0.01)
    seq = loss_sequence(k, steps=12, seed=4)
    for t in range(11):
        old, new = seq[t], seq[t + 1] * (1 + 0.3 * math.sin(t))
        agg.loss(old)
        agg.after_step(new)
        delta = (old + 1e-8).log() - (new + 1e-8).log()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
        xi.grad = g
        opt.step()
        assert torch.allclose(agg.logits, xi.detach(), rtol=1e-12, atol=1e-15)


def test_famo_slow_task_gains_weight():
    k = 2
    agg = aggregators.make("famo", k)
    l = torch.tensor([1.0, 1.0], dtype=F64)
    z0 = agg.task_weights.clone()
    for _ in range(30):
        agg.loss(l)
        new = l * torch.tensor([0.8, 0.99], dtype=F64)  # task 0 improves fast, task 1 slowly
        agg.after_step(new)
        l = new
    z = agg.task_weights
    assert z[1] > z0[1] + 0.2 and z[1] > 0.7
    # the slow task also gets the larger gradient weight at equal losses
    agg.loss(torch.ones(k, dtype=F64))
    assert agg.weights[1] > agg.weights[0]


def test_famo_min_losses_and_errors():
    agg = aggregators.make("famo", 2, min_losses=[0.5, 0.0])
    l = torch.tensor([1.5, 1.0], dtype=F64)
    agg.loss(l)
    # shifted losses are equal (1, 1): w = z = (1/2, 1/2)
    assert torch.allclose(agg.weights, torch.tensor([0.5, 0.5], dtype=F64))
    with pytest.raises(ValueError, match="log"):
        agg.loss(torch.tensor([0.2, 1.0], dtype=F64))  # below its minimum
    with pytest.raises(RuntimeError, match="first"):
        aggregators.make("famo", 2).after_step(l)
    with pytest.raises(ValueError, match="shape"):
        agg.after_step(torch.ones(3))
    for hp in ({"w_lr": 0.0}, {"gamma": -1.0}, {"eps": 0.0}, {"min_losses": [0.0, 1.0, 2.0]}):
        with pytest.raises(ValueError):
            aggregators.make("famo", 2, **hp)


def test_famo_xi_is_not_a_trainer_parameter():
    assert list(aggregators.make("famo", 3).parameters()) == []


# --------------------------------------------------------------------------------------
# state, reset, permutation equivariance, degenerate inputs
# --------------------------------------------------------------------------------------
def next_outputs(agg, k):
    """Two further steps (with the hooks) from the current state."""
    out = []
    for s in range(2):
        G = ill_conditioned_grads(k, 10, seed=10 + s)
        l = loss_sequence(k, 2, seed=20 + s)[1]
        out.append(agg(G, l))
        if agg.name == "uw":
            with torch.no_grad():
                agg.log_vars.sub_(0.1 * agg.log_vars.grad)
        agg.after_step(0.9 * l)
        agg.end_epoch()
    return torch.stack(out)


@pytest.mark.parametrize("name", STATEFUL)
def test_state_dict_round_trip(name):
    k = 4
    a = warm_up(build(name, k), k)
    b = build(name, k)
    b.load_state_dict(a.state_dict())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), ka
    assert torch.equal(next_outputs(a, k), next_outputs(b, k))


@pytest.mark.parametrize("name", STATEFUL)
def test_reset_returns_to_the_initial_state(name):
    k = 3
    a = warm_up(build(name, k), k)
    a.reset()
    assert a.weights is None
    fresh = build(name, k)
    assert torch.equal(next_outputs(a, k), next_outputs(fresh, k))


@pytest.mark.parametrize("name", ["si", "dwa", "dwa_iter", "uw", "famo", "ls"])
def test_permutation_equivariance(name):
    k = 5
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = warm_up(build(name, k), k)
    b = warm_up(build(name, k), k, perm=perm)
    G = ill_conditioned_grads(k, 20, seed=2)
    l = loss_sequence(k, 2, seed=9)[1]
    assert_permutation_invariant(a, b, G, l, perm, check_weights=True, rtol=1e-10)


@pytest.mark.parametrize("name", LOSS_METHODS + ["rgw"])
def test_degenerate_inputs_give_finite_directions(name):
    l = torch.tensor([0.5, 1.0, 2.0], dtype=F64)
    cases = degenerate_cases()
    for G in cases.values():
        agg = build(name, 3)
        for losses in (l, torch.tensor([0.0, 1e-12, 1e6], dtype=F64)):
            assert_weighted(agg, G, losses)
            agg.after_step(losses)
    assert (build(name, 3)(cases["all_zero"], l) == 0).all()


@pytest.mark.parametrize("name", LOSS_METHODS + ["rgw"])
def test_fifty_tasks_float32(name):
    k = 50
    G = ill_conditioned_grads(k, 80, seed=1, spread=5.0).float()
    assert_weighted(warm_up(build(name, k), k), G, loss_sequence(k, 1, seed=3)[0].float())
