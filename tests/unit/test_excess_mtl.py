"""ExcessMTL: the excess-risk estimate, the normalised exponentiated-gradient step,
invariances, degenerate inputs, state and validation."""

import math

import pytest
import torch
from properties import assert_permutation_invariant, assert_weighted

import aggregators

F64 = torch.float64
EPS = 1e-7


def t64(x):
    return torch.tensor(x, dtype=F64)


def softmax_k(logits):
    m = max(logits)
    ex = [math.exp(v - m) for v in logits]
    return [len(ex) * e / sum(ex) for e in ex]


def test_two_steps_known_values():
    agg = aggregators.make("excess_mtl", 2, robust_step_size=0.5)
    # step 1: A = g^2 = [[9, 16], [0, 4]]; e_1 = 9/sqrt(9+eps) + 16/sqrt(16+eps) ~ 7, e_2 ~ 2;
    # the first step only records the baseline: alpha = (1, 1), d = g_1 + g_2
    d = agg(t64([[3.0, 4.0], [0.0, -2.0]]))
    e0 = [9 / math.sqrt(9 + EPS) + 16 / math.sqrt(16 + EPS), 4 / math.sqrt(4 + EPS)]
    assert torch.allclose(agg.last_excess, t64(e0), rtol=1e-14, atol=0)
    assert torch.allclose(agg.initial_excess, t64(e0), rtol=1e-14, atol=0)
    assert torch.equal(agg.weights, t64([1.0, 1.0])) and torch.allclose(d, t64([3.0, 2.0]), rtol=1e-15)
    # step 2: g = [[1, 0], [0, -4]]; A = [[10, 16], [0, 20]]
    # e_1 = 1/sqrt(10+eps) (the zero entry adds 0), e_2 = 16/sqrt(20+eps)
    d = agg(t64([[1.0, 0.0], [0.0, -4.0]]))
    e = [1 / math.sqrt(10 + EPS), 16 / math.sqrt(20 + EPS)]
    r = [e[0] / e0[0], e[1] / e0[1]]
    alpha = softmax_k([0.5 * r[0], 0.5 * r[1]])  # alpha_i exp(eta r_i), rescaled to sum 2
    assert torch.allclose(agg.last_excess, t64(e), rtol=1e-14, atol=0)
    assert torch.allclose(agg.weights, t64(alpha), rtol=1e-14, atol=0)
    assert torch.allclose(d, t64([alpha[0], -4 * alpha[1]]), rtol=1e-14, atol=0)
    assert alpha[1] > 1 > alpha[0]  # task 2's excess risk fell less relative to its start
    assert agg.step == 2


def test_exponentiated_gradient_identity_over_random_steps():
    """alpha_t = k alpha_{t-1} exp(eta r) / sum(.), r = e_t / e_0, over several steps."""
    k, n, eta = 4, 11, 0.3
    agg = aggregators.make("excess_mtl", k, robust_step_size=eta)
    g = torch.Generator().manual_seed(0)
    acc = torch.zeros(k, n, dtype=F64)
    prev = torch.ones(k, dtype=F64)
    e0 = None
    for t in range(5):
        G = torch.randn(k, n, generator=g, dtype=F64) * torch.tensor([1.0, 5.0, 0.2, 2.0], dtype=F64)[:, None]
        acc += G * G
        e = (G * G / (acc + EPS).sqrt()).sum(1)
        d = assert_weighted(agg, G)
        if t == 0:
            e0 = e
            expected = prev
        else:
            un = prev * torch.exp(eta * e / e0)
            expected = k * un / un.sum()
        assert torch.allclose(agg.weights, expected, rtol=1e-12, atol=0)
        assert agg.weights.sum().item() == pytest.approx(k, rel=1e-14)
        assert torch.allclose(d, expected @ G, rtol=1e-12, atol=1e-12)
        prev = expected


def test_constant_gradients_keep_uniform_weights():
    """g_i fixed: A_t = t g^2, so e_t = e_0 / sqrt(t) for every task (eps -> 0): equal ratios,
    the normalised step leaves alpha = 1 whatever the tasks' scales."""
    agg = aggregators.make("excess_mtl", 3, robust_step_size=1.0, eps=1e-30)
    G = t64([[1.0, 2.0, 0.0], [0.0, -30.0, 4.0], [1e-3, 1e-3, 1e-3]])
    for _ in range(6):
        agg(G)
        assert torch.allclose(agg.weights, torch.ones(3, dtype=F64), rtol=1e-12, atol=0)


def test_the_task_further_from_convergence_gains_weight():
    """Task 0's gradient shrinks (converging), task 1's does not: task 1 gets the weight."""
    agg = aggregators.make("excess_mtl", 2, robust_step_size=0.5)
    for t in range(8):
        agg(t64([[0.5 ** t, 0.0], [0.0, 1.0]]))
    w = agg.weights
    assert w[1] > w[0] and w.sum().item() == pytest.approx(2.0)


def test_weights_ignore_a_per_task_gradient_scale():
    """e_i is degree-1 homogeneous in g_i (g^2 / sqrt(g^2)), so r_i = e_i / e_i^0 and the
    weights do not see a constant per-task scale; d scales linearly with a global one."""
    g = torch.Generator().manual_seed(4)
    seq = [torch.randn(3, 6, generator=g, dtype=F64) for _ in range(4)]
    c = t64([1e-3, 1.0, 1e3])[:, None]
    ref = aggregators.make("excess_mtl", 3, robust_step_size=0.8, eps=1e-300)
    scaled = aggregators.make("excess_mtl", 3, robust_step_size=0.8, eps=1e-300)
    glob = aggregators.make("excess_mtl", 3, robust_step_size=0.8, eps=1e-300)
    for G in seq:
        d = ref(G)
        scaled(c * G)
        dg = glob(7.0 * G)
        assert torch.allclose(scaled.weights, ref.weights, rtol=1e-10, atol=0)
        assert torch.allclose(dg, 7.0 * d, rtol=1e-10, atol=1e-12)


def test_permutation_invariant_over_several_steps():
    k = 4
    perm = torch.tensor([2, 0, 3, 1])
    a = aggregators.make("excess_mtl", k, robust_step_size=0.5)
    b = aggregators.make("excess_mtl", k, robust_step_size=0.5)
    g = torch.Generator().manual_seed(2)
    for _ in range(4):
        G = torch.randn(k, 5, generator=g, dtype=F64)
        assert_permutation_invariant(a, b, G, perm=perm, check_weights=True, rtol=1e-12)


def test_degenerate_inputs():
    # a zero first gradient has no baseline: r = 0 for that task, everything stays finite
    agg = aggregators.make("excess_mtl", 2, robust_step_size=1.0)
    agg(t64([[0.0, 0.0], [1.0, 1.0]]))
    agg(t64([[3.0, 0.0], [1.0, 1.0]]))
    # task 1: e = 2 / sqrt(2 + eps) against e0 = 2 / sqrt(1 + eps): r = 1/sqrt 2 ~ 0.707; task 0: r = 0
    r1 = (2 / math.sqrt(2 + EPS)) / (2 / math.sqrt(1 + EPS))
    assert torch.allclose(agg.weights, t64(softmax_k([0.0, r1])), rtol=1e-13, atol=0)
    # all-zero gradients: d = 0, weights finite
    agg = aggregators.make("excess_mtl", 3)
    for _ in range(3):
        d = agg(torch.zeros(3, 4, dtype=F64))
        assert torch.equal(d, torch.zeros(4, dtype=F64)) and bool(torch.isfinite(agg.weights).all())
    # duplicate tasks are weighted alike
    agg = aggregators.make("excess_mtl", 3, robust_step_size=0.5)
    g = torch.Generator().manual_seed(5)
    for _ in range(4):
        row = torch.randn(1, 6, generator=g, dtype=F64)
        agg(torch.cat([row, torch.randn(1, 6, generator=g, dtype=F64), row]))
        assert agg.weights[0] == agg.weights[2]
    # one task: the normalisation pins alpha = 1, d = g
    one = aggregators.make("excess_mtl", 1, robust_step_size=10.0)
    for s in range(3):
        G = torch.randn(1, 4, generator=torch.Generator().manual_seed(s), dtype=F64)
        assert torch.allclose(one(G), G[0], rtol=1e-15) and one.weights.item() == pytest.approx(1.0)


def test_float32_gradients_keep_their_dtype():
    agg = aggregators.make("excess_mtl", 3)
    for s in range(3):
        G = torch.randn(3, 8, generator=torch.Generator().manual_seed(s))
        d = agg(G)
        assert d.dtype == torch.float32 and agg.grad_sq_sum.dtype == torch.float32
        assert agg.weights.dtype == F64


def test_state_dict_round_trip_resizes_the_accumulator_and_reset():
    k, n = 3, 7
    g = torch.Generator().manual_seed(8)
    seq = [torch.randn(k, n, generator=g, dtype=F64) for _ in range(6)]
    a = aggregators.make("excess_mtl", k, robust_step_size=0.4)
    for G in seq[:3]:
        a(G)
    b = aggregators.make("excess_mtl", k, robust_step_size=0.4)  # fresh: empty accumulator
    b.load_state_dict(a.state_dict())
    assert b.step == 3 and torch.equal(b.grad_sq_sum, a.grad_sq_sum)
    for G in seq[3:]:
        assert torch.equal(a(G), b(G)) and torch.equal(a.weights, b.weights)
    a.reset()
    fresh = aggregators.make("excess_mtl", k, robust_step_size=0.4)
    for G in seq[:2]:
        assert torch.equal(a(G), fresh(G))
    assert a.step == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"robust_step_size": 0.0}, "robust_step_size"),
    ({"robust_step_size": -1.0}, "robust_step_size"),
    ({"robust_step_size": float("nan")}, "robust_step_size"),
    ({"eps": 0.0}, "eps"),
    ({"eps": -1e-7}, "eps"),
])
def test_invalid_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        aggregators.make("excess_mtl", 3, **kwargs)


def test_invalid_inputs():
    agg = aggregators.make("excess_mtl", 3)
    with pytest.raises(ValueError, match="shape"):
        agg(torch.randn(2, 4, dtype=F64))
    bad = torch.randn(3, 4, dtype=F64)
    bad[0, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        agg(bad)
    with pytest.raises(ValueError, match="grads"):
        agg(None)
    agg(torch.randn(3, 4, dtype=F64))
    with pytest.raises(ValueError, match="shared parameters must stay the same"):
        agg(torch.randn(3, 5, dtype=F64))
