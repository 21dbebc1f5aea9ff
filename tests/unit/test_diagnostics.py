"""Diagnostics against hand-computed values (Senushkin et al., CVPR 2023; Mao et al., arXiv
2024; Guo et al., arXiv 2025)."""

import math

import pytest
import torch

from aggregators import diagnostics as D
from helpers import ill_conditioned_grads


def test_condition_number_known_values():
    G = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert float(D.condition_number(G)) == pytest.approx(3.0)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    assert float(D.condition_number(2.5 * Q[:3])) == pytest.approx(1.0)  # orthogonal, equal norms
    dup = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    assert math.isinf(float(D.condition_number(dup)))


def test_condition_number_matches_svd():
    G = ill_conditioned_grads(5, 40, seed=1, spread=1.0)
    s = torch.linalg.svdvals(G)
    assert float(D.condition_number(G)) == pytest.approx(float(s[0] / s[-1]), rel=1e-6)
    assert float(D.condition_number(G @ G.T, is_gram=True)) == pytest.approx(float(s[0] / s[-1]), rel=1e-6)


def test_gds_gms_known_values():
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    # cosines: (1,2)=0, (1,3)=-1, (2,3)=0 -> mean over ordered pairs = -2/6
    assert float(D.gds(G)) == pytest.approx(-1 / 3)
    # magnitude similarity: (1,2)=2*2/5=0.8, (1,3)=1, (2,3)=0.8 -> 2.6/3
    assert float(D.gms(G)) == pytest.approx(2.6 / 3)
    assert torch.allclose(D.task_norms(G), torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64))


def test_gds_with_zero_gradient_is_finite():
    G = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert torch.isfinite(D.gds(G)) and torch.isfinite(D.gms(G))


def test_feature_entropy_eqs_8_9():
    # position 0 used by task 0 only -> entropy 0; position 1 split equally -> log 2
    z = torch.tensor([[1.0, -3.0], [0.0, 3.0]], dtype=torch.float64)
    assert float(D.feature_entropy(z)) == pytest.approx(0.5 * math.log(2))
    # fully shared with k tasks -> log k; any shape after the task axis
    z = torch.ones(4, 2, 3, 5)
    assert float(D.feature_entropy(z)) == pytest.approx(math.log(4))
    # invariant to scaling all tasks together, and positions no task touches are skipped
    z = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 5.0]], dtype=torch.float64)
    p = torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    expected = 0.5 * float(-(p * p.log()).sum())
    assert float(D.feature_entropy(z)) == pytest.approx(expected)
    assert float(D.feature_entropy(10 * z)) == pytest.approx(expected)


def test_summary_keys():
    s = D.summary(ill_conditioned_grads(3, 10))
    assert {"kappa", "gds", "gms", "grad_norm/0", "grad_norm/2"} <= set(s)
