"""The public entry point: make(), errors on bad input, state dicts."""

import pytest
import torch

import aggregators


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="pivrg"):
        aggregators.make("not_a_method", 3)


def test_unknown_hyperparameter_lists_valid_ones():
    with pytest.raises(ValueError, match="bound"):
        aggregators.make("pivrg", 3, temperature=3.0)


@pytest.mark.parametrize("name", aggregators.available())
def test_wrong_task_count_and_non_finite_input(name):
    agg = aggregators.make(name, 3)
    with pytest.raises(ValueError, match="shape"):
        agg(torch.randn(4, 10), torch.rand(4))
    bad = torch.randn(3, 10)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        agg(bad, torch.rand(3))


@pytest.mark.parametrize("name", aggregators.available())
def test_every_method_returns_a_direction(name):
    torch.manual_seed(0)
    k, n = 4, 30
    agg = aggregators.make(name, k)
    G = torch.randn(k, n)
    d = agg(G, torch.rand(k) + 0.1)
    assert d.shape == (n,) and torch.isfinite(d).all()


def test_presets_are_valid_hyperparameters():
    from aggregators.presets import PRESETS

    for name, table in PRESETS.items():
        if name not in aggregators.available():  # families still landing this session
            continue
        for bench, hp in table.items():
            aggregators.make(name, 3, **aggregators.preset(name, bench))
