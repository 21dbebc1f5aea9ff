"""The toy and benchmark entry points run end to end (small sizes; no timing checks)."""

import importlib.util
import os

import torch

from mtrl.toy import pareto_front, run, toy_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_toy_front_is_non_dominated():
    front = pareto_front(resolution=200)
    assert len(front) > 10
    # sorted by L1 ascending, so L2 must strictly decrease along the front
    assert (front[:, 0].diff() >= 0).all() and (front[:, 1].diff() < 0).all()


def test_toy_runs_reach_the_front():
    front = pareto_front()
    traj = run("nash_mtl", (0.0, 0.0), steps=1500)
    final = torch.tensor(traj.losses[-1], dtype=front.dtype)
    assert float((front - final).norm(dim=1).min()) < 0.1
    start = toy_losses(torch.tensor([0.0, 0.0], dtype=torch.float64))
    assert (final < start).all()


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
    assert _script("bench_update").main(["--hidden", "16", "--layers", "1", "--batch", "40", "--repeats", "1",
                                         "--methods", "pivrg", "--end-to-end", "0"]) == 0
    out = capsys.readouterr().out
    assert "ls (plain)" in out and "vmap (one pass)" in out and "k backward passes" in out


def test_loop_reference_gradients_equal_the_vectorised_ones():
    """The benchmark's one-backward-per-task reference computes the same gradients."""
    from mtrl.per_task_grads import per_task_grads

    bench = _script("bench_update")
    g = torch.Generator().manual_seed(0)
    shared = {"w": torch.randn(5, 3, generator=g)}
    task = {"h": torch.randn(4, 2, 5, generator=g)}
    x = torch.randn(4, 6, 3, generator=g)

    def loss_fn(sh, tk, xi):
        return (torch.tanh(xi @ sh["w"].T) @ tk["h"].T).pow(2).mean()

    l1, s1, t1 = per_task_grads(loss_fn, shared, task, x)
    l2, s2, t2 = bench.loop_per_task_grads(loss_fn, shared, task, x)
    assert torch.allclose(l1, l2) and torch.allclose(s1["w"], s2["w"], atol=1e-6)
    assert torch.allclose(t1["h"], t2["h"], atol=1e-6)
