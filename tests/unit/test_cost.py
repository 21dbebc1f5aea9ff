"""The ``every`` cost knob (``aggregators/cost.py``): a Gram-matrix method solved every N
steps, the last weights on the ordinary backward of ``sum_i w_i l_i`` in between (Navon et
al., ICML 2022: Nash-MTL's ``update_weights_every``, here for every Gram-matrix method)."""

import copy

import pytest
import torch
from torch import nn

import aggregators
from aggregators.cost import Periodic
from aggregators.registry import takes_cost_knobs

K = 3
#: every registered Gram-matrix method the knob can wrap
KNOBBED = [n for n in aggregators.available() if takes_cost_knobs(n)]


def net(seed=0):
    torch.manual_seed(seed)
    trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5)).double()
    heads = nn.ModuleList(nn.Linear(5, 1) for _ in range(K)).double()
    return trunk, heads


def losses(trunk, heads, step):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randn(8, K, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.3], dtype=torch.float64)
    z = trunk(x)
    return [((h(z)[:, 0] - y[:, i]) ** 2).mean() for i, h in enumerate(heads)]


def shared_grad(trunk):
    return torch.cat([p.grad.flatten() for p in trunk.parameters()])


def test_every_gram_method_takes_the_knob_and_the_others_are_refused_with_the_reason():
    assert {"nash_mtl", "pcgrad", "mgda", "cagrad", "fairgrad", "pivrg", "aligned_mtl", "upgrad"} <= set(KNOBBED)
    for name in KNOBBED:
        assert aggregators.hyperparameters(name)["every"] == 1
        assert type(aggregators.make(name, K, every=1)) is not Periodic   # every=1 is the method itself
        assert isinstance(aggregators.make(name, K, every=4), Periodic)
    for name, reason in (("consmtl", "lower level"), ("cosreg", "second-order"), ("famo", "not a Gram-matrix")):
        assert "every" not in aggregators.hyperparameters(name)
        with pytest.raises(ValueError, match=reason):
            Periodic(aggregators.make(name, K), 2)
    with pytest.raises(ValueError, match="unknown hyper-parameter.*every"):
        aggregators.make("famo", K, every=2)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="every must be a positive int"):
            aggregators.make("nash_mtl", K, every=bad)


@pytest.mark.parametrize("name", ["nash_mtl", "pcgrad", "fairgrad", "mgda"])
def test_solves_every_n_steps_and_reuses_the_last_weights_in_between(name):
    """Steps 0, 3, 6 are the method's own update (its state advanced once per solve);
    the others are the gradient of sum_i w_i l_i with the last solve's weights, computed
    without any per-task gradient (the engine's loss-only path)."""
    every = 3
    trunk, heads = net()
    ref_trunk, ref_heads = copy.deepcopy(trunk), copy.deepcopy(heads)
    knobbed, plain = aggregators.make(name, K, every=every), aggregators.make(name, K)
    for step in range(7):
        for p in [*trunk.parameters(), *heads.parameters(), *ref_trunk.parameters(), *ref_heads.parameters()]:
            p.grad = None
        out = aggregators.backward(losses(trunk, heads, step), trunk, knobbed, task_params=heads.parameters())
        if step % every == 0:
            # the plain method, called on the solve steps only, gives the same update
            ref = aggregators.backward(losses(ref_trunk, ref_heads, step), ref_trunk, plain,
                                       task_params=ref_heads.parameters())
            assert out.path != "loss-only"
            torch.testing.assert_close(shared_grad(trunk), shared_grad(ref_trunk))
            torch.testing.assert_close(out.weights, ref.weights)
            last = out.weights.clone()
        else:
            assert out.path == "loss-only"
            torch.testing.assert_close(out.weights, last)
            manual_trunk = copy.deepcopy(trunk)
            for p in manual_trunk.parameters():
                p.grad = None
            l = torch.stack(losses(manual_trunk, heads, step))
            (last * l).sum().backward()
            torch.testing.assert_close(shared_grad(trunk), shared_grad(manual_trunk))
    assert knobbed.calls == 7


def test_the_wrapped_state_advances_once_per_solve():
    agg = aggregators.make("nash_mtl", K, every=4)
    trunk, heads = net()
    for step in range(9):
        aggregators.backward(losses(trunk, heads, step), trunk, agg, task_params=heads.parameters())
    assert int(agg.inner.step) == 3     # steps 0, 4 and 8 solved


def test_state_dict_round_trip_continues_identically():
    trunk, heads = net()
    agg = aggregators.make("nash_mtl", K, every=3)
    for step in range(4):
        aggregators.backward(losses(trunk, heads, step), trunk, agg, task_params=heads.parameters())
    copy_ = aggregators.make("nash_mtl", K, every=3)
    copy_.load_state_dict(agg.state_dict())
    assert copy_.calls == agg.calls == 4
    torch.testing.assert_close(copy_.last_weights, agg.last_weights)
    for step in range(4, 8):
        a = aggregators.backward(losses(trunk, heads, step), trunk, agg, task_params=heads.parameters())
        b = aggregators.backward(losses(trunk, heads, step), trunk, copy_, task_params=heads.parameters())
        assert a.path == b.path
        torch.testing.assert_close(a.weights, b.weights)


def test_matrix_form_reuses_the_weights_between_solves():
    g = torch.Generator().manual_seed(0)
    agg = aggregators.make("mgda", K, every=2)
    G0, G1 = torch.randn(K, 7, generator=g, dtype=torch.float64), torch.randn(K, 7, generator=g, dtype=torch.float64)
    d0 = agg(G0)
    w0 = agg.weights.clone()
    torch.testing.assert_close(d0, aggregators.make("mgda", K)(G0))
    torch.testing.assert_close(agg(G1), w0 @ G1)        # step 1: no solve
    torch.testing.assert_close(agg(G1), aggregators.make("mgda", K)(G1))   # step 2: solves again


def test_the_knob_is_a_config_option_of_every_gram_method():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import mtrl.launch  # noqa: F401  (registers the aggregator configs)
    from helpers import ROOT
    from mtrl.configuration import build_aggregator

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("supervised", overrides=["aggregator=pcgrad", "aggregator.every=5"]))
    assert cfg["aggregator"] == {"name": "pcgrad", "every": 5, **{k: v for k, v in aggregators.hyperparameters("pcgrad").items() if k != "every"}}
    agg = build_aggregator(cfg["aggregator"], K)
    assert isinstance(agg, Periodic) and agg.every == 5 and agg.inner.name == "pcgrad"


def test_the_performance_signal_reaches_the_wrapped_method():
    agg = aggregators.make("pivrg", K, every=2)
    assert agg.uses_performance and agg.name == "pivrg"
    agg.update_performance([30.0, 0.0, -10.0])
    plain = aggregators.make("pivrg", K)
    plain.update_performance([30.0, 0.0, -10.0])
    torch.testing.assert_close(agg.omega, plain.omega)
    assert agg.temperature == plain.temperature
    torch.testing.assert_close(agg.inner.delta_m, plain.delta_m)
