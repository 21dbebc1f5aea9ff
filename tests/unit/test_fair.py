"""Nash-MTL, FairGrad, PIVRG and ConsMTL: their defining equations and invariances."""

import math

import pytest
import torch

import aggregators
from aggregators.performance import performance_weights
from helpers import ill_conditioned_grads, degenerate_cases
from properties import assert_homogeneous, assert_permutation_invariant, assert_weighted


def rel_residual(lhs, rhs):
    return float(((lhs - rhs).abs() / rhs.abs()).max())


@pytest.mark.parametrize("k", [2, 3, 10, 50])
@pytest.mark.parametrize("seed", [0, 1])
def test_nash_mtl_bargaining_equation(k, seed):
    G = ill_conditioned_grads(k, 4 * k + 20, seed)
    agg = aggregators.make("nash_mtl", k)
    d = agg(G)
    a = agg.weights
    M = G @ G.T
    assert (a > 0).all()
    assert rel_residual(a * (M @ a), torch.ones(k, dtype=torch.float64)) < 1e-6
    assert torch.allclose(d, a @ G)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("k", [2, 10, 40])
def test_fairgrad_alpha_fair_equation(alpha, k):
    G = ill_conditioned_grads(k, 3 * k + 10, seed=k)
    agg = aggregators.make("fairgrad", k, alpha=alpha)
    agg(G)
    w = agg.weights
    assert (w > 0).all()
    assert rel_residual((G @ G.T) @ w, w.pow(-1 / alpha)) < 1e-6


@pytest.mark.parametrize("k", [2, 5, 10, 40])
def test_pivrg_equation_7(k):
    G = ill_conditioned_grads(k, 5 * k, seed=3)
    agg = aggregators.make("pivrg", k)
    dm = torch.linspace(-20, 80, k)
    agg.update_performance(dm)
    agg(G)
    alpha, omega = agg.weights, agg.omega
    lhs = ((G @ G.T) @ alpha) ** 2
    assert rel_residual(lhs, omega / alpha) < 1e-6
    # every task's utility g_i^T d is positive (constraint of eq. 4)
    assert ((G @ (alpha @ G)) > 0).all()


def test_pivrg_minimises_eq_4():
    """The eq. 7 direction minimises (1/k) sum omega_i / g_i^T d on its norm sphere."""
    k = 4
    G = ill_conditioned_grads(k, 12, seed=7, spread=1.0)
    agg = aggregators.make("pivrg", k)
    agg.update_performance(torch.tensor([0.0, 10.0, 30.0, 5.0]))
    d = agg(G)
    omega = agg.omega

    def objective(v):
        u = G @ v
        return float((omega / u).mean()) if bool((u > 0).all()) else math.inf

    best = objective(d)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        v = d + 0.05 * d.norm() * torch.randn(d.shape, generator=gen, dtype=d.dtype)
        v = v * d.norm() / v.norm()
        assert objective(v) >= best - 1e-9


def test_pivrg_uniform_omega_is_fairgrad_alpha_2():
    k = 6
    G = ill_conditioned_grads(k, 40, seed=11)
    pivrg = aggregators.make("pivrg", k)
    pivrg.update_performance(torch.full((k,), 17.0))  # equal drops -> omega = 1
    fair = aggregators.make("fairgrad", k, alpha=2.0)
    cons = aggregators.make("consmtl", k)
    assert torch.allclose(pivrg(G), fair(G), rtol=1e-9, atol=0)
    assert torch.allclose(cons(G), fair(G), rtol=1e-9, atol=0)


def test_performance_weights_bounded_by_prop_1():
    gen = torch.Generator().manual_seed(0)
    for bound in (1.5, 1.8, 2.0):
        for _ in range(50):
            dm = 200 * torch.randn(7, generator=gen, dtype=torch.float64)
            omega, tau = performance_weights(dm, bound=bound, min_temperature=10.0)
            assert abs(float(omega.sum()) - 7) < 1e-9                      # Property 2
            assert float(omega.max() / omega.min()) <= bound * (1 + 1e-9)   # Prop. 1
            assert float(omega.min()) >= 1 / bound - 1e-9 and float(omega.max()) <= bound + 1e-9
            assert float(tau) >= 10.0
            order = torch.argsort(dm)
            assert (omega[order].diff() >= 0).all()                        # Property 1


def test_performance_weights_known_values():
    omega, tau = performance_weights(torch.tensor([0.0, 0.0]), 2.0, 10.0)
    assert torch.allclose(omega, torch.ones(2, dtype=torch.float64)) and float(tau) == 10.0
    # spread 100 -> tau = 100 / ln 2 -> omega ratio exactly 2 -> (2/3, 4/3)
    omega, tau = performance_weights(torch.tensor([0.0, 100.0]), 2.0, 10.0)
    assert float(tau) == pytest.approx(100 / math.log(2))
    assert torch.allclose(omega, torch.tensor([2 / 3, 4 / 3], dtype=torch.float64))


def test_nash_invariant_to_per_task_scaling():
    k = 4
    G = ill_conditioned_grads(k, 30, seed=5)
    s = torch.tensor([1e-4, 3.0, 1e3, 0.5], dtype=torch.float64)
    d1 = aggregators.make("nash_mtl", k)(G)
    d2 = aggregators.make("nash_mtl", k)(s[:, None] * G)
    assert torch.allclose(d1, d2, rtol=1e-7)


def test_fairgrad_global_scaling():
    """M -> c^2 M (G -> c G) rescales w by c^(-2a/(a+1)), so d by c^((1-a)/(1+a))."""
    k, a, c = 5, 2.0, 1e3
    G = ill_conditioned_grads(k, 30, seed=9)
    assert_homogeneous(lambda: aggregators.make("fairgrad", k, alpha=a), G, (1 - a) / (1 + a),
                       factors=(c,), rtol=1e-7, atol=0)


@pytest.mark.parametrize("name", ["nash_mtl", "fairgrad", "pivrg", "consmtl"])
def test_permutation_equivariance(name):
    k = 5
    G = ill_conditioned_grads(k, 25, seed=2)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a1, a2 = aggregators.make(name, k), aggregators.make(name, k)
    if name == "pivrg":
        dm = torch.tensor([1.0, 40.0, 3.0, 25.0, 9.0])
        a1.update_performance(dm)
        a2.update_performance(dm[perm])
    assert_permutation_invariant(a1, a2, G, perm=perm, check_weights=True, rtol=1e-8)


@pytest.mark.parametrize("name", ["nash_mtl", "fairgrad", "pivrg", "consmtl"])
def test_degenerate_inputs_give_finite_directions(name):
    cases = degenerate_cases()
    for G in cases.values():
        assert_weighted(aggregators.make(name, 3), G)
    d = aggregators.make(name, 3)(cases["all_zero"])
    assert (d == 0).all()


def test_float32_and_low_memory_path_agree():
    k = 4
    G = ill_conditioned_grads(k, 100, seed=4, spread=1.0).float()
    agg = aggregators.make("pivrg", k)
    d = agg(G)
    assert d.dtype == torch.float32
    w = aggregators.make("pivrg", k).gram_weights(G.double() @ G.double().T)
    assert torch.allclose(d, (w @ G.double()).float(), rtol=1e-4)


def test_consmtl_lower_level():
    k = 3
    G = ill_conditioned_grads(k, 10, seed=1, spread=0.5)
    agg = aggregators.make("consmtl", k, lam=2.0)
    agg(G)
    z_grads = torch.randn(k, 4, 5, dtype=torch.float64, requires_grad=True)
    extra = agg.extra_losses(z_grads)
    target = (agg.weights[:, None, None] * z_grads.detach()).sum(0)
    expected = torch.stack([-2.0 * (z_grads[i] * target).sum() for i in range(k)])
    assert torch.allclose(extra, expected)
    # the target is detached: gradient of extra_i flows only through delta_i
    extra.sum().backward()
    assert torch.allclose(z_grads.grad, -2.0 * target.expand(k, 4, 5))
    clipped = agg.clip_extra_grad(torch.full((4,), 10.0), torch.ones(4))
    assert float(clipped.norm()) == pytest.approx(0.1 * 2.0)


def test_nash_update_every_reuses_weights():
    k = 3
    agg = aggregators.make("nash_mtl", k, update_weights_every=3)
    gs = [ill_conditioned_grads(k, 10, seed=s, spread=0.5) for s in range(4)]
    agg(gs[0])
    w0 = agg.weights.clone()
    agg(gs[1]); assert torch.equal(agg.weights, w0)
    agg(gs[2]); assert torch.equal(agg.weights, w0)
    agg(gs[3]); assert not torch.equal(agg.weights, w0)


def test_nash_update_every_in_the_device_form_gives_the_host_weights(monkeypatch):
    """The device form solves every step and keeps the last weights where the step is not
    due, without reading the counter: the same weights as the host's skipped solves."""
    from aggregators import solvers
    from helpers import no_host_reads

    k = 3
    gs = [ill_conditioned_grads(k, 10, seed=s, spread=0.5) for s in range(7)]
    host, dev = (aggregators.make("nash_mtl", k, update_weights_every=3) for _ in range(2))
    dev.check_inputs = False   # as inside aggregators.backward, which checks once for all
    for G in gs:
        M = G @ G.T
        w_host = host.gram_weights(M)
        with solvers.device_form(), no_host_reads(monkeypatch):
            w_dev = dev.gram_weights(M)
        assert torch.allclose(w_dev, w_host, rtol=1e-9, atol=1e-12)
    assert int(dev.step) == int(host.step) == 7


def test_nash_loads_a_checkpoint_that_kept_the_counter_in_the_extra_state():
    a = aggregators.make("nash_mtl", 3, update_weights_every=3)
    legacy = {key: v for key, v in a.state_dict().items() if key != "step"}
    legacy["_extra_state"] = {"step": 5}
    b = aggregators.make("nash_mtl", 3, update_weights_every=3)
    b.load_state_dict(legacy)
    assert int(b.step) == 5


def test_pivrg_state_dict_round_trip():
    k = 4
    G = ill_conditioned_grads(k, 20, seed=0)
    a = aggregators.make("pivrg", k)
    a.update_performance(torch.tensor([5.0, 1.0, 30.0, 2.0]))
    a(G)
    b = aggregators.make("pivrg", k)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.delta_m, b.delta_m) and torch.equal(a.last_weights, b.last_weights)
    assert torch.allclose(a(G), b(G))
    b.reset()
    assert torch.equal(b.omega, torch.ones(k, dtype=torch.float64))


@pytest.mark.parametrize("a", [1.0, 2.0])
def test_device_backend_matches_host_backend(monkeypatch, a):
    """The torch code path (used on GPUs: fixed iterations, no host sync) solves the same
    equation as the NumPy path; forced here on CPU tensors."""
    from aggregators import solvers

    k = 12
    G = ill_conditioned_grads(k, 60, seed=21, spread=4.0)
    M = G @ G.T
    p = torch.linspace(0.5, 2.0, k, dtype=torch.float64)
    host = solvers.alpha_fair_weights(M, a, p)
    monkeypatch.setattr(solvers, "_backend", lambda x: (solvers._TorchOps, x.detach().to(torch.float64)))
    device = solvers.alpha_fair_weights(M, a, p, init=host * 1.3)
    assert torch.allclose(device, host, rtol=1e-9)
    assert rel_residual(M @ device, p * device.pow(-1 / a)) < 1e-6
