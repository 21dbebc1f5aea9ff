"""Helpers shared by several methods.

* :class:`DeviceGenerator` -- the package's one mechanism for seeded randomness (RLW, RGW,
  PCGrad, GradVac, GradDrop): a ``torch.Generator`` seeded by the method's ``seed``
  hyper-parameter, created lazily on the device of the data it draws for (no host round
  trip), whose state is saved in the state dict as extra state.
* :class:`RandomOrderGram` and :func:`random_partner_orders` -- the random per-task visiting
  orders of the pairwise gradient-surgery methods (PCGrad, GradVac).
* :func:`safe_divide` -- division that returns 0 where the denominator is not positive.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import GramWeighting

__all__ = ["DeviceGenerator", "RandomOrderGram", "random_partner_orders", "safe_divide"]


def safe_divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den > 0``, else 0 (gradient-safe: no inf / NaN anywhere)."""
    ok = den > 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _canonical(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class DeviceGenerator(nn.Module):
    """A ``torch.Generator`` seeded with ``seed``, created lazily on the device it draws on.

    A random method owns one as a sub-module (``self.rng = DeviceGenerator(seed)``) and
    draws with ``generator=self.rng.get(data.device)``.  Being a module, its state travels
    in the owner's ``state_dict()`` as extra state (key ``rng._extra_state``), so a
    restored aggregator draws exactly the numbers the saved one would have drawn next; the
    owner's ``reset()`` calls :meth:`reset` to start again from ``seed``.

    A state restored on a device of another kind than the one it was saved on (CPU and
    CUDA generators have different state formats) cannot be applied: the generator then
    starts again from ``seed``.  Moving the computation to another device likewise starts
    a new stream from ``seed``.  The stream depends on the device: CPU and GPU draws with
    the same seed differ (each is reproducible).
    """

    def __init__(self, seed: int = 0):
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._pending: tuple[torch.device, Tensor] | None = None

    def get(self, device: torch.device | str) -> torch.Generator:
        """The generator on ``device`` (created there, from ``seed`` or a restored state,
        at the first draw on that device)."""
        device = _canonical(device)
        gen = self._generator
        if gen is None or _canonical(gen.device) != device:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._pending is not None and self._pending[0] == device:
                gen.set_state(self._pending[1])
            self._pending = None
            self._generator = gen
        return gen

    def get_extra_state(self) -> dict:
        if self._generator is not None:
            return {"device": str(_canonical(self._generator.device)), "state": self._generator.get_state()}
        if self._pending is not None:  # restored but not drawn from yet: exported unchanged
            return {"device": str(self._pending[0]), "state": self._pending[1].clone()}
        return {"device": None, "state": None}

    def set_extra_state(self, state: dict) -> None:
        self.reset()
        if state.get("state") is not None:
            self._pending = (torch.device(state["device"]), state["state"].clone())

    def reset(self) -> None:
        """Start again from ``seed`` (at the next draw)."""
        self._generator = None
        self._pending = None

    def extra_repr(self) -> str:
        return f"seed={self.seed}"


def random_partner_orders(num_tasks: int, generator: torch.Generator, device) -> Tensor:
    """(k, k-1) int64: row i is a uniformly random permutation of ``{j : j != i}``,
    drawn independently per row from ``generator`` (on ``device``)."""
    keys = torch.rand((num_tasks, num_tasks), generator=generator, device=device, dtype=torch.float64)
    keys.fill_diagonal_(2.0)  # task i itself sorts last and is dropped
    return keys.argsort(dim=1)[:, : num_tasks - 1]


class RandomOrderGram(GramWeighting):
    """Base of PCGrad and GradVac: the seeded generator, the per-call visiting orders and
    the coefficient matrix ``C`` (``g_i' = sum_j C_ij g_j``) of the last call."""

    def __init__(self, num_tasks: int, seed: int = 0):
        super().__init__(num_tasks)
        self.rng = DeviceGenerator(seed)
        self.seed = seed
        #: k x k float64: row i holds the coefficients of the modified gradient g_i'
        self.coefficients: Tensor | None = None

    def draw_orders(self, device) -> Tensor:
        """The visiting orders of one call, (k, k-1); advances the generator."""
        return random_partner_orders(self.num_tasks, self.rng.get(device), device)

    def reset(self) -> None:
        super().reset()
        self.rng.reset()
        self.coefficients = None
