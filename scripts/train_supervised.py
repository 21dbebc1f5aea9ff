#!/usr/bin/env python
"""Train a supervised multi-task benchmark with any aggregator.

    python scripts/train_supervised.py benchmark=qm9 aggregator=pivrg data.root=/data/QM9
    python scripts/train_supervised.py benchmark=celeba aggregator=consmtl data.root=/data/celeba
    python scripts/train_supervised.py benchmark=nyuv2 aggregator=pivrg data.root=/data/nyuv2
    python scripts/train_supervised.py benchmark=cityscapes_small aggregator=ls data.root=/data/cityscapes  # CPU
    python scripts/train_supervised.py benchmark=qm9 aggregator=nash_mtl mode=rep data.root=...   # "-UB"
    python scripts/train_supervised.py -m benchmark=qm9 aggregator=ls,pivrg,fairgrad seed=0,1,2 data.root=...

Writes per-epoch metrics (``metrics.jsonl``), the test metrics at the selected epoch with
dm%, dm_i and Var[dm_i] (``results.json``), TensorBoard scalars and checkpoints to
``runs/supervised/<benchmark>-<preset>/<mode>/<aggregator>[-<override>...]-<config hash>/seed<seed>``
(``mtrl.run_identity``); re-running continues from the last epoch (``mtrl.launch``: one
process per directory, only under its own config).  Bad configuration, missing or
unreadable data: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train import check_group_choices  # noqa: E402  (scripts/train.py)

from mtrl import launch  # noqa: E402  (registers ${run_name:...}; a global of the task function, so sweep
                         # workers that unpickle it import it too)

CONFIGS = ROOT / "configs"


def main() -> None:
    import hydra

    from mtrl.run_identity import SUPERVISED_KEYS

    @hydra.main(config_path=str(CONFIGS), config_name="supervised", version_base="1.3")
    def run(cfg) -> None:
        from mtrl.configuration import ConfigError
        from mtrl.supervised.data.errors import DataError, DatasetNotFound
        from mtrl.supervised.trainer import SupervisedTrainer, prepare_config

        run_dir, sweep, _, config = launch.hydra_job(cfg, SUPERVISED_KEYS)

        def train(config: dict) -> None:
            trainer = SupervisedTrainer(config, run_dir)
            print(f"run directory: {run_dir}" + (f" (resuming after epoch {trainer.epoch})" if trainer.resumed else ""))
            for note in trainer.log.notes:
                print(f"note: {note}", file=sys.stderr)
            try:
                results = trainer.train()
            except (DataError, DatasetNotFound) as exc:   # a data file found unreadable mid-run
                raise ConfigError(str(exc)) from None
            finally:
                trainer.close()
            print(json.dumps({k: results[k] for k in ("selected_epoch", "delta_m", "delta_m_var", "delta_m_i")},
                             indent=1))

        launch.run_directory(run_dir, config, policy=SUPERVISED_KEYS, prepare=prepare_config, length="epochs",
                      sweep=sweep, body=train)

    run()


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], groups=("benchmark", "protocol", "aggregator"))
    main()
