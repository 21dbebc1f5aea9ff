"""Task losses and metrics by kind: pixel-level tasks (``dense``), boundary-style tasks and
their metrics (``boundary``), multi-label classification (``classification``: F1),
regression of scaled targets (``regression``: MAE in the original units), and the binary
morphology the boundary tasks use (``morphology``)."""
