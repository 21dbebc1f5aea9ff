"""The public entry point: make(), errors on bad input, state dicts."""

import pytest
import torch
from properties import assert_structure

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


def test_presets_are_valid_hyperparameters():
    from aggregators.presets import PRESETS, SETTINGS

    for name, table in PRESETS.items():
        for bench, hp in table.items():
            # a named setting's values are its method's (a loss weight per task of the benchmark)
            k = len(hp.get("loss_weights", range(3)))
            aggregators.make(SETTINGS.get(name, name), k, **aggregators.preset(name, bench))


def _steps(agg, k, n, seeds, dtype=torch.float64):
    outs = []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        G = torch.randn(k, n, generator=g, dtype=dtype)
        losses = torch.rand(k, generator=g, dtype=dtype) + 0.1
        if hasattr(agg, "update_performance"):
            agg.update_performance(torch.rand(k, generator=g, dtype=dtype) * 50)
        outs.append(agg(G, losses))
        agg.after_step(losses * 0.9)
        agg.end_epoch()
    return outs


@pytest.mark.parametrize("name", aggregators.available())
def test_state_dict_round_trip_restores_the_next_update(name):
    """Any method, stateful or not: a fresh object loaded from the state dict of one that
    took a few steps produces exactly the same next updates."""
    k, n = 3, 12
    a = aggregators.make(name, k)
    _steps(a, k, n, seeds=[0, 1, 2])
    b = aggregators.make(name, k)
    _steps(b, k, n, seeds=[7])  # different history, overwritten by the load
    b.load_state_dict(a.state_dict())
    for da, db in zip(_steps(a, k, n, seeds=[3, 4]), _steps(b, k, n, seeds=[3, 4])):
        assert torch.equal(da, db)


@pytest.mark.parametrize("name", aggregators.available())
def test_reset_returns_to_the_initial_state(name):
    k, n = 3, 12
    fresh = aggregators.make(name, k)
    used = aggregators.make(name, k)
    _steps(used, k, n, seeds=[0, 1, 2])
    used.reset()
    for da, db in zip(_steps(fresh, k, n, seeds=[5, 6]), _steps(used, k, n, seeds=[5, 6])):
        assert torch.allclose(da, db, rtol=1e-10, atol=1e-12)


LOSS_ONLY = ("dwa", "famo", "go4align", "ls", "pi_dwa", "pi_ls", "pi_rlw", "pi_uw", "rlw", "si", "stch", "uw")


def test_the_loss_only_methods_are_the_documented_ones():
    assert tuple(n for n in aggregators.available() if not aggregators.make(n, 3).requires_grads) == LOSS_ONLY


@pytest.mark.parametrize("name", LOSS_ONLY)
def test_loss_only_methods_never_need_gradients(name):
    agg = aggregators.make(name, 3)
    losses = torch.tensor([0.5, 1.0, 2.0], requires_grad=True)
    agg.loss(losses).backward()
    assert losses.grad is not None and torch.isfinite(losses.grad).all()
    assert agg.weights is not None


@pytest.mark.parametrize("name", aggregators.available())
def test_every_method_is_finite_on_degenerate_inputs(name):
    """Duplicate, opposite, zero gradients and norms ten orders apart: a finite direction."""
    from helpers import degenerate_cases

    for case, G in degenerate_cases().items():
        agg = aggregators.make(name, 3)
        for _ in range(2):  # also once the stateful methods have state
            assert_structure(agg, G, torch.tensor([0.5, 1.0, 2.0], dtype=G.dtype))
            assert agg.weights is None or torch.isfinite(agg.weights).all(), case


@pytest.mark.parametrize("name", aggregators.available())
def test_every_method_handles_fifty_tasks(name):
    from helpers import ill_conditioned_grads

    k = 50
    G = ill_conditioned_grads(k, 200, seed=1)
    assert_structure(aggregators.make(name, k), G, torch.rand(k, dtype=G.dtype) + 0.1)


@pytest.mark.parametrize("name", aggregators.available())
def test_rank_one_float32_gradients(name):
    """A shared scalar (SAC's shared temperature) gives a (k, 1) gradient matrix of mixed
    signs, rounded in float32: Pareto-stationary and numerically indefinite."""
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        G = torch.randn(10, 1, generator=g)
        assert_structure(aggregators.make(name, 10), G, torch.rand(10, generator=g) + 0.1)
