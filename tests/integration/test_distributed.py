"""Aggregation under data parallelism (aggregators.distributed): two gloo processes on the
two halves of a batch apply the update of one process on the whole batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import aggregators
from distributed_runs import BATCH, initial_params, run, run_ranks

EXACT = [  # (method, mode): the five, loss-only and stateful methods, and both levels
    ("ls", "param"), ("pivrg", "param"), ("nash_mtl", "param"), ("mgda", "param"), ("consmtl", "param"),
    ("uw", "param"), ("dwa", "param"), ("stch", "param"), ("pcgrad", "param"), ("cagrad", "param"),
    ("moco", "param"), ("graddrop", "param"), ("fairgrad", "param"),
    ("pivrg", "rep"), ("mgda", "rep"), ("nash_mtl", "rep"), ("ls", "rep"),
]
GRAM_ONLY = ["pivrg", "nash_mtl", "mgda"]
LARGE = 400   # the Gram-only comparison's batch: its error is the between-shard noise of the gradients
CASES = ([{"method": m, "mode": mode} for m, mode in EXACT]
         + [{"method": m, "gram_only": g, "batch": LARGE} for m in GRAM_ONLY for g in (False, True)])

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    """Every case on two ranks, keyed by the case's (method, mode, gram_only)."""
    results = run_ranks(CASES, world=2, out=tmp_path_factory.mktemp("ranks"))
    return {_key(c): (results[0][i], results[1][i]) for i, c in enumerate(CASES)}


def _key(case: dict) -> tuple:
    return case["method"], case.get("mode", "param"), case.get("gram_only", False), case.get("batch", BATCH)


def _assert_same(a, b, where: str = "state") -> None:
    """Equal nested state (tensors bit for bit): dicts, lists, tuples, scalars."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.mark.parametrize("method,mode", EXACT)
def test_two_ranks_on_half_batches_apply_the_whole_batch_update(two_ranks, method, mode):
    one = run(method, mode=mode)
    for rank in two_ranks[(method, mode, False, BATCH)]:
        assert _max_diff(rank["params"], one["params"]) < 1e-10, method
        np.testing.assert_allclose(rank["losses"], one["losses"], rtol=1e-10, atol=1e-12)
        if one["weights"][0] is not None:
            np.testing.assert_allclose(rank["weights"], one["weights"], rtol=1e-7, atol=1e-9)
    # the parameters moved: a step that did nothing would also agree
    assert _max_diff(one["params"], initial_params()) > 1e-3


@pytest.mark.parametrize("method,mode", EXACT + [(m, "gram_only") for m in GRAM_ONLY])
def test_stateful_aggregators_stay_identical_across_ranks(two_ranks, method, mode):
    key = (method, "param", True, LARGE) if mode == "gram_only" else (method, mode, False, BATCH)
    a, b = two_ranks[key]
    _assert_same(a["aggregator"], b["aggregator"])
    assert torch.equal(torch.cat([p.flatten() for p in a["params"].values()]),
                       torch.cat([p.flatten() for p in b["params"].values()]))


@pytest.mark.parametrize("method", GRAM_ONLY)
def test_gram_only_approximates_the_exact_update_with_less_traffic(two_ranks, method):
    one = run(method, batch=LARGE)
    exact, approx = two_ranks[(method, "param", False, LARGE)][0], two_ranks[(method, "param", True, LARGE)][0]
    assert _max_diff(exact["params"], one["params"]) < 1e-10
    moved = _max_diff(one["params"], initial_params())
    deviation = _max_diff(approx["params"], one["params"])
    print(f"{method}: gram_only deviates by {deviation:.3g} (the exact update moved the parameters by {moved:.3g})")
    # the mean of the shards' Gram matrices is not the union's: the update differs, a little
    assert 1e-12 < deviation < 0.1 * moved, (deviation, moved)
    assert approx["bytes"] < exact["bytes"]


def test_traffic_of_the_exact_mode_is_k_per_task_gradients(two_ranks):
    """Per step: the k losses, the k x n per-task gradients and the heads' gradients
    (float64), for a Gram method; a loss-only method all-reduces the losses and one
    gradient of every parameter."""
    from distributed_runs import K, STEPS, TinyMultiTask
    model = TinyMultiTask()
    n_shared = sum(p.numel() for p in model.trunk.parameters())
    n_heads = sum(p.numel() for p in model.heads.parameters())
    per_step = 8 * (K + K * n_shared + n_heads)
    assert two_ranks[("mgda", "param", False, BATCH)][0]["bytes"] == STEPS * per_step
    assert two_ranks[("ls", "param", False, BATCH)][0]["bytes"] == STEPS * 8 * (K + n_shared + n_heads)


def test_methods_without_a_data_parallel_form_are_refused():
    import os

    import torch.distributed as dist
    from mtrl.distributed import free_port
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        from aggregators.distributed import Reducer
        w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        x = torch.randn(6, 4, dtype=torch.float64)
        losses = [(x @ w[:, i]).pow(2).mean() for i in range(3)]
        with pytest.raises(ValueError, match="differentiates through"):
            aggregators.backward(losses, [w], aggregators.make("cosreg", 3), reducer=Reducer())
        with pytest.raises(ValueError, match="gram_only"):
            aggregators.backward(losses, [w], aggregators.make("graddrop", 3), reducer=Reducer(gram_only=True))
        # one process in the group: the update of no reducer
        a = aggregators.backward(losses, [w], "mgda", reducer=Reducer(), retain_graph=True)
        ga = w.grad.clone()
        w.grad = None
        b = aggregators.backward(losses, [w], "mgda")
        assert torch.equal(ga, w.grad) and torch.equal(a.weights, b.weights)
    finally:
        dist.destroy_process_group()


# -- the supervised trainer under two processes ----------------------------------------------

TRAINER_METHODS = ["ls", "pivrg", "nash_mtl", "mgda", "consmtl"]


@pytest.fixture(scope="module")
def trainer_runs(tmp_path_factory) -> dict:
    """Two epochs of 3 batches of 32 on multidigits per method: one process, and two
    processes of 16 each; then a run of one epoch on two processes resumed by one."""
    from distributed_runs import evaluate_supervised, supervised_config, train_supervised
    base = tmp_path_factory.mktemp("trainer")
    # each process is handed its own directory here, to show that only process 0 writes
    cases = [{"cfg": supervised_config(m, epochs=2), "run_dir": str(base / f"two-{m}-{{rank}}")}
             for m in TRAINER_METHODS]
    cases.append({"cfg": supervised_config("pivrg", epochs=1), "run_dir": str(base / "resume")})
    # evaluation: 5 batches of 64 (two groups of two and a last one of one batch)
    evaluation = supervised_config("ls", max_batches=5, eval_batch_size=64)
    cases.append({"cfg": evaluation, "run_dir": str(base / "eval-{rank}"), "evaluate": True})
    two = run_ranks(cases, world=2, out=base)
    one = {m: train_supervised(supervised_config(m, epochs=2), str(base / f"one-{m}")) for m in TRAINER_METHODS}
    resumed = train_supervised(supervised_config("pivrg", epochs=2), str(base / "resume"))
    torch.manual_seed(0)
    from mtrl.supervised.benchmarks.multidigits import MultiDigitsBenchmark
    initial = {n: p.detach().clone() for n, p in MultiDigitsBenchmark().build_model().named_parameters()}
    return {"initial": initial, "evaluation": (two[0][-1], two[1][-1], evaluate_supervised(evaluation, str(base / "eval"))),
            "two": {m: (two[0][i], two[1][i]) for i, m in enumerate(TRAINER_METHODS)}, "one": one,
            "resumed": resumed, "base": base}


@pytest.mark.parametrize("method", TRAINER_METHODS)
def test_the_trainer_on_two_processes_trains_as_one_process(trainer_runs, method):
    one = trainer_runs["one"][method]
    assert _max_diff(one["params"], trainer_runs["initial"]) > 1e-3
    for rank in trainer_runs["two"][method]:
        assert _max_diff(rank["params"], one["params"]) < 1e-5, method
        _assert_same(rank["aggregator"], trainer_runs["two"][method][0]["aggregator"])
        assert [e["val_delta_m"] for e in rank["evaluations"]] == pytest.approx(
            [e["val_delta_m"] for e in one["evaluations"]], abs=1e-3)


def test_two_processes_evaluate_a_split_to_the_one_process_values(trainer_runs):
    """Process r runs the forward of every other batch; process 0 updates the metric
    state in the one-process order, so the values are equal (a shorter last group too)."""
    rank0, rank1, one = trainer_runs["evaluation"]
    assert rank1 is None
    assert rank0 == one
    assert set(one) == {"val", "test"} and all(0 < v < 1 for values in one.values() for v in values.values())


def test_rank_zero_alone_writes_the_run_directory(trainer_runs):
    two = trainer_runs["base"] / "two-pivrg-0"
    assert not (trainer_runs["base"] / "two-pivrg-1").exists()
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in (trainer_runs["base"] / "one-pivrg").iterdir())
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_two_process_run_resumes_in_one_process(trainer_runs):
    resumed, one = trainer_runs["resumed"], trainer_runs["one"]["pivrg"]
    assert [e["epoch"] for e in resumed["evaluations"]] == [1, 2]
    assert _max_diff(resumed["params"], one["params"]) < 1e-5


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (Linux /proc), children first."""
    import os
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        out += children
        frontier = children
    return out


def test_a_killed_two_process_run_resumes_as_if_uninterrupted(tmp_path):
    """torchrun with two gloo processes, SIGKILLed (agent and workers) after its first
    checkpoint; the same command continues it, and its records equal an uninterrupted run's."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from helpers import ROOT

    def command(run_dir):
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                str(ROOT / "scripts" / "train_supervised.py"), "benchmark=multidigits", "aggregator=pivrg",
                "train.epochs=4", "train.max_batches=15", f"hydra.run.dir={run_dir}"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    proc = subprocess.Popen(command(killed), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoints" / "latest.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    for pid in [proc.pid, *_descendants(proc.pid)]:   # torchrun starts its workers in sessions of their own
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    assert ckpt.exists()
    done = len((killed / "metrics.jsonl").read_text().splitlines())
    assert done < 4
    res = subprocess.run(command(killed), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "(2 processes) (resuming after epoch" in res.stdout
    res = subprocess.run(command(whole), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]

    def records(run_dir):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    assert [r["epoch"] for r in records(killed)] == [1, 2, 3, 4]
    assert records(killed) == records(whole)
