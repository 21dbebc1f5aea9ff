import math

import numpy as np
import pytest

from mtrl.metrics import (delta_m, delta_m_per_task, delta_m_variance, mean_rank,
                          per_metric_delta, task_weighted_delta_m)

# NYU-v2-like layout: segmentation 2 metrics, depth 2, surface normal 5.
NYU_TASKS = ["seg", "seg", "depth", "depth", "normal", "normal", "normal", "normal", "normal"]
NYU_HIGHER = [True, True, False, False, False, False, True, True, True]


def test_two_metrics_by_hand():
    # accuracy (higher better): 90 vs 100 -> -(90 - 100) / 100 * 100 = +10
    # error (lower better):    0.5 vs 0.4 -> (0.5 - 0.4) / 0.4 * 100 = +25
    # dm = (10 + 25) / 2 = 17.5
    assert delta_m([90.0, 0.5], [100.0, 0.4], [True, False]) == pytest.approx(17.5)
    np.testing.assert_allclose(per_metric_delta([90.0, 0.5], [100.0, 0.4], [True, False]),
                               [10.0, 25.0])


def test_sign_conventions():
    baseline, higher = [40.0, 0.6, 25.0], [True, False, False]
    assert delta_m(baseline, baseline, higher) == 0.0
    better = [44.0, 0.5, 20.0]            # higher where higher is better, lower elsewhere
    worse = [36.0, 0.7, 30.0]
    assert np.all(per_metric_delta(better, baseline, higher) < 0)
    assert delta_m(better, baseline, higher) < 0
    assert delta_m(worse, baseline, higher) > 0
    # -(44 - 40) / 40, (0.5 - 0.6) / 0.6, (20 - 25) / 25, in percent, averaged
    assert delta_m(better, baseline, higher) == pytest.approx((-10 - 100 / 6 - 20) / 3)


def nyu_crafted():
    """Per-metric drops -10, -10 (seg), -10, -10 (depth), +20 x 5 (normal)."""
    baseline = [50.0, 50.0, 2.0, 2.0, 10.0, 10.0, 50.0, 50.0, 50.0]
    method = [55.0, 55.0, 1.8, 1.8, 12.0, 12.0, 40.0, 40.0, 40.0]
    return method, baseline


def test_per_task_grouping_nyu_like():
    method, baseline = nyu_crafted()
    np.testing.assert_allclose(per_metric_delta(method, baseline, NYU_HIGHER),
                               [-10, -10, -10, -10, 20, 20, 20, 20, 20])
    per_task = delta_m_per_task(method, baseline, NYU_HIGHER, NYU_TASKS)
    assert list(per_task) == ["seg", "depth", "normal"]
    assert per_task == pytest.approx({"seg": -10.0, "depth": -10.0, "normal": 20.0})
    # per-metric: (4 * -10 + 5 * 20) / 9 = 60 / 9; task-weighted: (-10 - 10 + 20) / 3 = 0
    assert delta_m(method, baseline, NYU_HIGHER) == pytest.approx(60 / 9)
    assert task_weighted_delta_m(method, baseline, NYU_HIGHER, NYU_TASKS) == pytest.approx(0.0)
    # Var of (-10, -10, 20): mean 0, (100 + 100 + 400) / 3
    assert delta_m_variance(per_task) == pytest.approx(200.0)


def test_per_metric_dm_is_the_metric_count_weighted_mean_of_task_dms():
    rng = np.random.default_rng(0)
    baseline = rng.uniform(0.5, 2.0, 9)
    method = baseline * rng.uniform(0.7, 1.3, 9)
    per_task = delta_m_per_task(method, baseline, NYU_HIGHER, NYU_TASKS)
    counts = {task: NYU_TASKS.count(task) for task in per_task}
    weighted = sum(counts[t] * per_task[t] for t in per_task) / len(NYU_TASKS)
    assert delta_m(method, baseline, NYU_HIGHER) == pytest.approx(weighted)
    assert task_weighted_delta_m(method, baseline, NYU_HIGHER, NYU_TASKS) == \
        pytest.approx(np.mean(list(per_task.values())))


def test_one_metric_per_task_makes_both_dms_equal():
    method, baseline, higher = [1.0, 3.0, 0.2], [2.0, 2.0, 0.25], [False, False, True]
    tasks = ["mu", "alpha", "homo"]
    per_task = delta_m_per_task(method, baseline, higher, tasks)
    np.testing.assert_allclose(list(per_task.values()), per_metric_delta(method, baseline, higher))
    assert task_weighted_delta_m(method, baseline, higher, tasks) == \
        pytest.approx(delta_m(method, baseline, higher))


def test_task_order_is_first_appearance():
    per_task = delta_m_per_task([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], [False] * 3, ["b", "a", "b"])
    assert list(per_task) == ["b", "a"]
    assert per_task == pytest.approx({"b": 100.0, "a": 100.0})   # (0 + 200) / 2 and 100


def test_pivrg_table5_linear_scalarisation_row():
    # NYU-v2 STL baseline (shared docs) and the LS row of PIVRG table 5: dm 5.59, Var 259.1
    # (the printed Var is the population variance of the 9 per-metric drops).
    baseline = [38.30, 63.76, 0.6754, 0.2780, 25.01, 19.21, 30.14, 57.20, 69.15]
    ls = [39.29, 65.33, 0.5493, 0.2263, 28.15, 23.96, 22.09, 47.50, 61.08]
    assert round(delta_m(ls, baseline, NYU_HIGHER), 2) == 5.59
    drops = per_metric_delta(ls, baseline, NYU_HIGHER)
    assert round(delta_m_variance(drops), 1) == 259.1


def test_variance_of_known_values():
    assert delta_m_variance([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.25)   # ddof = 0
    assert delta_m_variance({"a": 5.0, "b": -5.0}) == pytest.approx(25.0)
    assert delta_m_variance(np.array([7.0])) == 0.0


def test_dict_inputs_equal_array_inputs():
    method, baseline = nyu_crafted()
    names = [f"m{j}" for j in range(9)]
    order = names[::-1]                   # keys of the other inputs in another order
    as_dict = dict(zip(names, method))
    base_dict = {n: baseline[names.index(n)] for n in order}
    higher_dict = {n: NYU_HIGHER[names.index(n)] for n in order}
    task_dict = {n: NYU_TASKS[names.index(n)] for n in order}
    assert delta_m(as_dict, base_dict, higher_dict) == delta_m(method, baseline, NYU_HIGHER)
    assert delta_m_per_task(as_dict, base_dict, higher_dict, task_dict) == \
        delta_m_per_task(method, baseline, NYU_HIGHER, NYU_TASKS)
    assert task_weighted_delta_m(as_dict, base_dict, higher_dict, task_dict) == \
        task_weighted_delta_m(np.array(method), np.array(baseline), np.array(NYU_HIGHER),
                              NYU_TASKS)


def test_mean_rank_with_ties_and_mixed_directions():
    # metric 1 higher-better: A and B tie for best -> 1.5, 1.5; C -> 3
    # metric 2 lower-better:  A and C tie for best -> 1.5, 1.5; B -> 3
    results = {"A": [0.9, 1.0], "B": [0.9, 2.0], "C": [0.5, 1.0]}
    assert mean_rank(results, [True, False]) == pytest.approx({"A": 1.5, "B": 2.25, "C": 2.25})
    assert list(mean_rank(results, [True, False])) == ["A", "B", "C"]


def test_mean_rank_follows_directions():
    results = {"A": [3.0, 1.0], "B": [2.0, 2.0]}
    assert mean_rank(results, [True, False]) == {"A": 1.0, "B": 2.0}
    assert mean_rank(results, [False, True]) == {"A": 2.0, "B": 1.0}
    assert mean_rank(results, [True, True]) == {"A": 1.5, "B": 1.5}
    assert mean_rank({"only": [1.0, 2.0]}, [True, False]) == {"only": 1.0}


def test_mean_rank_dict_values():
    as_lists = mean_rank({"A": [0.9, 1.0], "B": [0.9, 2.0], "C": [0.5, 1.0]}, [True, False])
    as_dicts = mean_rank({"A": {"acc": 0.9, "err": 1.0}, "B": {"err": 2.0, "acc": 0.9},
                          "C": {"acc": 0.5, "err": 1.0}}, {"err": False, "acc": True})
    assert as_dicts == as_lists


@pytest.mark.parametrize("call, message", [
    (lambda: delta_m([1.0, 2.0], [1.0], [True, False]), "different numbers of metrics"),
    (lambda: delta_m([1.0], [0.0], [True]), "non-zero"),
    (lambda: delta_m([math.nan], [1.0], [True]), "non-finite"),
    (lambda: delta_m([1.0], [math.inf], [True]), "non-finite"),
    (lambda: delta_m([], [], []), "empty"),
    (lambda: delta_m({"a": 1.0}, {"b": 1.0}, {"a": True}), "same metric names"),
    (lambda: delta_m({"a": 1.0}, [1.0], [True]), "do not mix"),
    (lambda: delta_m([[1.0, 2.0]], [[1.0, 2.0]], [[True, True]]), "flat sequence"),
    (lambda: delta_m([1.0], [1.0], [2]), "booleans"),
    (lambda: delta_m(["x"], [1.0], [True]), "numbers"),
    (lambda: delta_m_per_task([1.0, 2.0], [1.0, 1.0], [True, True], ["a"]),
     "different numbers of metrics"),
    (lambda: delta_m_variance([]), "empty"),
    (lambda: delta_m_variance([1.0, math.nan]), "non-finite"),
    (lambda: mean_rank({}, [True]), "non-empty mapping"),
    (lambda: mean_rank({"A": [1.0, 2.0], "B": [1.0]}, [True, True]),
     "different numbers of metrics"),
    (lambda: mean_rank({"A": [1.0], "B": [math.nan]}, [True]), "non-finite"),
])
def test_bad_input_raises(call, message):
    with pytest.raises(ValueError, match=message):
        call()
