"""The optimisation every system shares: optimisers, schedules, the learning-rate warm-up, dead relevance."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from isnet.systems.base import RelevanceDiedError, check_optimisation, lr_factor, require_relevance, warmup_steps
from isnet.systems.isnet import ISNetModule

from .helpers import tiny_batch


def test_lr_factor_ramps_linearly_then_follows_the_cosine():
    f = [lr_factor(s, warmup_steps=4, total_steps=12, cosine=True) for s in range(12)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # cosine from 1 (step 4) towards 0 at step 12
    assert f[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * i / 8)) for i in range(8)])
    assert all(a >= b for a, b in zip(f[3:], f[4:]))


def test_lr_factor_without_cosine_stays_at_one_after_the_warm_up():
    f = [lr_factor(s, warmup_steps=3, total_steps=10, cosine=False) for s in range(10)]
    assert f == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1, 1, 1])


def test_warmup_steps_follow_the_epochs():
    assert warmup_steps(2, total_steps=50, max_epochs=10) == 10
    assert warmup_steps(0.5, total_steps=50, max_epochs=10) == 2  # rounds 2.5 to the even 2
    assert warmup_steps(100, total_steps=50, max_epochs=10) == 50  # never past the run
    assert warmup_steps(0.01, total_steps=50, max_epochs=10) == 1


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_a_negative_or_nan_warm_up_is_refused(bad):
    with pytest.raises(ValueError, match="warmup_epochs"):
        check_optimisation("adam", "cosine", bad)
    with pytest.raises(ValueError, match="warmup_epochs"):
        ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, warmup_epochs=bad)


class _Rates(L.Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_training_warms_the_learning_rate_up_step_by_step(schedule):
    batch = tiny_batch(n=16, size=16)
    rows = [{k: v[i] for k, v in batch.items()} for i in range(16)]
    loader = DataLoader(rows, batch_size=4)  # 4 steps per epoch
    module = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, P=0.5, optimizer="adam", lr=0.01,
                         lr_schedule=schedule, warmup_epochs=1)
    rates = _Rates()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[rates])
    trainer.fit(module, loader)
    expected = [0.01 * lr_factor(s, warmup_steps=4, total_steps=12, cosine=schedule == "cosine") for s in range(12)]
    assert rates.rates == pytest.approx(expected)
    assert rates.rates[0] == pytest.approx(0.0025)


def test_no_warm_up_keeps_the_per_epoch_cosine():
    module = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, optimizer="adam", lr_schedule="cosine")
    trainer = L.Trainer(max_epochs=5, accelerator="cpu", logger=False)
    module.trainer = trainer
    config = module.configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.CosineAnnealingLR)
    assert config["lr_scheduler"]["interval"] == "epoch"


def test_all_zero_heatmaps_mean_dead_relevance():
    maps = torch.zeros(2, 3, 1, 4, 4)
    with pytest.raises(RelevanceDiedError, match="all 2 x 3 heatmaps"):
        require_relevance(maps)
    maps[1, 2, 0, 3, 3] = -1e-30
    require_relevance(maps)  # one non-zero value anywhere: alive
    require_relevance(torch.full((1, 1, 1, 2, 2), float("nan")))  # NaN is the finite check's business


def test_the_lrp_settings_are_the_systems_hyper_parameters():
    """Reports explain with the LRP settings a system was built with; the paper's where it has none."""
    from isnet.lrp import LRPSettings
    from isnet.systems.pipeline import SegmenterModule
    from isnet.systems.registry import build_system
    from isnet.systems.unet import UNet

    rrr = build_system("rrr", 3, backbone="small_cnn", arch_kwargs={"width": 4}, epsilon=0.1, zb=False)
    assert rrr.lrp_settings() == LRPSettings(epsilon=0.1, zb=False)
    isnet = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, low=[0.0, -1.0, 0.0], high=[1.0, 1.0, 2.0])
    assert isnet.lrp_settings() == isnet.net.lrp_settings == LRPSettings(low=(0.0, -1.0, 0.0), high=(1.0, 1.0, 2.0))
    assert SegmenterModule(UNet(3, 1, 4, 2)).lrp_settings() == LRPSettings()
