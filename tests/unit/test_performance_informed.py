"""PI-X variants (PIVRG paper sec. 4.4): one wrapper, the right priorities per method."""

import pytest
import torch

import aggregators
from helpers import ill_conditioned_grads

DM = torch.tensor([0.0, 40.0, 10.0, 80.0])


def _pi(name, k=4, dm=DM, **hp):
    agg = aggregators.make(name, k, **hp)
    agg.update_performance(dm)
    return agg


def test_pi_nash_mtl_weighted_bargaining():
    G = ill_conditioned_grads(4, 30, seed=3)
    agg = _pi("pi_nash_mtl")
    agg(G)
    a, omega = agg.weights, agg.omega
    rel = (a * ((G @ G.T) @ a) - omega).abs() / omega
    assert float(rel.max()) < 1e-6
    assert float(omega.max() / omega.min()) <= 2.0 + 1e-9


def test_pi_ls_weights_losses_by_omega():
    agg = _pi("pi_ls")
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    total = agg.loss(losses)
    assert float(total.detach()) == pytest.approx(float((agg.omega.float() * losses.detach()).sum()))
    total.backward()
    assert torch.allclose(losses.grad.double(), agg.omega)
    G = ill_conditioned_grads(4, 10)
    assert torch.allclose(agg(G, losses.detach().double()), agg.omega @ G)


def test_pi_variant_with_zero_drops_is_the_base_method():
    G = ill_conditioned_grads(4, 30, seed=8)
    losses = torch.rand(4, dtype=torch.float64) + 0.5
    for base in ("ls", "nash_mtl", "uw"):
        pi = _pi(f"pi_{base}", dm=torch.zeros(4))
        plain = aggregators.make(base, 4)
        assert torch.allclose(pi(G, losses), plain(G, losses), rtol=1e-9), base


def test_pi_scales_gradients_for_non_native_methods():
    """Non-native methods see omega_i g_i; the reported weights act on the original g_i."""
    G = ill_conditioned_grads(4, 30, seed=2)
    losses = torch.rand(4, dtype=torch.float64) + 0.5
    pi = _pi("pi_uw")
    d = pi(G, losses)
    base = aggregators.make("uw", 4)
    om = pi.omega
    assert torch.allclose(d, base(om[:, None] * G, om * losses))
    assert torch.allclose(d, pi.weights @ G)


def test_pi_gram_path_matches_matrix_path():
    G = ill_conditioned_grads(4, 30, seed=6)
    pi = _pi("pi_nash_mtl")
    d = pi(G)
    w = _pi("pi_nash_mtl").gram_weights(G @ G.T)
    assert torch.allclose(d, w @ G, rtol=1e-8)


def test_update_performance_rejects_bad_input():
    agg = aggregators.make("pi_ls", 4)
    with pytest.raises(ValueError, match="one value per task"):
        agg.update_performance(torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        agg.update_performance(torch.tensor([0.0, float("nan"), 1.0, 2.0]))


def test_temperature_and_state_round_trip():
    agg = _pi("pi_nash_mtl", bound=1.8, min_temperature=20.0)
    import math

    assert agg.temperature == pytest.approx(80 / math.log(1.8))
    other = aggregators.make("pi_nash_mtl", 4, bound=1.8, min_temperature=20.0)
    other.load_state_dict(agg.state_dict())
    assert torch.equal(other.omega, agg.omega)
    other.reset()
    assert torch.equal(other.omega, torch.ones(4, dtype=torch.float64))


def test_pi_variant_is_the_same_kind_as_its_base():
    from aggregators import GramWeighting, LossWeighting

    assert isinstance(aggregators.make("pi_nash_mtl", 3), GramWeighting)
    assert isinstance(aggregators.make("pi_mgda", 3), GramWeighting)
    for name in ("pi_ls", "pi_rlw", "pi_dwa", "pi_uw"):
        agg = aggregators.make(name, 3)
        assert isinstance(agg, LossWeighting) and not agg.requires_grads
    # learnable parameters of the base reach the trainer through the wrapper
    assert len(list(aggregators.make("pi_uw", 3).parameters())) == 1


def test_pi_dwa_sees_epoch_ends_and_scaled_losses():
    agg = _pi("pi_dwa", k=2, dm=torch.tensor([0.0, 100.0]))
    omega = agg.omega
    for epoch_losses in ([1.0, 1.0], [0.5, 1.0]):
        agg.loss(torch.tensor(epoch_losses, dtype=torch.float64))
        agg.end_epoch()
    # DWA on omega * l: both ratios r = L(t-1)/L(t-2) are unaffected by the constant omega,
    # r = (0.5, 1.0), so w_dwa = 2 softmax(r / 2), and the weights on l are omega * w_dwa
    w_dwa = 2 * torch.softmax(torch.tensor([0.5, 1.0], dtype=torch.float64) / 2, 0)
    agg.loss(torch.tensor([0.5, 1.0], dtype=torch.float64))
    assert torch.allclose(agg.weights, omega * w_dwa)


def test_pi_mgda_is_mgda_on_omega_scaled_gradients():
    G = ill_conditioned_grads(4, 30, seed=12, spread=1.0)
    pi = _pi("pi_mgda")
    d = pi(G)
    om = pi.omega
    assert torch.allclose(d, aggregators.make("mgda", 4)(om[:, None] * G), rtol=1e-8)
