"""Task losses and metrics by kind: pixel-level tasks (``dense``), boundary-style tasks and
their metrics (``boundary``), and the binary morphology both use (``morphology``)."""
