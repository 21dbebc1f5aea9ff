"""``train.compile``: the agent's update under ``torch.compile``.

Modes (:data:`MODES`):

* ``off``: eager (the default: on the CPU the compiled update is slower, see the README's
  loop table);
* ``default``: ``torch.compile`` in its default mode (Inductor kernels);
* ``max``: ``mode="max-autotune"``: on a GPU also CUDA graphs (reduce-overhead) and tuned
  matmuls.  The update's state already allows graph capture there: capturable optimisers
  and, with ``train.nonfinite_skip=device``, no host read in the update.

The compiled update computes what the eager one does, to float tolerance
(``tests/integration/test_trainer.py::test_compiled_update_equals_eager``):

* random numbers come from the eager generator (Inductor's ``fallback_random``), so a
  seeded compiled run draws the same noise as the eager run, and ``train.compile`` is not
  part of a run's identity (like ``device``);
* the engine differentiates the graph more than once (``retain_graph``), which
  AOTAutograd's donated buffers would free: they are off;
* ``autograd.grad`` and the host solvers break the graph; the recorded layer outputs are
  graph boundaries (:func:`agents.networks._record_outside_graph`), so the per-task gradients taken to
  them are the eager ones.

The first updates pay the compile (about 30 s on two CPU cores at the test's sizes).
"""

from __future__ import annotations

from typing import Callable

import torch

#: ``train.compile`` -> ``torch.compile``'s mode (None: eager)
MODES: dict[str, str | None] = {"off": None, "default": "default", "max": "max-autotune"}


def compile_update(update: Callable, mode: str) -> Callable:
    """``update`` under ``torch.compile`` in ``train.compile`` mode ``mode`` (``update``
    itself for ``off``)."""
    if mode not in MODES:
        raise ValueError(f"train.compile must be one of {', '.join(MODES)}, got {mode!r}")
    if MODES[mode] is None:
        return update
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inner = torch.compile(update, mode=MODES[mode])

    def compiled(*args, **kwargs):
        with functorch_config.patch(donated_buffer=False), inductor_config.patch(fallback_random=True):
            return inner(*args, **kwargs)

    compiled.__wrapped__ = update
    return compiled
