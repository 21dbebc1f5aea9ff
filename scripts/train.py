#!/usr/bin/env python
"""Train multi-task SAC on MetaWorld (or the point-mass env) with any aggregator.

    python scripts/train.py env=mt10 agent=mh_sac aggregator=pivrg seed=0
    python scripts/train.py experiment=mt10_quick             # the README's main job
    python scripts/train.py experiment=mt10_paper aggregator=nash_mtl seed=3

Sweeps (Hydra multirun; see the README's "Sweeps" section):

    python scripts/train.py -m sweep=point_mass_smoke hydra/launcher=local
    python scripts/train.py -m sweep=mt10_table hydra/launcher=slurm hydra.launcher.partition=gpu
    python scripts/train.py -m experiment=mt10_quick aggregator=ls,pivrg seed=0,1,2 hydra/launcher=local

Re-running the same command continues the run from its last checkpoint; a run that
already finished is skipped.  The run directory is
``runs/<env>/<protocol>/<agent>/<aggregator>[-<override>...]-<config hash>/seed<seed>``
(in a sweep ``runs/sweeps/<same>``) unless ``hydra.run.dir=...`` says otherwise, so two
different configs never share one (``mtrl.run_identity``); one process at a time holds a
directory, and a directory is only continued under its own config (``mtrl.launch``).
Bad configuration: one line on stderr, exit 2.  In a sweep, a run that fails records
the error in its ``status.json`` and the other runs go on.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtrl import launch  # noqa: E402  (registers ${run_name:...}; a global of the task function, so sweep
                         # workers that unpickle it import it too)

CONFIGS = ROOT / "configs"
GROUPS = ("env", "agent", "aggregator", "experiment", "sweep")


def check_group_choices(argv: list[str], groups: tuple[str, ...] = GROUPS) -> None:
    """Unknown config-group choices (env, agent, aggregator, ...): one clear line and exit
    code 2 (Hydra's own message for this is a multi-line traceback-like report)."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in groups or value in ("null", ""):
            continue
        valid = launch.aggregator_choices() if key == "aggregator" else sorted(p.stem for p in (CONFIGS / key).glob("*.yaml"))
        for choice in value.split(","):  # multirun sweeps: a,b,c
            if choice not in valid:
                print(f"error: unknown {key} {choice!r}; valid: {', '.join(valid)}", file=sys.stderr)
                raise SystemExit(2)


def main() -> None:
    import hydra

    from mtrl.run_identity import RL_KEYS

    @hydra.main(config_path=str(CONFIGS), config_name="train", version_base="1.3")
    def run(cfg) -> None:
        from mtrl.trainer import NonFiniteError, Trainer, format_success_table, prepare_config

        run_dir, sweep, overrides, config = launch.hydra_job(cfg, RL_KEYS)

        def train(config: dict) -> None:
            trainer = Trainer(config, run_dir)
            print(f"run directory: {run_dir}" + (" (resuming from step %d)" % trainer.step if trainer.resumed else ""))
            for note in trainer.log.notes:
                print(f"note: {note}", file=sys.stderr)
            print(f"protocol: {trainer.env.protocol}")
            try:
                record = trainer.train()
            except NonFiniteError as exc:
                lower = trainer.learning_rate / 10
                raise launch.RunFailed(f"{exc}; to resume it with a lower learning rate: "
                                + launch.resume_command("scripts/train.py", overrides, run_dir, {"agent.lr": f"{lower:g}"})) from None
            finally:
                trainer.close()
            if record is not None:
                print(format_success_table(record, trainer.evaluations))

        launch.run_directory(run_dir, config, policy=RL_KEYS, prepare=prepare_config, length="steps", sweep=sweep, body=train)

    run()


if __name__ == "__main__":
    check_group_choices(sys.argv[1:])
    main()
