"""The supervised tables (mtrl.supervised.tables, scripts/summarize_supervised.py) on
hand-made run directories, and the data-free metric lists they rely on."""

import csv
import json
import math
import os

import numpy as np
import pytest

from mtrl.supervised.benchmarks import celeba, qm9
from mtrl.supervised.registry import benchmark_metrics
from mtrl.supervised.tables import FIXED_COLUMNS, load_runs, summarize_runs, write_tables
from mtrl.supervised.testing import write_celeba
from mtrl.supervised.testing import write_qm9
from helpers import load_script

# The Nash-MTL single-task MAEs, in the order of the 11 default QM9 targets (written out
# here so that the lookup is checked too).
QM9_STL = {"mu_mae": 0.0671, "alpha_mae": 0.1814, "homo_mae": 60.576, "lumo_mae": 53.915, "r2_mae": 0.5027,
           "zpve_mae": 4.539, "u0_atom_mae": 58.838, "u_atom_mae": 64.244, "h_atom_mae": 63.852,
           "g_atom_mae": 66.223, "cv_mae": 0.07212}


def qm9_values(mu_ratio, other_ratio):
    """MAEs at ``mu_ratio`` times mu's baseline and ``other_ratio`` times the others'."""
    return {name: (mu_ratio if name == "mu_mae" else other_ratio) * b for name, b in QM9_STL.items()}


def make_run(path, benchmark="qm9", aggregator="ls", seed=0, values=None, mode="param", config=None,
             status="finished", results=True, epochs=3, stored_dm=None):
    """A run directory as SupervisedTrainer leaves it: config.json, one metrics.jsonl line
    per epoch done, and (when ``results``) results.json with ``values`` as test metrics
    and status.json with ``status``.  ``config`` entries "section.key" override the config."""
    cfg = {"seed": seed, "device": "cpu", "mode": mode, "aggregator_preset": benchmark,
           "data": {"root": f"/data/{benchmark}"}, "benchmark": {"name": benchmark},
           "aggregator": {"name": aggregator},
           "train": {"epochs": epochs, "batch_size": 8, "lr": 1e-3, "log_every": 50, "diagnostics_every": 200}}
    for key, value in (config or {}).items():
        section, _, name = key.rpartition(".")
        (cfg[section] if section else cfg)[name] = value
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    done = epochs if results else 2
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": e, "epoch": e}) + "\n" for e in range(1, done + 1)))
    if results:
        (path / "results.json").write_text(json.dumps({
            "benchmark": benchmark, "aggregator": aggregator, "mode": mode, "seed": seed, "selected_epoch": 2,
            "selection_split": "val", "metrics": values,
            "delta_m": stored_dm if stored_dm is not None else float(np.mean([v / b - 1 for v, b in zip(
                values.values(), QM9_STL.values())]) * 100) if benchmark == "qm9" else 0.0}))
    if status is not None:
        (path / "status.json").write_text(json.dumps({"state": status, "step": epochs} if status == "finished"
                                                     else {"state": status, "error": "boom"}))
    return path


def hand_sweep(root):
    """Three QM9 methods (all 11 metrics lower-is-better):

    * ls, seeds 0 and 1: mu at 2.5x / 0.5x its baseline, the rest at 1.5x -> seed means 1.5x
      everywhere: dm% = 50, Var[dm_i] = 0; per-seed dm% 650/11 and 450/11 (s.e.m. 100/11),
      per-seed Var[dm_i] = 100^2 * 10/121 each (one task 100 away from ten others);
    * pivrg, seeds 0-2: mu at 0.7x, 0.8x, 0.9x, the rest at 0.9x -> dm_i = -20 (mu), -10:
      dm% = -120/11, Var[dm_i] = 10^2 * 10/121, per-seed dm% s.e.m. = (10/11)/sqrt(3);
    * fairgrad, seed 0: mu at 0.5x, the rest at 1.0x -> dm% = -50/11.

    MR: on mu fairgrad 1, pivrg 2, ls 3; on the ten others pivrg 1, fairgrad 2, ls 3:
    ls 3, pivrg (2 + 10)/11, fairgrad (1 + 20)/11."""
    make_run(root / "ls" / "seed0", aggregator="ls", seed=0, values=qm9_values(2.5, 1.5))
    make_run(root / "ls" / "seed1", aggregator="ls", seed=1, values=qm9_values(0.5, 1.5),
             config={"device": "cuda", "data.root": "/elsewhere", "benchmark.root": "/elsewhere"})
    for seed, mu in enumerate((0.7, 0.8, 0.9)):
        make_run(root / "pivrg" / f"seed{seed}", aggregator="pivrg", seed=seed, values=qm9_values(mu, 0.9))
    make_run(root / "fairgrad" / "seed0", aggregator="fairgrad", seed=0, values=qm9_values(0.5, 1.0))


def rows_by_method(tables):
    (table,) = tables
    return {r.label: r for r in table.rows}


# ------------------------------------------------------------------------- metric lists

def test_metric_lists_need_no_data_and_match_the_benchmarks(tmp_path):
    listed = qm9.QM9Benchmark.metric_list()
    assert [m.name for m in listed] == list(QM9_STL)
    assert [m.baseline for m in listed] == list(QM9_STL.values())
    assert not any(m.higher_is_better for m in listed)
    write_qm9(tmp_path / "qm9", 40, seed=0)
    for targets in (qm9.DEFAULT_TARGETS, (2, 0)):
        built = qm9.QM9Benchmark(tmp_path / "qm9", seed=0, targets=targets, split_sizes=(8, 8))
        assert qm9.QM9Benchmark.metric_list(targets) == built.metrics
    f1 = celeba.CelebABenchmark.metric_list()
    assert len(f1) == 40 and all(m.higher_is_better for m in f1)
    assert (f1[0].name, f1[0].task, f1[0].baseline) == ("5_o_Clock_Shadow_f1", "5_o_Clock_Shadow", 0.6736886)
    assert celeba.CelebABenchmark.metric_list() == celeba.CelebABenchmark(write_celeba(tmp_path / "celeba").root).metrics


def test_registry_lookup_keeps_only_the_options_the_metrics_depend_on():
    cfg = {"name": "qm9", "root": "/nowhere", "targets": [2, 0], "hidden": 32, "split_sizes": [5, 5]}
    assert [m.name for m in benchmark_metrics(cfg)] == ["homo_mae", "mu_mae"]
    assert benchmark_metrics({"name": "celeba", "root": "/nowhere", "image_size": 32}) == celeba.CelebABenchmark.metric_list()
    with pytest.raises(ValueError, match="unknown benchmark 'nyu'"):
        benchmark_metrics({"name": "nyu"})
    with pytest.raises(ValueError, match="chosen from"):
        qm9.QM9Benchmark.metric_list([4])  # gap has no STL baseline


# ------------------------------------------------------------------------------- tables

def test_seed_means_delta_m_and_var_by_hand(tmp_path):
    hand_sweep(tmp_path)
    runs, problems = load_runs([tmp_path])
    assert problems == []
    tables, problems = summarize_runs(runs)
    assert problems == []
    rows = rows_by_method(tables)
    assert set(rows) == {"ls", "pivrg", "fairgrad"}  # device and data paths do not split seeds
    ls, pivrg, fairgrad = rows["ls"], rows["pivrg"], rows["fairgrad"]
    assert (ls.n, ls.seeds, pivrg.seeds, fairgrad.n) == (2, [0, 1], [0, 1, 2], 1)
    np.testing.assert_allclose(ls.mean, 1.5 * np.array(list(QM9_STL.values())))
    np.testing.assert_allclose(pivrg.mean[0], 0.8 * 0.0671)
    # s.e.m. of mu over seeds: std(ddof=1) / sqrt(n) of 2.5b and 0.5b -> b
    np.testing.assert_allclose(ls.sem[0], 0.0671)
    np.testing.assert_allclose(ls.sem[1:], 0.0, atol=1e-12)

    assert ls.delta_m == pytest.approx(50.0)
    assert ls.delta_m_seeds == pytest.approx([650 / 11, 450 / 11])
    assert ls.delta_m_sem == pytest.approx(100 / 11)
    assert ls.delta_m_var == pytest.approx(0.0, abs=1e-9)
    assert ls.delta_m_var_seeds == pytest.approx([1e4 * 10 / 121] * 2)
    assert pivrg.delta_m == pytest.approx(-120 / 11)
    assert pivrg.delta_m == pytest.approx(pivrg.delta_m_seeds.mean())  # dm% is linear in the metrics
    assert pivrg.delta_m_sem == pytest.approx(10 / 11 / math.sqrt(3))
    assert pivrg.delta_m_var == pytest.approx(100 * 10 / 121)
    assert pivrg.delta_m_var_metrics == pytest.approx(pivrg.delta_m_var)  # one metric per task
    assert pivrg.task_weighted_delta_m == pytest.approx(pivrg.delta_m)
    assert fairgrad.delta_m == pytest.approx(-50 / 11) and math.isnan(fairgrad.delta_m_sem)

    assert ls.mr == pytest.approx(3.0)
    assert pivrg.mr == pytest.approx(12 / 11)
    assert fairgrad.mr == pytest.approx(21 / 11)


def test_higher_is_better_benchmark_and_one_table_per_benchmark(tmp_path):
    hand_sweep(tmp_path / "qm9")
    f1 = {m.name: 1.1 * m.baseline for m in celeba.CelebABenchmark.metric_list()}
    f1["Young_f1"] = 0.7 * 0.91907  # the last attribute 30% below its baseline
    make_run(tmp_path / "celeba" / "seed0", benchmark="celeba", aggregator="famo", values=f1)
    tables, _ = summarize_runs(load_runs([tmp_path])[0])
    assert [t.stem for t in tables] == ["celeba", "qm9"]
    (row,) = tables[0].rows
    assert row.delta_m == pytest.approx((39 * -10 + 30) / 40)  # higher F1 is a negative drop
    assert row.mr == 1.0


def test_rep_mode_and_differing_hyperparameters_are_separate_rows(tmp_path):
    values = qm9_values(1.0, 1.0)
    make_run(tmp_path / "a", aggregator="pivrg", values=values, config={"aggregator.bound": 2.0})
    make_run(tmp_path / "b", aggregator="pivrg", values=values, config={"aggregator.bound": 3.0})
    make_run(tmp_path / "c", aggregator="pivrg", values=values, mode="rep", config={"aggregator.bound": 2.0})
    rows = rows_by_method(summarize_runs(load_runs([tmp_path])[0])[0])
    assert sorted(rows) == ["pivrg [aggregator.bound=2.0]", "pivrg [aggregator.bound=3.0]", "pivrg-UB"]
    assert [r.mr for r in rows.values()] == [2.0, 2.0, 2.0]  # three-way ties share the mean rank


# ----------------------------------------------------------------------------- problems

def test_problems_for_runs_that_cannot_be_tabulated(tmp_path):
    values = qm9_values(1.0, 1.0)
    make_run(tmp_path / "good", values=values)
    make_run(tmp_path / "unfinished", seed=1, results=False, status=None, epochs=300)
    make_run(tmp_path / "failed", seed=2, results=False, status="failed")
    make_run(tmp_path / "lost", seed=3, results=False, status="finished")
    make_run(tmp_path / "stale", seed=4, values=values, status=None)
    make_run(tmp_path / "short", seed=5, values={k: v for k, v in values.items() if k != "cv_mae"})
    make_run(tmp_path / "old_dm", seed=6, values=values, stored_dm=12.5)
    runs, problems = load_runs([tmp_path])
    assert sorted(r.path.name for r in runs) == ["good", "old_dm"]
    messages = {os.path.basename(p.path): p.message for p in problems}
    assert messages["unfinished"] == "unfinished (2 of 300 epochs, no results.json yet); excluded"
    assert messages["failed"] == "failed: boom"
    assert messages["lost"].startswith("status says finished but results.json is missing")
    assert "does not say finished" in messages["stale"]
    assert messages["short"] == "results.json lacks the benchmark's metric(s) cv_mae; excluded"
    assert messages["old_dm"].startswith("results.json's dm% 12.5000 differs from 0.0000")
    assert len(problems) == 6


def test_duplicate_seed_in_one_row_is_reported(tmp_path):
    make_run(tmp_path / "a", seed=0, values=qm9_values(1.0, 1.0))
    make_run(tmp_path / "b", seed=0, values=qm9_values(2.0, 2.0))
    tables, problems = summarize_runs(load_runs([tmp_path])[0])
    assert rows_by_method(tables)["ls"].delta_m == pytest.approx(50.0)
    (problem,) = problems
    assert problem.path == "qm9/ls" and problem.message.startswith("seed 0 appears in 2 runs")


# ------------------------------------------------------------------------------ outputs

def test_csv_columns_and_values(tmp_path):
    hand_sweep(tmp_path / "runs")
    tables, problems = summarize_runs(load_runs([tmp_path / "runs"])[0])
    paths = write_tables(tables, problems, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["qm9_table.csv", "qm9_table.md"]
    with open(tmp_path / "out" / "qm9_table.csv") as f:
        header, *rows = list(csv.reader(f))
    assert header == list(FIXED_COLUMNS) + [c for name in QM9_STL for c in (name, f"{name}_sem")]
    by_method = {row[header.index("method")]: dict(zip(header, row)) for row in rows}
    assert list(by_method) == ["fairgrad", "ls", "pivrg"]
    ls = by_method["ls"]
    assert (ls["seeds"], ls["seed_list"], ls["mode"], ls["variant"]) == ("2", "0 1", "param", "")
    assert float(ls["delta_m"]) == pytest.approx(50.0) and float(ls["delta_m_sem"]) == pytest.approx(100 / 11)
    assert float(ls["delta_m_var_seed_mean"]) == pytest.approx(1e4 * 10 / 121)
    assert float(ls["mr"]) == pytest.approx(3.0)
    assert float(ls["mu_mae"]) == pytest.approx(1.5 * 0.0671) and float(ls["mu_mae_sem"]) == pytest.approx(0.0671)
    assert by_method["fairgrad"]["delta_m_sem"] == "nan"


def test_markdown_has_directions_stl_row_and_problems(tmp_path):
    hand_sweep(tmp_path / "runs")
    make_run(tmp_path / "runs" / "killed", seed=9, results=False, status=None)
    runs, problems = load_runs([tmp_path / "runs"])
    tables, _ = summarize_runs(runs)
    write_tables(tables, problems, tmp_path / "out")
    text = (tmp_path / "out" / "qm9_table.md").read_text()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert "| mu_mae ↓ |" in header and header.endswith("| MR ↓ | dm% ↓ | Var[dm_i] ↓ |")
    assert next(line for line in lines if line.startswith("| STL")).startswith("| STL | - | 0.0671 | 0.1814 |")
    ls = next(line for line in lines if line.startswith("| ls "))
    assert ls.endswith("| 3.00 | +50.00 ± 9.09 | 0.00 |")
    assert "unfinished (2 of 3 epochs" in text.split("## Problems")[1]


def _script():
    return load_script("summarize_supervised")


def test_cli_writes_tables_and_exit_codes(tmp_path, capsys):
    hand_sweep(tmp_path / "runs")
    out = tmp_path / "out"
    assert _script().main([str(tmp_path / "runs" / "*"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| pivrg | 3 |" in printed and "-10.91 ± 0.52" in printed
    assert sorted(p.name for p in out.iterdir()) == ["qm9_table.csv", "qm9_table.md"]

    make_run(tmp_path / "only_unfinished" / "seed0", results=False, status=None)
    assert _script().main([str(tmp_path / "only_unfinished"), "--out", str(tmp_path / "none")]) == 1
    captured = capsys.readouterr()
    assert "unfinished (2 of 3 epochs" in captured.out
    assert captured.err.startswith("error: no finished supervised run") and captured.err.count("\n") == 1
    assert not (tmp_path / "none").exists()
    assert _script().main([str(tmp_path / "empty*")]) == 1
