"""SDMGrad (Xiao, Ban & Ji, NeurIPS 2023): the inner projected-SGD solve of
``min_w 1/2 ||G^T w||^2 + lam g0 . G^T w`` on the simplex, its warm start, and
``d = (G^T w + lam g0) / (1 + lam)``."""

import numpy as np
import pytest
import torch
from helpers import degenerate_cases, ill_conditioned_grads, no_host_reads
from properties import assert_homogeneous, assert_permutation_invariant, assert_weighted

import aggregators
from aggregators.sdmgrad import project_to_simplex

F64 = torch.float64


def _grads(k, n, seed):
    return torch.randn(k, n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _dual(M, w, lam):
    """1/2 w^T M w + lam w^T M 1/k (batched over the rows of w)."""
    k = M.shape[0]
    w = np.atleast_2d(w)
    return 0.5 * np.einsum("ij,jk,ik->i", w, M, w) + lam * w @ (M @ np.full(k, 1.0 / k))


def _numpy_projection(v):
    """The sort-and-threshold projection written out in NumPy, as the references do."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, v.size + 1) > css - 1)[0][-1]
    return np.clip(v - (css[rho] - 1) / (rho + 1.0), 0, None)


class _ReferenceLoop:
    """The authors' inner loop, spelled with ``torch.optim.SGD`` (a fresh optimiser per
    call, the iterate kept between calls) and the NumPy projection."""

    def __init__(self, k, lam, niter=20, lr=10.0, momentum=0.5, eps=1e-4):
        self.w = torch.full((k,), 1.0 / k, dtype=F64)
        self.lam, self.niter, self.lr, self.momentum, self.eps = lam, niter, lr, momentum, eps

    def __call__(self, G):
        GG = G @ G.T
        scale = torch.sqrt(torch.diag(GG) + self.eps).mean()
        GG = GG / scale ** 2
        Gg = GG.mean(dim=1)
        w = self.w.clone().requires_grad_(True)
        opt = torch.optim.SGD([w], lr=self.lr, momentum=self.momentum)
        for _ in range(self.niter):
            opt.zero_grad()
            w.grad = GG @ w.detach() + self.lam * Gg
            opt.step()
            with torch.no_grad():
                w.copy_(torch.from_numpy(_numpy_projection(w.detach().numpy())))
        self.w = w.detach()
        k = G.shape[0]
        return (self.w @ G + self.lam * G.mean(0)) / (1 + self.lam)


# ----------------------------------------------------------------------------- projection
def test_projection_known_values():
    def proj(v):
        return project_to_simplex(torch.tensor(v, dtype=F64)).numpy()

    np.testing.assert_allclose(proj([0.2, 0.3, 0.5]), [0.2, 0.3, 0.5], atol=1e-15)   # on the simplex
    np.testing.assert_allclose(proj([1.0, 1.0]), [0.5, 0.5], atol=1e-15)
    np.testing.assert_allclose(proj([0.5, 0.5, 2.0]), [0.0, 0.0, 1.0], atol=1e-15)
    # sum 0.6: theta = -0.4 / 3 shifts every entry up by 0.4 / 3
    np.testing.assert_allclose(proj([0.2, 0.3, 0.1]), [0.2 + 0.4 / 3, 0.3 + 0.4 / 3, 0.1 + 0.4 / 3], atol=1e-15)
    # theta = (3 + 1 - 1) / 2 = 1.5: [3 - 1.5, 1 - 1.5 -> 0, ...]: the top entry alone, then two
    np.testing.assert_allclose(proj([3.0, 1.0, -2.0]), [1.0, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(proj([1.2, 1.0, -2.0]), [0.6, 0.4, 0.0], atol=1e-15)


@pytest.mark.parametrize("seed", range(6))
def test_projection_is_the_nearest_simplex_point(seed):
    """The variational inequality (v - p) . (q - p) <= 0 for every q in the simplex, and the
    NumPy transcription of the same rule."""
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 12))
    v = rng.normal(scale=rng.choice([0.1, 1.0, 30.0]), size=k)
    p = project_to_simplex(torch.from_numpy(v)).numpy()
    assert (p >= 0).all() and abs(p.sum() - 1) < 1e-12
    q = rng.dirichlet(np.ones(k), size=500)
    tol = 1e-12 * (1 + np.abs(v).max())
    assert ((q - p) @ (v - p) <= tol).all()
    assert ((np.eye(k) - p) @ (v - p) <= tol).all()
    np.testing.assert_allclose(p, _numpy_projection(v), atol=1e-13)


# ----------------------------------------------------------------------------- the reference loop
@pytest.mark.parametrize("k,n,seed", [(2, 6, 0), (3, 10, 1), (5, 30, 2), (10, 7, 3)])
@pytest.mark.parametrize("lam", [0.3, 0.6])
def test_matches_the_reference_inner_loop_over_several_calls(k, n, seed, lam):
    """torch.optim.SGD(lr=10, momentum=0.5) for 20 steps with a projection after each,
    warm-started from the previous call's w, on M / mean(sqrt(diag M + 1e-4))^2."""
    agg = aggregators.make("sdmgrad", k, lam=lam, scale_eps=1e-4)
    ref = _ReferenceLoop(k, lam)
    for step in range(4):
        G = ill_conditioned_grads(k, n, seed=10 * seed + step, spread=1.0)
        d = agg(G)
        d_ref = ref(G)
        assert torch.allclose(agg.simplex_weights, ref.w, rtol=0, atol=1e-10), step
        assert torch.allclose(d, d_ref, rtol=1e-10, atol=1e-12 * float(G.norm()))
        assert torch.allclose(agg.weights, (ref.w + lam / k) / (1 + lam), rtol=0, atol=1e-10)


def test_direction_is_the_regularised_combination():
    """d = (G^T w + lam g0) / (1 + lam): weights (w + lam / k) / (1 + lam), summing to 1."""
    G = _grads(4, 9, seed=3)
    agg = aggregators.make("sdmgrad", 4, lam=0.6)
    d = assert_weighted(agg, G)
    w = agg.simplex_weights
    assert abs(float(w.sum()) - 1) < 1e-12 and bool((w >= 0).all())
    assert torch.allclose(d, (w @ G + 0.6 * G.mean(0)) / 1.6, rtol=1e-12, atol=1e-14)
    assert abs(float(agg.weights.sum()) - 1) < 1e-12


# ----------------------------------------------------------------------------- the objective
@pytest.mark.parametrize("k,n,seed", [(2, 5, 0), (3, 8, 1), (4, 3, 2), (6, 20, 3)])
@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0])
def test_converged_inner_solve_minimises_the_dual(k, n, seed, lam):
    """With a small step and many iterations the same solver reaches the minimiser of
    1/2 ||G^T w||^2 + lam g0 . G^T w over the simplex: its KKT conditions hold and no
    simplex point (random or a vertex) does better."""
    G = _grads(k, n, seed)
    agg = aggregators.make("sdmgrad", k, lam=lam, niter=20000, lr=0.05, momentum=0.5)
    agg(G)
    w = agg.simplex_weights.numpy()
    M = (G @ G.T).numpy()
    A = agg.normalized_gram(G @ G.T).numpy()
    grad = A @ w + lam * A @ np.full(k, 1.0 / k)
    low = grad[w > 1e-9].min()
    assert np.abs(grad[w > 1e-9] - low).max() < 1e-8
    assert (grad >= low - 1e-8).all()
    f = _dual(M, w, lam)[0]
    scale = np.abs(M).max()
    rng = np.random.default_rng(seed)
    assert (_dual(M, rng.dirichlet(np.ones(k), size=400), lam) >= f - 1e-9 * scale).all()
    assert (_dual(M, np.eye(k), lam) >= f - 1e-9 * scale).all()


def test_lam_zero_converged_is_mgda():
    G = _grads(4, 10, seed=5)
    agg = aggregators.make("sdmgrad", 4, lam=0.0, niter=20000, lr=0.05)
    d = agg(G)
    d_mgda = aggregators.make("mgda", 4)(G)
    assert torch.allclose(d, d_mgda, rtol=1e-6, atol=1e-8 * float(G.norm()))


def test_large_lam_is_the_mean_gradient():
    G = _grads(5, 12, seed=6)
    agg = aggregators.make("sdmgrad", 5, lam=1e8)
    d = agg(G)
    # weights 1/k + (w - 1/k) / (1 + lam)
    assert float((agg.weights - 0.2).abs().max()) <= 1e-8
    assert torch.allclose(d, G.mean(0), rtol=0, atol=1e-7 * float(G.norm(dim=1).max()))


def test_known_values_orthogonal_equal_norms():
    """M = c I: the uniform w is a fixed point of every projected step (the gradient is a
    multiple of 1), so d = g0 for every lam and every step."""
    G = 3.0 * torch.eye(3, 5, dtype=F64)
    for lam in (0.0, 0.3, 0.6):
        agg = aggregators.make("sdmgrad", 3, lam=lam)
        for _ in range(3):
            d = agg(G)
            assert torch.allclose(agg.weights, torch.full((3,), 1 / 3, dtype=F64), atol=1e-15)
            assert torch.allclose(d, G.mean(0), atol=1e-15)


def test_known_values_first_steps_two_tasks():
    """G = diag(1, 2): s = 3/2, A = diag(4, 16) / 9, pull = 0.3 A 1/2 = (1, 4) / 15.  From
    w = (1/2, 1/2): grad = (13, 52) / 45 and w - 10 grad projects to the vertex (1, 0);
    step 2: buffer (59, 76) / 90, again (1, 0); step 3: buffer (151, 124) / 180,
    w - 10 b = (-1330, -1240) / 180, whose projection is (1/4, 3/4)."""
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=F64)
    d = None
    for niter, expected in ((1, [1.0, 0.0]), (2, [1.0, 0.0]), (3, [0.25, 0.75])):
        agg = aggregators.make("sdmgrad", 2, lam=0.3, niter=niter)
        d = agg(G)
        assert torch.allclose(agg.simplex_weights, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-14), niter
    # d = (w_1 g_1 + w_2 g_2 + 0.3 (g_1 + g_2) / 2) / 1.3 with w = (1/4, 3/4)
    assert torch.allclose(d, torch.tensor([0.4, 1.8], dtype=F64) / 1.3, rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------- state
def test_warm_start_continues_from_the_last_iterate():
    G1, G2 = _grads(3, 8, seed=1), _grads(3, 8, seed=2)
    opts = dict(niter=2, lr=0.1, momentum=0.0)   # small steps: the start matters
    warm = aggregators.make("sdmgrad", 3, **opts)
    warm(G1)
    w1 = warm.simplex_weights.clone()
    assert not torch.allclose(w1, torch.full((3,), 1 / 3, dtype=F64))
    d2 = warm(G2)
    cold = aggregators.make("sdmgrad", 3, **opts)
    cold.simplex_weights.copy_(w1)
    assert torch.equal(cold(G2), d2)
    fresh = aggregators.make("sdmgrad", 3, **opts)
    assert float((fresh(G2) - d2).abs().max()) > 1e-3 * float(d2.abs().max())


def test_state_dict_round_trip_and_reset():
    k = 4
    a = aggregators.make("sdmgrad", k)
    for seed in range(3):
        a(_grads(k, 10, seed))
    state = a.state_dict()
    assert "simplex_weights" in state
    assert not torch.equal(state["simplex_weights"], torch.full((k,), 1 / k, dtype=F64))
    b = aggregators.make("sdmgrad", k)
    b.load_state_dict(state)
    G = _grads(k, 10, seed=9)
    assert torch.equal(a(G), b(G))
    a.reset()
    assert torch.equal(a.simplex_weights, torch.full((k,), 1 / k, dtype=F64))
    assert torch.equal(a(G), aggregators.make("sdmgrad", k)(G))


# ----------------------------------------------------------------------------- invariances
def test_scale_invariance_and_the_reference_guard():
    """scale_eps = 0: the normalised Gram matrix, hence w, ignores a global scale (d is
    linear).  The references' 1e-4 guard does not: for gradients of norm 1e-4 the
    normalised matrix is ~1e-8 and w hardly leaves 1/k."""
    G = ill_conditioned_grads(4, 15, seed=4, spread=1.0)
    assert_homogeneous(lambda: aggregators.make("sdmgrad", 4), G, 1.0, factors=(1e-6, 7.0, 1e5))
    big = aggregators.make("sdmgrad", 4, scale_eps=1e-4)
    small = aggregators.make("sdmgrad", 4, scale_eps=1e-4)
    big(G)
    small(1e-6 * G / G.norm(dim=1).mean())
    uniform = torch.full((4,), 0.25, dtype=F64)
    assert float((small.simplex_weights - uniform).abs().max()) < 1e-4
    assert float((big.simplex_weights - uniform).abs().max()) > 0.1


@pytest.mark.parametrize("seed", range(3))
def test_permutation_equivariance(seed):
    G = _grads(5, 11, seed)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a, b = aggregators.make("sdmgrad", 5), aggregators.make("sdmgrad", 5)
    for step in range(3):
        Gs = G + 0.3 * step * _grads(5, 11, seed + 100)
        assert_permutation_invariant(a, b, Gs, perm=perm, check_weights=True)


# ----------------------------------------------------------------------------- degenerate
def test_degenerate_inputs():
    cases = degenerate_cases()
    agg = aggregators.make("sdmgrad", 3)
    d = agg(cases["all_zero"])
    assert torch.equal(d, torch.zeros_like(d))
    assert torch.equal(agg.simplex_weights, torch.full((3,), 1 / 3, dtype=F64))   # left where it was
    for name, G in cases.items():
        agg = aggregators.make("sdmgrad", 3)
        for _ in range(3):
            d = assert_weighted(agg, G)
            assert bool(torch.isfinite(agg.simplex_weights).all()) and abs(float(agg.simplex_weights.sum()) - 1) < 1e-12, name
    # duplicate tasks: swapping the two copies changes nothing
    G = cases["duplicate"]
    a, b = aggregators.make("sdmgrad", 3), aggregators.make("sdmgrad", 3)
    assert torch.allclose(a(G), b(G[[1, 0, 2]]), rtol=1e-12, atol=1e-14)


def test_single_task_is_the_gradient():
    g = _grads(1, 7, seed=0)
    agg = aggregators.make("sdmgrad", 1)
    assert torch.allclose(agg(g), g[0], rtol=1e-14, atol=0)
    assert torch.equal(agg.weights, torch.ones(1, dtype=F64))


def test_float32_gradients():
    G = _grads(3, 20, seed=2).float()
    agg = aggregators.make("sdmgrad", 3)
    d = assert_weighted(agg, G)
    assert d.dtype == torch.float32 and agg.weights.dtype == F64


def test_device_form_has_no_host_reads(monkeypatch):
    G = _grads(4, 9, seed=1)
    agg = aggregators.make("sdmgrad", 4)
    gram = G @ G.T
    with no_host_reads(monkeypatch):
        w = agg.weights_from_gram(gram)
    assert w.shape == (4,)
    ref = aggregators.make("sdmgrad", 4)
    assert torch.allclose(w, ref.gram_weights(gram), rtol=0, atol=0)


# ----------------------------------------------------------------------------- configuration
def test_reference_presets():
    """The released scripts' lam: NYU-v2 run.sh and the Cityscapes trainer's default 0.3,
    the MT10 / MT50 run.sh 0.6."""
    assert aggregators.preset("sdmgrad", "nyuv2") == {"lam": 0.3}
    assert aggregators.preset("sdmgrad", "cityscapes") == {"lam": 0.3}
    assert aggregators.preset("sdmgrad", "mt10") == {"lam": 0.6}
    assert aggregators.preset("sdmgrad", "mt50") == {"lam": 0.6}
    assert aggregators.make("sdmgrad", 10, **aggregators.preset("sdmgrad", "mt10")).lam == 0.6


def test_defaults_and_validation():
    assert aggregators.hyperparameters("sdmgrad") == {
        "lam": 0.3, "niter": 20, "lr": 10.0, "momentum": 0.5, "scale_eps": 0.0, "every": 1, "tasks_per_step": None}
    for bad in ({"lam": -0.1}, {"lam": float("nan")}, {"lam": "x"}, {"niter": 0}, {"niter": 2.5},
                {"niter": True}, {"lr": 0.0}, {"lr": -1.0}, {"momentum": 1.0}, {"momentum": -0.1},
                {"scale_eps": -1e-4}, {"scale_eps": float("inf")}):
        with pytest.raises(ValueError, match="SDMGrad"):
            aggregators.make("sdmgrad", 3, **bad)
