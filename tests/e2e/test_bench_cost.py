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
