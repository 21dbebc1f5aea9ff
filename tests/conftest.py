import pytest
import torch


def ill_conditioned_grads(k: int, n: int, seed: int = 0, spread: float = 3.0, dtype=torch.float64) -> torch.Tensor:
    """k correlated gradients whose norms span 10**(-spread) .. 10**spread."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(k, n, generator=g, dtype=dtype)
    mix = torch.eye(k, dtype=dtype) + 0.5 * torch.rand(k, k, generator=g, dtype=dtype)
    scales = torch.logspace(-spread, spread, k, dtype=dtype)[torch.randperm(k, generator=g)]
    return scales[:, None] * (mix @ base)


@pytest.fixture
def grads_factory():
    return ill_conditioned_grads
