"""The training module: both kinds of classifier learn, heatmaps only when P > 0, export, C1/C2, stopping on NaN."""

import csv
import json
import math
import warnings

import lightning as L
import pytest
import torch

from isnet.backbones import load_model
from isnet.data import MaskedImageDataModule
from isnet.data.builtin import generate_digits_on_textures
from isnet.training import ISNetModule, estimate_c1_c2

warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = generate_digits_on_textures(tmp_path_factory.mktemp("digits"), per_class=(24, 8, 8), size=32)
    dm = MaskedImageDataModule(root, size=32, bias=True, augment=False, batch_size=12, cache=True)
    dm.setup()
    return dm


def fit(module, dm, epochs):
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(max_epochs=epochs, gradient_clip_val=1.0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(module, dm)
    return trainer


def train_loss(module, dm):
    module.eval()
    batch = next(iter(dm.train_dataloader()))
    with torch.no_grad():
        logits, heatmaps = module.net(batch["image"], heatmaps=True)
    return module.criterion(logits, batch["label"], heatmaps, batch["mask"]).total.item()


@pytest.mark.parametrize("P", [0.0, 0.7])
def test_short_training_lowers_the_loss(data, P):
    L.seed_everything(0, verbose=False)
    module = ISNetModule("small_cnn", 3, P=P, arch_kwargs={"width": 8}, lr=0.01, momentum=0.9, C1=0.5, C2=20.0)
    before = train_loss(module, data)
    trainer = fit(module, data, epochs=4)
    assert train_loss(module, data) < before
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/L_C", "val/loss", "val/accuracy"} <= set(metrics)
    assert ("train/L1" in metrics) == (P > 0) and ("val/L2" in metrics) == (P > 0)


def test_standard_classifier_computes_no_heatmaps(data):
    module = ISNetModule("small_cnn", 3, P=0.0, arch_kwargs={"width": 8})

    class Refuse:
        def __call__(self, *args, **kwargs):
            raise AssertionError("heatmaps computed for P = 0")

    module.net.lrp_graph = Refuse()
    fit(module, data, epochs=1)


def test_export_gives_the_plain_backbone(tmp_path, data):
    module = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 8}, class_names=["a", "b", "c"]).eval()
    files = module.export(tmp_path / "export", preprocessing={"size": 32}, formats=["model", "torch_export"])
    assert set(files) == {"model", "torch_export", "preprocessing"}
    assert files["model"].name == "backbone.pt" and files["torch_export"].name == "backbone.pt2"
    x = torch.rand(3, 3, 32, 32)
    expected = module.backbone(x)
    program = torch.export.load(files["torch_export"]).module()
    torch.testing.assert_close(program(x), expected)
    model, info = load_model(files["model"])
    torch.testing.assert_close(model(x), expected)
    assert info["class_names"] == ["a", "b", "c"] and info["preprocessing"] == {"size": 32}
    assert json.loads(files["preprocessing"].read_text())["class_names"] == ["a", "b", "c"]
    assert module.training is False and not (tmp_path / "export" / "backbone.onnx").exists()


def test_c1_c2_are_the_range_of_total_absolute_relevance(data):
    module = ISNetModule("small_cnn", 3, P=0.0, arch_kwargs={"width": 8}).eval()
    c1, c2 = estimate_c1_c2(module.backbone, data.val_dataloader(), batches=2)
    totals = []
    for i, batch in enumerate(data.val_dataloader()):
        if i == 2:
            break
        with torch.no_grad():
            totals.append(module.net(batch["image"], heatmaps=True)[1].abs().sum((2, 3, 4)))
    totals = torch.cat(totals)
    assert c1 == pytest.approx(totals.min().item()) and c2 == pytest.approx(totals.max().item())
    assert 0 < c1 < c2


def test_mixed_precision_and_deterministic_training(data, tmp_path):
    """bf16 autocast on the CPU (16-bit mixed precision on GPUs) and deterministic algorithms."""
    from isnet.training import train

    module = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 8}, lr=0.01, momentum=0.9, C1=0.5, C2=20.0)
    module, best = train(module, data, tmp_path, max_epochs=1, progress=False, precision="bf16-mixed",
                         deterministic=True)
    assert best is not None and best.exists()
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_channels_last_training_gives_the_same_loss_and_gradients(data):
    """The same numbers up to rounding (compared in float64: LRP's divisions amplify float32 rounding).
    Random images: where a max-pooling window holds equal values (flat image regions), the two
    layouts may pick different winners, both valid for Alg. 8."""
    batch = dict(next(iter(data.train_dataloader())))
    batch["image"] = torch.rand(batch["image"].shape, generator=torch.Generator().manual_seed(0))
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        module = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 8}, channels_last=channels_last)
        module = module.double()
        weight = next(p for p in module.parameters() if p.dim() == 4)
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        module.train()
        parts, _ = module.losses(batch)
        parts["loss"].backward()
        results.append((parts, [p.grad.clone() for p in module.parameters()]))
    (parts, grads), (cl_parts, cl_grads) = results
    for name in parts:
        torch.testing.assert_close(cl_parts[name], parts[name], rtol=1e-9, atol=1e-12)
    for g, cl_g in zip(grads, cl_grads):
        torch.testing.assert_close(cl_g, g, rtol=1e-7, atol=1e-10)


def test_isnet_trains_with_ddp_on_two_processes(tmp_path):
    """Distributed data parallel (two CPU processes, gloo): every rank computes the heatmaps and the
    heatmap loss of its share of the batch, DDP averages the gradients, and the trained weights and
    the best checkpoint come back to the calling process."""
    from isnet.training import train

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
    from isnet.training import train

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
    from isnet.training import train

    steps = len(data.train_dataloader())
    original_losses, original_forward = ISNetModule.losses, ISNet.forward
    bad = {"now": False}

    def forward(self, x, heatmaps=False, classes=None):
        out = original_forward(self, x, heatmaps=heatmaps, classes=classes)
        return (out[0], out[1] * 0) if heatmaps and bad["now"] and dead_heatmaps else out

    def losses(self, batch):
        bad["now"] = self.training and self.global_step == steps + 2
        parts, logits = original_losses(self, batch)
        if bad["now"] and spoil_parts is not None:
            spoil_parts(parts)
        return parts, logits

    monkeypatch.setattr(ISNet, "forward", forward)
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

    from isnet.training import train

    logger = logging.getLogger("lightning.pytorch")
    level, filters = logger.level, list(warnings.filters)
    module = ISNetModule("small_cnn", 3, P=0.0, arch_kwargs={"width": 4}, class_names=["a", "b", "c"])
    train(module, data, tmp_path, max_epochs=1, progress=False, accelerator="cpu", heatmap_images=0)
    assert logger.level == level and warnings.filters == filters


def test_warmup_weight_rises_from_zero_to_p():
    from isnet.training import warmup_weight

    assert warmup_weight(0, 0.7, 10) == 0.0
    assert warmup_weight(5, 0.7, 10) == pytest.approx(0.35)
    assert warmup_weight(9, 0.7, 10) == pytest.approx(0.63)
    assert warmup_weight(10, 0.7, 10) == 0.7 and warmup_weight(1000, 0.7, 10) == 0.7
    assert warmup_weight(0, 0.7, 0) == 0.7  # no warm-up: the paper's constant P
    with pytest.raises(ValueError, match=">= 0"):
        warmup_weight(-1, 0.7, 10)


def test_warmup_and_automatic_range_in_training(data, tmp_path):
    """Logged P per epoch is the mean of the schedule over the epoch's steps; C1, C2 are set from the
    warm-up's last epoch, kept in the checkpoint and used from then on; warm-up epochs are not chosen."""
    from isnet.training import train

    steps = len(data.train_dataloader())  # 6 steps per epoch
    L.seed_everything(0, verbose=False)
    module = ISNetModule("small_cnn", 3, P=0.6, arch_kwargs={"width": 4}, heatmap_warmup_epochs=2)
    assert not module.range_known
    module, best = train(module, data, tmp_path, max_epochs=3, progress=False)
    rows = list(csv.DictReader((tmp_path / "logs" / "metrics.csv").open()))
    train_rows = [r for r in rows if r.get("train/P")]
    total = 2 * steps
    for epoch, row in enumerate(train_rows):
        expected = sum(min(0.6, 0.6 * s / total) for s in range(epoch * steps, (epoch + 1) * steps)) / steps
        assert float(row["train/P"]) == pytest.approx(expected, rel=1e-5)
    # the range is known from the warm-up's last step on: logged in epochs 1 and 2 (mean of a constant)
    assert not train_rows[0].get("train/C1")
    assert float(train_rows[1]["train/C1"]) == pytest.approx(module.criterion.C1, rel=1e-5)
    assert module.range_known and 0 < module.criterion.C1 < module.criterion.C2
    assert best.name == "best-epoch=2.ckpt"  # epochs 0 and 1 were warm-up
    reloaded = ISNetModule.load_from_checkpoint(best)
    assert reloaded.range_known and reloaded.criterion.C2 == module.criterion.C2


def test_given_c1_c2_are_kept_and_used_from_the_start(data):
    module = ISNetModule("small_cnn", 3, P=0.6, arch_kwargs={"width": 4}, C1=0.5, C2=9.0, heatmap_warmup_epochs=0)
    assert module.range_known
    fit(module, data, epochs=1)
    assert (module.criterion.C1, module.criterion.C2) == (0.5, 9.0)
    with pytest.raises(ValueError, match="C1 must be positive"):
        ISNetModule("small_cnn", 3, C1=0.0)
    with pytest.raises(ValueError, match="heatmap_warmup_epochs"):
        ISNetModule("small_cnn", 3, heatmap_warmup_epochs=-1)


def test_natural_range_without_warmup_comes_from_the_first_batch(data):
    from isnet.loss import foreground_relevance, natural_range, prepare_masks

    L.seed_everything(0, verbose=False)
    module = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, heatmap_warmup_epochs=0).double()
    batch = next(iter(data.train_dataloader()))
    batch = {**batch, "image": batch["image"].double()}
    with torch.no_grad():
        _, heatmaps = module.net(module._layout(batch["image"]), heatmaps=True)
    expected = natural_range(foreground_relevance(heatmaps, prepare_masks(batch["mask"], heatmaps)))
    module.train()
    parts, _ = module.losses(batch)  # outside a trainer: full P, range from this batch
    assert (module.criterion.C1, module.criterion.C2) == pytest.approx(expected)
    assert float(parts["P"]) == module.hparams.P


def _squares(root, per_class, seed):
    """A tiny task: the class is the colour of a square (the foreground) on a noisy background."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "im").mkdir(parents=True)
    lines = ["image,mask,label,split"]
    for split, n in (("train", per_class), ("val", 10)):
        for k in range(3):
            for i in range(n):
                image = rng.uniform(0, 0.5, (32, 32, 3))
                mask = np.zeros((32, 32), np.uint8)
                top, left = rng.integers(2, 18, 2)
                colour = np.full(3, 0.1)
                colour[k] = 0.9
                image[top:top + 12, left:left + 12] = colour
                mask[top:top + 12, left:left + 12] = 255
                name = f"{split}_{k}_{i}"
                Image.fromarray((image * 255).astype(np.uint8)).save(root / "im" / f"{name}.png")
                Image.fromarray(mask).save(root / "im" / f"{name}_m.png")
                lines.append(f"im/{name}.png,im/{name}_m.png,c{k},{split}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_isnet_with_the_defaults_learns_from_a_random_start(tmp_path):
    """Default ISNetModule settings (optimiser, P, d, warm-up, automatic C1 and C2) on a task a
    classifier learns in a few epochs: validation accuracy far above chance (1/3) for each of two seeds."""
    from isnet.training import train

    accuracies = []
    for seed in (0, 1):
        dm = MaskedImageDataModule(_squares(tmp_path / f"d{seed}", 30, seed), size=32, augment=False, batch_size=8,
                                   cache=True)
        dm.setup()
        L.seed_everything(seed, verbose=False)
        module = ISNetModule("small_cnn", 3, arch_kwargs={"width": 8})
        module, _ = train(module, dm, tmp_path / f"run{seed}", max_epochs=8, progress=False)
        module.eval()
        with torch.no_grad():
            correct = sum(int((module(b["image"]).argmax(1) == b["label"]).sum()) for b in dm.val_dataloader())
        accuracies.append(correct / 30)
    assert min(accuracies) >= 0.7, accuracies


def test_without_warmup_the_range_comes_from_the_first_epoch(data, tmp_path):
    """Full P from the first step; L2 is left out (logged 0) until C1, C2 are set at the first epoch's end."""
    from isnet.training import train

    L.seed_everything(0, verbose=False)
    module = ISNetModule("small_cnn", 3, P=0.6, arch_kwargs={"width": 4}, heatmap_warmup_epochs=0)
    train(module, data, tmp_path, max_epochs=2, progress=False)
    rows = [r for r in csv.DictReader((tmp_path / "logs" / "metrics.csv").open()) if r.get("train/P")]
    assert [float(r["train/P"]) for r in rows] == pytest.approx([0.6, 0.6])
    assert float(rows[1]["train/C2"]) == pytest.approx(module.criterion.C2, rel=1e-5)
    assert module.range_known and 0 < module.criterion.C1 < module.criterion.C2
