"""STCH (Lin et al., ICML 2024): the warm-up schedule of the reference's multi-task code,
the smooth Tchebycheff objective on log-normalised losses, its limits and invariances, state."""

import math

import pytest
import torch

import aggregators
from aggregators.stch import STCH
from properties import assert_loss_form, assert_permutation_invariant, assert_weighted

F64 = torch.float64


def t64(x):
    return torch.tensor(x, dtype=F64)


def weights_of(agg, losses):
    """d combine / d l from ``loss(l).backward()`` (one training step)."""
    l = losses.detach().clone().requires_grad_(True)
    agg.loss(l).backward()
    return l.grad


def past_warmup(k=2, warmup_epochs=0, recorded=(), **kw):
    """An STCH whose normaliser was recorded from ``recorded`` (the steps of epoch
    ``warmup_epochs``)."""
    agg = aggregators.make("stch", k, warmup_epochs=warmup_epochs, **kw)
    for _ in range(warmup_epochs):
        agg.loss(torch.ones(k, dtype=F64))
        agg.end_epoch()
    for l in recorded:
        agg.loss(t64(l))
    agg.end_epoch()
    return agg


def test_defaults_are_the_reference_code_values():
    assert aggregators.hyperparameters("stch") == {"mu": 1.0, "warmup_epochs": 4, "preference": None, "eps": 1e-20}
    agg = aggregators.make("stch", 4)
    assert not agg.requires_grads and agg.needs_losses and agg.needs_positive_losses
    assert torch.equal(agg.preference, torch.full((4,), 0.25, dtype=F64))


def test_warmup_is_the_sum_of_log_losses_and_the_normaliser_is_the_fifth_epoch_mean():
    """The reference schedule with STCH_warmup_epoch = 4: epochs 0-3 minimise sum log l;
    epoch 4 too, while its losses are averaged; from epoch 5 on, STCH with that mean."""
    agg = aggregators.make("stch", 2)
    si = aggregators.make("si", 2, eps=1e-20)
    steps = [[0.5, 4.0], [1.5, 2.0]]
    for epoch in range(5):
        assert not agg.has_nadir and agg.recording == (epoch == 4)
        for l in steps:
            assert torch.allclose(weights_of(agg, t64(l)), weights_of(si, t64(l)), rtol=1e-15, atol=0)
        agg.end_epoch()
    assert agg.has_nadir and agg.epoch == 5
    assert torch.allclose(agg.nadir, t64([1.0, 3.0]), rtol=1e-15, atol=0)   # means of epoch 4 only
    assert agg.recorded_steps == 2
    # epoch 5: losses equal to the normaliser -> x = 0 -> weights k softmax(0) / n = 1 / n
    assert torch.allclose(weights_of(agg, t64([1.0, 3.0])), t64([1.0, 1.0 / 3.0]), rtol=1e-12, atol=0)
    # later epochs do not change the normaliser
    agg.loss(t64([9.0, 9.0]))
    agg.end_epoch()
    assert torch.allclose(agg.nadir, t64([1.0, 3.0]), rtol=1e-15, atol=0)


def test_hand_computed_value_and_weights():
    # n = (1, 4), l = (2, 4): x = (log 2, 0), mu = 1, k = 2:
    # combine = 2 log(e^{log 2} + e^0) = 2 log 3; d/dx = 2 softmax(x) = (4/3, 2/3); dx/dl = 1 / l
    agg = aggregators.make("stch", 2)
    agg.set_nadir([1.0, 4.0])
    l = t64([2.0, 4.0]).requires_grad_(True)
    value = agg.loss(l)
    value.backward()
    assert value.item() == pytest.approx(2 * math.log(3), rel=1e-14)
    assert torch.allclose(l.grad, t64([2.0 / 3.0, 1.0 / 6.0]), rtol=1e-14, atol=0)
    assert torch.allclose(agg.weights, l.grad, rtol=0, atol=0)


def test_objective_is_the_papers_smooth_tchebycheff_scalarisation():
    """combine = k^2 g_nu(x | lambda) with g_nu = nu log sum exp(lambda_i x_i / nu), nu = mu / k,
    and the ideal point 0 of the log-normalised losses x_i = log(l_i / n_i + eps)."""
    g = torch.Generator().manual_seed(3)
    k = 4
    for mu in (0.1, 1.0, 5.0):
        pref = torch.rand(k, generator=g, dtype=F64) + 0.1
        nadir = torch.rand(k, generator=g, dtype=F64) + 0.5
        losses = torch.rand(k, generator=g, dtype=F64) * 3 + 0.01
        agg = aggregators.make("stch", k, mu=mu, preference=pref.tolist())
        agg.set_nadir(nadir)
        lam = pref / pref.sum()
        x = torch.log(losses / nadir + 1e-20)
        nu = mu / k
        paper = nu * torch.log(torch.exp(lam * x / nu).sum())
        assert agg.combine(losses).item() == pytest.approx(k ** 2 * paper.item(), rel=1e-12)


def test_smooth_max_bounds_and_the_tchebycheff_limit():
    """max_i lambda_i x_i <= g_nu <= max_i lambda_i x_i + nu log k (the smooth-max bounds of
    the log-sum-exp); as mu -> 0 the weight goes to the worst normalised task alone."""
    k = 3
    nadir, losses = t64([1.0, 2.0, 0.5]), t64([1.5, 2.2, 0.4])
    x = torch.log(losses / nadir)
    tch = (x / k).max().item()
    for mu in (1.0, 0.1, 0.01):
        agg = aggregators.make("stch", k, mu=mu)
        agg.set_nadir(nadir)
        g_nu = agg.combine(losses).item() / k ** 2
        assert tch <= g_nu + 1e-15 and g_nu <= tch + (mu / k) * math.log(k) + 1e-15
    sharp = aggregators.make("stch", k, mu=1e-3)
    sharp.set_nadir(nadir)
    w = weights_of(sharp, losses)
    worst = int(torch.argmax(x))
    expected = torch.zeros(k, dtype=F64)
    expected[worst] = k / losses[worst]   # the whole weight k on the Tchebycheff task
    assert torch.allclose(w, expected, rtol=1e-10, atol=1e-30)


def test_large_mu_is_the_sum_of_log_losses():
    agg = aggregators.make("stch", 3, mu=1e9)
    agg.set_nadir([1.0, 2.0, 0.5])
    losses = t64([1.5, 2.2, 0.4])
    assert torch.allclose(weights_of(agg, losses), 1.0 / losses, rtol=1e-8, atol=0)


def test_rescaling_a_task_loss_leaves_the_update_unchanged():
    """l_i -> a l_i from the recording epoch on (its gradient a g_i) changes neither x nor d."""
    G = torch.randn(3, 7, generator=torch.Generator().manual_seed(0), dtype=F64)
    a = t64([1.0, 1e3, 1e-2])
    recorded = [[0.5, 1.0, 2.0], [0.7, 0.9, 1.5]]
    plain = past_warmup(3, recorded=recorded)
    scaled = past_warmup(3, recorded=[(t64(r) * a).tolist() for r in recorded])
    losses = t64([0.6, 1.3, 1.1])
    d1, d2 = plain(G, losses), scaled(a[:, None] * G, a * losses)
    assert torch.allclose(d1, d2, rtol=1e-12, atol=1e-14)
    assert torch.allclose(scaled.nadir, plain.nadir * a, rtol=1e-14, atol=0)


def test_duplicate_tasks_share_the_weight_and_k1_is_the_log_loss():
    agg = past_warmup(3, recorded=[[1.0, 2.0, 1.0]])
    w = weights_of(agg, t64([1.5, 0.5, 1.5]))
    assert w[0] == w[2]
    one = past_warmup(1, recorded=[[2.0]])
    # a log-sum-exp of one term is the term: weight d log(l / n + eps) / dl = 1 / (l + eps n)
    assert torch.allclose(weights_of(one, t64([3.0])), t64([1.0 / 3.0]), rtol=1e-15, atol=0)


def test_matrix_form_equals_the_loss_form_in_both_phases():
    G = torch.randn(3, 9, generator=torch.Generator().manual_seed(1), dtype=F64)
    losses = t64([0.4, 1.1, 2.5])
    assert_loss_form(lambda: aggregators.make("stch", 3), G, losses)                    # warm-up
    assert_loss_form(lambda: past_warmup(3, recorded=[[1.0, 0.5, 3.0]], mu=0.3), G, losses)   # STCH
    agg = past_warmup(3, recorded=[[1.0, 0.5, 3.0]], mu=0.3)
    d = assert_weighted(agg, G, losses)
    assert torch.allclose(d, agg.weights @ G, rtol=1e-13, atol=0)


def test_permutation_invariant_after_the_warmup():
    G = torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=F64)
    rec = [0.5, 1.0, 2.0]
    perm = torch.tensor([2, 0, 1])
    a = past_warmup(3, recorded=[rec])
    b = past_warmup(3, recorded=[[rec[i] for i in perm]])
    assert_permutation_invariant(a, b, G, t64([0.9, 1.2, 1.7]), perm=perm, check_weights=True)


def test_preference_moves_weight_to_the_preferred_task():
    agg = aggregators.make("stch", 2, preference=[3.0, 1.0], mu=0.5)
    assert torch.allclose(agg.preference, t64([0.75, 0.25]))
    agg.set_nadir(1.0)
    w = weights_of(agg, t64([2.0, 2.0]))      # equal normalised losses
    assert w[0] > w[1]


def test_empty_recording_epoch_keeps_recording_and_zero_mean_is_normalised_by_one():
    agg = aggregators.make("stch", 2, warmup_epochs=0)
    agg.end_epoch()                             # no steps: nothing recorded yet
    assert agg.recording and not agg.has_nadir
    agg.loss(t64([0.0, 2.0]))
    agg.end_epoch()
    assert agg.has_nadir and torch.equal(agg.nadir, t64([1.0, 2.0]))
    w = weights_of(agg, t64([0.0, 2.0]))
    assert torch.isfinite(w).all() and w[0] > 0


def test_float32_losses_and_zero_loss():
    agg = past_warmup(2, recorded=[[1.0, 2.0]])
    l = torch.tensor([0.0, 3.0], requires_grad=True)
    value = agg.loss(l)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(l.grad).all()


def test_state_dict_round_trip_mid_recording_and_after():
    G = torch.randn(2, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    for stage in ("recording", "stch"):
        a = aggregators.make("stch", 2, warmup_epochs=1)
        a.loss(t64([1.0, 1.0]))
        a.end_epoch()
        a.loss(t64([0.5, 3.0]))
        if stage == "stch":
            a.end_epoch()
        b = aggregators.make("stch", 2, warmup_epochs=1)
        b.load_state_dict(a.state_dict())
        assert (b.epoch, b.recorded_steps, b.has_nadir) == (a.epoch, a.recorded_steps, a.has_nadir)
        for agg in (a, b):
            agg.loss(t64([1.5, 1.0]))
            agg.end_epoch()
        assert torch.equal(a(G, t64([0.7, 2.0])), b(G, t64([0.7, 2.0])))
        assert a.has_nadir and torch.equal(a.nadir, b.nadir)


def test_reset_returns_to_the_warmup():
    agg = past_warmup(2, recorded=[[1.0, 2.0]])
    agg.reset()
    assert (agg.epoch, agg.recorded_steps, agg.has_nadir) == (0, 0, False)
    assert torch.equal(agg.nadir, torch.ones(2, dtype=F64)) and torch.equal(agg.loss_sum, torch.zeros(2, dtype=F64))
    assert torch.allclose(weights_of(agg, t64([0.5, 2.0])), t64([2.0, 0.5]), rtol=1e-15, atol=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"mu": 0.0}, "mu"), ({"warmup_epochs": -1}, "warmup_epochs"), ({"warmup_epochs": 1.5}, "warmup_epochs"),
    ({"eps": 0.0}, "eps"), ({"preference": [1.0]}, "entries"), ({"preference": [1.0, -1.0]}, ">= 0"),
    ({"preference": [0.0, 0.0]}, "not all 0"),
])
def test_bad_hyperparameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        STCH(2, **kwargs)


def test_bad_nadir_and_negative_losses_are_refused():
    agg = aggregators.make("stch", 2)
    with pytest.raises(ValueError, match="> 0"):
        agg.set_nadir([1.0, 0.0])
    with pytest.raises(ValueError, match="2 values"):
        agg.set_nadir([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="log of the losses"):
        agg.loss(t64([-1.0, 1.0]))
    assert not agg.has_nadir and agg.recorded_steps == 0
