"""Reusable property assertions for aggregators, and named gradient-matrix families.

Each ``assert_*`` function checks one property of an aggregator on one gradient matrix
``G`` (k x n, row i the gradient of task i) and fails with a message naming it.  The
stateful methods need fresh objects: functions that compare two calls take either two
aggregators prepared by the caller (``assert_permutation_invariant``) or a zero-argument
``build`` that returns a fresh one.  The property table of every registered method and the
test that runs it over :func:`families` are in ``unit/test_properties.py``; the per-method
test files call these functions on their own inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from helpers import ill_conditioned_grads
from torch import Tensor

from aggregators import Aggregator

__all__ = [
    "GRADIENT_INDEPENDENT_WEIGHTS",
    "LINEAR",
    "LOSS_FORM",
    "NON_CONFLICTING",
    "NON_CONFLICTING_PAIR",
    "PERMUTATION_INVARIANT",
    "SCALE_INVARIANT",
    "STRUCTURE",
    "WEIGHTED",
    "Family",
    "Homogeneous",
    "assert_gradient_independent_weights",
    "assert_homogeneous",
    "assert_loss_form",
    "assert_non_conflicting",
    "assert_permutation_invariant",
    "assert_structure",
    "assert_weighted",
    "default_losses",
    "families",
    "magnitude",
]

F64 = torch.float64

STRUCTURE = "structure"                  #: d has shape (n,), G's dtype, finite entries
WEIGHTED = "weighted"                    #: d == weights @ G, weights finite, shape (k,)
NON_CONFLICTING = "non_conflicting"      #: g_i . d >= 0 for every task
NON_CONFLICTING_PAIR = "non_conflicting_pair"   #: the same, guaranteed for k = 2 only
PERMUTATION_INVARIANT = "permutation_invariant"  #: reordering the tasks keeps d
GRADIENT_INDEPENDENT_WEIGHTS = "gradient_independent_weights"  #: w depends on the losses only
LOSS_FORM = "loss_form"                  #: loss(l) gives the matrix form's weights


@dataclass(frozen=True)
class Homogeneous:
    """``d(c G) = c**degree d(G)`` for every ``c > 0`` (losses unchanged)."""

    degree: float

    def __str__(self) -> str:
        return f"homogeneous({self.degree:g})"


LINEAR = Homogeneous(1.0)           #: linear under scaling
SCALE_INVARIANT = Homogeneous(0.0)  #: unchanged under scaling


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Family:
    """A named gradient matrix; ``full_rank``: rows linearly independent (the methods'
    weights are then unique, so a permutation test may compare them too)."""

    name: str
    grads: Tensor
    full_rank: bool


def _gaussian(k: int, n: int, seed: int) -> Tensor:
    return torch.randn(k, n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def families(n: int = 30) -> list[Family]:
    """The gradient families of the property tests (float64, deterministic)."""
    g = _gaussian(6, n, seed=100)
    a, b = g[0], g[1]
    b = b - 1.5 * (a @ b) / (a @ a) * a - 0.5 * a            # <a, b> < 0 strictly
    q = torch.linalg.qr(_gaussian(n, 5, seed=101))[0].T      # 5 orthonormal rows
    near_orth = torch.tensor([1.0, 3.0, 0.2, 10.0, 0.5], dtype=F64)[:, None] * q
    near_orth = near_orth + 1e-3 * _gaussian(5, n, seed=102)
    out = [
        Family("gaussian", _gaussian(3, n, seed=1), True),
        Family("ill_conditioned", ill_conditioned_grads(5, n, seed=2), True),
        Family("rank_deficient", _gaussian(5, 2, seed=3) @ _gaussian(2, n, seed=4), False),
        Family("conflicting_pair", torch.stack([1e-2 * a, 1e2 * b]), True),
        Family("conflicting_pair_plus_one", torch.stack([a, b, g[2]]), True),
        Family("identical_rows", torch.stack([g[3], g[4], g[3]]), False),
        Family("zero_row", torch.stack([g[3], torch.zeros(n, dtype=F64), g[5]]), False),
        Family("near_orthogonal", near_orth, True),
    ]
    assert all(float((f.grads @ f.grads.T).min()) < 0 for f in out if "conflicting" in f.name)
    return out


def default_losses(k: int, dtype=F64) -> Tensor:
    """Distinct positive task losses for the methods that read them."""
    return torch.linspace(0.5, 2.0, k, dtype=dtype)


def magnitude(agg: Aggregator, grads: Tensor, d: Tensor) -> float:
    """The scale of the rounding in ``d``: ``sum_i |w_i| ||g_i||`` (d's norm before any
    cancellation) where the method gives weights, else ``||d||``."""
    if agg.weights is None:
        return float(d.double().norm())
    return float(agg.weights.abs() @ grads.double().norm(dim=1))


def _close(a: Tensor, b: Tensor, rtol: float, atol: float) -> bool:
    return bool(((a.double() - b.double()).abs() <= atol + rtol * b.double().abs()).all())


# ----------------------------------------------------------------------------- asserts
def assert_structure(agg: Aggregator, grads: Tensor, losses: Tensor | None = None) -> Tensor:
    """``d = agg(G, losses)`` has shape (n,), G's dtype and finite entries; returns d."""
    d = agg(grads, losses)
    assert d.shape == (grads.shape[1],), f"{agg.name}: shape {tuple(d.shape)}"
    assert d.dtype == grads.dtype, f"{agg.name}: dtype {d.dtype}, grads {grads.dtype}"
    assert bool(torch.isfinite(d).all()), f"{agg.name}: non-finite direction"
    return d


def assert_weighted(agg: Aggregator, grads: Tensor, losses: Tensor | None = None,
                    rtol: float | None = None) -> Tensor:
    """The stated form ``d = sum_i w_i g_i``: ``agg.weights`` is a finite (k,) float64
    vector and ``d == weights @ G`` to rounding; returns d."""
    d = assert_structure(agg, grads, losses)
    w = agg.weights
    assert w is not None, f"{agg.name}: no weights"
    assert w.shape == (grads.shape[0],) and w.dtype == F64, f"{agg.name}: weights {w.shape} {w.dtype}"
    assert bool(torch.isfinite(w).all()), f"{agg.name}: non-finite weights"
    if rtol is None:
        rtol = 1e-12 if grads.dtype == F64 else 1e-5
    ref = w @ grads.double()
    err = float((d.double() - ref).abs().max())
    assert err <= rtol * magnitude(agg, grads, d), f"{agg.name}: d != weights @ G (error {err:.3g})"
    return d


def assert_non_conflicting(agg: Aggregator, grads: Tensor, losses: Tensor | None = None,
                           rtol: float = 1e-9, scale: float | None = None) -> Tensor:
    """``g_i . d >= -rtol ||g_i|| m`` for every i, ``m = scale`` or by default
    :func:`magnitude`; returns d."""
    d = assert_structure(agg, grads, losses)
    dots = grads.double() @ d.double()
    m = magnitude(agg, grads, d) if scale is None else scale
    tol = rtol * grads.double().norm(dim=1) * m
    bad = torch.nonzero(dots < -tol).flatten().tolist()
    assert not bad, f"{agg.name}: d conflicts with tasks {bad}: g_i . d = {dots[bad].tolist()}"
    return d


def assert_permutation_invariant(agg: Aggregator, twin: Aggregator, grads: Tensor,
                                 losses: Tensor | None = None, perm: Tensor | None = None,
                                 check_weights: bool = False, rtol: float = 1e-8,
                                 atol: float = 1e-10) -> None:
    """``agg(G, l) == twin(G[perm], l[perm])``: ``twin`` is in the state of ``agg`` with its
    tasks reordered by ``perm`` (two fresh objects for a stateless method; default perm:
    a fixed derangement).  With ``check_weights`` the weights must be permuted alike
    (only meaningful where they are unique: linearly independent gradients)."""
    k = grads.shape[0]
    if perm is None:
        perm = torch.roll(torch.arange(k), 1).flip(0)
    d1 = agg(grads, losses)
    d2 = twin(grads[perm], None if losses is None else losses[perm])
    scale = atol * max(magnitude(agg, grads, d1), magnitude(twin, grads[perm], d2))
    assert _close(d2, d1, rtol, scale), (
        f"{agg.name}: permuting the tasks changed d by {float((d1 - d2).abs().max()):.3g}")
    if check_weights:
        w1, w2 = agg.weights, twin.weights
        assert w1 is not None and w2 is not None, f"{agg.name}: no weights to compare"
        wscale = atol * float(w1.abs().max())
        assert _close(w2, w1[perm], rtol, wscale), f"{agg.name}: weights not permuted with the tasks"


def assert_homogeneous(build: Callable[[], Aggregator], grads: Tensor, degree: float,
                       losses: Tensor | None = None, factors=(1e-3, 7.0, 1e3),
                       rtol: float = 1e-8, atol: float = 1e-10) -> None:
    """``d(c G) = c**degree d(G)`` for each factor c, a fresh ``build()`` per call
    (``degree`` 1: linear under scaling, 0: scale-invariant)."""
    ref_agg = build()
    d = ref_agg(grads, losses)
    scale = magnitude(ref_agg, grads, d)
    for c in factors:
        agg = build()
        dc = agg(c * grads, losses)
        expected = c ** degree * d
        assert _close(dc, expected, rtol, atol * c ** degree * scale), (
            f"{agg.name}: d({c:g} G) != {c:g}^{degree:g} d(G) "
            f"(max error {float((dc - expected).abs().max()):.3g})")


def assert_gradient_independent_weights(build: Callable[[], Aggregator], grads: Tensor,
                                        losses: Tensor | None = None) -> None:
    """Two fresh aggregators called with G and with an unrelated gradient matrix (same
    losses, same shape) produce identical weights."""
    a, b = build(), build()
    a(grads, losses)
    other = _gaussian(*grads.shape, seed=7).to(grads.dtype) * 1e3
    b(other, losses)
    assert a.weights is not None and torch.equal(a.weights, b.weights), (
        f"{a.name}: the weights depend on the gradients")


def assert_loss_form(build: Callable[[], Aggregator], grads: Tensor, losses: Tensor) -> None:
    """Loss-only methods: ``loss(l).backward()`` from a fresh object gives the weights of
    the matrix form ``agg(G, l)`` as the gradient w.r.t. the losses."""
    a, b = build(), build()
    assert not a.requires_grads, f"{a.name}: not a loss-only method"
    d = assert_weighted(a, grads, losses)
    l = losses.detach().clone().requires_grad_(True)
    b.loss(l).backward()
    assert torch.allclose(b.weights, a.weights, rtol=1e-12, atol=0), f"{a.name}: loss-form weights differ"
    assert torch.allclose(l.grad.to(F64), a.weights, rtol=1e-10, atol=0), (
        f"{a.name}: d combine / d l is not the matrix form's weights")
    assert torch.allclose(d.double(), l.grad.to(F64) @ grads.double(), rtol=1e-10,
                          atol=1e-12 * magnitude(a, grads, d))
