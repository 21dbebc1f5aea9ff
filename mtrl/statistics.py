"""Statistics of run scores: the one module every summary (RL and supervised) computes with.

Pure functions over numpy arrays; the aggregate ones take (runs x tasks) score matrices,
one row per independent run (seed), one column per task.  The interquartile mean, its
interval, the probability of improvement and the performance profiles are those of
Agarwal et al., "Deep Reinforcement Learning at the Edge of the Statistical Precipice",
NeurIPS 2021, computed with their library ``rliable``.  Every bootstrap resamples runs
within each task (a stratified bootstrap: tasks are fixed, seeds are the random unit) and
reports the percentile interval.

rliable draws its resampling indices from numpy's global random state, not from a
generator passed to it, so each bootstrap here seeds that state from its ``seed`` argument
and restores the caller's state afterwards: results are reproducible given the seed and
nothing else's random stream is disturbed.  rliable (through ``arch``) takes about a second
to import, so it is imported on first use.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
from scipy import stats

# ----------------------------------------------------------------------- per-value spreads


def sem(x) -> float:
    """Standard error of the mean: sample standard deviation (ddof = 1) / sqrt(n); NaN
    for fewer than two values."""
    x = np.asarray(x, dtype=float)
    return float(np.std(x, ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan


def column_sem(matrix) -> np.ndarray:
    """:func:`sem` of every column of a (runs x values) matrix."""
    return np.array([sem(col) for col in np.asarray(matrix, dtype=float).T])


def t_halfwidth(values, confidence: float = 0.95, axis: int = 0) -> np.ndarray:
    """Half-width of the Student-t interval of the mean over ``axis``:
    t_{(1+c)/2, n-1} * s.e.m.; NaN with one value."""
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    if n < 2:
        return np.full(np.delete(values.shape, axis), math.nan)
    return stats.t.ppf((1 + confidence) / 2, n - 1) * np.std(values, axis=axis, ddof=1) / math.sqrt(n)


# -------------------------------------------------------------------- rliable's aggregates

def _rliable():
    from rliable import library, metrics
    return library, metrics


@contextmanager
def _global_numpy_seed(seed: int):
    """Seed numpy's global random state (which rliable's resamplers draw from) for the
    duration of the block, then put the caller's state back."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def _score_matrix(scores, name: str = "scores") -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.size == 0:
        raise ValueError(f"{name} must be a non-empty (runs x tasks) matrix, got shape {scores.shape}")
    return scores


def _check_bootstrap(confidence: float, n_resamples: int) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")


def _interval(func, data, confidence: float, n_resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """rliable's stratified percentile bootstrap of ``func`` (which returns a 1-D array)
    over ``data``: one score matrix, or a list of them resampled independently.  Returns
    the (lower, upper) bounds, each shaped like ``func``'s output."""
    _check_bootstrap(confidence, n_resamples)
    library, _ = _rliable()
    with _global_numpy_seed(seed):
        _, cis = library.get_interval_estimates({"x": data}, func, method="percentile", reps=n_resamples,
                                                confidence_interval_size=confidence)
    return np.asarray(cis["x"][0], dtype=float), np.asarray(cis["x"][1], dtype=float)


def iqm(scores) -> float:
    """Interquartile mean (Agarwal et al. 2021, their robust aggregate metric): the mean of the middle 50% of
    all the values pooled (the lowest and highest 25% of runs x tasks trimmed), rliable's
    ``aggregate_iqm``.  Any shape; the values are pooled."""
    _, metrics = _rliable()
    return float(metrics.aggregate_iqm(np.asarray(scores, dtype=float)))


def stratified_bootstrap_iqm(scores, confidence: float = 0.95, n_resamples: int = 2000,
                             seed: int = 0) -> tuple[float, float]:
    """The (low, high) ``confidence`` interval of the :func:`iqm` of a (runs x tasks) score
    matrix by the stratified bootstrap of Agarwal et al. 2021: each
    resample draws, for every task independently, as many runs with replacement from that
    task's column; the interval is the percentile interval of the resampled IQMs.  Runs
    (seeds) are the resampled unit, never episodes or evaluation steps.  With one run it
    collapses to the point estimate."""
    scores = _score_matrix(scores)
    _, metrics = _rliable()
    low, high = _interval(lambda s: np.array([metrics.aggregate_iqm(s)]), scores, confidence, n_resamples, seed)
    return float(low[0]), float(high[0])


def probability_of_improvement(scores_x, scores_y, confidence: float = 0.95, n_resamples: int = 2000,
                               seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high): the probability that method X improves on method Y (Agarwal et
    al. 2021), with its stratified bootstrap ``confidence`` interval.

    ``scores_x`` and ``scores_y`` are (runs x tasks) matrices over the same tasks (run
    counts may differ).  Per task m, P(X_m > Y_m) is the Mann-Whitney U statistic of X's
    runs against Y's divided by the number of run pairs (a tie counts one half); the result
    is its mean over tasks.  Identical scores give 0.5; X above Y in every pair gives 1.
    The interval resamples the runs of X and of Y independently within each task
    (rliable's ``StratifiedIndependentBootstrap``)."""
    x, y = _score_matrix(scores_x, "scores_x"), _score_matrix(scores_y, "scores_y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"scores_x and scores_y must cover the same tasks, got {x.shape[1]} and {y.shape[1]} columns")
    _, metrics = _rliable()
    point = float(metrics.probability_of_improvement(x, y))
    low, high = _interval(lambda a, b: np.array([metrics.probability_of_improvement(a, b)]), [x, y],
                          confidence, n_resamples, seed)
    return point, float(low[0]), float(high[0])


def performance_profile(scores, taus, confidence: float = 0.95, n_resamples: int = 2000,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fraction, low, high), each shaped like ``taus``: the run-score distribution of
    Agarwal et al. 2021 (their performance profiles), i.e. for every threshold tau
    the fraction of all (run, task) scores above tau, rliable's ``score_distributions``,
    with its stratified bootstrap ``confidence`` interval at each tau."""
    scores = _score_matrix(scores)
    taus = np.asarray(taus, dtype=float).reshape(-1)
    library, _ = _rliable()

    def profile(s):
        return np.asarray(library.score_distributions(s, taus), dtype=float)

    low, high = _interval(profile, scores, confidence, n_resamples, seed)
    return profile(scores), low, high
