"""Readers of the on-disk layouts the benchmarks take (one module per layout) and the
errors they raise; the random-data writers for tests are in :mod:`mtrl.supervised.testing`."""
