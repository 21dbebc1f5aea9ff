"""The toy and benchmark entry points run end to end (small sizes; no timing checks)."""


import pytest
import torch

from mtrl.toy import pareto_front, run, toy_losses
from helpers import load_script



def _script(name):
    return load_script(name)


def test_toy_front_is_non_dominated():
    front = pareto_front(resolution=200)
    assert len(front) > 10
    # sorted by L1 ascending, so L2 must strictly decrease along the front
    assert (front[:, 0].diff() >= 0).all() and (front[:, 1].diff() < 0).all()


@pytest.mark.slow
def test_toy_runs_reach_the_front():
    front = pareto_front()
    traj = run("nash_mtl", (0.0, 0.0), steps=1500)
    final = torch.tensor(traj.losses[-1], dtype=front.dtype)
    assert float((front - final).norm(dim=1).min()) < 0.1
    start = toy_losses(torch.tensor([0.0, 0.0], dtype=torch.float64))
    assert (final < start).all()


@pytest.mark.slow
def test_toy_script_writes_png(tmp_path, capsys):
    out = tmp_path / "toy.png"
    assert _script("toy").main(["--methods", "ls", "pivrg", "--steps", "20", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert "pivrg" in capsys.readouterr().out


def test_bench_script_prints_table(capsys):
    assert _script("bench_aggregators").main(["--ks", "2", "3", "--n", "500", "--repeats", "2",
                                              "--methods", "pivrg", "nash_mtl", "fairgrad"]) == 0
    out = capsys.readouterr().out
    assert "scipy least_squares" in out and "pivrg" in out


def test_bench_update_script_prints_ratios(capsys):
    assert _script("bench_update").main(["--hidden", "16", "--layers", "1", "--batches", "40", "--repeats", "1",
                                         "--rounds", "1", "--threads", "1", "--methods", "ls", "pivrg",
                                         "--paths", "split", "batched"]) == 0
    out = capsys.readouterr().out
    bench = _script("bench_update")
    assert "pivrg (split)" in out and "pivrg (batched)" in out
    assert ("sb3 mtl_sac" in out) == bench.sb3_available()
    with pytest.raises(SystemExit):
        bench.main(["--batches", "256"])    # not a multiple of k = 10


def test_bench_train_script_times_the_loop(tmp_path, capsys):
    rows_path = tmp_path / "rows.json"
    _script("bench_train").main(["--experiment", "point_mass_quick", "--methods", "ls", "pivrg", "--steps", "30",
                                 "--warmup", "5", "--seed-steps", "20", "--skip", "host", "device", "--compile", "off",
                                 "--json", str(rows_path), "agent.hidden=16", "agent.layers=1", "train.batch_size=40"])
    out = capsys.readouterr().out
    assert "2M h" in out and "pivrg" in out and "env alone" in out
    import json
    result = json.loads(rows_path.read_text())
    rows, floor = result["trainer"], result["simulator_floor"]
    assert [(r["method"], r["skip"]) for r in rows] == [("ls", "host"), ("ls", "device"), ("pivrg", "host"),
                                                       ("pivrg", "device")]
    assert [f["vector"] for f in floor] == ["sync"] and floor[0]["steps"] == 30
    assert floor[0]["step_ms"] == pytest.approx(1e3 / floor[0]["steps_per_s"])
    for r in rows:
        assert r["steps"] == 30 and r["vector"] == "sync" and r["compile"] == "off"
        step_ms = 1e3 / r["steps_per_s"]
        assert 0 < r["update_ms"] + r["env_wait_ms"] <= step_ms and 0 < r["sim_share"] < 1
        assert r["protocol_hours"] == pytest.approx(2e6 * step_ms / 1e3 / 3600)
