"""What the tests share: the repository root, scripts loaded as modules, the gradient
matrices of the aggregator tests and the CPU's check for host reads.

The test tiers (``unit/``, ``integration/``, ``e2e/``) import it as ``helpers`` (the
pytest configuration's ``pythonpath`` holds ``tests/``); the fixtures are in
``conftest.py``, the supervised-run helpers in ``supervised_runs.py``."""

import contextlib
import importlib.util
import sys
import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: the repository root
ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """``scripts/<name>.py`` as a module (registered in ``sys.modules``, where dataclasses
    resolve a module's annotations), for tests that call its functions."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def ill_conditioned_grads(k: int, n: int, seed: int = 0, spread: float = 3.0, dtype=torch.float64) -> torch.Tensor:
    """k correlated gradients whose norms span 10**(-spread) .. 10**spread."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(k, n, generator=g, dtype=dtype)
    mix = torch.eye(k, dtype=dtype) + 0.5 * torch.rand(k, k, generator=g, dtype=dtype)
    scales = torch.logspace(-spread, spread, k, dtype=dtype)[torch.randperm(k, generator=g)]
    return scales[:, None] * (mix @ base)


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
