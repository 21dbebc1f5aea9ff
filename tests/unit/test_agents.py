"""Multi-task SAC: task-split networks, head isolation, the update under every aggregator
family (handed in as the components' backwards), checkpoints, and skipping non-finite
updates (small sizes, CPU)."""

import copy
import io
import math

import pytest
import torch

import aggregators
from aggregators import solvers
from aggregators import needs_after_step
from agents import KINDS, MultiTaskSAC, actor_losses, critic_losses
from agents import sac as sac_module
from helpers import no_host_reads
from agents.networks import LOG_STD_MAX, LOG_STD_MIN, squashed_gaussian
from mtrl.aggregation import component_backwards

K, B, OBS, ACT, H = 3, 6, 5, 2, 16


def make_agent(kind="mh_sac", seed=0, aggregators=None, **kw):
    """``aggregators``: a registry name, a callable component -> Aggregator, or a ready
    dict of backwards; None: the agent's plain summed backward."""
    torch.manual_seed(seed)
    kw.setdefault("hidden", H)
    kw.setdefault("layers", 2)
    if aggregators is not None and not isinstance(aggregators, dict):
        aggregators = component_backwards(aggregators, K)
    return MultiTaskSAC(OBS, ACT, K, kind, backward=aggregators, **kw)


def aggregator(agent, component):
    return agent.backward[component].aggregator


def make_batch(seed=0, k=K, b=B):
    g = torch.Generator().manual_seed(seed)
    return {
        "obs": torch.randn(k, b, OBS, generator=g),
        "action": torch.rand(k, b, ACT, generator=g) * 2 - 1,
        "reward": torch.randn(k, b, generator=g),
        "next_obs": torch.randn(k, b, OBS, generator=g),
        "done": (torch.rand(k, b, generator=g) < 0.2).float(),
    }


def all_params(agent):
    out = {}
    for mname, m in {**agent.modules(), **{f"backward.{c}": b for c, b in agent.backward.items()}}.items():
        for n, p in m.named_parameters():
            out[f"{mname}.{n}"] = p.detach().clone()
        for n, p in m.named_buffers():
            out[f"{mname}.{n}"] = p.detach().clone()
    for n, p in agent.critic_target.named_parameters():
        out[f"critic_target.{n}"] = p.detach().clone()
    return out


def rows(params, i):
    return {n: p[i] for n, p in params.items()}


# -- networks ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_act_shapes_and_range(kind):
    agent = make_agent(kind)
    obs = torch.randn(K, OBS)
    for det in (True, False):
        a = agent.act(obs, deterministic=det)
        assert a.shape == (K, ACT) and a.abs().max() <= 1
    assert torch.equal(agent.act(obs, True), agent.act(obs, True))
    assert agent.act(torch.randn(K, 4, OBS), False).shape == (K, 4, ACT)
    with pytest.raises(ValueError):
        agent.act(torch.randn(K + 1, OBS))


def test_parameter_layout_per_kind():
    mh = make_agent("mh_sac", layers=3, head_layers=2)
    assert len(mh.actor.shared) == 6 and mh.actor.shared["trunk0_w"].shape == (H, OBS)
    assert mh.actor.task["head0_w"].shape == (K, H, H) and mh.actor.task["head1_w"].shape == (K, 2 * ACT, H)
    assert mh.critic.shared["trunk0_w"].shape == (2, H, OBS + ACT)           # twin Qs as an ensemble
    assert mh.critic.task["head1_w"].shape == (K, 2, 1, H)
    mtl = make_agent("mtl_sac", layers=3)
    assert mtl.actor.task_params() == {} and mtl.critic.task_params() == {}
    assert len(mtl.actor.shared) == 8                                        # 3 hidden + output layer
    te = make_agent("mtl_sac_te", embedding_dim=4)
    assert set(te.actor.task_params()) == {"emb"} and te.actor.task["emb"].shape == (K, 4)
    assert te.actor.shared["trunk0_w"].shape == (H, OBS + 4)
    wide = make_agent("mh_sac", critic_hidden=24, critic_layers=1)
    assert wide.critic.shared["trunk0_w"].shape == (2, 24, OBS + ACT) and len(wide.critic.shared) == 2
    assert all((p == 0).all() for n, p in mh.critic.named_parameters() if n.endswith("_b"))
    # shared vs per-task temperature
    assert make_agent(shared_alpha=True).temperature.log_alpha.shape == (1,)
    assert torch.allclose(make_agent().alpha(), torch.ones(K))


def test_squashed_gaussian_log_prob_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mean, log_std, noise = (torch.randn(7, ACT, generator=g) for _ in range(3))
    a, logp = squashed_gaussian(mean, log_std, noise)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), [torch.distributions.TanhTransform()])
    u = mean + log_std.exp() * noise
    assert torch.allclose(a, torch.tanh(u))
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1) \
        - torch.log1p(-torch.tanh(u).pow(2)).sum(-1)
    assert torch.allclose(logp, ref, atol=1e-4)
    assert torch.allclose(logp, dist.log_prob(a.clamp(-1 + 1e-6, 1 - 1e-6)).sum(-1), atol=1e-2)


def test_log_std_is_squashed_into_range():
    agent = make_agent()
    with torch.no_grad():
        for p in agent.actor.parameters():
            p.mul_(100.0)
    _, log_std = agent.actor.distribution(torch.randn(K, B, OBS) * 10)
    assert log_std.min() >= LOG_STD_MIN and log_std.max() <= LOG_STD_MAX


# -- head isolation -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["pivrg", "ls"])
@pytest.mark.parametrize("kind", ["mh_sac", "mtl_sac_te"])
def test_each_head_gets_only_its_own_task_gradient(kind, method):
    agent = make_agent(kind, aggregators=lambda c: aggregators.make(method if c != "alpha" else "pivrg", K))
    ref = copy.deepcopy(agent)          # parameters before the update
    batch = make_batch(1)
    torch.manual_seed(7)
    agent.update(batch)
    torch.manual_seed(7)                # same noise as the update drew
    obs, act, rew, next_obs, done = ref._unpack(batch)
    target, noise = ref.prepare(obs, rew, next_obs, done)

    def check(losses, task_params, updated):
        for i in range(K):
            grads = torch.autograd.grad(losses[i], list(task_params.values()), retain_graph=True)
            for (name, _), g in zip(task_params.items(), grads):
                assert (g[[j for j in range(K) if j != i]] == 0).all()        # reaches head i only
                assert torch.allclose(updated[name].grad[i], g[i], rtol=1e-4, atol=1e-6)

    check(critic_losses(ref.critic, obs, act, target), ref.critic.task_params(), agent.critic.task)
    # the actor loss saw the updated critic (critic step first), frozen
    ref.critic.load_state_dict(agent.critic.state_dict())
    losses, logp = actor_losses(ref.actor, ref.critic, obs, noise, ref.alpha().detach())
    check(losses, ref.actor.task_params(), agent.actor.task)
    assert all(p.grad is None for p in agent.critic_target.parameters())

    # per-task temperatures: no shared parameter, each log-alpha gets its own task's gradient
    gap = logp.detach() + agent.target_entropy
    assert torch.allclose(agent.temperature.log_alpha.grad, -gap.mean(-1), atol=1e-6)


def test_per_task_losses_equal_one_network_per_task():
    """The flat forward (one matmul per shared layer, a batched matmul over the task
    blocks for the heads) equals running task i's network on its own samples alone."""
    agent = make_agent("mh_sac", layers=2, head_layers=2)
    obs, act, rew, _, _ = agent._unpack(make_batch(3))
    q = agent.critic.q_values(obs, act)                                   # (k, 2, b)
    sh, tk = agent.critic.shared_params(), agent.critic.task_params()
    for i in range(K):
        x = torch.cat([obs[i], act[i]], -1)
        for e in range(2):
            h = x
            for j in range(2):
                h = torch.relu(h @ sh[f"trunk{j}_w"][e].T + sh[f"trunk{j}_b"][e])
            h = torch.relu(h @ tk["head0_w"][i, e].T + tk["head0_b"][i, e])
            out = h @ tk["head1_w"][i, e].T + tk["head1_b"][i, e]
            assert torch.allclose(q[i, e], out.squeeze(-1), atol=1e-5)
    records = []
    critic_losses(agent.critic, obs, act, rew, records)
    assert [r[2] for r in records] == [sh["trunk0_w"], sh["trunk1_w"]]   # every shared layer, once


# -- the update under each aggregator family ------------------------------------------------------
def _aggs(method):
    if method == "famo":   # log of the losses: critic only (positive losses), as the reference
        return component_backwards("famo", K, components=("critic",), gamma=0.01)
    return method


@pytest.mark.parametrize("shared_alpha", [False, True])
@pytest.mark.parametrize("method", ["ls", "pivrg", "nash_mtl", "famo", "uw", "cosreg"])
def test_update_runs_and_moves_every_component(method, shared_alpha, monkeypatch):
    calls = []
    real = sac_module.critic_losses
    monkeypatch.setattr(sac_module, "critic_losses", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    agent = make_agent(aggregators=_aggs(method), shared_alpha=shared_alpha)
    before = all_params(agent)
    logs = agent.update(make_batch())
    logs = agent.update(make_batch(1))
    after = all_params(agent)

    for c in ("critic", "actor", "alpha"):
        assert logs[f"skipped_{c}"] == 0
        assert logs[f"{c}_loss"].shape == (K,) and torch.isfinite(logs[f"{c}_loss"]).all()
    for key in ("alpha", "entropy", "target_q"):
        assert logs[key].shape == (K,) and torch.isfinite(logs[key]).all()
    assert logs["critic_weights"].shape == (K,) and logs["actor_weights"].shape == (K,)
    assert ("gram_critic" in logs) == aggregator(agent, "critic").requires_grads
    if "gram_critic" in logs:
        assert logs["gram_critic"].shape == (K, K)
    for name in ("actor.shared.trunk0_w", "actor.task.head0_w", "critic.shared.trunk0_w", "critic.task.head0_w",
                 "critic_target.shared.trunk0_w", "temperature.log_alpha"):
        assert not torch.equal(before[name], after[name]), name
    if shared_alpha:
        assert torch.allclose(logs["alpha"], logs["alpha"][0].expand(K))

    # FAMO is the only one with after_step: the critic losses are recomputed once more per update
    assert len(calls) == 2 * (1 + (method == "famo"))
    if method == "famo":
        assert (aggregator(agent, "critic").logits != 0).any()
    if method == "uw":   # learnable aggregator parameters are optimised
        for c in ("critic", "actor", "alpha"):
            assert (aggregator(agent, c).log_vars != 0).all()


def test_polyak_target_update():
    agent = make_agent()
    agent.update(make_batch())
    tgt = {n: p.clone() for n, p in agent.critic_target.named_parameters()}
    agent.update(make_batch(1))
    for n, p in agent.critic.named_parameters():
        want = (1 - agent.tau) * tgt[n] + agent.tau * p.detach()
        assert torch.allclose(dict(agent.critic_target.named_parameters())[n], want, atol=1e-7)


def test_after_step_detection_and_backward_validation():
    assert needs_after_step(aggregators.make("famo", K))
    assert not needs_after_step(aggregators.make("ls", K))
    assert not needs_after_step(aggregators.make("pi_ls", K))
    assert not needs_after_step(aggregators.make("pivrg", K))
    one = aggregators.make("ls", K)
    with pytest.raises(ValueError, match="own aggregator"):
        component_backwards(lambda c: one, K)
    with pytest.raises(ValueError, match="tasks"):
        component_backwards(lambda c: aggregators.make("ls", K + 1), K)
    backs = component_backwards("ls", K)
    with pytest.raises(ValueError, match="own backward"):
        make_agent(aggregators={c: backs["critic"] for c in ("critic", "actor", "alpha")})
    with pytest.raises(ValueError, match="components"):
        make_agent(aggregators={"critic": backs["critic"]})
    built = make_agent(aggregators=component_backwards("pivrg", K, components=("critic",)))
    assert aggregator(built, "critic").name == "pivrg" and aggregator(built, "alpha").name == "ls"


def test_stratified_batch_shape_is_checked():
    agent = make_agent()
    batch = make_batch()
    batch["obs"] = batch["obs"].reshape(K * B, OBS)
    with pytest.raises(ValueError, match="obs"):
        agent.update(batch)


# -- checkpoints ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["uw", "famo", "pivrg"])
def test_state_dict_round_trip_gives_identical_next_update(method):
    a = make_agent(aggregators=_aggs(method), seed=0)
    for s in range(2):
        a.update(make_batch(s))
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = make_agent(aggregators=_aggs(method), seed=123)
    b.load_state_dict(torch.load(buf, weights_only=False))
    torch.manual_seed(5)
    la = a.update(make_batch(9))
    torch.manual_seed(5)
    lb = b.update(make_batch(9))
    pa, pb = all_params(a), all_params(b)
    assert pa.keys() == pb.keys()
    for n in pa:
        assert torch.equal(pa[n], pb[n]), n
    for key, v in la.items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(lb[key])), key
    with pytest.raises(ValueError, match="configuration"):
        make_agent(kind="mtl_sac").load_state_dict(a.state_dict())


# -- non-finite batches -------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["pivrg", "ls"])
def test_nan_reward_skips_the_critic_update(method):
    agent = make_agent(aggregators=method)
    agent.update(make_batch())
    critic = {n: p.detach().clone() for n, p in agent.critic.named_parameters()}
    target = {n: p.clone() for n, p in agent.critic_target.named_parameters()}
    step = [s["step"].clone() for s in agent.optimizers["critic"].state.values()]
    batch = make_batch(1)
    batch["reward"][1, 2] = math.nan
    logs = agent.update(batch)
    assert logs["skipped_critic"] == 1 and "critic_weights" not in logs
    assert logs["skipped_actor"] == 0          # the actor's loss does not read rewards
    for n, p in agent.critic.named_parameters():
        assert torch.equal(p, critic[n]) and p.grad is None, n
    for n, p in agent.critic_target.named_parameters():
        assert torch.equal(p, target[n]), n     # no target update after a skipped critic step
    assert all(torch.equal(s["step"], s0) for s, s0 in zip(agent.optimizers["critic"].state.values(), step))
    assert torch.isfinite(torch.cat([p.flatten() for p in agent.actor.parameters()])).all()


# -- the device-side skip -------------------------------------------------------------------------------
def _state(agent):
    """Every tensor of the agent's state: networks, target, optimisers, backwards."""
    out = {}

    def walk(prefix, x):
        if torch.is_tensor(x):
            out[prefix] = x.detach().clone()
        elif isinstance(x, dict):
            for key, v in x.items():
                walk(f"{prefix}.{key}", v)

    walk("agent", {k: v for k, v in agent.state_dict().items() if k != "config"})
    return out


def _with_nan(seed, key):
    batch = make_batch(seed)
    batch[key][1, 2] = math.nan
    return batch


# non-finite at the first update (before any optimiser state), in the critic only (a reward),
# in every component (an observation)
NAN_RUN = [("obs", 0), (None, 1), (None, 2), ("reward", 3), (None, 4), ("obs", 5), (None, 6)]


@pytest.mark.parametrize("method", [None, "ls", "pivrg", "uw", "cagrad", "aligned_mtl", "nash_mtl", "nash_mtl/3"])
def test_device_side_skip_leaves_the_state_of_the_host_side_skip(method):
    """Masked steps undone on the device give the host-side skip's parameters, target,
    optimiser moments and step counts, aggregator state (UW's log-variances and their Adam,
    PIVRG's warm start, Aligned-MTL's preferences) and skip flags, bit for bit."""
    runs = {}
    for skip in ("host", "device"):
        aggs = component_backwards("nash_mtl", K, update_weights_every=3) if method == "nash_mtl/3" else method
        agent = make_agent(aggregators=aggs, nonfinite_skip=skip)
        torch.manual_seed(7)
        flags = []
        for key, seed in NAN_RUN:
            logs = agent.update(make_batch(seed) if key is None else _with_nan(seed, key))
            flags.append([bool(logs[f"skipped_{c}"]) for c in ("critic", "actor", "alpha")])
        runs[skip] = (_state(agent), flags)
    (host, host_flags), (device, device_flags) = runs["host"], runs["device"]
    assert host_flags == device_flags
    assert host_flags[0] == [True] * 3 and host_flags[3] == [True, False, False] and host_flags[5] == [True] * 3
    assert host.keys() == device.keys()
    for key in host:
        assert torch.equal(host[key], device[key]), key


def test_device_side_skip_refuses_an_aggregator_with_host_state():
    with pytest.raises(ValueError, match="moco.step"):
        make_agent(aggregators="moco", nonfinite_skip="device")


@pytest.mark.parametrize("method", [None, "ls", "pivrg", "fairgrad", "uw", "mgda", "cagrad", "upgrad", "imtl_g",
                                    "aligned_mtl"])
def test_the_update_reads_nothing_on_the_host_with_the_device_side_skip(method, monkeypatch):
    agent = make_agent(aggregators=method, nonfinite_skip="device")
    agent.update(make_batch(0))   # optimiser state exists
    batch = _with_nan(1, "reward")
    with solvers.device_form(), no_host_reads(monkeypatch):
        logs = agent.update(batch)
        agent.update(make_batch(2))
    assert bool(logs["skipped_critic"]) and not bool(logs["skipped_actor"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("method", [None, "ls", "pivrg", "uw", "mgda", "cagrad", "upgrad", "imtl_g", "aligned_mtl"])
def test_the_update_runs_under_cuda_sync_debug_mode_error(method):
    """On a GPU: the whole update (critic, actor, temperature, the aggregators, the
    optimisers, a skipped critic) never synchronises with the host."""
    agent = make_agent(aggregators=method, nonfinite_skip="device", device="cuda")
    assert all(p.is_cuda for b in agent.backward.values() for p in b.state_tensors().values())
    good = {k: v.cuda() for k, v in make_batch(0).items()}
    bad = {k: v.cuda() for k, v in _with_nan(1, "reward").items()}
    agent.update(good)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        logs = agent.update(bad)
        agent.update(good)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert bool(logs["skipped_critic"]) and not bool(logs["skipped_actor"])


def test_the_host_read_check_catches_the_host_side_skip():
    agent = make_agent(aggregators="pivrg", nonfinite_skip="host")
    agent.update(make_batch(0))
    with solvers.device_form(), no_host_reads(), pytest.raises(AssertionError, match="host read"):
        agent.update(make_batch(1))
