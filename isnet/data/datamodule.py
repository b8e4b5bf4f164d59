"""Datasets of images, foreground masks and labels, and their Lightning data module."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .bias import VARIANTS, ShapeBias
from .images import Augmentation, Preprocessing, read_image, read_mask
from .manifest import LESION, Row, class_names, manifest_columns, read_manifest, validate


class MaskedImageDataset(Dataset):
    """Rows of a manifest as training samples.

    Each item is a dict with ``image`` ``(C, S, S)`` in [0, 1], ``mask`` ``(1, S, S)`` in
    {0, 1} (zeros when the row has no mask), ``label`` (class index, or a float 0/1
    vector of length K for multi-label tasks) and ``index`` (row position).  Datasets with
    lesion masks add ``lesion`` ``(1, S, S)`` in {0, 1} (zeros when the row has none),
    read like the mask and augmented with it.

    Args:
        rows: manifest rows.
        classes: class names; their order defines the class indices.
        prep: how images are read.
        augmentation: applied to image and mask together, or ``None``.
        bias: synthetic shape bias and the variant to draw (``biased``, ``standard``,
            ``deceiving``), or ``None``.  Shapes are drawn before augmentation, as in the paper.
        multilabel: labels as 0/1 vectors.
        cache: keep decoded images in memory (small datasets).
        lesions: add the ``lesion`` item (default: when some row has a lesion mask).
    """

    def __init__(
        self,
        rows: Sequence[Row],
        classes: Sequence[str],
        prep: Preprocessing,
        *,
        augmentation: Augmentation | None = None,
        bias: tuple[ShapeBias, str] | None = None,
        multilabel: bool = False,
        cache: bool = False,
        lesions: bool | None = None,
    ) -> None:
        self.rows = list(rows)
        self.classes = list(classes)
        self.index = {name: i for i, name in enumerate(self.classes)}
        self.prep = prep
        self.augmentation = augmentation
        self.bias = bias
        self.multilabel = multilabel
        self.lesions = any(row.lesion is not None for row in self.rows) if lesions is None else lesions
        self.cache: dict[int, tuple[Tensor, ...]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.rows)

    def target(self, row: Row) -> Tensor:
        if self.multilabel:
            t = torch.zeros(len(self.classes))
            for name in row.labels:
                t[self.index[name]] = 1.0
            return t
        return torch.tensor(self.index[row.labels[0]])

    def _mask_or_zeros(self, path: Path | None, like: Tensor) -> Tensor:
        return read_mask(path, self.prep) if path is not None else torch.zeros(1, *like.shape[1:])

    def _load(self, i: int) -> tuple[Tensor, ...]:
        """``(image, mask)``, plus the lesion mask when the dataset has lesions."""
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        row = self.rows[i]
        image = read_image(row.image, self.prep)
        loaded = (image, self._mask_or_zeros(row.mask, image))
        if self.lesions:
            loaded += (self._mask_or_zeros(row.lesion, image),)
        if self.cache is not None:
            self.cache[i] = loaded
        return loaded

    def __getitem__(self, i: int) -> dict:
        image, *masks = self._load(i)
        target = self.target(self.rows[i])
        if self.bias is not None:
            shapes, variant = self.bias
            image = shapes.apply(image, target, variant, self.multilabel)
        if self.augmentation is not None:
            # torch's global generator: seeded per worker and epoch by the DataLoader
            image, *masks = self.augmentation.apply(image, *masks)
        item = {"image": image, "mask": masks[0], "label": target, "index": i}
        if self.lesions:
            item["lesion"] = masks[1]
        return item


class MaskedImageDataModule(L.LightningDataModule):
    """A dataset folder (``manifest.csv``) as train / val / test loaders.

    When the manifest has a ``lesion`` column, every item also carries a ``lesion`` mask
    (see :class:`MaskedImageDataset`).

    Args:
        root: dataset folder.
        size, grayscale, equalize, channels: see :class:`~isnet.data.images.Preprocessing`.
        classes: class names in index order (default: sorted names found in the manifest).
        multilabel: ``|``-separated labels, binary targets.
        augment: random translation / rotation / flip of training images (Appendix F.1).
        bias: add the synthetic shape bias to train and val images, and test every test
            split in the ``biased``, ``standard`` and ``deceiving`` variants.
        test_splits: splits to test (default: every split but train and val).
        square_test: pad test images to squares with black borders before resizing.
        batch_size, num_workers: loader settings.
        cache: keep decoded images in memory.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        size: int = 224,
        grayscale: bool = False,
        equalize: bool = False,
        channels: int = 3,
        classes: Sequence[str] | None = None,
        multilabel: bool = False,
        augment: bool = True,
        translate: float = 0.125,
        rotate: float = 40.0,
        flip: bool = True,
        bias: bool = False,
        test_splits: Sequence[str] | None = None,
        square_test: bool = True,
        batch_size: int = 16,
        num_workers: int = 0,
        cache: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.prep = Preprocessing(size, grayscale, equalize, channels)
        self.class_list = list(classes) if classes else None
        self.multilabel = multilabel
        self.augmentation = Augmentation(translate, rotate, flip) if augment else None
        self.use_bias = bias
        self.test_split_names = list(test_splits) if test_splits else None
        self.square_test = square_test
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache = cache
        self.seed = seed
        self.rows: list[Row] | None = None
        self._generators: dict[str, torch.Generator] = {}  # of the latest loader of each stage
        self._restored: dict[str, Tensor] = {}  # generator states from a checkpoint, for the next loaders

    # -- set-up ------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Read and validate the manifest (idempotent); errors name the offending row."""
        if self.rows is not None:
            return
        rows = read_manifest(self.root)
        self.classes = self.class_list or class_names(rows)
        if len(self.classes) < 2 and not self.multilabel:
            raise ValueError(f"a classification task needs at least 2 classes, found {self.classes}")
        if self.test_split_names is None:
            self.test_split_names = sorted({r.split for r in rows} - {"train", "val"})
        splits = ["train", "val", *self.test_split_names]
        validate(rows, self.classes, splits=splits, need_masks=("train", "val"), multilabel=self.multilabel)
        self.lesions = LESION in manifest_columns(self.root)
        self.rows = rows
        self.shape_bias = ShapeBias.default(len(self.classes)) if self.use_bias else None

    @property
    def num_classes(self) -> int:
        self.prepare()
        return len(self.classes)

    def _dataset(self, split: str, variant: str | None, train: bool) -> MaskedImageDataset:
        rows = [r for r in self.rows if r.split == split]
        prep = self.prep if train or not self.square_test else Preprocessing(
            self.prep.size, self.prep.grayscale, self.prep.equalize, self.prep.channels, square=True
        )
        bias = (self.shape_bias, variant) if self.shape_bias is not None and variant else None
        return MaskedImageDataset(
            rows, self.classes, prep,
            augmentation=self.augmentation if split == "train" else None,
            bias=bias, multilabel=self.multilabel, cache=self.cache, lesions=self.lesions,
        )  # fmt: skip

    def variant_set(self, split: str, variant: str | None = None) -> MaskedImageDataset:
        """Any split as a test-style dataset (no augmentation), in a bias ``variant``
        (``biased``, ``standard`` or ``deceiving``; needs ``bias=True``), e.g. the unbiased
        validation set that hyper-parameter tuning scores on (Appendix F.3)."""
        self.prepare()
        if variant is not None and self.shape_bias is None:
            raise ValueError(f"variant {variant!r} needs the synthetic bias (bias=True)")
        if variant is not None and variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if not any(r.split == split for r in self.rows):
            raise ValueError(f"the manifest has no rows in split {split!r}")
        return self._dataset(split, variant, train=split in ("train", "val"))

    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        train_variant = "biased" if self.shape_bias is not None else None
        self.train_set = self._dataset("train", train_variant, train=True)
        self.val_set = self._dataset("val", train_variant, train=True)
        self.test_sets: dict[str, MaskedImageDataset] = {}
        for split in self.test_split_names:
            if self.shape_bias is None:
                self.test_sets[split] = self._dataset(split, None, train=False)
            else:
                for variant in VARIANTS:
                    self.test_sets[f"{split}/{variant}"] = self._dataset(split, variant, train=False)

    # -- loaders -----------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, shuffle: bool, stage: str | None = None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        if stage is not None:
            if stage in self._restored:
                generator.set_state(self._restored.pop(stage))
            self._generators[stage] = generator
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          generator=generator, persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True, stage="train")

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False, stage="val")

    # -- resuming ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The generator states of the latest train and val loaders (shuffling, worker seeds);
        Lightning stores them in every checkpoint."""
        return {"generators": {stage: g.get_state() for stage, g in self._generators.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Give the next train and val loaders the generator states of a checkpoint, so a
        resumed run shuffles (and seeds workers) as the interrupted one would have."""
        self._restored = dict(state_dict.get("generators", {}))

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(ds, shuffle=False) for ds in self.test_sets.values()]

    @property
    def test_names(self) -> list[str]:
        """Names of the test loaders, in order (``split`` or ``split/variant``)."""
        return list(self.test_sets)
