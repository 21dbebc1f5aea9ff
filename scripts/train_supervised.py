#!/usr/bin/env python
"""Train a supervised multi-task benchmark with any aggregator.

    python scripts/train_supervised.py benchmark=qm9 aggregator=pivrg data.root=/data/QM9
    python scripts/train_supervised.py benchmark=celeba aggregator=consmtl data.root=/data/celeba
    python scripts/train_supervised.py benchmark=nyuv2 aggregator=pivrg data.root=/data/nyuv2
    python scripts/train_supervised.py benchmark=cityscapes_small aggregator=ls data.root=/data/cityscapes  # CPU
    python scripts/train_supervised.py benchmark=qm9 aggregator=nash_mtl mode=rep data.root=...   # "-UB"
    python scripts/train_supervised.py -m benchmark=qm9 aggregator=ls,pivrg,fairgrad seed=0,1,2 data.root=...
    torchrun --nproc_per_node 4 scripts/train_supervised.py benchmark=cityscapes aggregator=pivrg data.root=...

Writes per-epoch metrics (``metrics.jsonl``), the test metrics at the selected epoch with
dm%, dm_i and Var[dm_i] (``results.json``), TensorBoard scalars and checkpoints to
``runs/supervised/<benchmark>-<preset>/<mode>/<aggregator>[-<override>...]-<config hash>/seed<seed>``
(``mtrl.run_identity``); re-running continues from the last epoch (``mtrl.launch``: one
process per directory, only under its own config).  Bad configuration, missing or
unreadable data: one line on stderr, exit 2.

Under torchrun every process runs this script: process 0 claims and checks the run
directory and then tells the others to start (or the exit code of a run that does not
start); ``train.batch_size`` is the global batch (``mtrl.distributed``).
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
        from mtrl import distributed
        from mtrl.configuration import ConfigError
        from mtrl.supervised.data.errors import DataError, DatasetNotFound
        from mtrl.supervised.trainer import SupervisedTrainer, prepare_config

        process = distributed.start(str(cfg.get("device", "auto")))
        run_dir, sweep, _, config = launch.hydra_job(cfg, SUPERVISED_KEYS)
        if process.parallel and sweep and distributed.under_torchrun():
            print("error: a torchrun launch runs one run; sweep with hydra/launcher=slurm, which gives each run "
                  "its own tasks (README, 'Several GPUs')", file=sys.stderr)
            raise SystemExit(2)
        told = False

        def train(config: dict) -> None:
            nonlocal told
            if process.main and process.parallel:   # the directory is claimed and checked: the others may read it
                distributed.broadcast("go", process)
                told = True
            trainer = SupervisedTrainer(config, run_dir, process=process)
            if process.main:
                world = f" ({process.world} processes)" if process.parallel else ""
                resumed = f" (resuming after epoch {trainer.epoch})" if trainer.resumed else ""
                print(f"run directory: {run_dir}{world}{resumed}")
                for note in trainer.log.notes:
                    print(f"note: {note}", file=sys.stderr)
            try:
                results = trainer.train()
            except (DataError, DatasetNotFound) as exc:   # a data file found unreadable mid-run
                raise ConfigError(str(exc)) from None
            finally:
                trainer.close()
            if process.main:
                print(json.dumps({k: results[k] for k in ("selected_epoch", "delta_m", "delta_m_var", "delta_m_i")},
                                 indent=1))

        try:
            if process.main:
                try:
                    launch.run_directory(run_dir, config, policy=SUPERVISED_KEYS, prepare=prepare_config,
                                         length="epochs", sweep=sweep, body=train)
                except SystemExit as exc:
                    if not told and process.parallel:
                        distributed.broadcast(exc.code, process)
                        told = True
                    raise
                if not told and process.parallel:   # finished already (skipped): everyone stops
                    distributed.broadcast(0, process)
            else:
                word = distributed.broadcast(None, process)   # process 0's word: "go" or an exit code
                if word != "go":
                    raise SystemExit(word)
                try:
                    train(prepare_config(config))
                except ConfigError as exc:   # process 0 reports the same line
                    raise SystemExit(2) from exc
        finally:
            distributed.stop()

    run()


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], groups=("benchmark", "protocol", "aggregator"))
    main()
