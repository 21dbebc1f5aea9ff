"""Mixed precision in the engine: a loss scale S changes what is differentiated (S times
every objective), never the update (the written gradients are S times it, the method
sees the unscaled losses, gradients and Gram matrix); lower-precision per-task gradients
reach the method in float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import aggregators

K = 3
METHODS = [("ls", "param"), ("uw", "param"), ("stch", "param"), ("pivrg", "param"), ("nash_mtl", "param"),
           ("mgda", "param"), ("pcgrad", "param"), ("graddrop", "param"), ("moco", "param"), ("consmtl", "param"),
           ("cagrad", "param"), ("pivrg", "rep"), ("mgda", "rep"), ("consmtl", "rep"), ("uw", "rep")]


def _model():
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 8), nn.Tanh()).double()
    heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(K)).double()
    return trunk, heads


def _step(method: str, mode: str, scale: float, **kwargs):
    """(every gradient written, divided by ``scale``; the result) of one call."""
    trunk, heads = _model()
    agg = aggregators.make(method, K).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 5, generator=g, dtype=torch.float64)
    y = torch.randn(12, K, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.3], dtype=torch.float64)
    z = trunk(x)
    losses = [((h(z).squeeze(1) - y[:, i]) ** 2).mean() for i, h in enumerate(heads)]
    info = aggregators.backward(losses, trunk, agg, features=z if mode == "rep" else None,
                                heads=[list(h.parameters()) for h in heads], representation=z, loss_scale=scale,
                                diagnostics=True, **kwargs)
    params = [*trunk.parameters(), *heads.parameters(), *(p for p in agg.parameters() if p.grad is not None)]
    return torch.cat([p.grad.flatten() / scale for p in params]), info


@pytest.mark.parametrize("scale", [1024.0, 3.0])
@pytest.mark.parametrize("method,mode", METHODS)
def test_a_loss_scale_scales_the_written_gradients_and_nothing_else(method, mode, scale):
    plain, a = _step(method, mode, 1.0)
    scaled, b = _step(method, mode, scale)
    assert plain.abs().max() > 0
    tol = 0 if scale == 1024.0 else 1e-12   # a power of two scales exactly
    assert (plain - scaled).abs().max() <= tol * plain.abs().max()
    assert torch.allclose(a.losses, b.losses, rtol=tol, atol=0)
    assert torch.allclose(a.direction_norm, b.direction_norm, rtol=1e-12)
    assert torch.allclose(a.diagnostics["gram"], b.diagnostics["gram"], rtol=1e-12)
    if a.weights is not None:
        assert torch.allclose(a.weights, b.weights, rtol=1e-9, atol=1e-12)


def test_a_skipped_scaled_step_reports_unscaled_losses():
    trunk, heads = _model()
    z = trunk(torch.randn(4, 5, dtype=torch.float64))
    losses = [h(z).pow(2).mean() for h in heads]
    losses[1] = losses[1] * float("inf")
    info = aggregators.backward(losses, trunk, "pivrg", loss_scale=8.0, nonfinite="skip")
    assert info.finite is False
    assert float(info.losses[0]) == pytest.approx(float(losses[0].detach()))


def test_bad_loss_scales_and_second_order_methods_are_refused():
    trunk, heads = _model()
    z = trunk(torch.randn(4, 5, dtype=torch.float64))
    losses = [h(z).pow(2).mean() for h in heads]
    for bad in (0.0, -1.0, float("inf"), "2"):
        with pytest.raises(ValueError, match="loss_scale"):
            aggregators.backward(losses, trunk, "ls", loss_scale=bad, retain_graph=True)
    with pytest.raises(ValueError, match="without loss scaling"):
        aggregators.backward(losses, trunk, "cosreg", loss_scale=4.0)


@pytest.mark.parametrize("method", ["mgda", "graddrop"])
def test_bfloat16_representation_gradients_reach_the_method_in_float32(method):
    """Under autocast the representation z is bfloat16, so its per-task gradients are; the
    method gets them (a Gram method their Gram matrix) in float32."""
    seen = []
    base = type(aggregators.make(method, K))

    class Spy(base):
        def gram_weights(self, gram, losses=None):
            seen.append(gram.dtype)
            return super().gram_weights(gram, losses)

        def aggregate(self, grads, losses):
            seen.append(grads.dtype)
            return super().aggregate(grads, losses)

    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 8))
    heads = nn.ModuleList(nn.Linear(8, 1) for _ in range(K))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = trunk(torch.randn(6, 5))
        losses = [h(z).float().pow(2).mean() for h in heads]
    assert z.dtype == torch.bfloat16
    info = aggregators.backward(losses, trunk, Spy(K), features=z)
    assert seen and all(d == torch.float32 for d in seen), seen
    assert info.direction_norm > 0
