"""Sweeps end to end: Hydra multirun through the local (joblib) launcher, relaunching
(resume of unfinished runs, skipping finished ones), the evaluator and the summariser;
the SLURM launcher config composes; failed runs in a sweep are recorded."""

import csv
import json
import subprocess
import sys

import pytest
from helpers import ROOT



def _script(name, *args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


def _sweep(tmp_path, *extra):
    return _script("train.py", "-m", "sweep=point_mass_smoke", "aggregator=pivrg", "hydra/launcher=local",
                   "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'sweep'}", "train.seed_steps=300",
                   "train.eval_every=300", "train.checkpoint_every=300", "train.eval_episodes=2", *extra, cwd=tmp_path)


@pytest.mark.slow
def test_two_seed_sweep_through_launcher_evaluator_and_summariser(tmp_path):
    res = _sweep(tmp_path, "train.steps=600")
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted((tmp_path / "sweep").glob("point_mass/paper/mh_sac/pivrg-*/seed*"))
    assert [r.name for r in runs] == ["seed0", "seed1"]
    for run in runs:
        assert json.loads((run / "status.json").read_text()) == {"state": "finished", "step": 600}
        steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [300, 600]

    # relaunched with more steps: both runs continue from their checkpoints
    res = _sweep(tmp_path, "train.steps=900")
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("resuming from step 600") == 2
    for run in runs:
        steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == [300, 600, 900]
    # relaunched as it is: finished runs are skipped
    res = _sweep(tmp_path, "train.steps=900")
    assert res.returncode == 0 and res.stdout.count("skipped") == 2

    ev = _script("evaluate.py", str(tmp_path / "sweep" / "point_mass/paper/mh_sac/pivrg-*/seed*"), "--episodes", "3",
                 cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr
    for run in runs:
        saved = json.loads((run / "evaluations" / f"paper-3ep-{run.name}.json").read_text())
        assert saved["checkpoint_step"] == 900 and len(saved["success"]) == 4

    out = tmp_path / "summary"
    sm = _script("summarize.py", str(tmp_path / "sweep"), "--out", str(out), cwd=tmp_path)
    assert sm.returncode == 0, sm.stderr
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 1
    row = rows[0]
    assert (row["env"], row["protocol"], row["agent"], row["aggregator"], row["steps"], row["seeds"]) == \
        ("point_mass", "paper", "mh_sac", "pivrg", "900", "2")
    best = [max(json.loads(l)["mean_success"] for l in (r / "metrics.jsonl").read_text().splitlines()) for r in runs]
    assert abs(float(row["best_mean"]) - sum(best) / 2) < 1e-9
    assert (out / "learning_curves.png").stat().st_size > 0 and (out / "summary.md").exists()


@pytest.mark.slow
def test_slurm_launcher_config_composes():
    res = _script("train.py", "sweep=mt10_table", "hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                  "--cfg", "hydra", cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert "SlurmLauncher" in res.stdout and "partition: gpu" in res.stdout
    assert "max_num_timeout: 30" in res.stdout and "aggregator: ls,pcgrad" in res.stdout


@pytest.mark.slow
def test_a_failing_run_in_a_sweep_is_recorded_and_the_others_go_on(tmp_path):
    # FAMO takes logs of the losses: with the actor aggregated it is a config error
    res = _script("train.py", "-m", "experiment=point_mass_quick", "aggregator=famo,ls", "train.steps=400",
                  "train.seed_steps=300", "train.eval_every=400", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    base = tmp_path / "sweep" / "point_mass/paper/mh_sac"
    [famo] = base.glob("famo-*/seed0")
    status = json.loads((famo / "status.json").read_text())
    assert status["state"] == "failed" and "aggregate=[critic]" in status["error"]
    [ls] = base.glob("ls-*/seed0")
    assert json.loads((ls / "status.json").read_text())["state"] == "finished"
