#!/usr/bin/env python
"""Train multi-task SAC on MetaWorld (or the point-mass env) with any aggregator.

    python scripts/train.py env=mt10 agent=mh_sac aggregator=pivrg seed=0
    python scripts/train.py experiment=mt10_quick             # the README's main job
    python scripts/train.py experiment=mt10_paper aggregator=nash_mtl seed=3

Re-running the same command continues the run from its last checkpoint (the run
directory is ``runs/<env>/<protocol>/<agent>/<aggregator>/seed<seed>`` unless
``hydra.run.dir=...`` says otherwise).  Bad configuration: one line on stderr, exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = ROOT / "configs"
GROUPS = ("env", "agent", "aggregator", "experiment")


def check_group_choices(argv: list[str]) -> None:
    """Unknown env/agent/aggregator/experiment: one clear line and exit code 2 (Hydra's own
    message for this is a multi-line traceback-like report)."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or value in ("null", ""):
            continue
        valid = sorted(p.stem for p in (CONFIGS / key).glob("*.yaml"))
        for choice in value.split(","):  # multirun sweeps: a,b,c
            if choice not in valid:
                print(f"error: unknown {key} {choice!r}; valid: {', '.join(valid)}", file=sys.stderr)
                raise SystemExit(2)


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    @hydra.main(config_path=str(CONFIGS), config_name="train", version_base="1.3")
    def run(cfg) -> None:
        from mtrl.checkpoint import CheckpointError
        from mtrl.trainer import ConfigError, NonFiniteError, Trainer, format_success_table

        run_dir = HydraConfig.get().runtime.output_dir
        config = OmegaConf.to_container(cfg, resolve=True)
        try:
            trainer = Trainer(config, run_dir)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2)
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1)
        print(f"run directory: {run_dir}" + (" (resuming from step %d)" % trainer.step if trainer.resumed else ""))
        print(f"protocol: {trainer.env.protocol}")
        try:
            record = trainer.train()
        except NonFiniteError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1)
        finally:
            trainer.close()
        if record is not None:
            print(format_success_table(record, trainer.best_mean_success))

    run()


if __name__ == "__main__":
    check_group_choices(sys.argv[1:])
    main()
