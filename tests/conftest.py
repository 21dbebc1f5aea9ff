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


def degenerate_cases(n: int = 20, seed: int = 0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Three-task gradient matrices at and near Pareto-stationary points, and with norms
    ten orders of magnitude apart."""
    g = torch.randn(3, n, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    return {
        "duplicate": torch.stack([g[0], g[0], g[1]]),
        "opposite": torch.stack([g[0], -g[0], g[1]]),
        "zero_row": torch.stack([g[0], torch.zeros(n, dtype=dtype), g[1]]),
        "all_zero": torch.zeros(3, n, dtype=dtype),
        "ten_orders": torch.stack([1e-5 * g[0], g[1], 1e5 * g[2]]),
    }


@pytest.fixture
def single_thread():
    """One intra-op torch thread (CNNs on a shared 2-core machine run far slower with more)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
