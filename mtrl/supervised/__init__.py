"""The supervised driver: the aggregators of ``aggregators/`` on multi-task supervised
benchmarks (QM9, CelebA, NYU-v2, Cityscapes, the dense suites, and multidigits: real
handwritten digits that ship with scikit-learn, for CPU minutes), with the metrics the papers report.

A benchmark (``benchmark.py``) bundles data, a model split into a shared encoder and task
heads, per-task losses, metrics and single-task baselines; the trainer (``trainer.py``)
trains it with any aggregator through :func:`aggregators.backward`.
"""
