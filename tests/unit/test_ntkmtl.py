"""NTKMTL (Qin et al., NeurIPS 2025): ``w_i = (sum_j lambda_j / lambda_i) ** ntk_exp`` with
``lambda_i`` the largest eigenvalue of task i's NTK; ``lambda_i = ||g_i||^2`` for one sample
per task, and the same rule on the representation gradients (NTKMTL-SR, ``features=z``)."""

import numpy as np
import pytest
import torch
from helpers import degenerate_cases, ill_conditioned_grads, no_host_reads
from properties import (assert_homogeneous, assert_non_conflicting, assert_permutation_invariant,
                        assert_weighted)
from torch import nn

import aggregators

F64 = torch.float64


def _grads(k, n, seed):
    return torch.randn(k, n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def test_known_values_orthogonal():
    """Norms 1 and 2: tr M = 5, w = (sqrt 5, sqrt(5/4)), d = sqrt 5 (e_1 + e_2)."""
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    agg = aggregators.make("ntkmtl", 2)
    d = agg(G)
    assert torch.allclose(agg.weights, torch.tensor([5 ** 0.5, 1.25 ** 0.5], dtype=F64), rtol=1e-15)
    assert torch.allclose(d, torch.full((2,), 5 ** 0.5, dtype=F64), rtol=1e-15)
    # ntk_exp = 0.75 (the NYU-v2 script): (5, 5/4) ** 0.75
    agg = aggregators.make("ntkmtl", 2, ntk_exp=0.75)
    agg(G)
    assert torch.allclose(agg.weights, torch.tensor([5 ** 0.75, 1.25 ** 0.75], dtype=F64), rtol=1e-15)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ntk_exp", [0.0, 0.5, 0.75, 1.0])
def test_weights_are_the_ntk_ratio_power(seed, ntk_exp):
    """w_i = (tr M / M_ii) ** ntk_exp, so w_i ** (1 / ntk_exp) lambda_i = sum_j lambda_j:
    the weighted kernels all have the same eigenvalue (ntk_exp = 1) or its square root."""
    k = 2 + seed
    G = ill_conditioned_grads(k, 20, seed=seed, spread=2.0)
    agg = aggregators.make("ntkmtl", k, ntk_exp=ntk_exp)
    assert_weighted(agg, G)
    lam = (G * G).sum(1)
    expected = (lam.sum() / lam) ** ntk_exp
    assert torch.allclose(agg.weights, expected, rtol=1e-13)
    if ntk_exp == 0.0:
        assert torch.equal(agg.weights, torch.ones(k, dtype=F64))   # linear scalarisation
    if ntk_exp == 1.0:
        assert torch.allclose(agg.weights * lam, lam.sum().expand(k), rtol=1e-13)


def test_square_root_equalises_the_contributions():
    """At the default 0.5 every weighted gradient has norm sqrt(tr M): d = sqrt(tr M) sum_i u_i."""
    G = ill_conditioned_grads(6, 15, seed=3, spread=3.0)
    agg = aggregators.make("ntkmtl", 6)
    d = agg(G)
    contrib = (agg.weights[:, None] * G).norm(dim=1)
    trace = float((G * G).sum())
    assert torch.allclose(contrib, torch.full((6,), trace ** 0.5, dtype=F64), rtol=1e-12)
    units = G / G.norm(dim=1, keepdim=True)
    assert torch.allclose(d, trace ** 0.5 * units.sum(0), rtol=1e-12, atol=1e-12 * trace ** 0.5)


def test_two_tasks_never_conflict_but_three_can():
    """k = 2 at ntk_exp = 0.5: g_1 . d = sqrt(tr M) ||g_1|| (1 + cos) >= 0.  Three tasks:
    two unit gradients near -e_1 outvote e_1."""
    for seed in range(5):
        G = ill_conditioned_grads(2, 8, seed=seed, spread=3.0)
        G[1] = G[1] - 1.9 * (G[0] @ G[1]).abs() / (G[0] @ G[0]) * G[0]   # conflicting pair
        assert float(G[0] @ G[1]) < 0
        assert_non_conflicting(aggregators.make("ntkmtl", 2), G)
    G = torch.tensor([[1.0, 0.0], [-1.0, 0.01], [-1.0, -0.01]], dtype=F64)
    d = aggregators.make("ntkmtl", 3)(G)
    assert float(G[0] @ d) < 0


def test_scale_and_permutation_invariance():
    G = ill_conditioned_grads(5, 12, seed=2)
    assert_homogeneous(lambda: aggregators.make("ntkmtl", 5), G, 1.0, factors=(1e-8, 7.0, 1e6), rtol=1e-12)
    # scaling one task's gradient by 10: its weight (tr M' / (100 M_00)) ** 0.5 is the old
    # one divided by 10, times sqrt(tr M' / tr M)
    agg = aggregators.make("ntkmtl", 5)
    agg(G)
    w = agg.weights.clone()
    assert_permutation_invariant(aggregators.make("ntkmtl", 5), aggregators.make("ntkmtl", 5), G,
                                 perm=torch.tensor([2, 4, 0, 1, 3]), check_weights=True)
    G2 = G.clone()
    G2[0] *= 10
    agg(G2)
    lam, lam2 = (G * G).sum(1), (G2 * G2).sum(1)
    assert torch.allclose(agg.weights[0], w[0] / 10 * (lam2.sum() / lam.sum()) ** 0.5, rtol=1e-13)


# ----------------------------------------------------------------------------- kernels (n > 1)
@pytest.mark.parametrize("seed", range(3))
def test_weights_from_kernels_use_the_largest_eigenvalue(seed):
    """n samples per task: lambda_i = lambda_max(J_i J_i^T), checked against NumPy's
    eigensolver, invariant to a rotation of the samples (Q K Q^T), and n = 1 is the Gram
    diagonal."""
    k, n, p = 4, 5, 30
    rng = np.random.default_rng(seed)
    J = rng.normal(size=(k, n, p)) * rng.uniform(0.1, 10.0, size=(k, 1, 1))
    K = torch.from_numpy(J @ J.transpose(0, 2, 1))
    agg = aggregators.make("ntkmtl", k)
    w = agg.weights_from_kernels(K)
    top = np.array([np.linalg.eigvalsh(Ki)[-1] for Ki in K.numpy()])
    np.testing.assert_allclose(w.numpy(), np.sqrt(top.sum() / top), rtol=1e-12)
    assert agg.weights is w
    Q = torch.from_numpy(np.linalg.qr(rng.normal(size=(n, n)))[0])
    assert torch.allclose(agg.weights_from_kernels(Q @ K @ Q.T), w, rtol=1e-12)
    # one sample per task: the kernel is ||g_i||^2 and the rule is the Gram rule
    G = _grads(k, p, seed)
    single = (G * G).sum(1)[:, None, None]
    assert torch.allclose(agg.weights_from_kernels(single), agg.gram_weights(G @ G.T), rtol=1e-14)
    with pytest.raises(ValueError, match="kernels"):
        agg.weights_from_kernels(torch.ones(k, 2, 3, dtype=F64))
    with pytest.raises(ValueError, match="kernels"):
        agg.weights_from_kernels(torch.ones(k + 1, 2, 2, dtype=F64))


# ----------------------------------------------------------------------------- NTKMTL-SR
class _Net(nn.Module):
    def __init__(self, k):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh()).double()
        self.heads = nn.ModuleList(nn.Linear(6, 1).double() for _ in range(k))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
            for i, h in enumerate(self.heads):
                h.weight.mul_(10.0 ** (i - 1))   # tasks whose representation gradients differ


def test_representation_mode_is_ntkmtl_sr_with_one_sample():
    """features=z: the weights come from the norms of dl_i / dz, and the trunk receives
    the gradient of sum_i w_i l_i (the reference's SR update with the batch-mean losses)."""
    k = 3
    net = _Net(k)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1), dtype=F64)
    y = torch.randn(8, k, generator=torch.Generator().manual_seed(2), dtype=F64)

    def losses():
        z = net.trunk(x)
        return z, [((net.heads[i](z).squeeze(1) - y[:, i]) ** 2).mean() for i in range(k)]

    z, ls = losses()
    gz = torch.stack([torch.autograd.grad(l, z, retain_graph=True)[0].flatten() for l in ls])
    sq = (gz * gz).sum(1)
    w = (sq.sum() / sq) ** 0.5
    expected = torch.autograd.grad(sum(wi * li for wi, li in zip(w, ls)), list(net.trunk.parameters()))

    net.zero_grad()
    z, ls = losses()
    res = aggregators.backward(ls, net.trunk, aggregators.make("ntkmtl", k), features=z)
    assert torch.allclose(res.weights, w, rtol=1e-12)
    for p, e in zip(net.trunk.parameters(), expected):
        assert torch.allclose(p.grad, e, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- degenerate
def test_zero_and_duplicate_tasks():
    cases = degenerate_cases()
    G = cases["zero_row"]
    agg = aggregators.make("ntkmtl", 3)
    d = assert_weighted(agg, G)
    lam = (G * G).sum(1)
    assert float(agg.weights[1]) == 0.0
    assert torch.allclose(agg.weights[[0, 2]], (lam.sum() / lam[[0, 2]]) ** 0.5, rtol=1e-14)
    assert torch.allclose(d, agg.weights[0] * G[0] + agg.weights[2] * G[2], rtol=1e-14)
    d = agg(cases["all_zero"])
    assert torch.equal(d, torch.zeros_like(d))
    assert torch.allclose(agg.weights, torch.full((3,), 3 ** 0.5, dtype=F64), rtol=1e-15)
    agg(cases["duplicate"])
    assert float(agg.weights[0]) == float(agg.weights[1])
    for G in cases.values():
        assert_weighted(aggregators.make("ntkmtl", 3), G)
        assert_weighted(aggregators.make("ntkmtl", 3), G.float())


def test_single_task_has_unit_weight():
    g = _grads(1, 6, seed=0)
    agg = aggregators.make("ntkmtl", 1)
    assert torch.allclose(agg(g), g[0], rtol=1e-15)
    assert torch.equal(agg.weights, torch.ones(1, dtype=F64))


def test_device_form_has_no_host_reads(monkeypatch):
    G = _grads(4, 9, seed=1)
    gram = G @ G.T
    agg = aggregators.make("ntkmtl", 4)
    with no_host_reads(monkeypatch):
        w = agg.weights_from_gram(gram)
    assert torch.allclose(w, aggregators.make("ntkmtl", 4).gram_weights(gram), rtol=0, atol=0)


# ----------------------------------------------------------------------------- configuration
def test_reference_presets():
    """The released NYU-v2 run.sh uses ntk_exp = 0.75 (CelebA / QM9: the default 0.5)."""
    assert aggregators.preset("ntkmtl", "nyuv2") == {"ntk_exp": 0.75}
    assert aggregators.preset("ntkmtl", "celeba") == {}
    assert aggregators.make("ntkmtl", 3, **aggregators.preset("ntkmtl", "nyuv2")).ntk_exp == 0.75


def test_defaults_and_validation():
    assert aggregators.hyperparameters("ntkmtl") == {"ntk_exp": 0.5, "every": 1, "tasks_per_step": None}
    assert aggregators.make("ntkmtl", 3).state_dict().keys() <= {"_extra_state"}
    for bad in (-0.5, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="ntk_exp"):
            aggregators.make("ntkmtl", 3, ntk_exp=bad)
