"""``aggregators.backward`` on a user's model: the shared ``.grad`` is the aggregator applied
to per-task gradients computed one backward at a time, the other leaves get an ordinary
backward of the (weighted) sum, feature-level and low-memory modes agree with their
definitions, bad input raises before any ``.grad`` is written, and the diagnostics equal
their values computed from G directly."""

import copy

import pytest
import torch
from torch import nn

import aggregators
from aggregators import GramWeighting, LossWeighting, diagnostics

K = 3
NAMES = aggregators.available()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TOL = dict(rtol=1e-6, atol=1e-9)


class Net(nn.Module):
    """Shared trunk, one head per task, and a scale that only task 0 uses."""

    def __init__(self, seed=0, device="cpu"):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(5, 2) for _ in range(K))
        self.scale = nn.Parameter(torch.ones(()))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.to(device=device, dtype=torch.float64)

    def task_params(self):
        return [*self.heads.parameters(), self.scale]

    def losses(self, x, y, z=None):
        z = self.trunk(x) if z is None else z
        out = [((h(z) - y[:, i]) ** 2).mean() for i, h in enumerate(self.heads)]
        out[0] = out[0] * self.scale ** 2
        return out


def setup(seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(8, 4, generator=g, dtype=torch.float64)
    y = torch.randn(8, K, 2, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.3], dtype=torch.float64)[:, None]
    return Net(seed, device), x.to(device), y.to(device)


def flat_grad(module):
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def method_weights(agg):
    return agg.weights if isinstance(agg, (GramWeighting, LossWeighting)) else None


def per_task_rows(losses, inputs, create_graph=False):
    """G by one backward per task."""
    return torch.stack([
        torch.cat([g.flatten() for g in torch.autograd.grad(l, inputs, retain_graph=True, create_graph=create_graph)])
        for l in losses
    ])


def reference(name, net, x, y, device, task_grads="weighted"):
    """(d, grads of the task parameters, weights, G) by one backward per task."""
    losses = net.losses(x, y)
    shared = list(net.trunk.parameters())
    agg = aggregators.make(name, K).to(device)
    G = per_task_rows(losses, shared, create_graph=agg.needs_graph)
    d = agg(G.detach(), torch.stack(losses).detach())
    if agg.needs_graph:
        d = d + torch.cat([g.flatten() for g in torch.autograd.grad(agg.penalty(G), shared, retain_graph=True)])
    w = method_weights(agg)
    scale = [1.0 if w is None or task_grads == "own" else w[i].item() for i in range(K)]
    total = sum(l * scale[i] for i, l in enumerate(losses))
    return d, torch.autograd.grad(total, net.task_params()), w, G.detach(), agg


@pytest.mark.parametrize("task_grads", ["weighted", "own"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_parameter_level_equals_aggregator_on_one_backward_per_task(name, device, task_grads):
    """Every method, shared inputs across tasks (the supervised models' case: the batched
    path), in both task-parameter modes."""
    net, x, y = setup(1, device)
    d_ref, task_ref, w_ref, _, agg_ref = reference(name, net, x, y, device, task_grads)
    agg = aggregators.make(name, K).to(device)
    res = aggregators.backward(net.losses(x, y), net.trunk, agg, task_grads=task_grads)
    assert res.path == ("loss-only" if not agg.requires_grads else "batched")
    assert torch.allclose(flat_grad(net.trunk), d_ref, **TOL)
    for p, g in zip(net.task_params(), task_ref):
        assert torch.allclose(p.grad, g, **TOL)
    if w_ref is None:
        assert res.weights is None
    else:
        assert res.weights.dtype == torch.float64
        assert torch.allclose(res.weights, w_ref, **TOL)
    assert torch.allclose(res.direction_norm, d_ref.norm(), **TOL)
    # method parameters (UW's log-variances, GradNorm's logits) get the same gradient
    for q, q_ref in zip(agg.parameters(), agg_ref.parameters()):
        assert torch.allclose(q.grad, q_ref.grad, **TOL)


@pytest.mark.parametrize("device", DEVICES)
def test_registry_name_builds_a_fresh_aggregator(device):
    net, x, y = setup(2, device)
    d_ref, *_ = reference("pivrg", net, x, y, device)
    aggregators.backward(net.losses(x, y), net.trunk, "pivrg")
    assert torch.allclose(flat_grad(net.trunk), d_ref, **TOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", [n for n in NAMES if aggregators.make(n, K).requires_grads])
def test_feature_level_equals_representation_gradients_back_propagated_by_hand(name, device):
    net, x, y = setup(3, device)
    z = net.trunk(x)
    losses = net.losses(x, y, z)
    agg_ref = aggregators.make(name, K).to(device)
    Gz = per_task_rows(losses, [z], create_graph=agg_ref.needs_graph)
    dz = agg_ref(Gz.detach(), torch.stack(losses).detach())
    if agg_ref.needs_graph:
        dz = dz + torch.autograd.grad(agg_ref.penalty(Gz), z, retain_graph=True)[0].flatten()
    trunk_ref = torch.autograd.grad(z, list(net.trunk.parameters()), grad_outputs=dz.view_as(z), retain_graph=True)
    w = method_weights(agg_ref)
    total = sum(l * (1.0 if w is None else w[i].item()) for i, l in enumerate(losses))
    task_ref = torch.autograd.grad(total, net.task_params())

    z = net.trunk(x)
    res = aggregators.backward(net.losses(x, y, z), net.trunk, aggregators.make(name, K).to(device), features=z)
    assert torch.allclose(flat_grad(net.trunk), torch.cat([g.flatten() for g in trunk_ref]), **TOL)
    for p, g in zip(net.task_params(), task_ref):
        assert torch.allclose(p.grad, g, **TOL)
    assert torch.allclose(res.direction_norm, dz.norm(), **TOL)


GRAM_NAMES = [n for n in NAMES if isinstance(aggregators.make(n, K), GramWeighting) and not aggregators.make(n, K).needs_graph]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", GRAM_NAMES)
def test_low_memory_path_agrees_with_full_path(name, device):
    results = []
    for low_memory in (False, True):
        net, x, y = setup(4, device)
        res = aggregators.backward(net.losses(x, y), net.trunk, aggregators.make(name, K).to(device),
                                   low_memory=low_memory, chunk_numel=7)  # several chunks
        results.append((res, flat_grad(net.trunk), [p.grad for p in net.task_params()]))
    (full, d_full, t_full), (low, d_low, t_low) = results
    assert torch.allclose(d_low, d_full, **TOL)
    for a, b in zip(t_low, t_full):
        assert torch.allclose(a, b, **TOL)
    assert torch.allclose(low.weights, full.weights, **TOL)
    assert torch.allclose(low.direction_norm, full.direction_norm, **TOL)


@pytest.mark.parametrize("name", ["graddrop", "moco", "cosreg"])
def test_low_memory_refuses_methods_that_need_the_gradient_matrix(name):
    net, x, y = setup()
    with pytest.raises(ValueError, match="low_memory=False"):
        aggregators.backward(net.losses(x, y), net.trunk, name, low_memory=True)
    assert all(p.grad is None for p in net.parameters())


def test_dict_losses_name_the_tasks_and_sequences_get_default_or_given_names():
    net, x, y = setup()
    res = aggregators.backward(dict(zip("abc", net.losses(x, y))), net.trunk, "pivrg")
    assert res.task_names == ("a", "b", "c")
    logged = res.log_dict()
    assert {"loss/a", "weight/c", "direction_norm"} <= set(logged)
    assert logged["loss/b"] == pytest.approx(net.losses(x, y)[1].item())
    assert aggregators.backward(net.losses(x, y), net.trunk, "ls").task_names == ("0", "1", "2")
    res = aggregators.backward(net.losses(x, y), net.trunk, "ls", task_names=["u", "v", "w"])
    assert res.task_names == ("u", "v", "w")


@pytest.mark.parametrize("name", ["pivrg", "ls", "graddrop"])
@pytest.mark.parametrize("mode", ["full", "features", "low_memory"])
def test_gradients_accumulate_into_existing_grad(name, mode):
    if mode == "low_memory" and name == "graddrop":
        pytest.skip("graddrop has no low-memory path")
    net, x, y = setup(5)
    fresh = copy.deepcopy(net)
    prior = {}
    for p in net.parameters():
        p.grad = torch.rand_like(p)
        prior[p] = p.grad.clone()
    for model in (net, fresh):
        z = model.trunk(x)
        aggregators.backward(model.losses(x, y, z), model.trunk, name,
                             features=z if mode == "features" else None, low_memory=mode == "low_memory")
    for p, q in zip(net.parameters(), fresh.parameters()):
        assert torch.allclose(p.grad, prior[p] + q.grad, **TOL)


def test_loss_only_methods_call_loss_once_and_no_step_hooks(monkeypatch):
    net, x, y = setup()
    agg = aggregators.make("rlw", K)
    calls = []
    original = agg.loss
    monkeypatch.setattr(agg, "loss", lambda losses: calls.append(1) or original(losses))
    for hook in ("after_step", "end_epoch"):
        monkeypatch.setattr(agg, hook, lambda *a: pytest.fail(f"{hook} must be left to the caller"))
    losses = net.losses(x, y)
    res = aggregators.backward(losses, net.trunk, agg, diagnostics=True)
    assert len(calls) == 1
    # one backward of sum_i w_i l_i with the weights drawn in that one call
    total = sum(w * l for w, l in zip(res.weights.tolist(), net.losses(x, y)))
    ref = torch.autograd.grad(total, list(net.parameters()))
    for p, g in zip(net.parameters(), ref):
        assert torch.allclose(p.grad, g, **TOL)


def _sentinel(net):
    for p in net.trunk.parameters():
        p.grad = torch.full_like(p, 7.0)


def _untouched(net):
    return all((p.grad == 7.0).all() for p in net.trunk.parameters()) and all(
        p.grad is None for p in net.task_params())


def _bad_inputs(net, x, y):
    """name -> (losses, shared, aggregator, features, text the error must contain)."""
    z = net.trunk(x)
    ok = dict(zip("abc", net.losses(x, y, z)))
    per_sample = ((net.heads[1](z) - y[:, 1]) ** 2).mean(1)
    unused = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    return {
        "not_scalar": ({**ok, "b": per_sample}, net.trunk, "pivrg", None, "'b'"),
        "no_shared": ({**ok, "c": ((net.heads[2](z.detach()) - y[:, 2]) ** 2).mean()}, net.trunk, "pivrg", None, "'c'"),
        "unreached_shared": (ok, [*net.trunk.parameters(), unused], "pivrg", None, "shared[4]"),
        "task_count": (ok, net.trunk, aggregators.make("nash_mtl", 2), None, "a, b, c"),
        "nan_loss": ({**ok, "b": ok["b"] * float("inf")}, net.trunk, "pivrg", None, "'b'"),
        "nan_loss_loss_only": ({**ok, "a": ok["a"] * float("nan")}, net.trunk, "ls", None, "'a'"),
        "nan_grad": ({**ok, "c": ok["c"] + torch.sqrt(0.0 * z.sum())}, net.trunk, "graddrop", None, "'c'"),
        "nan_grad_gram": ({**ok, "c": ok["c"] + torch.sqrt(0.0 * z.sum())}, net.trunk, "mgda", None, "'c'"),
        "bypasses_features": ({**ok, "a": ok["a"] + net.trunk[0].bias.sum() ** 2}, net.trunk, "pivrg", z, "'a'"),
        "not_through_features": ({**ok, "c": (net.trunk(x) ** 2).mean()}, net.trunk, "pivrg", z, "'c'"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs(*setup())))
def test_bad_input_raises_naming_the_task_and_leaves_grad_untouched(case):
    net, x, y = setup()
    _sentinel(net)
    losses, shared, agg, features, text = _bad_inputs(net, x, y)[case]
    with pytest.raises(ValueError, match=text.replace("[", r"\[").replace("]", r"\]")):
        aggregators.backward(losses, shared, agg, features=features)
    assert _untouched(net)


def _check_diagnostics(res, G, d):
    diag = res.diagnostics
    norms = G.norm(dim=1)
    assert torch.allclose(diag["gram"], G @ G.T, **TOL)
    assert torch.allclose(diag["grad_norm"], norms, **TOL)
    assert torch.allclose(diag["cosine"], (G @ d) / (norms * d.norm()), **TOL)
    for key in ("gds", "gms", "kappa"):
        assert torch.allclose(diag[key], getattr(diagnostics, {"kappa": "condition_number"}.get(key, key))(G), **TOL)


@pytest.mark.parametrize("name", ["pivrg", "graddrop", "ls", "cosreg"])
@pytest.mark.parametrize("low_memory", [False, True])
def test_diagnostics_equal_values_from_G(name, low_memory):
    if low_memory and name in ("graddrop", "cosreg"):
        pytest.skip("no low-memory path")
    net, x, y = setup(6)
    d_ref, _, _, G, _ = reference(name, net, x, y, "cpu")
    res = aggregators.backward(net.losses(x, y), net.trunk, name, diagnostics=True, low_memory=low_memory,
                               chunk_numel=10)
    _check_diagnostics(res, G, d_ref)
    logged = res.log_dict()
    assert {"cosine/0", "grad_norm/2", "gds", "gms", "kappa"} <= set(logged)
    assert "gram" not in logged


@pytest.mark.parametrize("name", ["pivrg", "graddrop"])
def test_feature_level_diagnostics_are_those_of_the_representation_gradients(name):
    net, x, y = setup(7)
    z = net.trunk(x)
    losses = net.losses(x, y, z)
    Gz = per_task_rows(losses, [z])
    dz = aggregators.make(name, K)(Gz, torch.stack(losses).detach())
    z = net.trunk(x)
    res = aggregators.backward(net.losses(x, y, z), net.trunk, name, features=z, diagnostics=True)
    _check_diagnostics(res, Gz, dz)


def test_direction_cosines_hand_values_and_gram_form():
    G = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    w = torch.tensor([1.0, 0.5, 3.0], dtype=torch.float64)  # d = w^T G = (1, 1)
    expected = torch.tensor([2 ** -0.5, 2 ** -0.5, 0.0], dtype=torch.float64)
    assert torch.allclose(diagnostics.direction_cosines(G, w @ G), expected)
    assert torch.allclose(diagnostics.direction_cosines_from_gram(G @ G.T, w), expected)
    assert torch.equal(diagnostics.direction_cosines(G, torch.zeros(2, dtype=torch.float64)), torch.zeros(3, dtype=torch.float64))


class _ItemGate(torch.autograd.Function):
    """Identity whose backward reads a Python number: vmap cannot batch it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * (1.0 if g.sum().item() == g.sum().item() else 0.0)


def test_ops_without_batching_rule_fall_back_to_one_backward_per_task():
    net, x, y = setup(8)
    d_ref, task_ref, *_ = reference("mgda", net, x, y, "cpu")
    z = _ItemGate.apply(net.trunk(x))
    with pytest.warns(RuntimeWarning, match="one backward per task"):
        aggregators.backward(net.losses(x, y, z), net.trunk, "mgda")
    assert torch.allclose(flat_grad(net.trunk), d_ref, **TOL)
    for p, g in zip(net.task_params(), task_ref):
        assert torch.allclose(p.grad, g, **TOL)


@pytest.mark.parametrize("name, mode", [("ls", "full"), ("pivrg", "full"), ("pivrg", "low_memory"),
                                        ("pivrg", "features"), ("graddrop", "features")])
def test_retain_graph_keeps_the_graph_for_another_backward(name, mode):
    net, x, y = setup(9)
    z = net.trunk(x)
    losses = net.losses(x, y, z)
    kwargs = dict(features=z if mode == "features" else None, low_memory=mode == "low_memory")
    aggregators.backward(losses, net.trunk, name, retain_graph=True, **kwargs)
    torch.stack(losses).sum().backward()  # would raise on a freed graph
    losses = net.losses(x, y)
    aggregators.backward(losses, net.trunk, "ls")
    with pytest.raises(RuntimeError):
        torch.stack(losses).sum().backward()


@pytest.mark.parametrize("name", ["pcgrad", "pivrg", "cosreg"])
def test_loop_per_task_gradients_equal_the_batched_ones(name):
    """per_task="loop" (one backward per task) writes the same gradients as the batched pass."""
    grads = []
    for mode in ("batched", "loop"):
        torch.manual_seed(0)
        trunk, heads = torch.nn.Linear(5, 4), torch.nn.ModuleList(torch.nn.Linear(4, 1) for _ in range(3))
        x = torch.randn(8, 5)
        z = torch.tanh(trunk(x))
        losses = [h(z).pow(2).mean() for h in heads]
        aggregators.backward(losses, trunk, aggregators.make(name, 3), per_task=mode)
        grads.append(torch.cat([p.grad.flatten() for p in [*trunk.parameters(), *heads.parameters()]]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="per_task"):
        aggregators.backward([torch.ones((), requires_grad=True)], [torch.ones(1, requires_grad=True)], "ls",
                             per_task="vmap")


def test_nested_features_are_refused():
    """A feature computed from another would be counted once per path."""
    trunk = torch.nn.Linear(3, 3)
    z1 = trunk(torch.randn(4, 3))
    z2 = torch.tanh(z1)
    losses = [z1.pow(2).mean(), z2.pow(2).mean()]
    with pytest.raises(ValueError, match="computed from features"):
        aggregators.backward(losses, trunk, "graddrop", features=[z1, z2])
    assert trunk.weight.grad is None


# -- the task-split path on the SAC networks ------------------------------------------------------

from agents import MultiTaskSAC, actor_losses, critic_losses, temperature_losses  # noqa: E402

SAC_CASES = [("critic", "mh_sac", False), ("actor", "mh_sac", False), ("critic", "mtl_sac_te", False),
             ("actor", "mtl_sac", False), ("alpha", "mh_sac", True), ("alpha", "mh_sac", False)]


def sac_component(component, kind, shared_alpha, seed=0):
    """(losses_fn(record), shared, task) of one SAC component in float64 on a stratified batch."""
    torch.manual_seed(seed)
    agent = MultiTaskSAC(5, 2, K, kind, hidden=8, layers=2, shared_alpha=shared_alpha, embedding_dim=3)
    for m in (agent.actor, agent.critic, agent.critic_target, agent.temperature):
        m.double()
    g = torch.Generator().manual_seed(seed + 1)
    obs, act = torch.randn(K, 4, 5, generator=g, dtype=torch.float64), torch.rand(K, 4, 2, generator=g).double()
    target = torch.randn(K, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 4.0, 0.2]).double()[:, None]
    noise = torch.randn(K, 4, 2, generator=g, dtype=torch.float64)
    gap = torch.randn(K, 4, generator=g, dtype=torch.float64)
    module, fn = {
        "critic": (agent.critic, lambda rec: critic_losses(agent.critic, obs, act, target, rec)),
        "actor": (agent.actor, lambda rec: actor_losses(agent.actor, agent.critic, obs, noise,
                                                        agent.alpha().detach().double(), rec)[0]),
        "alpha": (agent.temperature, lambda rec: temperature_losses(agent.temperature, gap)),
    }[component]
    return fn, list(module.shared_params().values()), list(module.task_params().values())


@pytest.mark.parametrize("factored", [False, True], ids=["formed", "factored"])
@pytest.mark.parametrize("task_grads", ["own", "weighted"])
@pytest.mark.parametrize("case", SAC_CASES, ids=lambda c: "-".join(map(str, c)))
@pytest.mark.parametrize("name", NAMES)
def test_split_path_on_sac_networks_equals_one_backward_per_task(name, case, task_grads, factored, monkeypatch):
    """Shared parameters: the aggregator applied to G from one backward per task; task
    parameters: their own gradient (sum_i l_i) or that of sum_i w_i l_i.  Both forms of
    the per-task gradients of a layer: formed (A_i^T delta_i) and factored (Gram matrix
    from the sample Gram matrices, direction from one weighted matmul)."""
    import aggregators.engine as engine

    monkeypatch.setattr(engine, "_FACTOR_RATIO", 1e9 if factored else 0)
    factored_grams = []
    real_gram = engine._Factored.gram
    monkeypatch.setattr(engine._Factored, "gram", lambda self: factored_grams.append(1) or real_gram(self))
    fn, shared, task = sac_component(*case)
    losses = fn(None)
    agg_ref = aggregators.make(name, K)
    if shared:
        G = per_task_rows(losses, shared, create_graph=agg_ref.needs_graph)
        d_ref = agg_ref(G.detach(), losses.detach())
        if agg_ref.needs_graph:
            pen = agg_ref.penalty(G)
            if pen.requires_grad:
                d_ref = d_ref + torch.cat([g.flatten() for g in torch.autograd.grad(pen, shared, retain_graph=True)])
        w = method_weights(agg_ref)
    elif agg_ref.requires_grads:   # nothing to aggregate: gradient methods give the plain sum
        w = None
    else:
        agg_ref.loss(losses.detach())
        w = agg_ref.weights
    weighted = task_grads == "weighted" and w is not None
    total = (losses * w.to(losses.dtype)).sum() if weighted else losses.sum()
    task_ref = torch.autograd.grad(total, task, retain_graph=True) if task else []

    records = []
    res = aggregators.backward(fn(records), shared, aggregators.make(name, K), task_params=task,
                               task_grads=task_grads, linear_records=records)
    if shared:
        assert res.path == ("loss-only" if not agg_ref.requires_grads else "split" if records else "batched")
        assert torch.allclose(torch.cat([p.grad.flatten() for p in shared]), d_ref, **TOL)
    by_gram = isinstance(agg_ref, GramWeighting) and not agg_ref.needs_graph and agg_ref.requires_grads
    assert bool(factored_grams) == (factored and by_gram and bool(records))
    for p, g in zip(task, task_ref):
        assert torch.allclose(p.grad, g, **TOL)


@pytest.mark.parametrize("name", ["pivrg", "pcgrad", "ls", "famo"])
@pytest.mark.parametrize("path", ["split", "batched", "loop"])
def test_nonfinite_losses_skip_or_raise_before_any_grad_is_written(name, path):
    fn, shared, task = sac_component("critic", "mh_sac", False)
    for mode in ("skip", "raise"):
        records = []
        losses = fn(records)
        losses = losses * torch.tensor([1.0, float("nan"), 1.0], dtype=losses.dtype)
        if mode == "skip":
            res = aggregators.backward(losses, shared, aggregators.make(name, K), task_params=task, nonfinite="skip",
                                       per_task=path, linear_records=records)
            assert not res.finite and res.weights is None and torch.isnan(res.direction_norm)
        else:
            with pytest.raises(ValueError, match="'1'.*non-finite loss"):
                aggregators.backward(losses, shared, aggregators.make(name, K), task_params=task,
                                     per_task=path, linear_records=records)
        assert all(p.grad is None for p in [*shared, *task])


def test_nonfinite_gradient_with_finite_losses_is_skipped():
    """An infinite slope (sqrt at 0) on task 2 only: finite losses, non-finite gradient."""
    fn, shared, task = sac_component("critic", "mh_sac", False)
    records = []
    losses = fn(records)
    y = records[-1][1]                      # the last shared layer's output, task 2 = samples 8..11
    losses = torch.stack([losses[0], losses[1], losses[2] + (y[..., 8:, :] * 0).sum().sqrt()])
    res = aggregators.backward(losses, shared, aggregators.make("pivrg", K), task_params=task, nonfinite="skip",
                               linear_records=records)
    assert not res.finite and all(p.grad is None for p in [*shared, *task])


@pytest.mark.parametrize("name", ["pivrg", "pcgrad", "ls", "uw", "mgda", "cagrad"])
@pytest.mark.parametrize("path", ["split", "batched"])
def test_mask_writes_the_same_gradients_when_finite_and_zeros_when_not(name, path):
    """``nonfinite="mask"``: bit-identical gradients for a finite update, a False device
    flag and zero gradients for a non-finite one; the aggregator never sees NaN."""
    fn, shared, task = sac_component("critic", "mh_sac", False)
    params = [*shared, *task]
    grads = {}
    for mode in ("skip", "mask"):
        for p in params:
            p.grad = None
        records = []
        res = aggregators.backward(fn(records), shared, aggregators.make(name, K), task_params=task,
                                   nonfinite=mode, per_task=path, linear_records=records)
        grads[mode] = [p.grad.clone() for p in params]
        assert res.finite is True if mode == "skip" else (torch.is_tensor(res.finite) and bool(res.finite))
    assert all(torch.equal(a, b) for a, b in zip(grads["skip"], grads["mask"]))

    for p in params:
        p.grad = None
    records = []
    losses = fn(records) * torch.tensor([1.0, float("nan"), 1.0])
    agg = aggregators.make(name, K)
    seen = []
    agg.register_forward_pre_hook(lambda module, args: seen.append(args))
    if hasattr(agg, "weights_from_gram"):
        inner = agg.weights_from_gram
        agg.weights_from_gram = lambda gram, l=None: (seen.append((gram, l)), inner(gram, l))[1]
    res = aggregators.backward(losses, shared, agg, task_params=task, nonfinite="mask", per_task=path,
                               linear_records=records)
    assert torch.is_tensor(res.finite) and res.finite.dim() == 0 and not bool(res.finite)
    assert all(p.grad is not None and not p.grad.any() for p in params)
    assert bool(seen) == agg.requires_grads   # loss-only methods combine the losses only
    assert all(torch.isfinite(x).all() for args in seen for x in args if torch.is_tensor(x))


def test_split_records_are_checked():
    fn, shared, task = sac_component("critic", "mh_sac", False)
    records = []
    losses = fn(records)
    x, y, w, b = records[0]
    with pytest.raises(ValueError, match="shared parameters"):
        aggregators.backward(losses, shared[1:], "pivrg", task_params=task, linear_records=records)
    with pytest.raises(ValueError, match="k = 3"):
        aggregators.backward(losses, shared, "pivrg", task_params=task, linear_records=[(x[..., :5, :], y[..., :5, :], w, b)])
    with pytest.raises(ValueError, match="task_grads"):
        aggregators.backward(losses, shared, "pivrg", task_grads="mine")


def test_lower_level_gives_each_head_eq_8():
    """ConsMTL's lower level through the engine (heads + representation): head i gets
    grad l_i + clip(grad of -lam <delta_i, d_z>), delta_i = d l_i / d z, d_z = sum_j alpha_j
    delta_j with the upper level's alpha (ConsMTL eqs. 7-8, Prop. 3.1)."""
    net, x, y = setup(5)
    z = net.trunk(x)
    losses = net.losses(x, y, z)
    agg = aggregators.make("consmtl", K, lam=2.0, clip_ratio=0.5)
    heads = [list(h.parameters()) for h in net.heads]
    res = aggregators.backward(losses, net.trunk, agg, heads=heads, representation=z)
    alpha = res.weights
    scales = []

    net2 = copy.deepcopy(net)
    for p in net2.parameters():
        p.grad = None
    z2 = net2.trunk(x)
    l2 = net2.losses(x, y, z2)
    deltas = [torch.autograd.grad(l, z2, retain_graph=True, create_graph=True)[0] for l in l2]
    d_z = sum(a.item() * dl.detach() for a, dl in zip(alpha, deltas))
    for i, head in enumerate(net2.heads):
        params = list(head.parameters())
        own = torch.cat([g.flatten() for g in torch.autograd.grad(l2[i], params, retain_graph=True)])
        extra_loss = -2.0 * (deltas[i] * d_z).sum()
        extra = torch.cat([g.flatten() for g in torch.autograd.grad(extra_loss, params, retain_graph=True)])
        scale = min(1.0, (0.5 * own.norm() / extra.norm()).item())
        want = own + scale * extra
        got = torch.cat([p.grad.flatten() for p in net.heads[i].parameters()])
        assert torch.allclose(got, want, **TOL)
        scales.append(scale)
    assert min(scales) < 1.0 and max(scales) == 1.0     # the clip bound on one head at least, not all
    # the shared trunk got the upper level's direction, as without the lower level
    net3 = copy.deepcopy(net)
    for p in net3.parameters():
        p.grad = None
    aggregators.backward(net3.losses(x, y), net3.trunk, aggregators.make("consmtl", K, lam=2.0, clip_ratio=0.5))
    assert torch.allclose(flat_grad(net.trunk), flat_grad(net3.trunk), **TOL)


def test_keep_freed_memory_applies_on_glibc():
    """The trainers' malloc setting (mtrl.host_memory): applied where the C library is glibc."""
    import platform

    from mtrl.host_memory import keep_freed_memory

    assert keep_freed_memory() == (platform.libc_ver()[0] == "glibc")
