import contextlib
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode


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


class _NoHostReads(TorchDispatchMode):
    """Fails on a read of a tensor's value by the host (``bool``, ``float``, ``.item()``),
    the CPU's stand-in for ``torch.cuda.set_sync_debug_mode("error")``.  Reads inside
    ``torch.optim`` are let through: on the CPU Adam's step count is a host value by design
    (on CUDA the agent's optimisers are capturable)."""

    READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default,
             torch.ops.aten.equal.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS and not any("torch/optim/" in f.filename for f in traceback.extract_stack()):
            raise AssertionError(f"host read of a tensor value ({func})")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_reads(monkeypatch=None):
    """Inside: a host read of a tensor value fails, and with ``monkeypatch`` so does a
    conversion to NumPy or a list (on the CPU those read memory without a dispatch)."""
    if monkeypatch is not None:
        def refuse(*args, **kwargs):
            raise AssertionError("tensor converted to a host value (numpy / list)")
        for name in ("numpy", "tolist", "__array__"):
            monkeypatch.setattr(torch.Tensor, name, refuse)
    try:
        with _NoHostReads():
            yield
    finally:
        if monkeypatch is not None:
            monkeypatch.undo()
