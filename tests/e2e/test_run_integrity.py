"""Runs and sweeps never lose, mix or mislabel a result: each numbered problem of the
run-integrity issue, on the point-mass env (and tiny CelebA for the supervised driver)."""

import csv
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtrl.supervised.testing import layout_paths, write_celeba
from mtrl import config_checks
from mtrl.configuration import ConfigError
from mtrl.run_files import DiskFullError, remove_temp_files, write_json_atomic
from mtrl.run_identity import RL_KEYS, run_name
from mtrl.run_lock import RunLock, RunLocked
from mtrl.summary import load_run
from mtrl.trainer import Trainer
from helpers import ROOT

PROGRESS = re.compile(r"\s*(train|epoch \d+/\d+): ")
#: a point-mass run of a few seconds
QUICK = ["experiment=point_mass_quick", "train.steps=400", "train.seed_steps=300", "train.eval_every=200",
         "train.checkpoint_every=200", "train.eval_episodes=2", "agent.hidden=16", "device=cpu"]


def _script(name, *args, cwd, env=None):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600, env=env)


def _train(*args, cwd):
    flags = [a for a in args if a == "-m"]
    return _script("train.py", *flags, *QUICK, *[a for a in args if a != "-m"], cwd=cwd)


def _one_line(res) -> str:
    """The one line the run printed to stderr (progress bars aside)."""
    lines = [l for l in res.stderr.splitlines() if l.strip() and not PROGRESS.match(l)]
    assert len(lines) == 1, res.stderr[-2000:]
    return lines[0]


def _records(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


# 1. a hyper-parameter sweep keeps every value ------------------------------------------------

@pytest.mark.slow
def test_a_two_value_sweep_gives_two_directories_and_two_summary_rows(tmp_path):
    res = _train("-m", "aggregator=cagrad", "aggregator.c=0.2,0.8", "seed=0", f"hydra.sweep.dir={tmp_path / 'sw'}",
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "skipped" not in res.stdout
    runs = sorted((tmp_path / "sw" / "point_mass/paper/mh_sac").glob("cagrad-*/seed0"))
    assert len(runs) == 2
    used = sorted(json.loads((r / "config.json").read_text())["aggregator"]["c"] for r in runs)
    assert used == [0.2, 0.8]
    assert {r.parent.name.split("-")[1] for r in runs} == {"c=0.2", "c=0.8"}   # readable names
    sm = _script("summarize.py", tmp_path / "sw", "--out", tmp_path / "out", cwd=tmp_path)
    assert sm.returncode == 0, sm.stderr
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert sorted(r["variant"] for r in rows) == ["aggregator.c=0.2", "aggregator.c=0.8"]


def test_the_directory_name_is_a_function_of_the_whole_config():
    base = config_checks.check({"seed": 0, "train": {"steps": 10, "log_every": 5},
                                                        "agent": {"lr": 3e-4}, "aggregator": {"name": "ls"}}, {})
    other_lr = {**base, "agent": {"lr": 1e-3}}
    longer = {**base, "train": {"steps": 99, "log_every": 1}}   # untracked: the same run, extended
    name = lambda cfg, ov=(): run_name("ls", list(ov), cfg, RL_KEYS)
    assert name(base) != name(other_lr)                      # same typed overrides, another default
    assert name(base) == name(longer) == name({**base, "seed": 7})
    assert name(other_lr, ["agent.lr=1e-3", "seed=3", "train.steps=5", "hydra.run.dir=x"]).startswith("ls-lr=1e-3-")
    assert "/" not in name(base, ["aggregate=[critic]", "+agent.x=a/b"]) and "[" not in name(base, ["aggregate=[critic]"])


# 2. presets are defaults; an explicit value wins; an unknown preset is an error --------------

def _prepared(preset, overrides, agg):
    cfg = {"seed": 0, "aggregator_preset": preset, "aggregator": agg, "train": {}, "_run": {"overrides": overrides}}
    return config_checks.prepare(cfg, {}, known_presets=("nyud",))


@pytest.mark.slow
def test_an_explicit_value_beats_the_preset_and_the_recorded_value_is_the_used_one(tmp_path):
    assert _prepared("nyuv2", [], {"name": "cagrad", "c": 0.5})["aggregator"]["c"] == 0.4
    explicit = _prepared("nyuv2", ["aggregator.c=0.2"], {"name": "cagrad", "c": 0.2})
    assert explicit["aggregator"]["c"] == 0.2 and "preset_applied" not in explicit["_run"]
    assert _prepared("nyud", [], {"name": "cagrad", "c": 0.5})["aggregator"]["c"] == 0.5   # no reference value
    # end to end: the built aggregator uses what config.json records
    res = _train("aggregator=cagrad", "aggregator_preset=mt10", f"hydra.run.dir={tmp_path / 'p'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    res = _train("aggregator=cagrad", "aggregator_preset=mt10", "aggregator.c=0.2", f"hydra.run.dir={tmp_path / 'e'}",
                 cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    for run, c in (("p", 0.9), ("e", 0.2)):
        cfg = json.loads((tmp_path / run / "config.json").read_text())
        assert cfg["aggregator"]["c"] == c
        state = torch.load(tmp_path / run / "checkpoints" / "latest.pt", weights_only=False)
        tr = Trainer(state["config"], tmp_path / "probe" / run)
        assert tr.aggregators["critic"].c == c


@pytest.mark.slow
def test_an_unknown_preset_is_one_line_and_exit_2(tmp_path):
    with pytest.raises(ConfigError, match="unknown aggregator_preset 'foo'"):
        _prepared("foo", [], {"name": "cagrad"})
    res = _train("aggregator_preset=foo", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert res.returncode == 2 and "unknown aggregator_preset 'foo'" in _one_line(res)
    assert not (tmp_path / "r").exists()


# 3. one process per run directory -----------------------------------------------------------

@pytest.mark.slow
def test_a_second_process_on_a_locked_directory_exits_2_without_touching_a_file(tmp_path):
    run = tmp_path / "run"
    assert _train(f"hydra.run.dir={run}", "train.steps=200", cwd=tmp_path).returncode == 0
    with RunLock(run) as held:
        before = _snapshot(run)
        res = _train(f"hydra.run.dir={run}", cwd=tmp_path)   # would extend the run to 400
        assert res.returncode == 2
        assert f"pid {os.getpid()}" in _one_line(res) and "in use" in _one_line(res)
        assert _snapshot(run) == before
        # in a sweep the run is reported as running, not failed, and the sweep goes on
        res = _train("-m", "seed=0", f"hydra.sweep.dir={tmp_path}", "hydra.sweep.subdir=run", cwd=tmp_path)
        assert res.returncode == 0 and "running elsewhere" in res.stderr
        assert _snapshot(run) == before
        assert held.fd is not None


def test_a_stale_lock_is_taken_over_and_named(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": 0}))
    with RunLock(tmp_path) as lock:
        assert f"pid {dead.pid}" in lock.stale_message()
        with pytest.raises(RunLocked, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert RunLock(tmp_path).acquire().stale_message() is None   # released cleanly


# 4. a run continues only under its own config -----------------------------------------------

@pytest.mark.slow
def test_a_finished_run_under_another_config_is_refused_not_skipped(tmp_path):
    run = tmp_path / "run"
    assert _train(f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    res = _train(f"hydra.run.dir={run}", "agent.tau=0.01", cwd=tmp_path)
    assert res.returncode == 2 and "skipped" not in res.stdout
    assert "agent.tau: 0.005 -> 0.01" in _one_line(res)
    res = _train(f"hydra.run.dir={run}", cwd=tmp_path)
    assert res.returncode == 0 and "skipped" in res.stdout


@pytest.mark.slow
def test_a_resume_under_another_seed_or_train_value_is_refused(tmp_path):
    run = tmp_path / "run"
    assert _train(f"hydra.run.dir={run}", "train.steps=200", cwd=tmp_path).returncode == 0
    for override, needle in (("seed=1", "seed: 0 -> 1"), ("train.batch_size=128", "train.batch_size: 256 -> 128")):
        res = _train(f"hydra.run.dir={run}", override, cwd=tmp_path)
        assert res.returncode == 2 and needle in _one_line(res), res.stderr[-2000:]
    assert json.loads((run / "config.json").read_text())["seed"] == 0
    # a documented resumable key continues the run and is recorded in its history
    res = _train(f"hydra.run.dir={run}", "train.log_every=7", cwd=tmp_path)
    assert res.returncode == 0 and "resuming from step 200" in res.stdout
    segments = json.loads((run / "config.json").read_text())["_run"]["segments"]
    assert [s["start"] for s in segments] == [0, 200]
    assert segments[1]["changed"] == {"train.log_every": [50, 7], "train.steps": [200, 400]}


# 5. evaluations are never lost silently -----------------------------------------------------

@pytest.mark.slow
def test_a_deleted_or_doubled_metrics_file_is_restored_from_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    assert _train(f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    good = (run / "metrics.jsonl").read_text()
    assert [r["step"] for r in _records(run)] == [200, 400]
    (run / "metrics.jsonl").unlink()
    res = _train(f"hydra.run.dir={run}", cwd=tmp_path)   # finished, but its evaluations are gone
    assert res.returncode == 0 and "restored its 2 evaluations" in res.stderr
    assert (run / "metrics.jsonl").read_text() == good
    (run / "metrics.jsonl").write_text(good + good.splitlines()[0] + "\n" + good.splitlines()[1] + "\n")
    run_obj, problems = load_run(run)
    assert run_obj.issues and any("duplicated" in p.message for p in problems)
    res = _train(f"hydra.run.dir={run}", "train.steps=600", cwd=tmp_path)
    assert res.returncode == 0 and "did not match the checkpoint" in res.stderr
    assert [r["step"] for r in _records(run)] == [200, 400, 600]


@pytest.mark.slow
def test_the_summary_flags_missing_and_non_finite_evaluations(tmp_path):
    run = tmp_path / "run"
    assert _train(f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    first, second = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(second + "\n")                    # step 200 lost
    assert any("1 evaluation(s) missing" in p.message for p in load_run(run)[1])
    rec = json.loads(second)
    rec["mean_success"] = float("nan")
    (run / "metrics.jsonl").write_text(first + "\n" + json.dumps(rec) + "\n")
    run_obj, problems = load_run(run)
    assert any("non-finite success at step(s) [400]" in p.message for p in problems)
    sm = _script("summarize.py", run, "--out", tmp_path / "out", cwd=tmp_path)
    assert sm.returncode == 0, sm.stderr
    row = next(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    assert "non-finite" in row["flag"]


# 6-7. every bad value is one line and exit code 2, before anything is written ----------------

@pytest.mark.parametrize("override,needle", [
    ("train.steps=0", "train.steps must be an integer >= 1, got 0"),
    ("train.steps=-5", "train.steps must be an integer >= 1"),
    ("train.steps=abc", "train.steps must be an integer >= 1, got 'abc'"),
    ("seed=1.5", "seed must be an integer >= 0, got 1.5"),
    ("seed=-1", "seed must be an integer >= 0, got -1"),
    ("train.batch_size=255", "train.batch_size must be a positive multiple of the 4 tasks"),
    ("train.batch_size=0", "train.batch_size must be an integer >= 1"),
    ("train.eval_episodes=0", "train.eval_episodes must be an integer >= 1"),
    ("train.eval_every=0", "train.eval_every must be an integer >= 1"),
    ("train.buffer_size=2", "train.buffer_size must be >= the 4 tasks"),
    ("aggregator=pivrg aggregator.bound=abc", "aggregator.bound must be a finite number, got 'abc'"),
    ("agent.discount=1.5", "agent.discount must be a finite number (0 < agent.discount <= 1)"),
])
@pytest.mark.slow
def test_a_bad_value_is_one_line_and_exit_2(tmp_path, override, needle):
    res = _train(*override.split(), f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert res.returncode == 2
    assert needle in _one_line(res)
    assert not (tmp_path / "r").exists()


def test_integral_numbers_are_recorded_as_integers():
    cfg = config_checks.check({"seed": 2.0, "train": {"steps": 2e6}}, config_checks.RL_RULES)
    assert cfg == {"seed": 2, "train": {"steps": 2000000}} and isinstance(cfg["train"]["steps"], int)


def test_a_full_disk_is_reported_as_such_and_keeps_the_old_file(tmp_path, monkeypatch):
    import tempfile

    from mtrl.run_files import save_checkpoint

    path = tmp_path / "latest.pt"
    save_checkpoint({"format": 2, "x": 1}, path)
    # the kernel's own ENOSPC: the temporary file is /dev/full
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: (os.open("/dev/full", os.O_WRONLY), str(tmp_path / "t.tmp")))
    with pytest.raises(DiskFullError, match="no space left on the device writing .*latest.pt"):
        save_checkpoint({"format": 2, "x": torch.zeros(100_000)}, path)
    with pytest.raises(DiskFullError, match="no space left"):
        write_json_atomic(tmp_path / "status.json", {"state": "finished"})
    monkeypatch.undo()
    assert torch.load(path)["x"] == 1


@pytest.mark.slow
def test_temp_files_of_a_killed_write_are_removed_at_the_next_start(tmp_path):
    run = tmp_path / "run"
    assert _train(f"hydra.run.dir={run}", "train.steps=200", cwd=tmp_path).returncode == 0
    leftovers = [run / "checkpoints" / "latest.pt.abc123.tmp", run / "config.json.x1.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a file")
    res = _train(f"hydra.run.dir={run}", cwd=tmp_path)
    assert res.returncode == 0 and res.stderr.count("left by a killed write") == 2
    assert not any(p.exists() for p in leftovers) and remove_temp_files(run) == []


# 8. the advice after a non-finite stop can be followed --------------------------------------

@pytest.mark.slow
def test_the_non_finite_stop_advice_resumes_the_run(tmp_path):
    run = tmp_path / "run"
    # a learning rate that overflows the networks at the first updates
    res = _train(f"hydra.run.dir={run}", "agent.lr=1e30", "train.max_nonfinite=3", "train.checkpoint_every=100",
                 "train.seed_steps=320",   # updates start mid-episode, after the checkpoint at step 300
                 cwd=tmp_path)
    assert res.returncode == 1
    line = _one_line(res)
    assert "non-finite" in line and "agent.lr=1e+29" in line
    assert json.loads((run / "status.json").read_text())["state"] == "failed"   # outside a sweep too
    command = shlex.split(line.split("to resume it with a lower learning rate: ", 1)[1])
    assert command[:2] == ["python", "scripts/train.py"] and f"hydra.run.dir={run}" in command
    command = [a if not a.startswith("agent.lr=") else "agent.lr=3e-4" for a in command[2:]]
    res = _script("train.py", *command, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from step" in res.stdout
    segments = json.loads((run / "config.json").read_text())["_run"]["segments"]
    assert segments[-1]["changed"]["agent.lr"] == [1e30, 3e-4]


# the supervised driver ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    write_celeba(root, layout="raw", split_sizes=(8, 4, 4))
    return root


def _supervised(*args, cwd):
    flags = [a for a in args if a == "-m"]
    return _script("train_supervised.py", *flags, "benchmark=celeba", "train.epochs=1", "train.batch_size=4",
                   "device=cpu", "+benchmark.image_size=32", *[a for a in args if a != "-m"], cwd=cwd)


@pytest.mark.slow
def test_supervised_sweep_over_a_hyper_parameter_keeps_both_and_the_preset_yields(celeba, tmp_path):
    res = _supervised("-m", "aggregator=fairgrad", "aggregator.alpha=0.5,1.0", f"data.root={celeba}",
                      f"hydra.sweep.dir={tmp_path / 'sw'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    runs = sorted((tmp_path / "sw").glob("celeba-*/param/fairgrad-*/seed0"))
    # CelebA's preset says alpha = 2: the typed values win
    assert sorted(json.loads((r / "config.json").read_text())["aggregator"]["alpha"] for r in runs) == [0.5, 1.0]


@pytest.mark.slow
def test_supervised_bad_values_missing_and_corrupt_data_are_one_line_and_exit_2(celeba, tmp_path):
    res = _supervised("train.epochs=0", f"data.root={celeba}", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    assert res.returncode == 2 and "train.epochs must be an integer >= 1" in _one_line(res)
    res = _supervised(f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert res.returncode == 2 and "set data.root=PATH" in _one_line(res)
    broken = tmp_path / "broken"
    write_celeba(broken, layout="raw", split_sizes=(8, 4, 4))
    image_dir = layout_paths(broken, "raw")[0]
    for img in sorted(image_dir.iterdir())[:8]:
        img.write_bytes(b"not an image")
    res = _supervised(f"data.root={broken}", f"hydra.run.dir={tmp_path / 'c'}", cwd=tmp_path)
    assert res.returncode == 2
    assert "not a readable image" in _one_line(res)


@pytest.mark.slow
def test_supervised_tables_flag_duplicated_and_missing_epochs(celeba, tmp_path):
    from mtrl.supervised.tables import load_run as load_supervised

    run = tmp_path / "run"
    res = _supervised("train.epochs=2", f"data.root={celeba}", f"hydra.run.dir={run}", "train.max_batches=1",
                      cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert load_supervised(run)[1] == []
    first, second = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(f"{first}\n{first}\n{second}\n")
    run_obj, problems = load_supervised(run)
    assert run_obj is not None and any("epochs [1, 1, 2], expected 1..2" in p.message for p in problems)
