"""The ISNet module: both kinds of classifier learn, heatmaps only when P > 0, export, C1/C2, the
heatmap-loss warm-up and the automatic natural range."""

import csv
import json
import warnings

import lightning as L
import pytest
import torch

from isnet.backbones import load_model
from isnet.data import MaskedImageDataModule
from isnet.systems.base import SystemModule
from isnet import defaults
from isnet.systems.isnet import ISNetModule, estimate_c1_c2, warmup_weight
from isnet.systems.rrr import RRRModule
from isnet.training import train

from .helpers import biased_digits

warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return biased_digits(tmp_path_factory.mktemp("digits"))


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


def test_the_best_epoch_is_chosen_by_the_selection_loss():
    """:func:`isnet.training.train` keeps the epoch of the lowest ``monitor``: the ISNet's leaves out
    the warm-up epochs, the other systems use the validation loss."""
    assert ISNetModule.monitor == "selection_loss"
    assert SystemModule.monitor == RRRModule.monitor == "val/loss"


def test_warmup_weight_rises_from_zero_to_p():
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
    steps = len(data.train_dataloader())  # 6 steps per epoch
    L.seed_everything(0, verbose=False)
    module = ISNetModule("small_cnn", 3, P=0.6, arch_kwargs={"width": 4}, heatmap_warmup_epochs=2, range_follows=False,
                         heatmap_gate=None)
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
    module = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, heatmap_warmup_epochs=0,
                         background_swap=0).double()  # the range of these very images
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
    L.seed_everything(0, verbose=False)
    module = ISNetModule("small_cnn", 3, P=0.6, arch_kwargs={"width": 4}, heatmap_warmup_epochs=0,
                         range_follows=False, heatmap_gate=None)
    train(module, data, tmp_path, max_epochs=2, progress=False)
    rows = [r for r in csv.DictReader((tmp_path / "logs" / "metrics.csv").open()) if r.get("train/P")]
    assert [float(r["train/P"]) for r in rows] == pytest.approx([0.6, 0.6])
    assert float(rows[1]["train/C2"]) == pytest.approx(module.criterion.C2, rel=1e-5)
    assert module.range_known and 0 < module.criterion.C1 < module.criterion.C2


def _background_coded(n=24, size=16):
    """The class is the background's colour; every foreground (a centred box) is the same grey."""
    labels = torch.arange(n) % 3
    images = torch.full((n, 3, size, size), 0.1)
    for i, k in enumerate(labels.tolist()):
        images[i, k] = 0.9
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, 4:12, 4:12] = 1
    images = torch.where(masks >= 0.5, torch.full_like(images, 0.5), images)
    return {"image": images, "mask": masks, "label": labels}


@pytest.mark.parametrize("swap, learns", [(0.0, True), (1.0, False)])
def test_background_swap_makes_a_background_shortcut_unlearnable(swap, learns):
    torch.manual_seed(0)
    batch = _background_coded()
    module = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, P=0.0, background_swap=swap, channels_last=False)
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-2)
    module.train()
    for _ in range(60):
        optimiser.zero_grad()
        module.losses(batch)[0]["loss"].backward()
        optimiser.step()
    module.eval()
    with torch.no_grad():
        accuracy = (module(batch["image"]).argmax(1) == batch["label"]).float().mean().item()
    assert (accuracy == 1.0) if learns else (accuracy < 0.6)


def test_background_swap_defaults_to_every_image_for_an_isnet_and_none_for_a_standard_classifier():
    assert ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}).background_swap == 1.0
    assert ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, P=0.0).background_swap == 0.0
    assert ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, P=0.0, background_swap=0.5).background_swap == 0.5
    with pytest.raises(ValueError, match="background_swap"):
        ISNetModule("small_cnn", 3, background_swap=2.0)


def test_background_jitter_defaults_to_the_library_default_and_is_checked():
    assert ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}).background_jitter == defaults.BACKGROUND_JITTER
    assert ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, background_jitter=0).background_jitter == 0.0
    for bad in (1.5, -0.1, "strong"):
        with pytest.raises(ValueError, match="background_jitter"):
            ISNetModule("small_cnn", 3, background_jitter=bad)


def test_validation_sees_the_original_images():
    batch = _background_coded(n=6)
    module = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, P=0.0, background_swap=1.0).eval()
    with torch.no_grad():
        first, _ = module.losses(batch)
        second, _ = module.losses(batch)
        expected = torch.nn.functional.cross_entropy(module(batch["image"]), batch["label"])
    assert first["loss"].item() == second["loss"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_a_following_range_is_measured_each_epoch_and_never_lowered(data, tmp_path):
    L.seed_everything(0, verbose=False)
    module = ISNetModule("small_cnn", 3, P=0.6, arch_kwargs={"width": 4}, heatmap_warmup_epochs=1, heatmap_gate=None)
    module, _ = train(module, data, tmp_path, max_epochs=5, progress=False)
    rows = [r for r in csv.DictReader((tmp_path / "logs" / "metrics.csv").open()) if r.get("train/C1")]
    # set at the warm-up's end, then constant within an epoch and raised (or kept) between epochs
    seen = [(float(r["train/C1"]), float(r["train/C2"])) for r in rows[1:]] + [module.natural_ranges["input"]]
    assert len(seen) == 5
    for (c1, c2), (d1, d2) in zip(seen, seen[1:]):
        assert d1 >= c1 * (1 - 1e-6) and d2 >= c2 * (1 - 1e-6) and d1 < d2
    assert seen[-1] != pytest.approx(seen[0])  # measured again, not frozen


def test_widening_raises_automatic_ranges_only():
    module = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4})
    module.set_natural_range(1.0, 10.0)

    def moments(values):
        g = torch.tensor(values, dtype=torch.float64)
        return torch.stack([g.new_tensor(len(g)), g.sum(), (g * g).sum()]).view(1, 3)

    module.widen_natural_ranges(moments([20.0, 22.0, 24.0]))  # mean 22, std 2: (16, 28)
    assert module.natural_ranges["input"] == pytest.approx((16.0, 28.0))
    module.widen_natural_ranges(moments([1.0, 1.5, 2.0]))  # lower: nothing changes
    assert module.natural_ranges["input"] == pytest.approx((16.0, 28.0))
    given = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, C1=1.0, C2=10.0)
    given.widen_natural_ranges(moments([20.0, 22.0, 24.0]))
    assert given.natural_ranges["input"] == (1.0, 10.0)


def test_the_gate_opens_when_the_classifier_has_learned_or_time_is_up():
    from types import SimpleNamespace

    module = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, P=0.5, heatmap_gate=0.7, heatmap_warmup_epochs=0)
    fake = SimpleNamespace(world_size=1, max_epochs=9, current_epoch=0, global_step=12)
    module._trainer = fake

    def epoch_ends(mean_loss, epoch, step):
        fake.current_epoch, fake.global_step = epoch, step
        module._gate_stats = torch.tensor([mean_loss * 10, 10], dtype=torch.float64)
        module._check_gate()
        return module.heatmap_start

    assert module.heatmap_start is None and module.heatmap_weight(12) == 0.0
    assert epoch_ends(0.9, 0, 12) is None  # above 0.7 ln 3 = 0.769: still closed
    assert epoch_ends(0.75, 1, 24) == 24  # below: the heatmap loss starts at the next step
    assert module.heatmap_weight(23) == 0.0 and module.heatmap_weight(24) == 0.5
    module._heatmap_start = None
    assert epoch_ends(1.0, 2, 36) == 36  # not learned, but a third of the 9 epochs has passed
    assert ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}, P=0.0).heatmap_weight(0) == 0.0
    with pytest.raises(ValueError, match="heatmap_gate"):
        ISNetModule("small_cnn", 3, heatmap_gate=0.0)


def test_a_closed_gate_trains_the_classifier_alone_and_its_opening_is_kept_in_checkpoints(data, tmp_path):
    L.seed_everything(0, verbose=False)
    module = ISNetModule("small_cnn", 3, P=0.6, arch_kwargs={"width": 4}, heatmap_warmup_epochs=1,
                         heatmap_gate=1e-6)  # never reached: opens after the first third of the epochs
    steps = len(data.train_dataloader())
    module, best = train(module, data, tmp_path, max_epochs=6, progress=False)
    rows = [r for r in csv.DictReader((tmp_path / "logs" / "metrics.csv").open()) if r.get("train/P")]
    assert [float(r["train/P"]) for r in rows[:2]] == [0.0, 0.0] and float(rows[2]["train/P"]) > 0
    assert not rows[1].get("train/L1") and rows[2].get("train/L1")  # no heatmaps while closed
    assert module.heatmap_start == 2 * steps
    assert int(best.name.split("=")[1].split(".")[0]) >= 3  # chosen after the warm-up (epoch 2)
    assert ISNetModule.load_from_checkpoint(best)._heatmap_start == 2 * steps
    older = torch.load(best, weights_only=False)
    del older["isnet_heatmap_start"]  # a checkpoint from before the gate: heatmap loss from the start
    torch.save(older, tmp_path / "older.ckpt")
    assert ISNetModule.load_from_checkpoint(tmp_path / "older.ckpt")._heatmap_start == 0
