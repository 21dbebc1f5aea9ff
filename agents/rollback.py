"""The device-side skip of a non-finite update: a step that is undone on the device.

Skipping an update on the host needs the finite flag on the host, one synchronisation
per component per step.  Instead, :class:`Rollback` copies the tensors a step changes
before it (parameters, optimiser moments and step counts, the backward's own state), the
step runs on gradients that are zero where the update was not finite, and
:meth:`Rollback.unless` puts every tensor back where the device flag is false.  The
result is the host-side skip's, bit for bit; the cost is one copy of the component's
parameters and optimiser state per update, and no host synchronisation.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["Rollback", "place_step_counts"]


class Rollback:
    """A snapshot of the named tensors ``state()`` returns, restorable in place.

    ``state`` is called again at restore time, so tensors created by the step (Adam's
    moments at its first step) or replaced by it (a buffer re-assigned by an aggregator)
    are found: a tensor that did not exist before the step is reset to zeros, which for
    Adam's moments and step count is the state of a fresh optimiser.
    """

    def __init__(self, state: Callable[[], dict[str, Tensor]]):
        self._state = state
        self._saved = {key: value.detach().clone() for key, value in state().items()}

    @torch.no_grad()
    def unless(self, ok: Tensor) -> None:
        """Restore every tensor where ``ok`` (a 0-dim bool tensor on the tensors' device)
        is false; leave the stepped values where it is true."""
        for key, live in self._state().items():
            saved = self._saved.get(key)
            live.copy_(torch.where(ok, live, torch.zeros_like(live) if saved is None else saved))


def place_step_counts(optimizer: torch.optim.Optimizer) -> None:
    """Make an optimiser capturable where its parameters are on CUDA: the step counts live
    on the device, so the step never reads a host value, a :class:`Rollback` can restore
    the counts, and the step can be captured in a CUDA graph.  Where they are on the CPU,
    the counts are host tensors and ``capturable`` is off (the CPU does not support it).
    Call it after construction, ``load_state_dict`` (which brings back the saved flag and
    counts) and a move to another device."""
    for group in optimizer.param_groups:
        if "capturable" not in group or not group["params"]:
            continue
        cuda = all(p.is_cuda for p in group["params"])
        group["capturable"] = cuda
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=p.device if cuda else "cpu")
