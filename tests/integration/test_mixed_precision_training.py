"""train.amp in the supervised trainer: bf16 and fp16 (with GradScaler's dynamic loss
scale) train multidigits, an overflowing step is skipped and backs the scale off, and the
scaler's state survives a resume."""

from __future__ import annotations

import pytest
import torch

from distributed_runs import supervised_config
from mtrl.configuration import ConfigError
from mtrl.supervised.trainer import SupervisedTrainer

pytestmark = pytest.mark.slow


def _losses(trainer: SupervisedTrainer, steps: int) -> list[float]:
    loader = trainer.bench.loader("train", trainer.batch_size, shuffle=True, seed=0)
    out = []
    for i, batch in enumerate(loader):
        if i == steps:
            break
        out.append(float(trainer.train_step(trainer.bench.to_device(batch, trainer.device)).losses.sum()))
    return out


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_follows_the_float32_run(tmp_path, amp):
    runs = {}
    for mode in ("off", amp):
        trainer = SupervisedTrainer(supervised_config("pivrg", batch=64, amp=mode, lr=3e-3), tmp_path / mode)
        try:
            runs[mode] = torch.tensor(_losses(trainer, 40))
        finally:
            trainer.close()
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())   # autocast keeps float32 weights
    off, mixed = runs["off"], runs[amp]
    assert off[-5:].mean() < 0.97 * off[:5].mean()          # the float32 run learns ...
    assert mixed[-5:].mean() < 0.97 * mixed[:5].mean()      # ... and so does the mixed-precision one,
    assert float(((mixed - off) / off).abs().max()) < 0.02   # along the same path


def test_an_overflowing_fp16_step_is_skipped_and_backs_off_the_scale(tmp_path):
    trainer = SupervisedTrainer(supervised_config("nash_mtl", batch=32, amp="fp16"), tmp_path)
    try:
        trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)   # the scaled losses overflow
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        batch = next(iter(trainer.bench.loader("train", 32, shuffle=False)))
        info = trainer.train_step(batch)
        assert info.finite is False
        assert trainer.scaler.get_scale() == 2.0 ** 126
        assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
        steps = 0
        while not trainer.train_step(batch).finite:    # backs off until the step fits
            steps += 1
            assert steps < 200
        assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    finally:
        trainer.close()


def test_the_loss_scale_is_resumed(tmp_path):
    cfg = supervised_config("pivrg", epochs=1, batch=32, max_batches=3, amp="fp16")
    first = SupervisedTrainer(cfg, tmp_path)
    try:
        first.train()
        scale = first.scaler.get_scale()
    finally:
        first.close()
    cfg["train"]["epochs"] = 2
    again = SupervisedTrainer(cfg, tmp_path)
    try:
        assert again.resumed and again.scaler.get_scale() == scale
    finally:
        again.close()


def test_an_unknown_amp_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match="train.amp must be one of off, bf16, fp16"):
        SupervisedTrainer(supervised_config("ls", amp="fp8"), tmp_path)
