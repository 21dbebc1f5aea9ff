"""The cost knobs (``aggregators/cost.py``).  ``every``: a Gram-matrix method solved every N
steps, the last weights on the ordinary backward of ``sum_i w_i l_i`` in between (Navon et
al., ICML 2022: Nash-MTL's ``update_weights_every``, here for every Gram-matrix method).
``tasks_per_step``: the gradients of m drawn tasks only, the others counted as zero and the
update scaled by k / m (Xiao et al., NeurIPS 2023: SDMGrad-OS's estimator, here for every
Gram-matrix method but MGDA)."""

import copy

import pytest
import torch
from torch import nn

import aggregators
from aggregators.cost import Periodic, Subsampled
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


# ----------------------------------------------------------------------------- tasks_per_step
#: every method the tasks_per_step knob can wrap
SUBSAMPLED = [n for n in KNOBBED if n not in ("mgda", "pi_mgda")]


def test_tasks_per_step_is_taken_by_every_gram_method_but_mgda_and_checked():
    assert {"nash_mtl", "pcgrad", "cagrad", "fairgrad", "pivrg", "sdmgrad", "ntkmtl"} <= set(SUBSAMPLED)
    for name in KNOBBED:
        assert aggregators.hyperparameters(name)["tasks_per_step"] is None
        assert type(aggregators.make(name, K)) is not Subsampled
    for name in SUBSAMPLED:
        assert isinstance(aggregators.make(name, K, tasks_per_step=2), Subsampled)
    for name in ("mgda", "pi_mgda"):
        with pytest.raises(ValueError, match="min-norm point"):
            aggregators.make(name, K, tasks_per_step=2)
    with pytest.raises(ValueError, match="lower level"):
        Subsampled(aggregators.make("consmtl", K), 2)
    for bad in (0, K + 1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=r"tasks_per_step must be an int in \[1, 3\]"):
            aggregators.make("nash_mtl", K, tasks_per_step=bad)
    with pytest.raises(ValueError, match="set one of the two knobs"):
        aggregators.make("nash_mtl", K, tasks_per_step=2, every=3)


def _by_hand(name, G, rows, torch_seed):
    """(k / m) sum_{i in S} w_i g_i, w from a fresh method on the Gram matrix of G with the
    rows not drawn set to zero."""
    mask = torch.zeros(G.shape[0], dtype=torch.bool)
    mask[rows] = True
    Gz = G * mask[:, None]
    torch.manual_seed(torch_seed)
    plain = aggregators.make(name, G.shape[0])
    w = plain.gram_weights(Gz @ Gz.T, torch.ones(G.shape[0], dtype=G.dtype))
    return (G.shape[0] / len(rows)) * (w.to(G.dtype) @ Gz)


@pytest.mark.parametrize("per_task", ["batched", "loop"])
@pytest.mark.parametrize("name", SUBSAMPLED)
def test_the_update_is_the_estimator_on_the_drawn_tasks_only(name, per_task):
    """The shared gradient is (k / m) sum_{i in S} w_i g_i with w the method's weights on
    the Gram matrix whose rows outside S are zero; exactly m per-task backward passes reach
    the trunk's output on the loop path; the heads of the tasks not drawn still get the
    gradient of their own loss."""
    trunk, heads = net()
    torch.manual_seed(5)
    agg = aggregators.make(name, K, tasks_per_step=2)
    l = losses(trunk, heads, 0)
    G = torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(li, list(trunk.parameters()), retain_graph=True)])
                     for li in l])
    head_ref = [torch.autograd.grad(li, list(h.parameters()), retain_graph=True) for li, h in zip(l, heads)]
    probe = copy.deepcopy(agg.generator)
    rows = torch.randperm(K, generator=probe)[:2].sort().values
    torch.manual_seed(11)
    out = aggregators.backward(l, trunk, agg, task_params=heads.parameters(), per_task=per_task)
    torch.testing.assert_close(shared_grad(trunk), _by_hand(name, G, rows, 11))
    assert out.weights.shape == (K,) and bool((out.weights[[i for i in range(K) if i not in rows]] == 0).all())
    for h, ref in zip(heads, head_ref):
        for p, r in zip(h.parameters(), ref):
            torch.testing.assert_close(p.grad, r)


def test_only_the_drawn_tasks_are_back_propagated():
    trunk, heads = net()
    calls = []
    agg = aggregators.make("nash_mtl", K, tasks_per_step=1)

    def forward():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8, 4, generator=g, dtype=torch.float64)
        z = trunk(x)
        z.register_hook(lambda grad: calls.append(1))
        return [(h(z)[:, 0] ** 2).mean() for h in heads]

    aggregators.backward(forward(), trunk, agg, task_params=heads.parameters(), per_task="loop")
    assert len(calls) == 1
    calls.clear()
    aggregators.backward(forward(), trunk, aggregators.make("nash_mtl", K), task_params=heads.parameters(),
                         per_task="loop")
    assert len(calls) == K


@pytest.mark.parametrize("name", ["nash_mtl", "fairgrad", "pivrg", "imtl_g", "aligned_mtl", "ntkmtl", "avgnorm"])
def test_a_method_that_ignores_zero_gradients_solves_the_drawn_tasks_problem(name):
    """For these methods a zero gradient gets weight 0, so the update is k / m times the
    m-task method's own direction on the drawn gradients."""
    g = torch.Generator().manual_seed(3)
    G = torch.randn(5, 9, generator=g, dtype=torch.float64)
    agg = aggregators.make(name, 5, tasks_per_step=3)
    rows = agg.task_rows()
    d = agg(G, torch.ones(5, dtype=torch.float64))
    sub = aggregators.make(name, 3)(G[rows], torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(d, (5 / 3) * sub)


def test_the_draws_are_uniform_and_the_estimate_unbiased_for_fixed_weights():
    """GradNorm's fresh weights are ones whatever G: E[(k / m) sum_{i in S} g_i] = sum_i g_i,
    and each task is drawn with probability m / k."""
    g = torch.Generator().manual_seed(4)
    G = torch.randn(4, 6, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    agg = aggregators.make("gradnorm", 4, tasks_per_step=2)
    n = 3000
    counts, total = torch.zeros(4), torch.zeros(6, dtype=torch.float64)
    for _ in range(n):
        counts[agg.task_rows()] += 1
        total += agg(G, torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(counts / n, torch.full((4,), 0.5), atol=0.03, rtol=0)
    torch.testing.assert_close(total / n, G.sum(0), atol=0.1 * float(G.abs().sum(0).max()), rtol=0)


def test_the_draws_are_seeded_by_torch_and_round_trip_through_the_state_dict():
    torch.manual_seed(7)
    a = aggregators.make("nash_mtl", 6, tasks_per_step=2)
    torch.manual_seed(7)
    b = aggregators.make("nash_mtl", 6, tasks_per_step=2)
    assert [a.task_rows().tolist() for _ in range(5)] == [b.task_rows().tolist() for _ in range(5)]
    trunk, heads = net()
    agg = aggregators.make("nash_mtl", K, tasks_per_step=2)
    for step in range(3):
        aggregators.backward(losses(trunk, heads, step), trunk, agg, task_params=heads.parameters())
    torch.manual_seed(123)   # another construction seed: the loaded state decides the draws
    copy_ = aggregators.make("nash_mtl", K, tasks_per_step=2)
    copy_.load_state_dict(agg.state_dict())
    for step in range(3, 7):
        x = aggregators.backward(losses(trunk, heads, step), trunk, agg, task_params=heads.parameters())
        y = aggregators.backward(losses(trunk, heads, step), trunk, copy_, task_params=heads.parameters())
        torch.testing.assert_close(x.weights, y.weights, rtol=0, atol=0)
    assert int(copy_.inner.step) == int(agg.inner.step) == 7


def test_tasks_per_step_is_a_config_option():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import mtrl.launch  # noqa: F401  (registers the aggregator configs)
    from helpers import ROOT
    from mtrl.configuration import build_aggregator

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("supervised", overrides=["aggregator=fairgrad",
                                                                       "aggregator.tasks_per_step=2"]))
    agg = build_aggregator(cfg["aggregator"], K)
    assert isinstance(agg, Subsampled) and agg.tasks_per_step == 2 and agg.inner.name == "fairgrad"
