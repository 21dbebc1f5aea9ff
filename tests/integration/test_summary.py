"""Summaries over seeds (mtrl.summary, scripts/summarize.py) on hand-made run directories."""

import copy
import csv
import json
import math
import os

import numpy as np
import pytest
from scipy import optimize, stats

from mtrl.rendering import write_outputs
from mtrl.statistics import iqm, stratified_bootstrap_iqm
from mtrl.summary import improvements, load_runs, summarize
from helpers import load_script

TASKS = ["reach", "push"]
BASE_CONFIG = {
    "seed": 0, "device": "cpu",
    "env": {"name": "mt10", "protocol": "paper", "reward_version": "v2"},
    "agent": {"kind": "mh_sac", "hidden": 256},
    "aggregator": {"name": "pivrg", "lr": 0.001},
    "aggregator_preset": None, "aggregate": ["critic", "actor", "alpha"],
    "train": {"steps": 300, "seed_steps": 10, "batch_size": 64, "eval_every": 100, "eval_episodes": 1,
              "checkpoint_every": 100, "diagnostics_every": 50, "log_every": 10, "max_nonfinite": 100},
    "performance": {"reference_success": 1.0, "source": "eval", "window": 50},
}


def _record(step, success):
    return {"step": step, "tasks": TASKS, "success": success, "mean_success": float(np.mean(success)),
            "returns": [0.0] * len(success), "wall_time": 1.0}


def make_run(path, successes, seed=0, steps=(100, 200, 300), config=None, tail=""):
    """A run directory: config.json (BASE_CONFIG with ``config`` merged in) and one
    metrics.jsonl line per evaluation, plus ``tail`` appended verbatim."""
    cfg = copy.deepcopy(BASE_CONFIG)
    cfg["seed"] = seed
    for key, value in (config or {}).items():
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    lines = "".join(json.dumps(_record(s, x)) + "\n" for s, x in zip(steps, successes))
    (path / "metrics.jsonl").write_text(lines + tail)
    return path


# Best mean success per seed: 0.2, 0.4, 0.9; final mean success: 0.1, 0.4, 0.7.
HAND_RUNS = {
    0: [[0.2, 0.2], [0.0, 0.2], [0.0, 0.2]],
    1: [[0.0, 0.0], [0.4, 0.4], [0.6, 0.2]],
    2: [[0.5, 0.5], [1.0, 0.8], [0.8, 0.6]],
}


def hand_sweep(root):
    for seed, succ in HAND_RUNS.items():
        make_run(root / f"seed{seed}", succ, seed=seed)
    return root


def test_hand_computed_statistics(tmp_path):
    runs, problems = load_runs([hand_sweep(tmp_path)])
    assert problems == []
    (g,) = summarize(runs)
    assert (g.env, g.protocol, g.agent, g.aggregator, g.steps, g.n, g.seeds) == \
        ("mt10", "paper", "mh_sac", "pivrg", 300, 3, [0, 1, 2])
    # best: deviations from 0.5 are -0.3, -0.1, 0.4 -> sample variance 0.26 / 2
    assert g.best_mean == pytest.approx(0.5)
    assert g.best_sem == pytest.approx(math.sqrt(0.13 / 3))
    # final: 0.1, 0.4, 0.7 -> sample variance 0.18 / 2
    assert g.final_mean == pytest.approx(0.4)
    assert g.final_sem == pytest.approx(math.sqrt(0.09 / 3))
    # final per-task values sorted: 0, .2, .2, .6, .6, .8 -> middle four average to 0.4
    assert g.iqm == pytest.approx(0.4)
    assert g.iqm_low <= g.iqm <= g.iqm_high and 0 <= g.iqm_low and g.iqm_high <= 1
    np.testing.assert_allclose(g.task_mean, [1.4 / 3, 1.0 / 3])
    np.testing.assert_allclose(g.task_sem, [np.std([0, .6, .8], ddof=1) / math.sqrt(3),
                                            np.std([.2, .2, .6], ddof=1) / math.sqrt(3)])
    np.testing.assert_array_equal(g.curve_steps, [100, 200, 300])
    np.testing.assert_allclose(g.curve_mean, [0.7 / 3, 1.4 / 3, 0.4])
    t = stats.t.ppf(0.975, 2)
    assert g.curve_halfwidth[-1] == pytest.approx(t * math.sqrt(0.09 / 3))
    assert "ranges 0.20-0.90" in g.flag and "never succeeded" not in g.flag


def test_iqm_and_one_seed():
    assert iqm([0, 1, 2, 3, 4, 5, 6, 100]) == pytest.approx(3.5)  # mean of 2, 3, 4, 5
    lo, hi = stratified_bootstrap_iqm([[0.1, 0.5, 0.9, 0.3]])
    assert lo == hi == pytest.approx(0.4)
    with pytest.raises(ValueError, match="runs x tasks"):
        stratified_bootstrap_iqm([0.1, 0.2])


def test_single_seed_sem_is_nan_and_printed_na(tmp_path):
    make_run(tmp_path / "r", HAND_RUNS[0])
    (g,) = summarize(load_runs([tmp_path])[0], n_resamples=200)
    assert g.n == 1 and math.isnan(g.best_sem) and math.isnan(g.final_sem)
    assert g.iqm_low == g.iqm_high == g.iqm
    paths = write_outputs([g], [], tmp_path / "out")
    assert "0.200 ± n/a" in paths["summary.md"].read_text()


def test_bootstrap_is_stratified_by_task():
    """Each task column constant over runs: every within-task resample is the same
    multiset, so the interval collapses; resampling cells across tasks would not."""
    scores = np.tile([0.0, 0.2, 0.5, 0.9, 1.0], (8, 1))
    lo, hi = stratified_bootstrap_iqm(scores, n_resamples=500)
    assert lo == pytest.approx(iqm(scores)) and hi == pytest.approx(iqm(scores))


BETAS = [(2, 5), (5, 2), (1, 1), (0.5, 0.5), (8, 3)]


def _population_iqm():
    """IQM of the equal-weight mixture of the task distributions, exactly: 2 * integral of
    x f(x) between the mixture's quartiles, with int_0^q x Beta(a,b)(x) dx = a/(a+b) *
    BetaCDF(q; a+1, b)."""
    cdf = lambda x: np.mean([stats.beta(a, b).cdf(x) for a, b in BETAS])  # noqa: E731
    q1, q3 = (optimize.brentq(lambda x: cdf(x) - p, 0, 1, xtol=1e-14) for p in (0.25, 0.75))
    part = [a / (a + b) * (stats.beta(a + 1, b).cdf(q3) - stats.beta(a + 1, b).cdf(q1)) for a, b in BETAS]
    return 2 * float(np.mean(part))


def test_bootstrap_interval_covers_the_true_iqm_at_about_its_nominal_rate():
    truth = _population_iqm()
    rng = np.random.default_rng(0)
    assert iqm(np.concatenate([rng.beta(a, b, 500_000) for a, b in BETAS])) == pytest.approx(truth, abs=2e-3)
    # 150 trials of 300 resamples (was 400 of 1000 with scipy.stats.bootstrap): rliable's
    # stratified bootstrap (arch underneath) resamples in a Python loop, ~0.1 ms a resample,
    # so the old sizes took 30 s instead of 1 s.  Seeded, so the rate is fixed: 0.93 here
    # (binomial s.d. about 0.02 at 150 trials), inside the same bounds as before.
    trials, hits, widths = 150, 0, []
    for i in range(trials):
        scores = np.stack([rng.beta(a, b, 10) for a, b in BETAS], axis=1)  # 10 runs x 5 tasks
        lo, hi = stratified_bootstrap_iqm(scores, n_resamples=300, seed=i)
        hits += lo <= truth <= hi
        widths.append(hi - lo)
    assert 0.88 <= hits / trials <= 0.99
    assert 0 < np.mean(widths) < 0.4


def test_groups_split_by_protocol_and_hyperparameter_pooled_over_seeds(tmp_path):
    succ = HAND_RUNS[1]
    for seed in (0, 1):
        make_run(tmp_path / "paper" / f"seed{seed}", succ, seed=seed)
        make_run(tmp_path / "mw3" / f"seed{seed}", succ, seed=seed, config={"env.protocol": "metaworld3"})
    # bookkeeping keys and the device do not split a group
    make_run(tmp_path / "paper" / "seed2", succ, seed=2,
             config={"device": "cuda", "train.checkpoint_every": 7, "train.log_every": 3})
    make_run(tmp_path / "lr" / "seed0", succ, seed=0, config={"aggregator.lr": 0.01})
    groups = summarize(load_runs([tmp_path])[0], n_resamples=200)
    got = {(g.protocol, g.variant): g.seeds for g in groups}
    assert got == {("metaworld3", ""): [0, 1], ("paper", "aggregator.lr=0.001"): [0, 1, 2],
                   ("paper", "aggregator.lr=0.01"): [0]}
    paths = write_outputs(groups, [], tmp_path / "out")
    with open(paths["summary.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert {"env", "protocol", "agent", "aggregator", "steps", "seeds", "best_mean", "best_sem", "final_mean",
            "final_sem", "iqm", "iqm_low", "iqm_high", "variant", "flag"} <= set(rows[0])
    assert sorted((r["protocol"], r["seeds"]) for r in rows) == [("metaworld3", "2"), ("paper", "1"), ("paper", "3")]
    with open(paths["per_task.csv"]) as f:
        per_task = list(csv.DictReader(f))
    assert len(per_task) == 3 * len(TASKS) and {r["task"] for r in per_task} == set(TASKS)
    png = paths["learning_curves.png"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    md = paths["summary.md"].read_text()
    assert "| protocol |" in md and "metaworld3" in md and "push" in md


def _three_methods(root):
    """ls and nash_mtl with equal final success, pivrg above both on every task and seed,
    and a metaworld3 group (another experiment, compared with nothing)."""
    for seed in (0, 1):
        low = [[0, 0], [0.1, 0.1], [0.2, 0.1 * seed]]
        make_run(root / "ls" / f"seed{seed}", low, seed=seed, config={"aggregator.name": "ls"})
        make_run(root / "nash" / f"seed{seed}", low, seed=seed, config={"aggregator.name": "nash_mtl"})
        make_run(root / "pivrg" / f"seed{seed}", [[0, 0], [0.5, 0.5], [0.8, 0.6 + 0.1 * seed]], seed=seed)
        make_run(root / "mw3" / f"seed{seed}", low, seed=seed, config={"env.protocol": "metaworld3"})
    return summarize(load_runs([root])[0], n_resamples=200)


def test_probability_of_improvement_over_the_baseline_of_each_experiment(tmp_path):
    groups = _three_methods(tmp_path)
    got = {(i.group.aggregator, i.baseline.aggregator): (i.probability, i.low, i.high)
           for i in improvements(groups, n_resamples=200)}
    # the default baseline is ls; the metaworld3 group has nothing to be compared with
    assert set(got) == {("nash_mtl", "ls"), ("pivrg", "ls")}
    assert got["nash_mtl", "ls"][0] == 0.5               # identical final success
    assert got["pivrg", "ls"] == (1.0, 1.0, 1.0)          # every pivrg run above every ls run
    got = {i.group.aggregator: i.probability for i in improvements(groups, baseline="pivrg", n_resamples=200)}
    assert got == {"ls": 0.0, "nash_mtl": 0.0}
    # no group named like the baseline: the experiment's first group (sorted by label) is
    first = {i.baseline.aggregator for i in improvements(groups, baseline="absent", n_resamples=200)}
    assert first == {"ls"}


def test_performance_profiles_and_their_files(tmp_path):
    groups = _three_methods(tmp_path)
    ls = next(g for g in groups if g.aggregator == "ls" and g.protocol == "paper")
    # final success of ls: 0.2, 0.0 (seed 0) and 0.2, 0.1 (seed 1)
    at = dict(zip(np.round(ls.profile_taus, 2), ls.profile))
    assert (at[0.0], at[0.05], at[0.1], at[0.2]) == (0.75, 0.75, 0.5, 0.0)
    assert np.all(ls.profile_low <= ls.profile) and np.all(ls.profile <= ls.profile_high)
    paths = write_outputs(groups, [], tmp_path / "out", improvements(groups, n_resamples=200))
    with open(paths["performance_profile.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(groups) * len(ls.profile_taus)
    assert {"aggregator", "protocol", "tau", "fraction", "low", "high"} <= set(rows[0])
    with open(paths["improvement.csv"]) as f:
        rows = {r["aggregator"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"nash_mtl", "pivrg"} and rows["pivrg"]["baseline_aggregator"] == "ls"
    assert float(rows["pivrg"]["probability"]) == 1.0
    png = paths["performance_profile.png"].read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    md = paths["summary.md"].read_text()
    assert "## Probability of improvement over the baseline" in md and "1.000 [1.000, 1.000]" in md


def test_malformed_line_names_file_and_line(tmp_path):
    run = make_run(tmp_path / "bad", HAND_RUNS[0])
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    runs, problems = load_runs([run])
    assert runs == []
    (p,) = problems
    assert f"{run / 'metrics.jsonl'}:2: invalid JSON" in str(p)


def test_missing_record_key_names_file_and_line(tmp_path):
    run = make_run(tmp_path / "bad", HAND_RUNS[0], tail='{"step": 400}\n')
    _, (p,) = load_runs([run])
    assert f"{run / 'metrics.jsonl'}:4: missing key 'tasks'" in str(p)


def test_truncated_unfinished_and_missing_runs_are_reported(tmp_path):
    make_run(tmp_path / "done", HAND_RUNS[0])
    torn = make_run(tmp_path / "torn", HAND_RUNS[1][:2], seed=1, steps=(100, 200), tail='{"step": 300, "tas')
    short = make_run(tmp_path / "short", HAND_RUNS[2][:2], seed=2, steps=(100, 200))
    (tmp_path / "noconfig").mkdir()
    (tmp_path / "noconfig" / "metrics.jsonl").write_text(json.dumps(_record(100, [0, 0])) + "\n")
    nometrics = make_run(tmp_path / "nometrics", [], seed=3)
    (nometrics / "metrics.jsonl").unlink()
    empty = make_run(tmp_path / "empty", [], seed=4)
    runs, problems = load_runs([tmp_path, tmp_path / "absent"])
    text = {os.path.basename(p.path): p.message for p in problems if not p.message.startswith("truncated")}
    assert "truncated" in next(p.message for p in problems if p.path == str(torn))
    assert text["torn"] == "unfinished (step 200 of 300)"
    assert text["short"] == "unfinished (step 200 of 300)"
    assert "no config.json" in text["noconfig"]
    assert text["nometrics"].startswith("no evaluation yet")
    assert text["empty"].startswith("no evaluation yet")
    assert text["absent"] == "no such directory"
    assert sorted(r.path.name for r in runs) == ["done", "short", "torn"]
    assert len(next(r for r in runs if r.path == torn).evaluations) == 2

    (g,) = summarize(runs, n_resamples=200)
    assert g.seeds == [0] and g.unfinished == 0
    (g,) = summarize(runs, include_unfinished=True, n_resamples=200)
    assert g.seeds == [0, 1, 2] and g.unfinished == 2 and "2 unfinished" in g.flag
    assert g.final_mean == pytest.approx(np.mean([0.1, 0.4, 0.9]))  # the unfinished runs' latest evaluations
    np.testing.assert_array_equal(g.curve_steps, [100, 200])  # only the steps every run reached


def test_seed_disagreement_flag(tmp_path):
    for seed, best in enumerate([0.0, 0.3, 0.4]):
        make_run(tmp_path / "a" / f"seed{seed}", [[0, 0], [best, best], [best, best]], seed=seed)
    for seed, best in enumerate([0.0, 0.0]):
        make_run(tmp_path / "zero" / f"seed{seed}", [[0, 0], [best, best], [best, best]], seed=seed,
                 config={"aggregator.name": "ls"})
    for seed, best in enumerate([0.2, 0.3, 0.6]):
        make_run(tmp_path / "ok" / f"seed{seed}", [[0, 0], [best, best], [best, best]], seed=seed,
                 config={"aggregator.name": "nash_mtl"})
    flags = {g.aggregator: g.flag for g in summarize(load_runs([tmp_path])[0], n_resamples=200)}
    assert flags == {"pivrg": "1/3 seeds never succeeded", "ls": "", "nash_mtl": ""}


def test_hydra_config_and_glob_patterns(tmp_path):
    from omegaconf import OmegaConf

    hand_sweep(tmp_path / "sweep")
    hyd = make_run(tmp_path / "hydra" / "seed7", HAND_RUNS[0], seed=7)
    cfg = json.loads((hyd / "config.json").read_text())
    (hyd / "config.json").unlink()
    (hyd / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(cfg), hyd / ".hydra" / "config.yaml")
    runs, problems = load_runs([str(tmp_path / "*" / "seed[07]"), str(tmp_path / "nothing*")])
    assert sorted(r.config["seed"] for r in runs) == [0, 7]
    assert [p.message for p in problems] == ["pattern matched nothing"]
    runs, _ = load_runs([hyd, str(hyd.parent / "." / hyd.name), hyd / "metrics.jsonl"])
    assert len(runs) == 1  # one run named three ways is loaded once


def _script():
    return load_script("summarize")


def test_cli_writes_outputs_and_reports_problems(tmp_path, capsys):
    hand_sweep(tmp_path / "runs")
    make_run(tmp_path / "runs" / "seed9", HAND_RUNS[0][:1], seed=9, steps=(100,))
    out = tmp_path / "out"
    assert _script().main([str(tmp_path / "runs"), "--out", str(out), "--resamples", "200"]) == 0
    printed = capsys.readouterr().out
    assert "| protocol |" in printed and "0.500 ± 0.208" in printed
    assert "unfinished (step 100 of 300)" in printed
    assert sorted(p.name for p in out.iterdir()) == ["improvement.csv", "learning_curves.png", "per_task.csv",
                                                     "performance_profile.csv", "performance_profile.png",
                                                     "summary.csv", "summary.md"]


def test_cli_baseline_flag(tmp_path, capsys):
    _three_methods(tmp_path / "runs")
    assert _script().main([str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--resamples", "50",
                           "--baseline", "nash_mtl"]) == 0
    printed = capsys.readouterr().out
    assert "probability of improvement over the baseline" in printed
    with open(tmp_path / "out" / "improvement.csv") as f:
        rows = {r["aggregator"]: r["baseline_aggregator"] for r in csv.DictReader(f)}
    assert rows == {"ls": "nash_mtl", "pivrg": "nash_mtl"}


def test_cli_exits_1_on_empty_directory(tmp_path, capsys):
    assert _script().main([str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no finished runs") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
