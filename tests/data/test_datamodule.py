"""Dataset folders: reading, validation errors that name the row, loaders, augmentation."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from isnet.data import Augmentation, ManifestError, MaskedImageDataModule, Preprocessing, read_image, read_mask


def make_folder(root, rows, size=(12, 10)):
    """rows: (name, has_mask, label, split); images are random, masks a centred box."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    records = []
    for name, has_mask, label, split in rows:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"{name}.png")
        mask = ""
        if has_mask:
            m = np.zeros((size[1], size[0]), np.uint8)
            m[3:7, 3:8] = 255
            Image.fromarray(m).save(root / f"{name}_mask.png")
            mask = f"{name}_mask.png"
        records.append((f"{name}.png", mask, label, split))
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "mask", "label", "split"])
        w.writerows(records)
    return root


BASIC = [("a", True, "cat", "train"), ("b", True, "dog", "train"), ("c", True, "cat", "val"),
         ("d", True, "dog", "val"), ("e", False, "cat", "test"), ("f", False, "dog", "external")]  # fmt: skip


def test_loaders_and_test_variants(tmp_path):
    dm = MaskedImageDataModule(make_folder(tmp_path / "ds", BASIC), size=16, bias=True, batch_size=2, augment=False)
    dm.setup()
    assert dm.classes == ["cat", "dog"]
    assert dm.test_names == [f"{s}/{v}" for s in ("external", "test") for v in ("biased", "standard", "deceiving")]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 16) and batch["mask"].shape == (2, 1, 16, 16)
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert len(dm.test_dataloader()) == 6
    standard = dm.test_sets["test/standard"][0]["image"]
    biased = dm.test_sets["test/biased"][0]["image"]
    assert not torch.equal(standard, biased)


def test_multilabel_targets(tmp_path):
    rows = [("a", True, "smile|cheeks", "train"), ("b", True, "cheeks", "val"), ("c", False, "", "test")]
    dm = MaskedImageDataModule(make_folder(tmp_path / "ml", rows), size=8, multilabel=True, augment=False)
    dm.setup()
    assert dm.classes == ["cheeks", "smile"]
    assert dm.train_set[0]["label"].tolist() == [1.0, 1.0]
    assert dm.test_sets["test"][0]["label"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "rows,message",
    [
        (BASIC[:4] + [("e", False, "cat", "train")], r"line 6: the 'train' split needs a mask"),
        (BASIC[:4] + [("e", True, "bird", "train")], r"line 6: unknown label\(s\) \['bird'\]"),
        (BASIC[:2], r"split 'val' has no rows"),
        (BASIC[:3] + [("d", True, "cat|dog", "val")], r"line 5: a single-label task needs exactly one label"),
    ],
)
def test_manifest_errors_name_the_row(tmp_path, rows, message):
    root = make_folder(tmp_path / "bad", rows)
    dm = MaskedImageDataModule(root, size=8, classes=["cat", "dog"])
    with pytest.raises(ManifestError, match=message):
        dm.setup()


def test_unreadable_image_mismatched_and_empty_masks(tmp_path):
    root = make_folder(tmp_path / "x", BASIC)
    (root / "b.png").write_bytes(b"garbage")
    with pytest.raises(ManifestError, match=r"line 3: cannot read image"):
        MaskedImageDataModule(root, size=8).setup()
    root = make_folder(tmp_path / "y", BASIC)
    Image.fromarray(np.full((5, 5), 255, np.uint8)).save(root / "c_mask.png")
    with pytest.raises(ManifestError, match=r"line 4: mask c_mask.png is 5x5 but image c.png is 12x10"):
        MaskedImageDataModule(root, size=8).setup()
    root = make_folder(tmp_path / "z", BASIC)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "a_mask.png")
    with pytest.raises(ManifestError, match=r"line 2: mask .* is empty"):
        MaskedImageDataModule(root, size=8).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no manifest.csv"):
        MaskedImageDataModule(tmp_path / "empty").setup()


def test_augmentation_moves_image_and_mask_together():
    image = torch.zeros(3, 32, 32)
    image[:, 10:20, 12:18] = 1.0
    mask = (image[:1] > 0.5).float()
    torch.manual_seed(3)
    aug_image, aug_mask = Augmentation(translate=0.2, rotate=30, flip=True)(image, mask)
    assert not torch.equal(aug_mask, mask)
    bright = aug_image.mean(0) > 0.5
    assert (bright == (aug_mask[0] > 0.5)).float().mean() > 0.97
    assert set(aug_mask.unique().tolist()) <= {0.0, 1.0}


def test_preprocessing_grayscale_equalise_and_square(tmp_path):
    img = np.zeros((10, 20), np.uint8)
    img[:, 10:] = 100
    Image.fromarray(img).save(tmp_path / "g.png")
    x = read_image(tmp_path / "g.png", Preprocessing(size=8, grayscale=True, equalize=True))
    assert x.shape == (3, 8, 8) and torch.equal(x[0], x[1]) and x.max() == 1.0  # equalised to full range
    sq = read_image(tmp_path / "g.png", Preprocessing(size=8, grayscale=True, square=True))
    assert sq[:, 0].max() == 0 and sq[:, -1].max() == 0  # black borders above and below
    Image.fromarray(img).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", Preprocessing(size=8))[0, :, -1].min() == 1.0
