"""Generic properties, declared per method and checked over every gradient family.

``PROPERTIES`` states for every registered name which of the properties of
``tests/properties.py`` the method guarantees; a new method must add its row.  Each case
builds a fresh aggregator (``torch`` seeded) so stateful and seeded methods start from
their initial state.
"""

import pytest
import torch
from properties import (
    GRADIENT_INDEPENDENT_WEIGHTS,
    LINEAR,
    LOSS_FORM,
    NON_CONFLICTING,
    NON_CONFLICTING_PAIR,
    PERMUTATION_INVARIANT,
    SCALE_INVARIANT,
    STRUCTURE,
    WEIGHTED,
    Homogeneous,
    assert_gradient_independent_weights,
    assert_homogeneous,
    assert_loss_form,
    assert_non_conflicting,
    assert_permutation_invariant,
    assert_structure,
    assert_weighted,
    default_losses,
    families,
)

import aggregators

#: every direction is finite, (n,), in G's dtype, and (but for two) a combination w @ G
BASE = {STRUCTURE, WEIGHTED}
#: loss-only methods (``requires_grads`` False): w = d combine / d l, never a function of G,
#: so d is linear in G; fresh, the deterministic ones treat the tasks alike
LOSS_ONLY = BASE | {GRADIENT_INDEPENDENT_WEIGHTS, LOSS_FORM, LINEAR}
#: FairGrad / PIVRG / ConsMTL with exponent 2: M -> c^2 M gives w -> c^(-4/3) w, so
#: d -> c^(-1/3) d (the (1 - a) / (1 + a) power of the alpha-fair equation)
ALPHA_FAIR_2 = Homogeneous(-1 / 3)

PROPERTIES: dict[str, set] = {
    # Senushkin et al., CVPR 2023, eq. 5: B is invariant to M -> c^2 M.  No sign guarantee
    # on g_i . d (only the aligned gradients are balanced).
    "aligned_mtl": BASE | {PERMUTATION_INVARIANT, LINEAR},
    # Guo et al., arXiv 2025, eq. 6: w_i = S / ||g_i|| is homogeneous of degree 0.
    "avgnorm": BASE | {PERMUTATION_INVARIANT, LINEAR},
    # Liu et al., NeurIPS 2021, sec. 3.1: max_d min_i g_i . d within a ball around g0 can
    # still be negative (g0 ~ 0), so no non-conflict claim.
    "cagrad": BASE | {PERMUTATION_INVARIANT, LINEAR},
    # Qin et al., CVPR 2025 (ConsMTL), eq. 5: M alpha = sqrt(1 / alpha), alpha > 0, so
    # g_i . d = alpha_i^(-1/2) > 0.
    "consmtl": BASE | {NON_CONFLICTING, PERMUTATION_INVARIANT, ALPHA_FAIR_2},
    # Suteu & Guo 2019: the first-order part is the plain sum (weights 1).
    "cosreg": BASE | {PERMUTATION_INVARIANT, LINEAR, GRADIENT_INDEPENDENT_WEIGHTS},
    # Lin et al., arXiv 2023 (DB-MTL), eq. 2: d = max_j ||ghat_j|| sum_i ghat_i / ||ghat_i||
    # over EMA-tracked log-loss gradients, so d scales with G; a combination of the
    # current gradients only for beta = 0 (the default 0.9 leaves weights None), and
    # the normalised sum can still oppose one task.
    "db_mtl": {STRUCTURE, PERMUTATION_INVARIANT, LINEAR},
    "dwa": LOSS_ONLY | {PERMUTATION_INVARIANT},
    # Ban & Ji, ICML 2024: M w = w^(-1/alpha), w > 0, so g_i . d = w_i^(-1/alpha) > 0.
    # He et al., ICML 2024 (ExcessMTL): fresh, the first call only records the excess-risk
    # baseline and keeps alpha = 1, so d = sum_i g_i (linear, order-free, may conflict).
    "excess_mtl": BASE | {PERMUTATION_INVARIANT, LINEAR},
    "fairgrad": BASE | {NON_CONFLICTING, PERMUTATION_INVARIANT, ALPHA_FAIR_2},
    "famo": LOSS_ONLY | {PERMUTATION_INVARIANT},
    # Chen et al., NeurIPS 2020, eqs. 1-2: per coordinate, the sum of one sign's entries,
    # chosen by U_c ~ U(0, 1) against the purity; neither depends on the task order or on
    # a global scale (same seed).  Not a combination of the gradients: no weights.
    "graddrop": {STRUCTURE, PERMUTATION_INVARIANT, LINEAR},
    # Chen et al., ICML 2018: the weights k softmax(s) are the current logits' (s is only
    # updated by the trainer's optimiser), independent of this call's gradients.
    # Shen et al., NeurIPS 2024 (GO4Align): w from the losses only (indicator s_i p_i, exact
    # 1-D K-means on it), the same for every task order.
    "go4align": LOSS_ONLY | {PERMUTATION_INVARIANT},
    "gradnorm": BASE | {PERMUTATION_INVARIANT, LINEAR, GRADIENT_INDEPENDENT_WEIGHTS},
    # Wang et al., ICLR 2021: random partner orders (not permutation-invariant for k > 2
    # with one seed) and an EMA target cosine that may be negative (no non-conflict).
    "gradvac": BASE | {LINEAR},
    # Liu et al., ICLR 2021, sec. 3.2: equal projections d . u_i, but of either sign
    # (sum alpha = 1 fixes it: G = torch.randn(3, 3) from a generator seeded 56, float64,
    # gives d . u_i = -0.0011 for every i), so no non-conflict claim.
    "imtl_g": BASE | {PERMUTATION_INVARIANT, LINEAR},
    "ls": LOSS_ONLY | {PERMUTATION_INVARIANT},
    # Desideri 2012; Sener & Koltun, NeurIPS 2018, sec. 3.1: g_i . d >= ||d||^2.
    "mgda": BASE | {NON_CONFLICTING, PERMUTATION_INVARIANT, LINEAR},
    # Fernando et al., ICLR 2023, Alg. 1: the tracked gradients g_i / ||g_i|| l_i do not
    # see a global scale.  d = Y^T lambda is not a combination of G: no weights.
    "moco": {STRUCTURE, PERMUTATION_INVARIANT, SCALE_INVARIANT},
    # Navon et al., ICML 2022, eq. 6: alpha_i (M alpha)_i = 1, alpha > 0, so
    # g_i . d = 1 / alpha_i > 0; alpha -> alpha / c under G -> c G.
    "nash_mtl": BASE | {NON_CONFLICTING, PERMUTATION_INVARIANT, SCALE_INVARIANT},
    # Yu et al., NeurIPS 2020, Theorem 1 covers two tasks (g_1' + g_2' never conflicts);
    # for k > 2 the random projection orders give no guarantee and no permutation
    # invariance with one seed.
    # Qin et al., NeurIPS 2025 (NTKMTL), with one sample per task: w_i = (tr M / M_ii)^0.5,
    # so d = sqrt(tr M) sum_i g_i / ||g_i||; g_1 . (u_1 + u_2) >= 0 for two tasks only.
    "ntkmtl": BASE | {NON_CONFLICTING_PAIR, PERMUTATION_INVARIANT, LINEAR},
    "pcgrad": BASE | {NON_CONFLICTING_PAIR, LINEAR},
    # PIVRG paper (Qin et al., CVPR 2025), sec. 4.4: fresh, dm = 0 and omega = 1, so every
    # PI-X is X.
    "pi_dwa": LOSS_ONLY | {PERMUTATION_INVARIANT},
    "pi_ls": LOSS_ONLY | {PERMUTATION_INVARIANT},
    "pi_mgda": BASE | {NON_CONFLICTING, PERMUTATION_INVARIANT, LINEAR},
    "pi_nash_mtl": BASE | {NON_CONFLICTING, PERMUTATION_INVARIANT, SCALE_INVARIANT},
    # RLW / RGW (Lin et al., TMLR 2022): weights drawn per task index, so reordering the
    # tasks does not reorder them.
    "pi_rlw": set(LOSS_ONLY),
    "pi_uw": LOSS_ONLY | {PERMUTATION_INVARIANT},
    # Qin et al., CVPR 2025, eq. 4: the constraint g_i^T d > 0; eq. 7 with omega = 1.
    "pivrg": BASE | {NON_CONFLICTING, PERMUTATION_INVARIANT, ALPHA_FAIR_2},
    "rgw": BASE | {LINEAR, GRADIENT_INDEPENDENT_WEIGHTS},
    "rlw": set(LOSS_ONLY),
    # Xiao et al., NeurIPS 2023 (SDMGrad): a fixed number of projected SGD steps on the
    # normalised Gram matrix (inexact MGDA pulled towards g0), so no sign guarantee.
    "sdmgrad": BASE | {PERMUTATION_INVARIANT, LINEAR},
    "si": LOSS_ONLY | {PERMUTATION_INVARIANT},
    # Lin et al., ICML 2024 (STCH): fresh, the warm-up objective sum_i log l_i (SI).
    "stch": LOSS_ONLY | {PERMUTATION_INVARIANT},
    # Quinton & Rey, arXiv 2024: the average of projections onto the dual cone {v: G v >= 0}.
    "upgrad": BASE | {NON_CONFLICTING, PERMUTATION_INVARIANT, LINEAR},
    "uw": LOSS_ONLY | {PERMUTATION_INVARIANT},
}

FAMILIES = families()
NAMES = aggregators.available()


def fresh(name, k):
    """A new aggregator in its initial state, with ``torch`` seeded."""
    torch.manual_seed(0)
    return aggregators.make(name, k)


def cases(prop):
    """(name, family) for every method declaring ``prop`` (a property, or a type of
    them: ``Homogeneous``) and every family."""
    def declares(name):
        props = PROPERTIES.get(name, ())
        return any(isinstance(p, prop) for p in props) if isinstance(prop, type) else prop in props
    return [pytest.param(name, fam, id=f"{name}-{fam.name}")
            for name in NAMES if declares(name) for fam in FAMILIES]


def losses_for(fam, dtype=torch.float64):
    return default_losses(fam.grads.shape[0], dtype)


def test_every_method_declares_its_properties():
    assert sorted(PROPERTIES) == NAMES
    for name, props in PROPERTIES.items():
        assert STRUCTURE in props, name
        scalings = [p for p in props if isinstance(p, Homogeneous)]
        assert len(scalings) <= 1, name


@pytest.mark.parametrize("name", NAMES)
def test_loss_only_methods_declare_the_loss_properties(name):
    """The repo's flag for loss-only methods and the table agree."""
    loss_only = not aggregators.make(name, 3).requires_grads
    assert (LOSS_FORM in PROPERTIES[name]) == loss_only
    assert GRADIENT_INDEPENDENT_WEIGHTS in PROPERTIES[name] or not loss_only


@pytest.mark.parametrize("name,fam", cases(STRUCTURE))
def test_structure(name, fam):
    for dtype in (torch.float64, torch.float32):
        G = fam.grads.to(dtype)
        assert_structure(fresh(name, G.shape[0]), G, losses_for(fam, dtype))


@pytest.mark.parametrize("name,fam", cases(WEIGHTED))
def test_weighted(name, fam):
    for dtype in (torch.float64, torch.float32):
        G = fam.grads.to(dtype)
        assert_weighted(fresh(name, G.shape[0]), G, losses_for(fam, dtype))


@pytest.mark.parametrize("name,fam", cases(NON_CONFLICTING))
def test_non_conflicting(name, fam):
    assert_non_conflicting(fresh(name, fam.grads.shape[0]), fam.grads, losses_for(fam))


@pytest.mark.parametrize("name,fam", cases(NON_CONFLICTING_PAIR))
def test_non_conflicting_pair(name, fam):
    """The two-task guarantee, on the first two rows of every family."""
    G = fam.grads[:2]
    assert_non_conflicting(fresh(name, 2), G, default_losses(2))


@pytest.mark.parametrize("name,fam", cases(PERMUTATION_INVARIANT))
def test_permutation_invariant(name, fam):
    k = fam.grads.shape[0]
    assert_permutation_invariant(fresh(name, k), fresh(name, k), fam.grads, losses_for(fam),
                                 check_weights=fam.full_rank and WEIGHTED in PROPERTIES[name])


def _scaling(name):
    return next(p for p in PROPERTIES[name] if isinstance(p, Homogeneous))


@pytest.mark.parametrize("name,fam", cases(Homogeneous))
def test_homogeneous(name, fam):
    k = fam.grads.shape[0]
    assert_homogeneous(lambda: fresh(name, k), fam.grads, _scaling(name).degree, losses_for(fam))


@pytest.mark.parametrize("name,fam", cases(GRADIENT_INDEPENDENT_WEIGHTS))
def test_gradient_independent_weights(name, fam):
    k = fam.grads.shape[0]
    assert_gradient_independent_weights(lambda: fresh(name, k), fam.grads, losses_for(fam))


@pytest.mark.parametrize("name,fam", cases(LOSS_FORM))
def test_loss_form(name, fam):
    k = fam.grads.shape[0]
    assert_loss_form(lambda: fresh(name, k), fam.grads, losses_for(fam))
