"""The supervised benchmarks, one file each: its tasks, metric list with the single-task
baselines, splits and protocol hooks (``base.Benchmark``).  Names map to classes in
:mod:`mtrl.supervised.registry`."""
