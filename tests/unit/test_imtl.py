"""IMTL-G: equal projections of d on every unit task gradient."""

import pytest
import torch

import aggregators
from aggregators import solvers
from helpers import degenerate_cases, ill_conditioned_grads, no_host_reads


def projections(G, d):
    return (G @ d) / G.norm(dim=1)


@pytest.mark.parametrize("k", [2, 3, 5, 10, 30, 50])
@pytest.mark.parametrize("seed", [0, 1])
def test_equal_projections(k, seed):
    G = ill_conditioned_grads(k, 2 * k + 10, seed, spread=3.0)
    agg = aggregators.make("imtl_g", k)
    d = agg(G)
    w = agg.weights
    assert abs(float(w.sum()) - 1) < 1e-12
    assert torch.allclose(d, w @ G)
    p = projections(G, d)
    assert float((p - p.mean()).abs().max()) <= 1e-8 * float(p.abs().max())


def test_matches_the_papers_closed_form():
    """alpha_{2:k} = g_1 U^T (D U^T)^(-1), alpha_1 = 1 - sum alpha_{2:k} (IMTL sec. 3.2)."""
    k = 5
    G = ill_conditioned_grads(k, 20, seed=3, spread=1.0)
    U = G / G.norm(dim=1, keepdim=True)
    D = G[:1] - G[1:]
    Ud = U[:1] - U[1:]
    a = G[0] @ Ud.T @ torch.linalg.inv(D @ Ud.T)
    alpha = torch.cat([1 - a.sum().reshape(1), a])
    agg = aggregators.make("imtl_g", k)
    agg(G)
    assert torch.allclose(agg.weights, alpha, rtol=1e-8, atol=1e-12)


def test_known_values():
    # orthogonal gradients: d . u_i = alpha_i ||g_i|| equal -> alpha proportional to 1/||g_i||
    G = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    agg = aggregators.make("imtl_g", 3)
    agg(G)
    assert torch.allclose(agg.weights, torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64) / 7)


def test_direction_invariant_to_task_scaling():
    """Rescaling a task's loss leaves the unit vectors, hence the direction of d, unchanged."""
    G = ill_conditioned_grads(4, 15, seed=4, spread=1.0)
    s = torch.tensor([1e-3, 5.0, 1e2, 0.2], dtype=torch.float64)
    d1 = aggregators.make("imtl_g", 4)(G)
    d2 = aggregators.make("imtl_g", 4)(s[:, None] * G)
    cos = float(d1 @ d2 / (d1.norm() * d2.norm()))
    assert cos > 1 - 1e-10


def test_degenerate_inputs():
    g = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # duplicates: still equal projections, the duplicates share their weight
    G = torch.stack([g[0], g[0], g[1], g[2]])
    agg = aggregators.make("imtl_g", 4)
    d = agg(G)
    p = projections(G, d)
    assert torch.isfinite(d).all() and float((p - p.mean()).abs().max()) < 1e-8 * float(p.abs().max())
    assert abs(float(agg.weights[0] - agg.weights[1])) < 1e-8 and abs(float(agg.weights.sum()) - 1) < 1e-10
    # scaled duplicate
    G = torch.stack([g[0], 3 * g[0], g[1]])
    d = aggregators.make("imtl_g", 3)(G)
    p = projections(G, d)
    assert float((p - p.mean()).abs().max()) < 1e-8 * float(p.abs().max())
    # opposite gradients: the only equal projection is 0
    agg = aggregators.make("imtl_g", 2)
    d = agg(torch.stack([g[0], -2 * g[0]]))
    assert float(d.norm()) < 1e-10 and abs(float(agg.weights.sum()) - 1) < 1e-10
    # zero row: weight 0, the others as without it
    agg = aggregators.make("imtl_g", 3)
    d = agg(torch.stack([g[0], torch.zeros(12, dtype=torch.float64), g[1]]))
    assert agg.weights[1] == 0
    assert torch.allclose(d, aggregators.make("imtl_g", 2)(torch.stack([g[0], g[1]])))


# ----------------------------------------------------------------------------- the device form
def _host_and_device(G):
    """(host weights, device weights) for the gradients G; the device form runs on the CPU
    inside ``solvers.device_form()`` and fails on any read of a tensor value by the host."""
    k = G.shape[0]
    gram = G @ G.T
    host = aggregators.make("imtl_g", k).gram_weights(gram)
    dev = aggregators.make("imtl_g", k)
    dev.check_inputs = False   # the NaN check reads the host (aggregators.backward checks once)
    mp = pytest.MonkeyPatch()
    try:
        with solvers.device_form(), no_host_reads(mp):
            w = dev.gram_weights(gram)
    finally:
        mp.undo()
    return host, w


@pytest.mark.parametrize("k", [2, 3, 5, 10, 40])
@pytest.mark.parametrize("spread", [0.0, 3.0, 5.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_device_form_gives_the_host_weights(k, spread, seed):
    """Random (spread 0) and ill-conditioned Gram matrices (norms over 6 and 10 orders of
    magnitude); the bordered systems have condition numbers up to ~1e6 at k = 40."""
    G = ill_conditioned_grads(k, 2 * k + 10, seed, spread=spread)
    host, dev = _host_and_device(G)
    assert dev.dtype == torch.float64 and dev.shape == (k,)
    assert float((dev - host).abs().max()) <= 1e-10 * float(host.abs().max())
    assert abs(float(dev.sum()) - 1) < 1e-12
    p = projections(G, dev @ G)
    assert float((p - p.mean()).abs().max()) <= 1e-8 * float(p.abs().max())


def test_device_form_on_the_degenerate_cases():
    cases = degenerate_cases(n=12)
    g = torch.randn(3, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    # duplicates share their weight (the minimum-norm solution), as on the host
    for G in (cases["duplicate"], torch.stack([g[0], g[0], g[1], g[2]]), torch.stack([g[0], 3 * g[0], g[1]])):
        host, dev = _host_and_device(G)
        assert torch.allclose(dev, host, rtol=0, atol=1e-12)
        p = projections(G, dev @ G)
        assert float((p - p.mean()).abs().max()) < 1e-10 * float(p.abs().max())
    host, dev = _host_and_device(cases["duplicate"])
    assert abs(float(dev[0] - dev[1])) < 1e-14
    # g_2 = -g_1: the only equal projection is 0, reached with d = 0 and sum w = 1
    for G in (torch.stack([g[0], -g[0]]), torch.stack([g[0], -2 * g[0]]), cases["opposite"]):
        host, dev = _host_and_device(G)
        assert float((dev @ G).norm()) < 1e-12 * float(G.norm()) and abs(float(dev.sum()) - 1) < 1e-12
        assert torch.allclose(dev, host, rtol=0, atol=1e-12)
    # a zero-gradient task: weight exactly 0, the others as without it
    host, dev = _host_and_device(cases["zero_row"])
    assert dev[1] == 0 and torch.allclose(dev, host, rtol=0, atol=1e-14)
    _, two = _host_and_device(cases["zero_row"][[0, 2]])
    assert torch.allclose(dev[[0, 2]], two, rtol=0, atol=1e-14)
    # all zero: uniform weights
    host, dev = _host_and_device(cases["all_zero"])
    assert torch.equal(dev, torch.full((3,), 1 / 3, dtype=torch.float64)) and torch.equal(dev, host)
    # norms ten orders of magnitude apart
    host, dev = _host_and_device(cases["ten_orders"])
    assert float(((dev - host) / host).abs().max()) < 1e-12


def test_device_form_on_an_inconsistent_bordered_system():
    """g_3 = (g_1 + g_2) / 2: no weights summing to 1 give equal projections, and the
    bordered matrix is singular.  The weights may then differ from the host's along the
    null vector (a combination whose gradients cancel): d is the same to rounding."""
    g = torch.randn(2, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    G = torch.stack([g[0], g[1], (g[0] + g[1]) / 2])
    host, dev = _host_and_device(G)
    assert torch.isfinite(dev).all() and abs(float(dev.sum()) - 1) < 1e-12
    assert float((dev - host).abs().max()) < 1e-3
    scale = float(host.abs() @ G.norm(dim=1))
    assert float((dev @ G - host @ G).norm()) < 1e-12 * scale
