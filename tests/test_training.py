"""The training driver :func:`isnet.training.train`: precision and determinism options, distributed
runs, the choice of the best epoch, stopping on a non-finite loss or dead relevance, and the
caller's warning filters."""

import csv
import dataclasses
import math
import warnings

import lightning as L
import pytest
import torch

from isnet.data import MaskedImageDataModule
from isnet.data.builtin import generate_digits_on_textures
from isnet.systems.isnet import ISNetModule
from isnet.training import train
from tests.systems.helpers import biased_digits

warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return biased_digits(tmp_path_factory.mktemp("digits"))


def test_mixed_precision_and_deterministic_training(data, tmp_path):
    """bf16 autocast on the CPU (16-bit mixed precision on GPUs) and deterministic algorithms."""
    module = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 8}, lr=0.01, momentum=0.9, C1=0.5, C2=20.0)
    module, best = train(module, data, tmp_path, max_epochs=1, progress=False, precision="bf16-mixed",
                         deterministic=True)
    assert best is not None and best.exists()
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_isnet_trains_with_ddp_on_two_processes(tmp_path):
    """Distributed data parallel (two CPU processes, gloo): every rank computes the heatmaps and the
    heatmap loss of its share of the batch, DDP averages the gradients, and the trained weights and
    the best checkpoint come back to the calling process."""
    root = generate_digits_on_textures(tmp_path / "digits", per_class=(16, 4, 4), size=32)
    data = MaskedImageDataModule(root, size=32, bias=True, augment=False, batch_size=8)
    data.setup()
    L.seed_everything(0, verbose=False)
    module = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 8}, lr=0.01, momentum=0.9, C1=0.5, C2=20.0)
    before = [p.detach().clone() for p in module.parameters()]
    # The spawned processes receive the module by pickling; sharing its tensors through files rather
    # than file descriptors keeps them independent of descriptors that other tests opened and closed.
    previous = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        module, best = train(module, data, tmp_path / "run", max_epochs=2, progress=False, accelerator="cpu",
                             devices=2, strategy="ddp_spawn")
    finally:
        torch.multiprocessing.set_sharing_strategy(previous)
    assert best is not None and best.exists()
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert len(losses) == 2 and all(map(math.isfinite, losses))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))  # trained weights came back


def test_ddp_validation_metrics_are_those_of_the_whole_validation_set(tmp_path):
    """Two CPU processes: the logged validation values are synchronised, weighted by each process's
    number of images, and the DistributedSampler's repeated images are left out: they equal one
    process's mean over the validation set.  9 validation images in batches of 4: process 0 sees
    images 0, 2, 4, 6, 8 (batches of 4 and 1), process 1 images 1, 3, 5, 7 and image 0 again as padding
    (its last batch is padding alone).  The model does not change (learning rate 0, batch-norm
    momentum 0), so the values are those of one fixed model, equal up to float32 rounding."""
    root = generate_digits_on_textures(tmp_path / "digits", per_class=(4, 3, 1), size=32)
    data = MaskedImageDataModule(root, size=32, bias=True, augment=False, batch_size=4)
    data.setup()
    assert len(data.val_set) == 9
    module = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 8}, lr=0.0, C1=0.5, C2=20.0,
                         class_names=["a", "b", "c"])
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0  # the running statistics stay as they are in training mode
    module.eval()
    sums, count = {}, 0
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(data.val_set, batch_size=4):
            parts, logits = module.losses(batch)
            parts["accuracy"] = (logits.argmax(1) == batch["label"]).float().mean()
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + value.double().item() * len(logits)
            count += len(logits)
    expected = {f"val/{name}": total / count for name, total in sums.items()}
    previous = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")  # see the DDP test above
    try:
        train(module, data, tmp_path / "run", max_epochs=1, progress=False, accelerator="cpu", devices=2,
              strategy="ddp_spawn", heatmap_images=1)
    finally:
        torch.multiprocessing.set_sharing_strategy(previous)
    with open(tmp_path / "run" / "logs" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/loss")]
    assert len(rows) == 1
    for name, value in expected.items():
        assert float(rows[0][name]) == pytest.approx(value, rel=1e-5, abs=1e-7), name
    # the heatmap pictures come from process 0 alone: one per class and epoch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "logs"), size_guidance={"images": 0}).Reload()
    assert sorted(events.Tags()["images"]) == [f"val_heatmaps/{c}_0" for c in "abc"]
    assert all(len(events.Images(tag)) == 1 for tag in events.Tags()["images"])


# -- stopping on a non-finite loss or dead relevance ------------------------------------------
def _train_until_bad(data, tmp_path, monkeypatch, spoil_parts=None, dead_heatmaps=False, epochs=3):
    """Train an ISNet whose batch 2 of epoch 1 goes bad: ``spoil_parts(parts)`` edits its loss
    parts, ``dead_heatmaps`` zeroes its heatmaps.  Returns the error and the steps per epoch."""
    from isnet.model import ISNet
    from isnet.systems.base import TrainingDivergedError

    steps = len(data.train_dataloader())
    original_losses, original_explain = ISNetModule.losses, ISNet.explain
    bad = {"now": False}

    def explain(self, x, *args, **kwargs):
        out = original_explain(self, x, *args, **kwargs)
        if bad["now"] and dead_heatmaps:
            out = dataclasses.replace(out, heatmaps=tuple(h * 0 for h in out.heatmaps))
        return out

    def losses(self, batch):
        bad["now"] = self.training and self.global_step == steps + 2
        parts, logits = original_losses(self, batch)
        if bad["now"] and spoil_parts is not None:
            spoil_parts(parts)
        return parts, logits

    monkeypatch.setattr(ISNet, "explain", explain)
    monkeypatch.setattr(ISNetModule, "losses", losses)
    L.seed_everything(0, verbose=False)
    module = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 8}, lr=0.01, momentum=0.9, C1=0.5, C2=20.0)
    with pytest.raises(TrainingDivergedError) as caught:
        train(module, data, tmp_path, max_epochs=epochs, progress=False, accelerator="cpu")
    return caught.value, steps


def _assert_epoch_0_checkpoints_kept(folder):
    from isnet.systems.registry import load_system

    files = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert files == ["best-epoch=0.ckpt", "last.ckpt"]
    for name in files:
        saved = torch.load(folder / "checkpoints" / name, map_location="cpu", weights_only=False)
        assert saved["epoch"] == 0
        assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())
    module = load_system(folder / "checkpoints" / "last.ckpt")
    assert torch.isfinite(module.deployed(torch.rand(2, 3, 32, 32))).all()


def test_a_nan_loss_part_stops_training_naming_epoch_step_and_part(data, tmp_path, monkeypatch):
    def spoil(parts):
        parts["L1"] = parts["L1"] * float("nan")
        parts["loss"] = parts["loss"] + parts["L1"]

    error, steps = _train_until_bad(data, tmp_path, monkeypatch, spoil_parts=spoil)
    assert (error.stage, error.epoch, error.global_step, error.batch_idx, error.parts) == ("train", 1, steps + 2, 2, ["L1"])
    message = str(error)
    for text in ("epoch 1", f"global step {steps + 2}", "batch 2 of the epoch", "L1 = nan", "best-epoch=0.ckpt, last.ckpt"):
        assert text in message
    assert "L_C" not in message
    _assert_epoch_0_checkpoints_kept(tmp_path)


def test_dead_relevance_stops_training(data, tmp_path, monkeypatch):
    """All heatmaps zero: the heatmap loss stays finite (its normalisations have an epsilon) but
    no longer steers anything, so the run stops as it would on NaN."""
    error, steps = _train_until_bad(data, tmp_path, monkeypatch, dead_heatmaps=True)
    assert (error.epoch, error.global_step, error.batch_idx, error.parts) == (1, steps + 2, 2, ["heatmaps"])
    assert "relevance died: all 12 x 3 heatmaps of the batch are zero" in str(error)
    _assert_epoch_0_checkpoints_kept(tmp_path)


def test_train_leaves_the_callers_warning_filters_and_log_levels_alone(data, tmp_path):
    import logging

    logger = logging.getLogger("lightning.pytorch")
    level, filters = logger.level, list(warnings.filters)
    module = ISNetModule("small_cnn", 3, P=0.0, arch_kwargs={"width": 4}, class_names=["a", "b", "c"])
    train(module, data, tmp_path, max_epochs=1, progress=False, accelerator="cpu", heatmap_images=0)
    assert logger.level == level and warnings.filters == filters


class _Chosen(Exception):
    """Raised in place of the checkpoint callbacks, with the value they would have monitored."""


@pytest.mark.parametrize("monitor", [None, "val/L_C"])
def test_the_best_epoch_follows_the_systems_monitor(data, tmp_path, monkeypatch, monitor):
    """The checkpoints monitor the module's own ``monitor`` (the ISNet's selection loss unless
    changed): train() asks the module and knows no system class."""
    import isnet.checkpointing

    def epoch_checkpoints(folder, *, monitor, mode):
        raise _Chosen(monitor, mode)

    monkeypatch.setattr(isnet.checkpointing, "epoch_checkpoints", epoch_checkpoints)
    module = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4})
    if monitor is not None:
        module.monitor = monitor
    with pytest.raises(_Chosen) as chosen:
        train(module, data, tmp_path, max_epochs=1, progress=False, accelerator="cpu")
    assert chosen.value.args == (monitor or "selection_loss", "min")
