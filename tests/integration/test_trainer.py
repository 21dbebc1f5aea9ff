"""The MT10 trainer: learning on the point-mass env, bit-identical resume, atomic and
validated checkpoints, bad configs, non-finite updates, and an MT10 smoke run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mtrl.run_files import CheckpointError, save_checkpoint
from mtrl.trainer import ConfigError, NonFiniteError, Trainer, prepare_config
from helpers import ROOT



def point_mass_cfg(aggregator="ls", kind="mh_sac", steps=1000, seed=0, **train):
    t = {"steps": steps, "seed_steps": 500, "batch_size": 256, "buffer_size": 100_000, "eval_every": 500,
         "eval_episodes": 3, "checkpoint_every": 500, "diagnostics_every": 100, "log_every": 100}
    t.update(train)
    return {"seed": seed, "device": "cpu", "aggregator_preset": None, "aggregate": ["critic", "actor", "alpha"],
            "env": {"name": "point_mass", "protocol": "paper", "reward_version": "v2",
                    "kwargs": {"num_tasks": 4, "observe_goal": True}},
            "agent": {"_target_": "agents.sac.MultiTaskSAC", "kind": kind, "hidden": 64, "layers": 2},
            "aggregator": {"name": aggregator},
            "train": t,
            "performance": {"reference_success": 1.0}}


@pytest.mark.parametrize("kind", ["mh_sac", "mtl_sac", "mtl_sac_te"])
@pytest.mark.parametrize("aggregator,steps", [("ls", 4000), ("pivrg", 3000)])
@pytest.mark.slow
def test_sac_learns_the_point_mass_tasks(tmp_path, kind, aggregator, steps):
    """Threshold: best mean success over training >= 0.75 (measured: 1.0 for every pair)."""
    torch.set_num_threads(1)
    tr = Trainer(point_mass_cfg(aggregator, kind, steps=steps, checkpoint_every=10**6), tmp_path)
    tr.train()
    assert tr.best_mean_success >= 0.75
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == steps and len(records[-1]["success"]) == 4
    if aggregator == "pivrg":
        assert "omega" in records[-1] and "temperature" in records[-1]


def _params(trainer):
    return {k: v.clone() for k, v in trainer.agent.actor.state_dict().items()}


@pytest.mark.slow
def test_resume_continues_bit_identically(tmp_path):
    full = Trainer(point_mass_cfg("pivrg", steps=1000), tmp_path / "full")
    full.train()
    part = Trainer(point_mass_cfg("pivrg", steps=500), tmp_path / "part")
    part.train()
    resumed = Trainer(point_mass_cfg("pivrg", steps=1000), tmp_path / "part")
    assert resumed.resumed and resumed.step == 500
    resumed.train()
    a, b = _params(full), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = lambda d: [json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()]
    fa, fb = lines(tmp_path / "full"), lines(tmp_path / "part")
    assert [r["success"] for r in fa] == [r["success"] for r in fb]
    assert [r["omega"] for r in fa] == [r["omega"] for r in fb]


def test_each_update_samples_the_transitions_before_its_step(tmp_path):
    """The update of step s runs while step s is simulated: it sees s - 1 transitions; the
    first update step runs ``initial_updates`` updates (the reference's burst)."""
    tr = Trainer(point_mass_cfg("ls", steps=560, seed_steps=520, eval_every=10**6, initial_updates=3), tmp_path)
    seen, update = [], tr._update
    tr._update = lambda log=True: (seen.append((tr.step, tr.buffer.size, log)), update(log))[1]
    tr.train()
    # the first update step runs initial_updates of them (logging once)
    assert seen == [(520, 519, False), (520, 519, False)] + [(s, s - 1, True) for s in range(520, 561)]


def _mt1_cfg(vector: str) -> dict:
    cfg = point_mass_cfg("pivrg", steps=200, seed_steps=100, batch_size=32, eval_every=200, eval_episodes=1,
                         checkpoint_every=200, diagnostics_every=50)
    cfg["env"] = {"name": "mt1:reach-v3", "protocol": "paper", "reward_version": "v2", "vector": vector}
    cfg["agent"] = {"_target_": "agents.sac.MultiTaskSAC", "kind": "mh_sac", "hidden": 32, "layers": 1}
    return cfg


@pytest.mark.slow
def test_async_envs_give_the_same_run_as_sync(tmp_path):
    runs = {}
    for vector in ("sync", "async"):
        tr = Trainer(_mt1_cfg(vector), tmp_path / vector)
        assert tr.vector == vector
        tr.train()
        runs[vector] = (_params(tr), tr.last_eval["returns"])
        tr.close()
    (pa, ra), (pb, rb) = runs["sync"], runs["async"]
    assert ra == rb and all(torch.equal(pa[k], pb[k]) for k in pa)


def test_vector_strategy(monkeypatch):
    from mtrl import trainer

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(trainer.ASYNC_MIN_CORES)))
    assert trainer.vector_strategy({"name": "mt10", "vector": "auto"}) == "async"
    assert trainer.vector_strategy({"name": "point_mass", "vector": "auto"}) == "sync"
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(trainer.ASYNC_MIN_CORES - 1)))
    assert trainer.vector_strategy({"name": "mt10"}) == "sync"
    assert trainer.vector_strategy({"name": "mt10", "vector": "async"}) == "async"
    with pytest.raises(ConfigError, match="point_mass steps in this process"):
        trainer.vector_strategy({"name": "point_mass", "vector": "async"})


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "checkpoints" / "latest.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(point_mass_cfg(), tmp_path)


def test_checkpoint_of_another_config_is_refused(tmp_path):
    Trainer(point_mass_cfg("ls", steps=500), tmp_path).train()
    with pytest.raises(ConfigError, match="another config \\(aggregator.name: 'ls' -> 'pivrg'"):
        Trainer(point_mass_cfg("pivrg", steps=1000), tmp_path)


def test_atomic_save_keeps_the_old_checkpoint_when_writing_fails(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"format": 1, "x": 1}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint({"format": 1, "x": Boom()}, path)
    assert torch.load(path)["x"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_bad_configs_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="valid"):
        Trainer({**point_mass_cfg(), "aggregator": {"name": "nope"}}, tmp_path)
    cfg = point_mass_cfg()
    cfg["env"] = {**cfg["env"], "num_tasks": 10}
    with pytest.raises(ConfigError, match="4 tasks"):
        Trainer(cfg, tmp_path)
    with pytest.raises(ConfigError, match="aggregate=\\[critic\\]"):
        Trainer({**point_mass_cfg("famo")}, tmp_path)
    with pytest.raises(ConfigError, match="aggregate=\\[critic\\]"):     # the capability, not the name
        Trainer({**point_mass_cfg("si")}, tmp_path)
    # ConsMTL's lower level is refused on MT10 with its reason (it used to train only the upper level)
    with pytest.raises(ConfigError, match="consmtl's lower level .* use pivrg"):
        prepare_config(point_mass_cfg("consmtl"))      # what the launcher checks before the run directory
    for bad in ({"task_grads": "mine"}, {"per_task_grads": "vmap"}):
        with pytest.raises(ConfigError, match="train.(task_grads|per_task_grads) must be one of"):
            Trainer(point_mass_cfg(**bad), tmp_path)
    with pytest.raises(ConfigError, match="train.initial_updates"):
        prepare_config(point_mass_cfg(initial_updates=0))
    with pytest.raises(ConfigError, match="point_mass steps in this process"):   # before the run directory
        prepare_config({**point_mass_cfg(), "env": {**point_mass_cfg()["env"], "vector": "async"}})
    with pytest.raises(ConfigError, match="nonfinite_skip=device cannot restore the host state of moco.step"):
        prepare_config(point_mass_cfg("moco", nonfinite_skip="device"))
    with pytest.raises(ConfigError, match="train.nonfinite_skip must be one of"):
        prepare_config(point_mass_cfg(nonfinite_skip="gpu"))
    with pytest.raises(ConfigError, match="train.compile must be one of off, default, max"):
        prepare_config(point_mass_cfg(compile="reduce-overhead"))
    with pytest.raises(ConfigError, match="env.vector must be one of"):
        prepare_config({**point_mass_cfg(), "env": {**point_mass_cfg()["env"], "vector": "threads"}})
    # an agent option without a rule of its own is typed by its constructor's default (any agent)
    with pytest.raises(ConfigError, match="agent.adam_eps must be a finite number, got .tiny."):
        prepare_config({**point_mass_cfg(), "agent": {**point_mass_cfg()["agent"], "adam_eps": "tiny"}})


def test_the_trainer_records_what_task_parameters_receive(tmp_path):
    """train.task_grads is stated in the config (own: the RL default) and handed to every
    component's backward; config.json records it."""
    import json

    tr = Trainer(point_mass_cfg("pivrg", task_grads="own"), tmp_path)
    assert {b.task_grads for b in tr.agent.backward.values()} == {"own"}
    assert json.loads((tmp_path / "config.json").read_text())["train"]["task_grads"] == "own"
    tr.close()


def test_non_finite_updates_are_skipped_then_stop(tmp_path):
    tr = Trainer(point_mass_cfg(steps=700, max_nonfinite=5), tmp_path)
    tr.agent.update = lambda batch: {"skipped_critic": 1, "skipped_actor": 0, "skipped_alpha": 0}
    with pytest.raises(NonFiniteError, match="consecutive"):
        tr.train()
    assert tr.skips.total == 5


def test_device_side_skips_are_counted_on_the_device_and_read_at_log_time(tmp_path):
    """The first update (step 500) is read at once (1 in a row), the next ten at step 510:
    11 in a row >= max_nonfinite = 5 stops the run there (the host-side skip stops at the
    fifth; the device-side one at the first read after it)."""
    tr = Trainer(point_mass_cfg(steps=700, max_nonfinite=5, log_every=10, nonfinite_skip="device"), tmp_path)
    assert tr.agent.device_skip
    flag = torch.tensor(True)
    tr.agent.update = lambda batch: {"skipped_critic": flag, "skipped_actor": ~flag, "skipped_alpha": ~flag}
    with pytest.raises(NonFiniteError, match="11 consecutive updates .*by step 510"):
        tr.train()
    assert tr.skips.total == 11 and tr.step == 510


def test_device_side_skip_gives_the_run_of_the_host_side_skip(tmp_path):
    """Every 40th batch has a NaN reward: the same skips, parameters and evaluations."""
    runs = {}
    for skip in ("host", "device"):
        tr = Trainer(point_mass_cfg("pivrg", steps=700, nonfinite_skip=skip), tmp_path / skip)
        assert tr.nonfinite_skip == skip
        sample, calls = tr.buffer.sample, [0]

        def poisoned(n, gen, sample=sample, calls=calls):
            batch = sample(n, gen)
            calls[0] += 1
            if calls[0] % 40 == 0:
                batch = {**batch, "reward": batch["reward"].clone().index_fill_(1, torch.tensor([0]), float("nan"))}
            return batch

        tr.buffer.sample = poisoned
        tr.train()
        runs[skip] = (_params(tr), {k: v.clone() for k, v in tr.agent.critic.state_dict().items()},
                      tr.last_eval["returns"], tr.skips.total)
        tr.close()
    (ha, hc, hr, hn), (da, dc, dr, dn) = runs["host"], runs["device"]
    assert hn == dn == 5 and hr == dr
    assert all(torch.equal(ha[k], da[k]) for k in ha) and all(torch.equal(hc[k], dc[k]) for k in hc)


def _cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("override,needle", [("aggregator=nope", "unknown aggregator"),
                                             ("env=mt11", "unknown env"),
                                             ("agent=mh_sac agent.hidden=-3", "agent.hidden must be an integer >= 1")])
@pytest.mark.slow
def test_cli_bad_config_exits_2_with_one_line(tmp_path, override, needle):
    res = _cli(*override.split(), "experiment=point_mass_quick", f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    err = [l for l in res.stderr.splitlines() if l.strip()]
    assert len(err) == 1 and needle in err[0]


@pytest.mark.slow
def test_mt10_smoke_run_writes_all_outputs(tmp_path):
    res = _cli("env=mt10", "aggregator=pivrg", "agent.hidden=32", "agent.layers=1", "train.steps=300",
               "train.seed_steps=150", "train.batch_size=100", "train.eval_every=150", "train.eval_episodes=1",
               "train.checkpoint_every=150", "train.diagnostics_every=50", "device=cpu",
               f"hydra.run.dir={tmp_path}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [150, 300]
    r = records[-1]
    assert len(r["tasks"]) == 10 and len(r["success"]) == 10 and 0 <= r["mean_success"] <= 1
    assert {"wall_time", "weights", "omega"} <= set(r)
    assert (tmp_path / "checkpoints" / "latest.pt").exists()
    assert any((tmp_path / "tb").iterdir())
    assert not (tmp_path / ".hydra").exists()   # config.json is the record; Hydra writes nothing here
    assert json.loads((tmp_path / "config.json").read_text())["aggregator"]["name"] == "pivrg"
    assert json.loads((tmp_path / "status.json").read_text()) == {"state": "finished", "step": 300}
    assert "mean" in res.stdout and "reach" in res.stdout  # the per-task success table

    # the saved agent under the MetaWorld package's own evaluation (metaworld.evaluation)
    ev = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), str(tmp_path), "--episodes", "1"],
                        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr[-2000:]
    saved = json.loads((tmp_path / "evaluations" / "metaworld3-1ep-seed0.json").read_text())
    assert saved["checkpoint_step"] == 300 and saved["evaluation_protocol"] == "metaworld3"
    assert saved["tasks"] == r["tasks"] and len(saved["success"]) == 10
    assert saved["env_protocol"]["goal_policy"].startswith("random") and saved["env_protocol"]["episode_length"] == 500
    assert "reach-v3" in ev.stdout and "mean" in ev.stdout


@pytest.mark.slow
def test_sigkilled_run_resumes_from_its_last_checkpoint(tmp_path):
    import signal
    import time

    args = [sys.executable, str(ROOT / "scripts" / "train.py"), "experiment=point_mass_quick", "train.steps=2000",
            "train.checkpoint_every=500", "train.eval_every=500", f"hydra.run.dir={tmp_path}"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "checkpoints" / "latest.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists()
    res = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from step" in res.stdout
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [500, 1000, 1500, 2000]


def test_pivrg_fed_from_a_window_of_training_episodes(tmp_path):
    cfg = point_mass_cfg("pivrg", steps=600)
    cfg["performance"] = {"reference_success": 1.0, "source": "train_window", "window": 3}
    tr = Trainer(cfg, tmp_path)
    fed = []
    agg = tr.aggregators["critic"]
    original = agg.update_performance
    agg.update_performance = lambda dm: (fed.append(list(map(float, dm))), original(dm))
    tr.train()
    assert len(tr.train_success) == 3  # the window keeps the last 3 episodes
    expected = 100 * (1 - torch.tensor(tr.train_success).mean(0))
    assert torch.allclose(torch.tensor(fed[-1], dtype=torch.float64), expected.double())
    assert torch.allclose(agg.delta_m, expected.double())
    with pytest.raises(ConfigError, match="source"):
        Trainer({**cfg, "performance": {"source": "test"}}, tmp_path / "x")


def test_success_table_names_the_best_evaluation_and_its_step():
    from mtrl.trainer import format_success_table

    evals = [{"step": s, "tasks": ["reach-v3", "push-v3"], "success": list(x), "mean_success": sum(x) / 2}
             for s, x in ((1000, (0, 0)), (7050, (1, 1)), (9000, (1, 1)), (11000, (1, 0)))]
    table = format_success_table(evals[-1], evals)
    assert table.splitlines()[2].split() == ["reach-v3", "1.00"]
    assert table.splitlines()[-1].split() == ["mean", "0.50", "(step", "11,000;", "best", "over", "training:",
                                              "1.00", "at", "step", "7,050)"]
    assert "best" not in format_success_table(evals[-1])


@pytest.mark.slow
def test_compiled_update_equals_eager(tmp_path):
    """train.compile=default gives the eager run to float tolerance: the same noise
    (fallback_random), and with pivrg the Gram matrices of the per-task gradients taken to
    the recorded layer outputs (they were zeros under compile before those outputs became
    graph boundaries, and the weights with them)."""
    torch.set_num_threads(1)
    runs = {}
    for mode in ("off", "default"):
        tr = Trainer(point_mass_cfg("pivrg", steps=506, compile=mode, log_every=1, diagnostics_every=0),
                     tmp_path / mode)
        assert tr.compile == mode
        logged = []
        tr.log.scalars = lambda values, step, logged=logged: logged.append(dict(values))
        tr.train()
        runs[mode] = ({n: p.detach().clone() for m in tr.agent.modules().values() for n, p in m.state_dict().items()},
                      [r for r in logged if any(key.startswith("critic_weights/") for key in r)])
        tr.close()
    (eager, eager_log), (compiled, compiled_log) = runs["off"], runs["default"]
    assert len(eager_log) == len(compiled_log) == 7      # the updates of steps 500 to 506
    for a, b in zip(eager_log, compiled_log):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
        assert min(v for key, v in b.items() if key.startswith("actor_weights/")) > 0
    assert eager.keys() == compiled.keys()
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5, msg=name)
