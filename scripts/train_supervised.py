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
``runs/supervised/<benchmark>-<preset>/<mode>/<aggregator>/seed<seed>``; re-running continues
from the last epoch.  Bad configuration or missing data: one line on stderr, exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from train import check_group_choices, share_cpus  # noqa: E402  (scripts/train.py)

CONFIGS = ROOT / "configs"


def main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    @hydra.main(config_path=str(CONFIGS), config_name="supervised", version_base="1.3")
    def run(cfg) -> None:
        from mtrl.checkpoint import CheckpointError
        from mtrl.configuration import ConfigError
        from mtrl.supervised.trainer import SupervisedTrainer
        from mtrl.run_files import run_is_finished

        hc = HydraConfig.get()
        run_dir = hc.runtime.output_dir
        if hc.mode == RunMode.MULTIRUN:
            share_cpus(hc.launcher)
        if run_is_finished(run_dir, cfg.train.epochs):
            print(f"run directory: {run_dir} (finished: {cfg.train.epochs} epochs; skipped)")
            return
        config = OmegaConf.to_container(cfg, resolve=True)
        config["benchmark"]["root"] = config["data"]["root"]
        try:
            trainer = SupervisedTrainer(config, run_dir)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2)
        except CheckpointError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(1)
        print(f"run directory: {run_dir}" + (f" (resuming after epoch {trainer.epoch})" if trainer.resumed else ""))
        try:
            results = trainer.train()
        finally:
            trainer.close()
        print(json.dumps({k: results[k] for k in ("selected_epoch", "delta_m", "delta_m_var", "delta_m_i")}, indent=1))

    run()


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], groups=("benchmark", "aggregator"))
    main()
