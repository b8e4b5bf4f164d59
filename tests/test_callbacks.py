"""TensorBoard heatmaps of validation images: the picture, the callback's effect on the model, and a fit."""

import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from isnet.callbacks import HeatmapImages, heatmap_picture
from isnet.data import MaskedImageDataModule
from isnet.data.builtin import generate_digits_on_textures
from isnet.render import heatmap_to_rgb, image_to_rgb
from isnet.systems.isnet import ISNetModule
from isnet.training import train

warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = generate_digits_on_textures(tmp_path_factory.mktemp("digits"), per_class=(8, 3, 2), size=32)
    dm = MaskedImageDataModule(root, size=32, bias=True, augment=False, batch_size=8, cache=True)
    dm.setup()
    return dm


def events(folder: Path) -> EventAccumulator:
    files = list(folder.glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {folder}"
    return EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0}).Reload()


def test_picture_is_the_image_then_its_heatmap_enlarged():
    image, heatmap = torch.rand(3, 8, 6), torch.randn(2, 8, 6)
    picture = heatmap_picture(image, heatmap, min_size=20)  # factor 3: the first that reaches 20 pixels
    assert picture.shape == (24, 3 * (6 + 2 + 6), 3) and picture.dtype == np.uint8
    once = picture[::3, ::3]
    assert np.array_equal(once[:, :6], image_to_rgb(image))
    assert (once[:, 6:8] == 255).all()
    assert np.array_equal(once[:, 8:], heatmap_to_rgb(heatmap))
    assert np.array_equal(picture, once.repeat(3, 0).repeat(3, 1))
    with pytest.raises(ValueError, match="differ in size"):
        heatmap_picture(image, torch.randn(8, 5))
    with pytest.raises(ValueError, match="per_class"):
        HeatmapImages(0)


def fake_trainer(tmp_path, data, rank_zero=True):
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    return SimpleNamespace(sanity_checking=False, is_global_zero=rank_zero, loggers=[logger], global_step=7,
                           val_dataloaders=DataLoader(data.val_set, batch_size=4)), logger


def test_callback_leaves_the_model_as_it_was(tmp_path, data):
    """Train mode everywhere before and after; batch-norm statistics unchanged; one picture per example."""
    module = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 8}, class_names=["a", "b", "c"]).train()
    module.net.backbone.features[0].eval()  # a mixed state must come back as it was, too
    modes = {name: m.training for name, m in module.named_modules()}
    state = {k: v.clone() for k, v in module.state_dict().items()}
    trainer, logger = fake_trainer(tmp_path, data)
    HeatmapImages(per_class=2, min_size=32).on_validation_epoch_end(trainer, module)
    assert {name: m.training for name, m in module.named_modules()} == modes
    for k, v in module.state_dict().items():
        assert torch.equal(v, state[k]), k
    acc = events(Path(logger.log_dir))
    tags = acc.Tags()["images"]
    assert sorted(tags) == [f"val_heatmaps/{c}_{n}" for c in "abc" for n in (0, 1)]
    image = acc.Images(tags[0])[0]
    assert image.step == 7 and (image.height, image.width) == (32, 66)


def test_callback_works_only_on_rank_zero(tmp_path, data):
    module = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 8})

    def refuse():
        raise AssertionError("heatmaps computed on a rank other than 0")

    module.explainer = refuse
    trainer, logger = fake_trainer(tmp_path, data, rank_zero=False)
    HeatmapImages().on_validation_epoch_end(trainer, module)
    assert not list(Path(logger.log_dir).glob("events.*"))


@pytest.mark.parametrize("per_class", [1, 0])
def test_fit_logs_losses_and_heatmaps_to_tensorboard(tmp_path, data, per_class):
    module = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 8}, lr=0.01, momentum=0.9, C1=0.5, C2=20.0,
                         class_names=["a", "b", "c"])
    train(module, data, tmp_path, max_epochs=2, progress=False, heatmap_images=per_class)
    logs = tmp_path / "logs"
    assert (logs / "metrics.csv").exists()
    tags = events(logs).Tags()
    for stage in ("train", "val"):
        assert {f"{stage}/{part}" for part in ("loss", "L_C", "L_LRP", "L1", "L2", "accuracy")} <= set(tags["scalars"])
    acc = events(logs)
    if per_class:
        assert sorted(tags["images"]) == [f"val_heatmaps/{c}_0" for c in "abc"]
        steps = [[e.step for e in acc.Images(tag)] for tag in tags["images"]]
        val_steps = [e.step for e in acc.Scalars("val/loss")]
        assert len(val_steps) == 2 and all(s == val_steps for s in steps)  # one picture per validation epoch
    else:
        assert tags["images"] == []


def test_train_refuses_a_negative_number_of_heatmap_images(tmp_path, data):
    module = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 8})
    with pytest.raises(ValueError, match="heatmap_images"):
        train(module, data, tmp_path, max_epochs=1, progress=False, heatmap_images=-1)
