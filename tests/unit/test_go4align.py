"""GO4Align: the risk-guided indicator, the K-means group assignment, invariances,
degenerate inputs, state and validation."""

import itertools
import math

import pytest
import torch
from properties import assert_loss_form, assert_permutation_invariant, assert_weighted

import aggregators
from aggregators.go4align import kmeans_1d

F64 = torch.float64


def t64(x):
    return torch.tensor(x, dtype=F64)


def indicator_by_hand(losses, probs, eta, eps=1e-8):
    """gamma_i = (sum l' / l'_i) p_i' with l' = l + eps, p_i' = p_i exp(-eta l'_i) / Z."""
    losses = [l + eps for l in losses]
    un = [p * math.exp(-eta * l) for p, l in zip(probs, losses)]
    z = sum(un)
    p_new = [u / z for u in un]
    total = sum(losses)
    return [total / l * p for l, p in zip(losses, p_new)], p_new


def test_indicator_equation_hand_values_and_p_carried_over():
    """K >= k: every task keeps its own indicator, w = gamma; p is carried to the next step."""
    agg = aggregators.make("go4align", 3, num_groups=3, robust_step_size=0.5)
    G = torch.eye(3, dtype=F64)
    l1 = [1.0, 2.0, 4.0]
    gamma1, p1 = indicator_by_hand(l1, [1 / 3] * 3, 0.5)
    d = agg(G, t64(l1))
    assert torch.allclose(agg.probs, t64(p1), rtol=1e-14, atol=0)
    assert torch.allclose(agg.weights, t64(gamma1), rtol=1e-14, atol=0)
    assert torch.allclose(d, t64(gamma1), rtol=1e-14, atol=0)  # G = I: d = w
    # e.g. p1 ~ (0.6285, 0.3812, 0.1402) / 1.1499; gamma_1 = 7 p1_1
    assert gamma1[0] == pytest.approx(7 * math.exp(-0.5) / (math.exp(-0.5) + math.exp(-1) + math.exp(-2)),
                                      rel=1e-7)

    # step 2 with equal losses: exp(-eta l) is a common factor, p is unchanged, s_i = 3
    agg(G, t64([2.0, 2.0, 2.0]))
    assert torch.allclose(agg.probs, t64(p1), rtol=1e-14, atol=0)
    assert torch.allclose(agg.weights, 3 * t64(p1), rtol=1e-14, atol=0)


def test_two_groups_take_their_cluster_means():
    """Losses (1, 1.01, 10, 10.1), eta = 0: gamma = s / 4 forms two clear clusters; each task
    gets the mean indicator of its cluster."""
    l = [1.0, 1.01, 10.0, 10.1]
    lp = [li + 1e-8 for li in l]
    gamma = [sum(lp) / li / 4 for li in lp]
    small_loss_group = (gamma[0] + gamma[1]) / 2   # large indicators
    large_loss_group = (gamma[2] + gamma[3]) / 2
    agg = aggregators.make("go4align", 4, num_groups=2, robust_step_size=0.0)
    agg(torch.eye(4, dtype=F64), t64(l))
    expected = t64([small_loss_group, small_loss_group, large_loss_group, large_loss_group])
    assert torch.allclose(agg.weights, expected, rtol=1e-14, atol=0)
    labels = agg.group_labels.tolist()
    assert labels[0] == labels[1] != labels[2] == labels[3]
    # the under-optimised (large-loss) tasks get the smaller weight: s_i is an inverse share
    assert large_loss_group < small_loss_group


def test_one_group_gives_every_task_the_mean_indicator():
    l = [0.5, 1.5, 3.0]
    agg = aggregators.make("go4align", 3, num_groups=1, robust_step_size=0.1)
    agg(torch.eye(3, dtype=F64), t64(l))
    gamma, _ = indicator_by_hand(l, [1 / 3] * 3, 0.1)
    assert torch.allclose(agg.weights, torch.full((3,), sum(gamma) / 3, dtype=F64), rtol=1e-14, atol=0)


def _sse(values, labels):
    out = 0.0
    for c in set(labels):
        members = [v for v, lab in zip(values, labels) if lab == c]
        m = sum(members) / len(members)
        out += sum((v - m) ** 2 for v in members)
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("num_clusters", [1, 2, 3])
def test_kmeans_1d_reaches_the_global_minimum(seed, num_clusters):
    """Against brute force over every assignment of 6 points to at most K clusters."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(6, generator=g, dtype=F64) * 10
    labels, centres = kmeans_1d(x, num_clusters)
    vals = x.tolist()
    best = min(_sse(vals, a) for a in itertools.product(range(num_clusters), repeat=6))
    assert _sse(vals, labels.tolist()) == pytest.approx(best, rel=1e-12, abs=1e-12)
    assert len(centres) == num_clusters
    for j, c in enumerate(centres.tolist()):  # centres are the cluster means, sorted
        assert c == pytest.approx(sum(v for v, lab in zip(vals, labels.tolist()) if lab == j)
                                  / labels.tolist().count(j))
    assert centres.tolist() == sorted(centres.tolist())


def test_kmeans_1d_keeps_equal_values_together_and_caps_the_cluster_count():
    labels, centres = kmeans_1d(t64([2.0, 5.0, 2.0, 5.0, 2.0]), 4)
    assert labels.tolist() == [0, 1, 0, 1, 0] and centres.tolist() == [2.0, 5.0]
    labels, centres = kmeans_1d(t64([1.0, 1.0, 1.0]), 2)
    assert labels.tolist() == [0, 0, 0] and centres.tolist() == [1.0]
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans_1d(t64([1.0]), 0)


def test_matrix_form_equals_the_loss_form_and_is_weighted():
    G = torch.randn(5, 9, generator=torch.Generator().manual_seed(3), dtype=F64)
    l = t64([0.3, 2.0, 0.31, 1.9, 7.0])
    assert_loss_form(lambda: aggregators.make("go4align", 5, num_groups=3, robust_step_size=0.2), G, l)
    assert_weighted(aggregators.make("go4align", 5), G, l)


def test_permutation_invariant_over_several_steps():
    k = 5
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = aggregators.make("go4align", k, num_groups=2, robust_step_size=0.3)
    b = aggregators.make("go4align", k, num_groups=2, robust_step_size=0.3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        G = torch.randn(k, 7, generator=g, dtype=F64)
        l = torch.rand(k, generator=g, dtype=F64) + 0.1
        assert_permutation_invariant(a, b, G, l, perm=perm, check_weights=True, rtol=1e-12)
        assert torch.allclose(b.probs, a.probs[perm], rtol=1e-12, atol=0)


def test_weights_are_invariant_to_a_common_loss_scale_without_the_risk_step():
    """eta = 0: gamma = s / k with s_i = sum_j l_j / l_i, unchanged by l -> c l (exactly for
    eps -> 0; the default eps = 1e-8 breaks it by O(eps / (c l)))."""
    l = t64([0.4, 1.2, 3.0, 3.3])
    ref = aggregators.make("go4align", 4, robust_step_size=0.0, eps=1e-300)
    ref.loss(l)
    for c in (1e-3, 7.0, 1e4):
        agg = aggregators.make("go4align", 4, robust_step_size=0.0, eps=1e-300)
        agg.loss(c * l)
        assert torch.allclose(agg.weights, ref.weights, rtol=1e-13, atol=0)


def test_degenerate_inputs():
    # equal losses: s_i = k, p stays uniform, gamma = 1 for every task, whatever K and eta
    agg = aggregators.make("go4align", 4, num_groups=3, robust_step_size=0.7)
    for _ in range(3):
        agg.loss(torch.full((4,), 2.5, dtype=F64))
        assert torch.allclose(agg.weights, torch.ones(4, dtype=F64), rtol=1e-14, atol=0)
    # one task: s = 1, p = 1, w = 1
    one = aggregators.make("go4align", 1)
    d = one(t64([[1.0, -2.0]]), t64([0.3]))
    assert torch.equal(one.weights, t64([1.0])) and torch.equal(d, t64([1.0, -2.0]))
    # zero gradients: the direction is zero, the weights still come from the losses
    agg = aggregators.make("go4align", 3)
    d = agg(torch.zeros(3, 4, dtype=F64), t64([0.5, 1.0, 2.0]))
    assert torch.equal(d, torch.zeros(4, dtype=F64)) and bool(torch.isfinite(agg.weights).all())
    # zero losses: eps makes them equal positive losses, gamma = 1 (LS)
    agg = aggregators.make("go4align", 3)
    agg.loss(torch.zeros(3, dtype=F64))
    assert torch.allclose(agg.weights, torch.ones(3, dtype=F64), rtol=1e-14, atol=0)
    # one zero loss among positive ones: the largest (finite) scale term, sum l' / eps
    agg = aggregators.make("go4align", 3, num_groups=3, robust_step_size=0.0)
    agg.loss(t64([0.0, 1.0, 2.0]))
    assert agg.weights[0].item() == pytest.approx((3.0 + 3e-8) / 1e-8 / 3, rel=1e-12)
    # a negative loss has no scale term
    with pytest.raises(ValueError, match="must be >= 0"):
        aggregators.make("go4align", 3).loss(t64([-0.5, 1.0, 2.0]))


def test_state_dict_round_trip_and_reset():
    k = 4
    g = torch.Generator().manual_seed(1)
    seq = [torch.rand(k, generator=g, dtype=F64) + 0.1 for _ in range(5)]
    a = aggregators.make("go4align", k, num_groups=2, robust_step_size=0.5)
    for l in seq[:3]:
        a.loss(l)
    b = aggregators.make("go4align", k, num_groups=2, robust_step_size=0.5)
    b.loss(seq[4])
    b.load_state_dict(a.state_dict())
    for l in seq[3:]:
        a.loss(l)
        b.loss(l)
        assert torch.equal(a.weights, b.weights) and torch.equal(a.probs, b.probs)
    a.reset()
    fresh = aggregators.make("go4align", k, num_groups=2, robust_step_size=0.5)
    a.loss(seq[0])
    fresh.loss(seq[0])
    assert torch.equal(a.weights, fresh.weights) and torch.equal(a.probs, fresh.probs)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_groups": 0}, "num_groups"),
    ({"num_groups": -1}, "num_groups"),
    ({"num_groups": 1.5}, "num_groups"),
    ({"num_groups": True}, "num_groups"),
    ({"robust_step_size": -1e-3}, "robust_step_size"),
    ({"robust_step_size": float("nan")}, "robust_step_size"),
    ({"eps": 0.0}, "eps"),
    ({"eps": -1e-8}, "eps"),
])
def test_invalid_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aggregators.make("go4align", 3, **kwargs)


def test_invalid_inputs():
    agg = aggregators.make("go4align", 3)
    with pytest.raises(ValueError, match="shape"):
        agg.loss(t64([1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        agg.loss(t64([1.0, float("nan"), 2.0]))
    with pytest.raises(ValueError, match="losses"):
        agg(torch.randn(3, 4, dtype=F64))  # the matrix form needs the losses too
