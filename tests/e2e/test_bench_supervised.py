"""scripts/bench_supervised.py: one timed training step per aggregator, ratios to LS."""


import pytest
from helpers import load_script

AGGREGATORS = ("ls", "pivrg", "consmtl", "nash_mtl", "fairgrad", "cagrad", "pcgrad", "famo", "mgda", "aligned_mtl")


def _bench():
    return load_script("bench_supervised")


def _rows(out: str) -> list[list[str]]:
    """The table's body rows as cells (benchmark, mode, aggregator, gradients, ms, ratio)."""
    lines = [l for l in out.splitlines() if l.startswith("| ") and not l.startswith("| benchmark")]
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines]


@pytest.mark.slow
def test_quick_run_times_every_aggregator_relative_to_ls(capsys):
    bench = _bench()
    # one thread: two spin-waiting threads on a busy 2-core machine make the tiny steps ~20x slower
    assert bench.main(["--quick", "--threads", "1", "--benchmarks", "qm9", "--modes", "param,rep"]) == 0
    assert bench.main(["--quick", "--threads", "1", "--benchmarks", "celeba", "--modes", "rep",
                       "--aggregators", "pivrg", "--warmup", "0"]) == 0
    rows = _rows(capsys.readouterr().out)
    groups = {(r[0], r[1]) for r in rows}
    assert groups == {("qm9", "param"), ("qm9", "rep"), ("celeba", "rep")}
    for group in groups:
        mine = [r for r in rows if (r[0], r[1]) == group]
        plain = [r for r in mine if "k backward passes" not in r[3]]
        expected = AGGREGATORS if group[0] == "qm9" else ("ls", "pivrg")
        assert [r[2] for r in plain] == list(expected)
        assert [r[2] for r in mine if "k backward passes" in r[3]] == ["pivrg"]   # the reference row
        assert mine[0][2] == "ls" and mine[0][5] == "1.00"
        for r in mine:
            ms, ratio = float(r[4]), float(r[5])
            assert ms > 0 and ratio > 0


def test_quick_run_on_the_dense_benchmarks_reads_their_real_layout(capsys):
    bench = _bench()
    assert bench.main(["--quick", "--threads", "1", "--benchmarks", "nyuv2,cityscapes", "--modes", "rep",
                       "--aggregators", "consmtl", "--no-reference", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "nyuv2: k=3, batch 1 images of 32 x 64" in out and "cityscapes: k=2" in out
    rows = _rows(out)
    assert [(r[0], r[2]) for r in rows] == [("nyuv2", "ls"), ("nyuv2", "consmtl"), ("cityscapes", "ls"),
                                           ("cityscapes", "consmtl")]
    assert all(float(r[4]) > 0 for r in rows)


def test_quick_run_on_the_senushkin_2023_and_guo_2025_benchmarks(capsys):
    import pytest
    pytest.importorskip("torchvision")
    pytest.importorskip("pyEdgeEval")
    bench = _bench()
    assert bench.main(["--quick", "--threads", "1", "--benchmarks", "pascal_context", "--modes", "rep",
                       "--aggregators", "aligned_mtl", "--no-reference", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "pascal_context: k=5, batch 2 images of 32 x 32, ResNetASPP" in out
    assert [(r[0], r[2]) for r in _rows(out)] == [("pascal_context", "ls"), ("pascal_context", "aligned_mtl")]


@pytest.mark.slow
def test_nproc_times_one_process_against_two_and_counts_the_traffic(capsys):
    """--nproc 2: every row at 1 and 2 processes; one process all-reduces nothing, the exact
    mode sends the k = 4 per-task gradients (about 4x what LS sends) and gram_only about
    what LS sends."""
    bench = _bench()
    assert bench.main(["--nproc", "2", "--dp-benchmarks", "multidigits", "--dp-batch", "16", "--repeats", "1",
                       "--warmup", "0"]) == 0
    rows = _rows(capsys.readouterr().out)
    assert [(r[3], r[4]) for r in rows] == [(m, w) for m in ("ls", "pivrg", "pivrg gram_only") for w in ("1", "2")]
    sent = {(r[3], r[4]): float(r[7]) for r in rows}
    assert all(sent[(m, "1")] == 0 for m in ("ls", "pivrg", "pivrg gram_only"))
    assert 3.5 < sent[("pivrg", "2")] / sent[("ls", "2")] < 4.5
    assert 0.9 < sent[("pivrg gram_only", "2")] / sent[("ls", "2")] < 1.1
    assert all(float(r[5]) > 0 for r in rows)
