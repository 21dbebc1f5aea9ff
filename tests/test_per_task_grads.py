"""The vectorised per-task gradients equal separate backward passes; heads get only their
task's gradient; loss-only methods use one backward; CosReg's second-order term."""

import pytest
import torch
from torch import nn

import aggregators
from mtrl.per_task_grads import aggregated_backward, per_task_grads

K, B, D, H, O = 3, 5, 4, 6, 2


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    shared = {"w1": nn.Parameter(torch.randn(H, D, generator=g)), "b1": nn.Parameter(torch.randn(H, generator=g))}
    task = {"head": nn.Parameter(torch.randn(K, O, H, generator=g))}
    x = torch.randn(K, B, D, generator=g)
    y = torch.randn(K, B, O, generator=g)
    return shared, task, x, y


def loss_fn(shared, task, x, y):
    h = torch.tanh(x @ shared["w1"].T + shared["b1"])
    return ((h @ task["head"].T - y) ** 2).mean()


def loop_grads(shared, task, x, y):
    rows, heads = [], []
    for i in range(K):
        l = loss_fn(shared, {"head": task["head"][i]}, x[i], y[i])
        gs = torch.autograd.grad(l, list(shared.values()) + [task["head"]])
        rows.append(torch.cat([g.flatten() for g in gs[:-1]]))
        heads.append(gs[-1])
    return torch.stack(rows), heads


def test_vectorised_equals_one_backward_per_task():
    shared, task, x, y = make_params()
    losses, g_sh, g_task = per_task_grads(loss_fn, shared, task, x, y)
    G = torch.cat([g_sh[n].flatten(1) for n in shared], 1)
    G_ref, heads = loop_grads(shared, task, x, y)
    assert torch.allclose(G, G_ref, atol=1e-6)
    for i in range(K):
        # head i receives only task i's gradient: the loop's grad of l_i on the stacked head
        # is zero outside row i
        assert torch.allclose(heads[i][i], g_task["head"][i], atol=1e-6)
        others = [j for j in range(K) if j != i]
        assert (heads[i][others] == 0).all()


@pytest.mark.parametrize("name", ["pivrg", "nash_mtl", "pcgrad", "cagrad"])
def test_aggregated_backward_writes_direction_and_own_head_grads(name):
    shared, task, x, y = make_params(1)
    agg = aggregators.make(name, K)
    info = aggregated_backward(loss_fn, shared, task, (x, y), agg)
    G_ref, heads = loop_grads(shared, task, x, y)
    expected = aggregators.make(name, K)(G_ref, info.losses)
    got = torch.cat([p.grad.flatten() for p in shared.values()])
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    for i in range(K):
        assert torch.allclose(task["head"].grad[i], heads[i][i], atol=1e-6)
    assert info.gram.shape == (K, K)


def test_loss_only_method_is_one_ordinary_backward():
    shared, task, x, y = make_params(2)
    agg = aggregators.make("uw", K)
    aggregated_backward(loss_fn, shared, task, (x, y), agg)
    got = [p.grad.clone() for p in list(shared.values()) + list(task.values())] + [agg.log_vars.grad.clone()]
    for p in list(shared.values()) + list(task.values()):
        p.grad = None
    ref = aggregators.make("uw", K)
    losses = torch.stack([loss_fn(shared, {"head": task["head"][i]}, x[i], y[i]) for i in range(K)])
    ref.loss(losses).backward()
    want = [p.grad for p in list(shared.values()) + list(task.values())] + [ref.log_vars.grad]
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-6)


def test_cosreg_adds_the_second_order_term():
    shared, task, x, y = make_params(3)
    agg = aggregators.make("cosreg", K, c=2.0)
    aggregated_backward(loss_fn, shared, task, (x, y), agg)
    got = torch.cat([p.grad.flatten() for p in shared.values()])
    # reference: autograd of sum_i l_i + penalty(G(theta)) with create_graph per task
    params = list(shared.values())
    rows, total = [], 0.0
    for i in range(K):
        l = loss_fn(shared, {"head": task["head"][i].detach()}, x[i], y[i])
        total = total + l
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(l, params, create_graph=True)]))
    full = total + agg.penalty(torch.stack(rows))
    want = torch.cat([g.flatten() for g in torch.autograd.grad(full, params)])
    assert torch.allclose(got, want.to(got.dtype), rtol=1e-4, atol=1e-6)


def test_non_finite_losses_write_nothing():
    shared, task, x, y = make_params(4)
    y = y.clone()
    y[1, 0, 0] = float("nan")
    info = aggregated_backward(loss_fn, shared, task, (x, y), aggregators.make("pivrg", K))
    assert not info.finite
    assert all(p.grad is None for p in list(shared.values()) + list(task.values()))
