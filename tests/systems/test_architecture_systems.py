"""Pipeline, multi-task U-Net, AG-Sononet and ViT systems: loss terms, shapes, learning."""

import pytest
import torch
import torch.nn.functional as F

from isnet.data import MaskedImageDataModule
from isnet.data.builtin import generate_digits_on_textures
from isnet.systems.pipeline import PipelineModule, SegmentedClassifier, iou_by_threshold
from isnet.systems.registry import build_system, load_system
from isnet.training import train

from .helpers import loss_drops, tiny_batch


def test_multitask_loss_is_the_weighted_sum():
    module = build_system("multitask", 3, width=4, depth=2, hidden=16, P=0.75)
    batch = tiny_batch()
    parts, logits = module.losses(batch)
    logits2, seg = module.net(batch["image"])
    l_s = F.binary_cross_entropy_with_logits(seg, batch["mask"])
    assert float(parts["L_S"]) == pytest.approx(float(l_s), rel=1e-5)
    assert float(parts["loss"]) == pytest.approx(float(0.75 * parts["L_S"] + 0.25 * parts["L_C"]), rel=1e-6)
    module.eval()
    torch.testing.assert_close(module.deployed(batch["image"]), module.net(batch["image"])[0])
    with pytest.raises(ValueError, match="P must lie in"):
        build_system("multitask", 3, P=1.5)


@pytest.mark.parametrize("method, kwargs", [
    ("multitask", {"width": 4, "depth": 2, "hidden": 32, "dropout": 0.0}),
    ("sononet", {"width": 4}),
    ("vit", {"image_size": 16, "vit_kwargs": {"patch_size": 4}}),
])
def test_short_training_lowers_the_loss(method, kwargs):
    torch.manual_seed(0)
    module = build_system(method, 3, **kwargs)
    batch = tiny_batch()
    first, last = loss_drops(module, batch, steps=20)
    assert last < first
    logits, heatmaps = module.explainer()(batch["image"])
    assert logits.shape == (8, 3) and heatmaps.shape[:2] == (8, 3) and heatmaps.shape[-2:] == (16, 16)
    assert torch.isfinite(heatmaps).all()


def test_segmented_classifier_erases_the_background():
    class Half(torch.nn.Module):  # foreground logit +5 on the left half, -5 on the right
        def forward(self, x):
            out = torch.full_like(x[:, :1], -5.0)
            out[..., : x.shape[-1] // 2] = 5.0
            return out

    seen = []
    pipeline = SegmentedClassifier(Half(), torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(2)),
                                   torch.tensor(0.5))
    x = torch.rand(2, 3, 4, 4) + 0.1
    segmented = pipeline.segment(x)
    assert (segmented[..., 2:] == 0).all() and torch.equal(segmented[..., :2], x[..., :2])
    seen.append(pipeline(x).shape)
    assert seen == [(2, 2)]


def test_pipeline_trains_its_segmenter_first_then_the_classifier(tmp_path):
    root = generate_digits_on_textures(tmp_path / "data", per_class=(8, 4, 4), size=32)
    dm = MaskedImageDataModule(root, size=32, augment=False, batch_size=12, cache=True)
    dm.setup()
    module = build_system("pipeline", dm.num_classes, backbone="small_cnn", arch_kwargs={"width": 4},
                          unet_width=4, unet_depth=2, segmenter_epochs=2, segmenter_lr=0.01, optimizer="adam",
                          lr=0.01, class_names=dm.classes)
    assert float(module.threshold) < 0
    with pytest.raises(RuntimeError, match="segmenter is not trained"):
        module.losses(next(iter(dm.train_dataloader())))
    before = {k: v.clone() for k, v in module.segmenter.state_dict().items()}
    module, best = train(module, dm, tmp_path / "run", max_epochs=2, progress=False)
    assert (tmp_path / "run" / "segmenter" / "logs" / "metrics.csv").exists()
    ious = iou_by_threshold(module.segmenter, dm.val_set)
    assert float(module.threshold) == pytest.approx(max(ious, key=ious.get))
    assert float(module.segmenter_iou) == pytest.approx(max(ious.values()))
    after_stage1 = {k: v.clone() for k, v in module.segmenter.state_dict().items()}
    assert any(not torch.equal(before[k], after_stage1[k]) for k in before)  # the U-Net learned
    # the frozen U-Net did not change during the classifier's training
    assert not any(p.requires_grad for p in module.segmenter.parameters())
    loaded = load_system(best)
    assert isinstance(loaded, PipelineModule) and float(loaded.threshold) == float(module.threshold)
    x = next(iter(dm.val_dataloader()))["image"]
    loaded.eval()
    module.eval()
    torch.testing.assert_close(loaded.deployed(x), module.deployed(x))
    assert loaded.without_segmenter(x).shape == (len(x), 3)
    assert module.explainer()(x)[1].shape == (len(x), 3, 3, 32, 32)


def test_pipeline_classifier_learns_on_segmented_images():
    torch.manual_seed(0)
    module = PipelineModule("small_cnn", 3, arch_kwargs={"width": 8, "batch_norm": False}, unet_width=4,
                            unet_depth=2)
    module.threshold.fill_(0.5)  # as if stage 1 had run
    for p in module.segmenter.parameters():
        p.requires_grad_(False)
    segmenter = {k: v.clone() for k, v in module.segmenter.state_dict().items()}
    first, last = loss_drops(module, tiny_batch(), steps=20)
    assert last < first
    assert all(torch.equal(v, module.segmenter.state_dict()[k]) for k, v in segmenter.items())
    assert [p for p in module.trainable_parameters()] == list(module.classifier.parameters())
