"""mtrl.statistics against values computed by hand: s.e.m., t half-width, and rliable's IQM,
stratified bootstrap intervals, probability of improvement and performance profiles."""

import math

import numpy as np
import pytest
from scipy import stats

from mtrl.statistics import (column_sem, iqm, performance_profile, probability_of_improvement, sem,
                             stratified_bootstrap_iqm, t_halfwidth)

N = 200  # resamples: enough for the properties checked, fast


def test_sem_column_sem_and_t_halfwidth():
    # deviations from 2 are -1, 0, 1 -> sample variance 1, s.e.m. 1/sqrt(3)
    assert sem([1, 2, 3]) == pytest.approx(1 / math.sqrt(3))
    assert math.isnan(sem([5.0]))
    np.testing.assert_allclose(column_sem([[1, 0], [2, 0], [3, 0]]), [1 / math.sqrt(3), 0.0])
    halfwidth = t_halfwidth(np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    np.testing.assert_allclose(halfwidth, [stats.t.ppf(0.975, 2) / math.sqrt(3), 0.0])
    assert np.isnan(t_halfwidth(np.ones((1, 3)))).all()


def test_iqm_is_the_mean_of_the_middle_half_of_the_pooled_scores():
    scores = np.array([[8.0, 1.0, 6.0, 3.0], [2.0, 7.0, 4.0, 100.0]])
    # pooled and sorted: 1, 2, 3, 4, 6, 7, 8, 100 -> the middle four 3, 4, 6, 7
    assert iqm(scores) == pytest.approx(5.0)
    assert iqm([0, 1, 2, 3, 4, 5, 6, 100]) == pytest.approx(3.5)


def test_iqm_interval_contains_the_point_and_is_reproducible_given_the_seed():
    scores = np.random.default_rng(1).random((6, 4))
    low, high = stratified_bootstrap_iqm(scores, n_resamples=N, seed=3)
    assert low < iqm(scores) < high and 0 <= low and high <= 1
    assert stratified_bootstrap_iqm(scores, n_resamples=N, seed=3) == (low, high)
    assert stratified_bootstrap_iqm(scores, n_resamples=N, seed=4) != (low, high)
    narrow = stratified_bootstrap_iqm(scores, confidence=0.5, n_resamples=N, seed=3)
    assert low <= narrow[0] <= narrow[1] <= high


def test_the_seed_does_not_leak_into_numpys_global_random_state():
    """rliable draws from numpy's global state; the functions seed it and put it back."""
    np.random.seed(123)
    expected = np.random.random(3)
    np.random.seed(123)
    stratified_bootstrap_iqm(np.random.default_rng(0).random((4, 3)), n_resamples=20, seed=9)
    performance_profile(np.ones((2, 2)), [0.5], n_resamples=20, seed=9)
    probability_of_improvement(np.ones((2, 2)), np.zeros((2, 2)), n_resamples=20, seed=9)
    np.testing.assert_array_equal(np.random.random(3), expected)


def test_iqm_interval_collapses_with_one_run_or_constant_tasks():
    assert stratified_bootstrap_iqm([[0.1, 0.5, 0.9, 0.3]], n_resamples=N) == pytest.approx((0.4, 0.4))
    # every task's column constant over runs: every stratified resample is the same matrix
    scores = np.tile([0.0, 0.2, 0.5, 0.9, 1.0], (8, 1))
    assert stratified_bootstrap_iqm(scores, n_resamples=N) == pytest.approx((iqm(scores), iqm(scores)))


def test_bad_arguments():
    with pytest.raises(ValueError, match="runs x tasks"):
        stratified_bootstrap_iqm([0.1, 0.2])
    with pytest.raises(ValueError, match="confidence"):
        stratified_bootstrap_iqm([[0.1, 0.2]], confidence=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        performance_profile([[0.1, 0.2]], [0.5], n_resamples=0)
    with pytest.raises(ValueError, match="same tasks"):
        probability_of_improvement(np.ones((3, 2)), np.ones((3, 3)))


def test_probability_of_improvement_of_identical_and_uniformly_better_methods():
    x = np.random.default_rng(2).random((5, 3))
    p, low, high = probability_of_improvement(x, x.copy(), n_resamples=N)
    assert p == 0.5 and low <= 0.5 <= high
    # every run of x + 2 above every run of x on every task (run counts may differ)
    assert probability_of_improvement(x + 2, x[:3], n_resamples=N) == (1.0, 1.0, 1.0)
    assert probability_of_improvement(x[:3], x + 2, n_resamples=N) == (0.0, 0.0, 0.0)


def test_probability_of_improvement_by_hand():
    # task 0: pairs (3,2) (3,4) (5,2) (5,4) -> 3 of 4 won; task 1: (2,2) (2,2) tie twice
    # (one half each), (4,2) (4,2) won -> 3 of 4; task 2: all four won -> 1; mean 5/6
    x = np.array([[3.0, 2.0, 9.0], [5.0, 4.0, 8.0]])
    y = np.array([[2.0, 2.0, 1.0], [4.0, 2.0, 0.0]])
    p, low, high = probability_of_improvement(x, y, n_resamples=N, seed=5)
    assert p == pytest.approx(5 / 6)
    assert low <= p <= high and 0 <= low and high <= 1
    assert probability_of_improvement(x, y, n_resamples=N, seed=5) == (p, low, high)
    assert probability_of_improvement(y, x, n_resamples=N)[0] == pytest.approx(1 / 6)


def test_performance_profile_by_hand():
    scores = np.array([[0.1, 0.5], [0.9, 0.3]])
    taus = [0.0, 0.4, 0.5, 1.0]
    fraction, low, high = performance_profile(scores, taus, n_resamples=N, seed=1)
    # above 0: all four; above 0.4: 0.5 and 0.9; above 0.5 (strictly): 0.9; above 1: none
    np.testing.assert_allclose(fraction, [1.0, 0.5, 0.25, 0.0])
    assert fraction.shape == low.shape == high.shape == (4,)
    assert np.all(low <= fraction) and np.all(fraction <= high)
    assert (low[0], high[0], low[-1], high[-1]) == (1.0, 1.0, 0.0, 0.0)  # below / above every score
    again = performance_profile(scores, taus, n_resamples=N, seed=1)
    for a, b in zip(again, (fraction, low, high)):
        np.testing.assert_array_equal(a, b)
