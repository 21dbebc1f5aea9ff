"""PCGrad, GradVac and GradDrop: their defining procedures, state and degenerate inputs."""


import pytest
import torch

import aggregators
from helpers import ill_conditioned_grads, degenerate_cases
from properties import assert_permutation_invariant, assert_structure, assert_weighted

F64 = torch.float64


def t64(rows):
    return torch.tensor(rows, dtype=F64)


def conflicting_pair(seed=0, n=30):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, generator=g, dtype=F64)
    b = torch.randn(n, generator=g, dtype=F64)
    b = b - 1.5 * (a @ b) / (a @ a) * a - 0.5 * a  # <a, b> < 0 for sure
    assert float(a @ b) < 0
    return torch.stack([1e-3 * a, 1e3 * b])


def cos(u, v):
    return float(u @ v / (u.norm() * v.norm()))


# -- explicit-vector versions of the procedures (the papers' algorithms, written directly) --

def pcgrad_direct(G, orders):
    out = []
    for i in range(G.shape[0]):
        gi = G[i].clone()
        for j in orders[i].tolist():
            dot = gi @ G[j]
            if dot < 0:
                gi = gi - dot / (G[j] @ G[j]) * G[j]
        out.append(gi)
    return torch.stack(out)


def gradvac_direct(G, orders, rho_hat, beta):
    rho_hat = rho_hat.clone()
    out = []
    for i in range(G.shape[0]):
        gi = G[i].clone()
        for j in orders[i].tolist():
            gj = G[j]
            rho = gi @ gj / (gi.norm() * gj.norm())
            t = rho_hat[i, j]
            if rho < t:
                a = gi.norm() * (t * (1 - rho**2).sqrt() - rho * (1 - t**2).sqrt()) / (gj.norm() * (1 - t**2).sqrt())
                gi = gi + a * gj
            rho_hat[i, j] = (1 - beta) * t + beta * rho
        out.append(gi)
    return torch.stack(out), rho_hat


def rows_close(A, B, G, rtol=1e-9):
    """Row-wise comparison relative to the scale of the original gradients."""
    scale = G.norm(dim=1).max()
    return bool(((A - B).norm(dim=1) <= rtol * scale).all())


# ------------------------------------------------------------------------------- PCGrad

def test_pcgrad_two_tasks_projections_are_orthogonal():
    G = conflicting_pair()
    agg = aggregators.make("pcgrad", 2)
    d = agg(G)
    P = agg.coefficients @ G
    assert abs(float(P[0] @ G[1])) <= 1e-12 * float(P[0].norm() * G[1].norm())
    assert abs(float(P[1] @ G[0])) <= 1e-12 * float(P[1].norm() * G[0].norm())
    assert torch.allclose(d, P.sum(0), rtol=1e-12, atol=0)
    assert torch.allclose(agg.weights, agg.coefficients.sum(0))


def test_pcgrad_known_values():
    # g1 = (1, 0), g2 = (-1, 1): <g1, g2> = -1
    # g1' = g1 + 1/2 g2 = (0.5, 0.5); g2' = g2 + g1 = (0, 1); d = (0.5, 1.5)
    G = t64([[1.0, 0.0], [-1.0, 1.0]])
    agg = aggregators.make("pcgrad", 2)
    d = agg(G)
    assert torch.allclose(d, t64([0.5, 1.5]), atol=1e-15)
    assert torch.allclose(agg.weights, t64([2.0, 1.5]), atol=1e-15)
    assert torch.allclose(agg.coefficients, t64([[1.0, 0.5], [1.0, 1.0]]), atol=1e-15)
    # a non-conflicting pair (90 degrees) is left alone
    G = t64([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    assert torch.equal(aggregators.make("pcgrad", 2)(G), t64([1.0, 2.0, 0.0]))


def test_pcgrad_three_tasks_known_values_all_orders():
    # g1 = (1, 0), g2 = (0, 1), g3 = (-1, -1): g3 conflicts with both, g1 _|_ g2.
    # g1: partner g2 first (no conflict) then g3: g1 + g3/2 = (0.5, -0.5);
    #     g3 first: (0.5, -0.5), which now conflicts with g2: + g2/2 = (0.5, 0).
    # g2 symmetrically: (-0.5, 0.5) or (0, 0.5).
    # g3: either order projects it to (0, -1) or (-1, 0), then to 0.
    G = t64([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    known = {
        0: {(1, 2): [0.5, -0.5], (2, 1): [0.5, 0.0]},
        1: {(0, 2): [-0.5, 0.5], (2, 0): [0.0, 0.5]},
        2: {(0, 1): [0.0, 0.0], (1, 0): [0.0, 0.0]},
    }
    orders_seen = set()
    for seed in range(12):
        orders = aggregators.make("pcgrad", 3, seed=seed).draw_orders("cpu")
        orders_seen.add(tuple(map(tuple, orders.tolist())))
        agg = aggregators.make("pcgrad", 3, seed=seed)
        d = agg(G)
        expected = t64([known[i][tuple(orders[i].tolist())] for i in range(3)])
        assert torch.allclose(agg.coefficients @ G, expected, atol=1e-15)
        assert torch.allclose(d, expected.sum(0), atol=1e-15)
        assert torch.allclose(pcgrad_direct(G, orders), expected, atol=1e-15)
    assert len(orders_seen) > 1  # the seeds do produce different orders


def test_pcgrad_no_conflict_is_the_sum():
    g = torch.Generator().manual_seed(0)
    G = torch.rand(5, 40, generator=g, dtype=F64) * torch.logspace(-3, 3, 5, dtype=F64)[:, None]
    agg = aggregators.make("pcgrad", 5)
    d = agg(G)
    assert torch.equal(agg.weights, torch.ones(5, dtype=F64))
    assert torch.allclose(d, G.sum(0), rtol=1e-14)


@pytest.mark.parametrize("k", [3, 10, 50])
@pytest.mark.parametrize("seed", [0, 1])
def test_pcgrad_gram_version_equals_direct(k, seed):
    G = ill_conditioned_grads(k, 2 * k + 10, seed)
    orders = aggregators.make("pcgrad", k, seed=seed).draw_orders("cpu")
    agg = aggregators.make("pcgrad", k, seed=seed)
    d = agg(G)
    P = pcgrad_direct(G, orders)
    assert rows_close(agg.coefficients @ G, P, G)
    assert torch.allclose(d, P.sum(0), rtol=0, atol=1e-9 * float(G.norm(dim=1).max()))
    # every projected gradient no longer conflicts with its last partner
    last = orders[:, -1]
    dots = (P * G[last]).sum(1)
    assert (dots >= -1e-9 * P.norm(dim=1) * G[last].norm(dim=1)).all()


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
@pytest.mark.parametrize("k", [2, 7, 30])
def test_low_memory_path_gives_the_same_direction(name, k):
    G = ill_conditioned_grads(k, 3 * k, seed=k)
    d = aggregators.make(name, k, seed=3)(G)
    w = aggregators.make(name, k, seed=3).gram_weights(G @ G.T)
    assert w.dtype == F64
    assert torch.allclose(w @ G, d, rtol=1e-10, atol=1e-12 * float(G.norm(dim=1).max()))


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_per_task_scaling_scales_each_modified_gradient(name):
    """Projections / lifts on g_j do not depend on ||g_j||, and each step on g_i' is
    linear in g_i': so g_i'(s G) = s_i g_i'(G) for the same random orders."""
    k = 6
    G = ill_conditioned_grads(k, 30, seed=5, spread=1.0)
    s = torch.tensor([1e-4, 3.0, 1e3, 0.5, 1.0, 2e-2], dtype=F64)
    a1, a2 = aggregators.make(name, k, seed=1), aggregators.make(name, k, seed=1)
    a1(G)
    a2(s[:, None] * G)
    P1 = a1.coefficients @ G
    P2 = a2.coefficients @ (s[:, None] * G)
    assert torch.allclose(P2, s[:, None] * P1, rtol=1e-8, atol=0)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_two_task_permutation_equivariance(name):
    G = conflicting_pair(seed=4)
    assert_permutation_invariant(aggregators.make(name, 2), aggregators.make(name, 2), G,
                                 perm=torch.tensor([1, 0]), check_weights=True, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "graddrop"])
def test_degenerate_inputs_give_finite_directions(name):
    cases = degenerate_cases()
    check = assert_structure if name == "graddrop" else assert_weighted  # GradDrop: no weights
    for G in cases.values():
        agg = aggregators.make(name, 3)
        for _ in range(3):  # GradVac: also with a non-zero EMA state
            check(agg, G)
    assert (aggregators.make(name, 3)(cases["all_zero"]) == 0).all()
    # a zero task contributes nothing and changes nothing for the others
    if name != "graddrop":
        d = aggregators.make(name, 3)(cases["zero_row"])
        d2 = aggregators.make(name, 2)(cases["zero_row"][[0, 2]])
        assert torch.allclose(d, d2, rtol=1e-12)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "graddrop"])
def test_state_dict_round_trip_and_reset(name):
    k = 5
    gs = [ill_conditioned_grads(k, 25, seed=s, spread=1.0) for s in range(4)]
    a = aggregators.make(name, k, seed=7)
    first = a(gs[0]).clone()
    a(gs[1])
    b = aggregators.make(name, k, seed=7)
    b.load_state_dict(a.state_dict())
    for G in gs[2:]:
        assert torch.equal(a(G), b(G))
    if name == "gradvac":
        assert torch.equal(a.rho_hat, b.rho_hat)
    b.reset()
    assert torch.equal(b(gs[0]), first)
    if name == "gradvac":
        b.reset()
        assert torch.equal(b.rho_hat, torch.zeros(k, k, dtype=F64))


def test_same_seed_same_output_and_seed_validation():
    k = 6
    G = ill_conditioned_grads(k, 20, seed=2)
    for name in ("pcgrad", "gradvac", "graddrop"):
        assert torch.equal(aggregators.make(name, k, seed=4)(G), aggregators.make(name, k, seed=4)(G))
        with pytest.raises(ValueError, match="seed"):
            aggregators.make(name, k, seed=-1)
    # different seeds give different PCGrad orders for k > 2 on this input
    outs = {tuple(aggregators.make("pcgrad", k, seed=s)(G).tolist()) for s in range(5)}
    assert len(outs) > 1


# ------------------------------------------------------------------------------ GradVac

def test_gradvac_lift_reaches_the_target_cosine():
    G = conflicting_pair(seed=1)
    agg = aggregators.make("gradvac", 2)
    agg.rho_hat.copy_(t64([[0.0, 0.6], [-0.2, 0.0]]))
    rho = cos(G[0], G[1])
    agg(G)
    P = agg.coefficients @ G
    assert cos(P[0], G[1]) == pytest.approx(0.6, abs=1e-10)
    assert cos(P[1], G[0]) == pytest.approx(-0.2, abs=1e-10)
    # only multiples of the partner were added
    assert agg.coefficients[0, 0] == 1.0 and agg.coefficients[1, 1] == 1.0
    # EMA with the cosine observed before the lift
    assert torch.allclose(agg.rho_hat, t64([[0.0, 0.3 + 0.5 * rho], [-0.1 + 0.5 * rho, 0.0]]), atol=1e-14)


def test_gradvac_no_lift_when_above_target():
    G = t64([[1.0, 0.2, 0.0], [1.0, 0.0, 0.3]])
    agg = aggregators.make("gradvac", 2, beta=0.25)
    agg.rho_hat.fill_(-0.5)
    d = agg(G)
    assert torch.equal(d, G.sum(0))
    rho = cos(G[0], G[1])
    assert float(agg.rho_hat[0, 1]) == pytest.approx(0.75 * -0.5 + 0.25 * rho, abs=1e-15)


def test_gradvac_ema_evolves_as_specified():
    k, beta = 2, 0.5
    G1, G2 = conflicting_pair(seed=2), ill_conditioned_grads(2, 30, seed=3)
    agg = aggregators.make("gradvac", k, beta=beta)
    agg(G1)
    r1 = cos(G1[0], G1[1])
    assert torch.allclose(agg.rho_hat, t64([[0.0, beta * r1], [beta * r1, 0.0]]), atol=1e-14)
    agg(G2)
    r2 = cos(G2[0], G2[1])
    expected = (1 - beta) * beta * r1 + beta * r2
    assert torch.allclose(agg.rho_hat, t64([[0.0, expected], [expected, 0.0]]), atol=1e-14)


@pytest.mark.parametrize("k", [3, 10])
@pytest.mark.parametrize("beta", [0.5, 0.1])
def test_gradvac_gram_version_equals_direct(k, beta):
    G = ill_conditioned_grads(k, 3 * k, seed=k, spread=2.0)
    g = torch.Generator().manual_seed(k)
    rho0 = 1.4 * torch.rand(k, k, generator=g, dtype=F64) - 0.5  # targets in (-0.5, 0.9)
    rho0.fill_diagonal_(0.0)
    orders = aggregators.make("gradvac", k, seed=2).draw_orders("cpu")
    agg = aggregators.make("gradvac", k, beta=beta, seed=2)
    agg.rho_hat.copy_(rho0)
    d = agg(G)
    P, rho_hat = gradvac_direct(G, orders, rho0, beta)
    assert rows_close(agg.coefficients @ G, P, G, rtol=1e-8)
    assert torch.allclose(agg.rho_hat, rho_hat, atol=1e-9)
    assert torch.allclose(d, P.sum(0), rtol=0, atol=1e-8 * float(G.norm(dim=1).max()))


@pytest.mark.parametrize("k", [2, 5, 20])
def test_gradvac_first_step_equals_pcgrad(k):
    G = ill_conditioned_grads(k, 4 * k, seed=k)
    d_vac = aggregators.make("gradvac", k, seed=9)(G)
    d_pc = aggregators.make("pcgrad", k, seed=9)(G)
    assert torch.allclose(d_vac, d_pc, rtol=1e-9, atol=1e-12 * float(G.norm(dim=1).max()))


def test_gradvac_extreme_target_stays_finite():
    G = conflicting_pair(seed=5)
    agg = aggregators.make("gradvac", 2)
    agg.rho_hat.fill_(1.0)
    d = agg(G)
    assert torch.isfinite(d).all()
    P = agg.coefficients @ G
    assert cos(P[0], G[1]) > 0.999


def test_gradvac_hyperparameter_validation():
    for beta in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="beta"):
            aggregators.make("gradvac", 3, beta=beta)
    assert aggregators.hyperparameters("gradvac") == {"beta": 0.5, "seed": 0, "every": 1, "tasks_per_step": None}


# ------------------------------------------------------------------------------ GradDrop

def test_graddrop_sign_agreement_keeps_the_sum():
    g = torch.Generator().manual_seed(0)
    signs = torch.where(torch.rand(200, generator=g) > 0.5, 1.0, -1.0).to(F64)
    G = torch.rand(4, 200, generator=g, dtype=F64) * signs  # per coordinate, one sign for all
    G[:, :10] = 0.0
    agg = aggregators.make("graddrop", 4)
    d = agg(G)
    assert torch.allclose(d, G.sum(0), rtol=1e-14)
    assert agg.weights is None


def test_graddrop_keeps_one_sign_per_coordinate():
    G = ill_conditioned_grads(5, 500, seed=1, spread=1.0)
    pos = G.clamp(min=0).sum(0)
    neg = G.clamp(max=0).sum(0)
    d = aggregators.make("graddrop", 5, seed=3)(G)
    is_pos, is_neg = d == pos, d == neg
    assert (is_pos | is_neg).all()
    assert is_pos.any() and is_neg.any()
    # purity: P = 0.5 (1 + sum g / sum |g|)
    agg = aggregators.make("graddrop", 5)
    agg(G)
    assert torch.allclose(agg.purity, 0.5 * (1 + G.sum(0) / G.abs().sum(0)))


def test_graddrop_keep_probability_is_the_purity():
    """Columns built with purity P: the positive side must be kept with probability P.
    n = 20000 columns per P value; std of the kept fraction <= 0.0036, tolerance 0.02
    (> 5 sigma), and the seed is fixed, so the test is deterministic."""
    n = 20000
    for p, col in [(0.75, (3.0, -1.0)), (0.25, (1.0, -3.0)), (0.5, (2.0, -2.0)), (0.9, (0.9, -0.1))]:
        # sum g / sum |g| = 2P - 1
        G = torch.tensor(col, dtype=F64)[:, None].expand(2, n).contiguous()
        agg = aggregators.make("graddrop", 2, seed=11)
        d = agg(G)
        assert torch.allclose(agg.purity, torch.full((n,), p, dtype=F64))
        kept_pos = (d == G[0]).to(F64)
        assert (kept_pos + (d == G[1]).to(F64) == 1).all()
        assert abs(float(kept_pos.mean()) - p) < 0.02
        # expected kept positive mass: E[d_c 1{d_c>0}] = P * pos_c
        assert abs(float(d.clamp(min=0).mean()) - p * col[0]) < 0.02 * col[0]


def test_graddrop_float32_and_zero_columns():
    G = ill_conditioned_grads(3, 64, seed=2).float()
    G[:, ::4] = 0.0
    agg = aggregators.make("graddrop", 3)
    d = agg(G)
    assert d.dtype == torch.float32 and torch.isfinite(d).all()
    assert (d[::4] == 0).all()
    assert (agg.purity[::4] == 0.5).all()


# ------------------------------------------------------------------- shared machinery

def test_device_generator_state():
    from aggregators.common import DeviceGenerator

    a = DeviceGenerator(5)
    x0 = torch.rand(3, generator=a.get("cpu"))
    state = a.get_extra_state()
    x1 = torch.rand(3, generator=a.get("cpu"))
    b = DeviceGenerator(5)
    b.set_extra_state(state)
    assert b.get_extra_state()["state"] is not None  # a pending state is exported unchanged
    assert torch.equal(torch.rand(3, generator=b.get("cpu")), x1)
    # a state saved on another kind of device cannot be applied: start again from the seed
    c = DeviceGenerator(5)
    c.set_extra_state({"device": "cuda:0", "state": torch.zeros(16, dtype=torch.uint8)})
    assert torch.equal(torch.rand(3, generator=c.get("cpu")), x0)
    a.reset()
    assert torch.equal(torch.rand(3, generator=a.get("cpu")), x0)
    # the state travels in the owner's state dict as the sub-module's extra state
    for name in ("pcgrad", "gradvac", "graddrop", "rlw", "rgw"):
        assert "rng._extra_state" in aggregators.make(name, 3).state_dict()
    with pytest.raises(ValueError, match="seed"):
        DeviceGenerator(True)


@pytest.mark.parametrize("name", ["pcgrad", "gradvac", "graddrop"])
def test_float32_deepcopy_and_registry(name):
    import copy

    assert name in aggregators.available()
    k = 4
    G = ill_conditioned_grads(k, 50, seed=8, spread=1.0)
    a = aggregators.make(name, k)
    d32 = a(G.float())
    assert d32.dtype == torch.float32
    if name != "graddrop":  # GradDrop's uniforms are drawn in the gradients' dtype
        d64 = aggregators.make(name, k)(G)
        assert torch.allclose(d32.double(), d64, rtol=1e-4, atol=1e-5 * float(G.norm(dim=1).max()))
    b = copy.deepcopy(a)
    assert torch.equal(a(G.float()), b(G.float()))
