"""CosReg: the second-order update equals the gradient of the regularised objective."""

import itertools

import pytest
import torch
import torch.nn.functional as F

import aggregators

F64 = torch.float64


class TinyMTL:
    """tanh trunk (W, b) shared by k linear regression heads."""

    def __init__(self, k, seed, n_in=4, width=6, batch=32):
        g = torch.Generator().manual_seed(seed)
        self.X = torch.randn(batch, n_in, generator=g, dtype=F64)
        self.Y = torch.randn(batch, k, generator=g, dtype=F64)
        self.W = torch.randn(width, n_in, generator=g, dtype=F64).requires_grad_(True)
        self.b = (0.1 * torch.randn(width, generator=g, dtype=F64)).requires_grad_(True)
        self.heads = [torch.randn(width, generator=g, dtype=F64).requires_grad_(True) for _ in range(k)]
        self.k = k

    @property
    def shared(self):
        return [self.W, self.b]

    def losses(self):
        z = torch.tanh(self.X @ self.W.T + self.b)
        return torch.stack([((z @ h - self.Y[:, i]) ** 2).mean() for i, h in enumerate(self.heads)])

    def task_grads(self, losses):
        rows = []
        for i in range(self.k):
            gs = torch.autograd.grad(losses[i], self.shared, create_graph=True, retain_graph=True)
            rows.append(torch.cat([g.flatten() for g in gs]))
        return torch.stack(rows)


def mean_cos2(G):
    pairs = list(itertools.combinations(range(G.shape[0]), 2))
    return sum(F.cosine_similarity(G[i], G[j], dim=0) ** 2 for i, j in pairs) / len(pairs)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("c", [10.0, 0.3])
def test_cosreg_update_is_gradient_of_regularised_objective(k, c):
    model = TinyMTL(k, seed=k)
    agg = aggregators.make("cosreg", k, c=c)
    assert agg.needs_graph

    losses = model.losses()
    G = model.task_grads(losses)
    first = agg(G.detach())
    second = torch.autograd.grad(agg.penalty(G), model.shared)
    update = first + torch.cat([s.flatten() for s in second])

    losses = model.losses()
    G = model.task_grads(losses)
    objective = losses.sum() + c * mean_cos2(G)
    direct = torch.cat([g.flatten() for g in torch.autograd.grad(objective, model.shared)])
    assert torch.allclose(update, direct, rtol=1e-10, atol=1e-12)
    # the first-order part is the plain sum, weights 1 on both paths
    assert torch.allclose(first, G.detach().sum(0))
    assert torch.equal(agg.weights, torch.ones(k, dtype=F64))
    assert torch.equal(agg.gram_weights(G.detach() @ G.detach().T), torch.ones(k, dtype=F64))


def train(model, agg, steps, lr=0.05, regularise=True):
    history = []
    for _ in range(steps + 1):
        losses = model.losses()
        G = model.task_grads(losses)
        history.append(float(mean_cos2(G.detach())))
        head_grads = torch.autograd.grad(losses.sum(), model.heads, retain_graph=True)
        update = agg(G.detach())
        if regularise:
            update = update + torch.cat([g.flatten() for g in torch.autograd.grad(agg.penalty(G), model.shared)])
        with torch.no_grad():
            offset = 0
            for p in model.shared:
                p -= lr * update[offset: offset + p.numel()].view_as(p)
                offset += p.numel()
            for h, g in zip(model.heads, head_grads):
                h -= lr * g
    return history


@pytest.mark.parametrize("seed", [3, 6, 9])
def test_cosreg_training_reduces_gradient_alignment(seed):
    """20 steps of the full update (lr 0.01) on a tiny two-task model: the mean cos^2
    falls by more than 10x, and well below the unregularised run's."""
    with_reg = train(TinyMTL(2, seed=seed), aggregators.make("cosreg", 2), steps=20, lr=0.01)
    without = train(TinyMTL(2, seed=seed), aggregators.make("cosreg", 2), steps=20, lr=0.01, regularise=False)
    assert with_reg[0] == without[0] > 0.2
    assert with_reg[-1] < 0.1 * with_reg[0]
    assert with_reg[-1] < 0.5 * without[-1]


def test_cosreg_penalty_known_values():
    agg = aggregators.make("cosreg", 2)
    e = torch.eye(3, dtype=F64)
    assert float(agg.penalty(torch.stack([e[0], 5 * e[1]]))) == 0.0
    assert float(agg.penalty(torch.stack([e[0], 5 * e[0]]))) == pytest.approx(10.0)
    assert float(agg.penalty(torch.stack([e[0], -1e-4 * e[0]]))) == pytest.approx(10.0)
    # 45 degrees: cos^2 = 1/2
    assert float(agg.penalty(torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64))) == pytest.approx(5.0)
    # k = 3: pairs (e0, e0+e1) 1/2, (e0, e2) 0, (e0+e1, e2) 0 -> mean 1/6
    agg3 = aggregators.make("cosreg", 3, c=6.0)
    G = torch.stack([e[0], e[0] + e[1], 3 * e[2]])
    assert float(agg3.penalty(G)) == pytest.approx(1.0)
    assert float(agg3.penalty_from_gram(G @ G.T)) == pytest.approx(1.0)


def test_cosreg_zero_gradient_is_finite():
    agg = aggregators.make("cosreg", 3)
    G = torch.tensor([[1.0, 2.0], [0.0, 0.0], [2.0, 1.0]], dtype=F64, requires_grad=True)
    pen = agg.penalty(G)
    (grad,) = torch.autograd.grad(pen, G)
    assert torch.isfinite(pen) and torch.isfinite(grad).all()
    assert float(pen.detach()) == pytest.approx(10.0 * (0.8**2) / 3)  # only the (0, 2) pair counts
    assert (grad[1] == 0).all()
    G0 = torch.zeros(3, 4, dtype=F64, requires_grad=True)
    pen = agg.penalty(G0)
    assert float(pen.detach()) == 0.0 and (torch.autograd.grad(pen, G0)[0] == 0).all()
    assert torch.isfinite(aggregators.make("cosreg", 3)(G0.detach())).all()


def test_cosreg_float32_and_validation():
    agg = aggregators.make("cosreg", 2)
    G = torch.randn(2, 10, requires_grad=True)
    pen = agg.penalty(G)
    (grad,) = torch.autograd.grad(pen, G)
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    with pytest.raises(ValueError, match="shape"):
        agg.penalty(torch.randn(3, 10))
    with pytest.raises(ValueError, match="c"):
        aggregators.make("cosreg", 2, c=-1.0)
    assert aggregators.hyperparameters("cosreg") == {"c": 10.0}
