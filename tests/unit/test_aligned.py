"""Aligned-MTL: the aligned gradients are orthogonal with equal norms (kappa = 1)."""

import numpy as np
import pytest
import torch

import aggregators
from aggregators import solvers
from aggregators.aligned import balance_matrix, balance_matrix_device
from helpers import degenerate_cases, ill_conditioned_grads, no_host_reads

EPS64 = torch.finfo(torch.float64).eps


@pytest.mark.parametrize("k", [2, 3, 5, 10, 30])
@pytest.mark.parametrize("seed", [0, 1])
def test_aligned_gradients_are_orthogonal_with_equal_norms(k, seed):
    G = ill_conditioned_grads(k, 3 * k + 5, seed, spread=1.0)
    agg = aggregators.make("aligned_mtl", k)
    B, lam_min = agg.balance_matrix(G @ G.T)
    assert lam_min == pytest.approx(float(torch.linalg.eigvalsh(G @ G.T)[0]), rel=1e-8)
    G_hat = B @ G
    gram_hat = G_hat @ G_hat.T
    eye = torch.eye(k, dtype=torch.float64)
    assert torch.allclose(gram_hat, lam_min * eye, rtol=0, atol=1e-8 * lam_min)
    s = torch.linalg.svdvals(G_hat)
    assert float(s.max() / s.min()) == pytest.approx(1.0, abs=1e-8)  # kappa(G^) = 1
    # d is the sum of the aligned gradients (preferences = 1)
    d = agg(G)
    assert torch.allclose(d, G_hat.sum(0), rtol=1e-9, atol=1e-12 * float(G.norm()))


@pytest.mark.parametrize("spread", [3.0, 5.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alignment_on_very_ill_conditioned_inputs(spread, seed):
    """Gradient norms over six and ten orders of magnitude (eigenvalues of M over more
    than 1 / eps): G^ G^^T = lambda_min I still holds to ~1e-9 relative to lambda_min,
    where eigh(M) would be off by eps * lambda_max."""
    k = 8
    G = ill_conditioned_grads(k, 40, seed, spread=spread)
    M = (G @ G.T).numpy()
    B, lam_min, rank = balance_matrix(M, EPS64)
    assert rank == k
    sigma = np.linalg.svd(B @ G.numpy(), compute_uv=False)
    assert np.abs(sigma / np.sqrt(lam_min) - 1).max() < 1e-8
    err = np.abs(B @ M @ B.T - lam_min * np.eye(k)).max()
    assert err <= 1e-8 * lam_min


def test_matches_the_procrustes_solution_in_parameter_space():
    """Eq. 5: G^ = sigma_min U V^T from the SVD of G equals B G (task space)."""
    k = 4
    G = ill_conditioned_grads(k, 11, seed=5, spread=0.5)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    G_hat = S.min() * U @ Vh
    B, _ = aggregators.make("aligned_mtl", k).balance_matrix(G @ G.T)
    assert torch.allclose(B @ G, G_hat, rtol=1e-9, atol=1e-12)
    # and the smallest singular value sets the scale (sec. 5)
    assert torch.allclose((B @ G).norm(dim=1), S.min().expand(k), rtol=1e-10)


def test_known_values():
    # orthogonal gradients with norms 1 and 3: both rescaled to norm 1, d = g1 + g2 / 3
    G = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]], dtype=torch.float64)
    agg = aggregators.make("aligned_mtl", 2)
    d = agg(G)
    assert torch.allclose(d, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    assert torch.allclose(agg.weights, torch.tensor([1.0, 1 / 3], dtype=torch.float64))


def test_preferences():
    k = 3
    G = ill_conditioned_grads(k, 10, seed=2, spread=1.0)
    pref = [0.2, 0.5, 0.3]
    agg = aggregators.make("aligned_mtl", k, preferences=pref)
    B, _ = agg.balance_matrix(G @ G.T)
    assert torch.allclose(agg(G), torch.tensor(pref, dtype=torch.float64) @ (B @ G))
    # the paper's w = 1/T: the default direction scaled by 1/k
    third = aggregators.make("aligned_mtl", k, preferences=[1 / 3] * 3)(G)
    assert torch.allclose(third, aggregators.make("aligned_mtl", k)(G) / 3)
    for bad in ([1.0, 2.0], [1.0, -1.0, 1.0], [1.0, float("nan"), 1.0]):
        with pytest.raises(ValueError, match="preferences"):
            aggregators.make("aligned_mtl", k, preferences=bad)
    with pytest.raises(ValueError, match="eps"):
        aggregators.make("aligned_mtl", k, eps=0.0)


def test_rank_deficient_inputs():
    g = torch.randn(3, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    G = torch.stack([g[0], g[1], g[0], 2 * g[2], g[2]])  # rank 3
    agg = aggregators.make("aligned_mtl", 5)
    d = agg(G)
    assert torch.isfinite(d).all()
    B, lam_min = agg.balance_matrix(G @ G.T)
    lam = torch.linalg.eigvalsh(G @ G.T)
    assert lam_min == pytest.approx(float(lam[2]), rel=1e-8)  # smallest nonzero
    assert balance_matrix((G @ G.T).numpy(), EPS64)[2] == 3
    # on the kept 3-dimensional eigenspace the aligned gradients are still balanced:
    # G^ G^^T = lambda_min P, P the projector onto that space
    gram_hat = B @ G @ G.T @ B.T
    ev = torch.linalg.eigvalsh(gram_hat)
    assert torch.allclose(ev[2:], torch.full_like(ev[2:], lam_min), rtol=1e-8)
    assert float(ev[:2].abs().max()) < 1e-10 * float(lam_min)


def test_eps_follows_the_data_dtype():
    k = 3
    gen = torch.Generator().manual_seed(1)
    G = torch.randn(k, 8, generator=gen, dtype=torch.float64)
    G[2] = G[0] + 1e-4 * G[2]  # nearly dependent: squared angle ~1e-8 / ||g||^2
    lam = torch.linalg.eigvalsh(G @ G.T)
    # a large eps treats g_3 as dependent: the scale becomes the middle eigenvalue
    agg = aggregators.make("aligned_mtl", k, eps=1e-3)
    _, lam_min = agg.balance_matrix(G @ G.T)
    assert lam_min == pytest.approx(float(lam[1]), rel=1e-3)
    _, lam_min = aggregators.make("aligned_mtl", k).balance_matrix(G @ G.T)
    assert lam_min == pytest.approx(float(lam[0]), rel=1e-6)
    default = aggregators.make("aligned_mtl", k)
    assert default._eps(torch.float64) == EPS64
    assert default._eps(torch.float32) == torch.finfo(torch.float32).eps
    # agg(grads) on float32 gradients uses float32 eps, as the reference does
    G32 = G.float()
    d32 = default(G32)
    M32 = G32 @ G32.T
    B, _, _ = balance_matrix(M32.double().numpy(), torch.finfo(torch.float32).eps)
    alpha = torch.from_numpy(B.sum(1))
    assert torch.allclose(d32.double(), alpha @ G32.double(), rtol=1e-5)


def test_state_dict_round_trip():
    k = 4
    G = ill_conditioned_grads(k, 12, seed=9)
    a = aggregators.make("aligned_mtl", k, preferences=[1.0, 2.0, 0.5, 0.0])
    b = aggregators.make("aligned_mtl", k)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(G), b(G))


# ----------------------------------------------------------------------------- the device form
def _device(agg, gram, monkeypatch=None):
    """``agg.gram_weights(gram)`` in the device form on the CPU, failing on any read of a
    tensor value by the host."""
    agg.check_inputs = False   # the NaN check reads the host (aggregators.backward checks once)
    mp = monkeypatch or pytest.MonkeyPatch()
    try:
        with solvers.device_form(), no_host_reads(mp):
            return agg.gram_weights(gram)
    finally:
        mp.undo()


@pytest.mark.parametrize("k", [2, 3, 5, 10, 40])
@pytest.mark.parametrize("spread", [0.0, 3.0, 5.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_device_form_gives_the_host_weights(k, spread, seed):
    """Random (spread 0) and ill-conditioned Gram matrices: eigenvalues of M over up to
    more than 1e20, resolved by the Jacobi sweeps as by the host's graded factor."""
    G = ill_conditioned_grads(k, 3 * k + 5, seed, spread=spread)
    gram = G @ G.T
    pref = torch.linspace(0.5, 1.5, k, dtype=torch.float64).tolist()
    host = aggregators.make("aligned_mtl", k, preferences=pref).gram_weights(gram)
    dev = _device(aggregators.make("aligned_mtl", k, preferences=pref), gram)
    assert dev.dtype == torch.float64 and dev.shape == (k,)
    assert float((dev - host).abs().max()) <= 1e-10 * float(host.abs().max())
    d_host, d_dev = host @ G, dev @ G
    assert float((d_dev - d_host).norm()) <= 1e-10 * float(d_host.norm())
    # B and lambda_min themselves, and the alignment B M B^T = lambda_min I
    B_host, lam_host, _ = balance_matrix(gram.numpy(), EPS64)
    with solvers.device_form():
        B_dev, lam_dev = balance_matrix_device(gram, EPS64)
    assert float(lam_dev) == pytest.approx(lam_host, rel=1e-10)
    B_host = torch.from_numpy(B_host)
    assert float((B_dev - B_host).abs().max()) <= 1e-10 * float(B_host.abs().max())
    err = (B_dev @ gram @ B_dev.T - lam_dev * torch.eye(k, dtype=torch.float64)).abs().max()
    assert float(err) <= 1e-9 * float(lam_dev)


def test_device_form_on_the_degenerate_cases():
    cases = degenerate_cases(n=12)
    for name in ("duplicate", "opposite"):   # rank 2 of 3: the smallest nonzero eigenvalue
        G = cases[name]
        gram = G @ G.T
        host = aggregators.make("aligned_mtl", 3).gram_weights(gram)
        dev = _device(aggregators.make("aligned_mtl", 3), gram)
        assert torch.allclose(dev, host, rtol=0, atol=1e-12 * float(host.abs().max()))
        with solvers.device_form():
            B, lam_min = aggregators.make("aligned_mtl", 3).balance_matrix(gram)
        assert lam_min == pytest.approx(float(torch.linalg.eigvalsh(gram)[1]), rel=1e-10)
    # duplicates share: the rows of B (and the weights) of g_1 and g_2 are equal
    dev = _device(aggregators.make("aligned_mtl", 3), cases["duplicate"] @ cases["duplicate"].T)
    assert abs(float(dev[0] - dev[1])) <= 1e-14 * float(dev.abs().max())
    # a zero-gradient task: its row and column of B are exactly 0, the rest as without it
    G = cases["zero_row"]
    with solvers.device_form():
        B, lam_min = balance_matrix_device(G @ G.T, EPS64)
        B2, lam2 = balance_matrix_device(G[[0, 2]] @ G[[0, 2]].T, EPS64)
    assert torch.equal(B[1], torch.zeros(3, dtype=torch.float64)) and torch.equal(B[:, 1], B[1])
    assert torch.allclose(B[[0, 2]][:, [0, 2]], B2, rtol=0, atol=1e-14)
    assert float(lam_min) == pytest.approx(float(lam2), rel=1e-14)
    # all zero: B = 0 and lambda_min = 0, as on the host
    G = cases["all_zero"]
    dev = _device(aggregators.make("aligned_mtl", 3), G @ G.T)
    assert torch.equal(dev, torch.zeros(3, dtype=torch.float64))
    with solvers.device_form():
        assert aggregators.make("aligned_mtl", 3).balance_matrix(G @ G.T)[1] == 0.0
    # norms ten orders of magnitude apart
    G = cases["ten_orders"]
    host = aggregators.make("aligned_mtl", 3).gram_weights(G @ G.T)
    dev = _device(aggregators.make("aligned_mtl", 3), G @ G.T)
    assert float(((dev - host) / host).abs().max()) < 1e-10


def test_device_form_on_rank_deficient_inputs():
    """B M B^T = lambda_min P, P the projector onto the span of M (the eigenvectors with
    nonzero eigenvalues), lambda_min the smallest nonzero eigenvalue."""
    g = torch.randn(3, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    G = torch.stack([g[0], g[1], g[0], 2 * g[2], g[2]])  # rank 3
    gram = G @ G.T
    with solvers.device_form():
        B, lam_min = balance_matrix_device(gram, EPS64)
    lam, vec = torch.linalg.eigh(gram)
    assert float(lam_min) == pytest.approx(float(lam[2]), rel=1e-10)
    proj = vec[:, 2:] @ vec[:, 2:].T
    err = (B @ gram @ B.T - lam_min * proj).abs().max()
    assert float(err) <= 1e-10 * float(lam_min)
    host = aggregators.make("aligned_mtl", 5).gram_weights(gram)
    dev = _device(aggregators.make("aligned_mtl", 5), gram)
    assert torch.allclose(dev, host, rtol=0, atol=1e-12 * float(host.abs().max()))
    # the same with norms over six orders of magnitude (the rank is decided on the
    # cosines, not on lambda / lambda_max)
    s = torch.tensor([1e-3, 1.0, 1e-3, 1e3, 5e2], dtype=torch.float64)
    gram = (s[:, None] * G) @ (s[:, None] * G).T
    host = aggregators.make("aligned_mtl", 5).gram_weights(gram)
    dev = _device(aggregators.make("aligned_mtl", 5), gram)
    assert float((dev - host).abs().max()) <= 1e-10 * float(host.abs().max())
    assert balance_matrix(gram.numpy(), EPS64)[2] == 3


def test_device_form_eps_follows_the_data_dtype():
    k = 3
    gen = torch.Generator().manual_seed(1)
    G = torch.randn(k, 8, generator=gen, dtype=torch.float64)
    G[2] = G[0] + 1e-4 * G[2]  # nearly dependent
    lam = torch.linalg.eigvalsh(G @ G.T)
    with solvers.device_form():
        # a large eps treats g_3 as dependent: the scale becomes the middle eigenvalue
        _, lam_min = aggregators.make("aligned_mtl", k, eps=1e-3).balance_matrix(G @ G.T)
        assert lam_min == pytest.approx(float(lam[1]), rel=1e-3)
        _, lam_min = aggregators.make("aligned_mtl", k).balance_matrix(G @ G.T)
        assert lam_min == pytest.approx(float(lam[0]), rel=1e-6)
    # agg(grads) on float32 gradients: float32 eps, as on the host
    G32 = G.float()
    dev = aggregators.make("aligned_mtl", k)
    dev.check_inputs = False
    with solvers.device_form():
        d32 = dev(G32)
    assert torch.allclose(d32, aggregators.make("aligned_mtl", k)(G32), rtol=1e-6)
