"""scripts/bench_cost.py end to end on a tiny slice: the table has a row per setting the
method takes, LS's ratio is 1 and the multidigits runs report a dm%."""

import sys

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_bench_cost_prints_the_table_for_every_setting(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_cost

    bench_cost.main(["--methods", "ls,fairgrad", "--seeds", "0", "--epochs", "1", "--repeats", "1",
                     "--jobs", "1", "--settings", "plain,every=5,tasks_per_step=k/2", "--out", str(tmp_path)])
    table = (tmp_path / "cost.md").read_text().splitlines()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [(r[0], r[1]) for r in rows] == [("ls", "plain"), ("fairgrad", "plain"), ("fairgrad", "every=5"),
                                           ("fairgrad", "tasks_per_step=k/2")]
    assert rows[0][2] == rows[0][3] == "1.00"
    for r in rows:
        assert float(r[2]) > 0 and float(r[3]) > 0
        assert r[4].startswith(("+", "-"))
    # a second call reads the finished runs back instead of training them again
    bench_cost.main(["--methods", "ls", "--seeds", "0", "--epochs", "1", "--repeats", "1", "--jobs", "1",
                     "--settings", "plain", "--no-timing", "--out", str(tmp_path)])
    assert "ls plain: dm%" in capsys.readouterr().out


def test_settings_leave_out_what_a_method_refuses():
    """No rep row for the methods with per-coordinate gradient state (the trainer refuses
    mode=rep for them: the run crashed on the representation before), no knob rows for a
    method that is not a Gram-matrix method, no tasks_per_step rows for MGDA."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_cost

    labels = {name: [row[0] for row in bench_cost.settings(name, 4)] for name in ("moco", "excess_mtl", "mgda", "pcgrad")}
    assert labels["moco"] == labels["excess_mtl"] == ["plain"]
    assert labels["mgda"] == ["plain", "every=5", "every=20", "rep"]
    assert labels["pcgrad"] == ["plain", "every=5", "every=20", "tasks_per_step=1", "tasks_per_step=2", "rep"]


@pytest.mark.slow
def test_shapes_selects_the_timed_shapes(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_cost

    bench_cost.main(["--methods", "ls", "--repeats", "1", "--no-train", "--shapes", "multidigits",
                     "--out", str(tmp_path)])
    row = [c.strip() for c in (tmp_path / "cost.md").read_text().splitlines()[2].strip("|").split("|")]
    assert row[:4] == ["ls", "plain", "1.00", "n/a"]
    with pytest.raises(SystemExit):
        bench_cost.main(["--shapes", "imagenet"])
