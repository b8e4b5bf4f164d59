"""Lightning callbacks of :func:`isnet.training.train`: the heatmaps of a few validation
images in TensorBoard after every validation epoch, so that one sees the relevance leave
the background while an ISNet trains."""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from .render import heatmap_to_rgb, image_to_rgb

_GAP = 2  # white pixels between the image and its heatmap


def heatmap_picture(image: Tensor | np.ndarray, heatmap: Tensor | np.ndarray, *, min_size: int = 128) -> np.ndarray:
    """An image and its heatmap side by side, coloured as in the reports (red positive, blue
    negative, white zero; the map scaled by its own largest ``|value|``).

    Args:
        image: ``(C, H, W)`` in [0, 1], C = 1 or 3.
        heatmap: ``(C', H, W)`` (channels summed) or ``(H, W)`` relevance.
        min_size: small images are enlarged by an integer factor (nearest neighbour) until
            their longer side has at least this many pixels, so that TensorBoard shows them
            at a readable size.

    Returns:
        ``(f H, 2 f W + 2, 3)`` uint8 RGB with ``f`` the enlargement factor.
    """
    left, right = image_to_rgb(image), heatmap_to_rgb(heatmap)
    if left.shape != right.shape:
        raise ValueError(f"image {left.shape[:2]} and heatmap {right.shape[:2]} differ in size")
    factor = max(1, -(-min_size // max(left.shape[:2])))  # ceiling division
    gap = np.full((left.shape[0], _GAP, 3), 255, dtype=np.uint8)
    picture = np.concatenate([left, gap, right], axis=1)  # the gap is enlarged with the rest
    return picture.repeat(factor, axis=0).repeat(factor, axis=1)


class HeatmapImages(L.Callback):
    """After each validation epoch, write the heatmaps of a fixed set of validation images
    for their true class to TensorBoard (one image tag per example, one image per epoch).

    The examples are the first ``per_class`` validation images of each class (multi-label:
    of each first positive label), in dataset order, chosen and loaded once.  The heatmaps
    come from the system's own :meth:`~isnet.systems.base.SystemModule.explainer`, with the
    whole module in eval mode; every submodule's training flag is restored afterwards, and
    eval mode leaves batch-norm statistics untouched.  Only the global rank 0 process works
    (other ranks return at once), and nothing is written without a ``TensorBoardLogger`` or
    for a module without ``num_classes`` among its hyper-parameters (one that does not
    classify, such as a pipeline's segmenter).

    Tags: ``val_heatmaps/<class name>_<n>`` with ``n`` counting that class's examples.

    Args:
        per_class: examples per class (at least 1).
        min_size: see :func:`heatmap_picture`.
    """

    def __init__(self, per_class: int = 2, *, min_size: int = 128) -> None:
        if not isinstance(per_class, int) or per_class < 1:
            raise ValueError(f"per_class must be a whole number >= 1, got {per_class!r}")
        self.per_class = per_class
        self.min_size = min_size
        self._examples: tuple[list[dict], list[str]] | None = None

    @staticmethod
    def _writer(trainer: L.Trainer) -> Any:
        from lightning.pytorch.loggers import TensorBoardLogger

        logger = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        return None if logger is None else logger.experiment

    def _choose(self, trainer: L.Trainer, module: L.LightningModule) -> tuple[list[dict], list[str]]:
        """The example items (image and label, on the CPU) and their tags."""
        from .evaluation import _first_class, pick_examples

        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, Sequence) else loaders
        if not isinstance(loader, DataLoader):
            raise TypeError(f"heatmap images need a validation DataLoader, got {type(loader).__name__}")
        dataset = loader.dataset
        hp = module.hparams
        num_classes, multilabel = hp["num_classes"], hp.get("multilabel", False)
        names = list(hp.get("class_names") or []) or [f"class_{k}" for k in range(num_classes)]
        with torch.random.fork_rng(devices=[]):  # a dataset that draws random numbers leaves training's untouched
            indices = pick_examples(dataset, num_classes, self.per_class, multilabel)
            items = [{"image": dataset[i]["image"], "label": dataset[i]["label"]} for i in indices]
        tags, seen = [], {}
        for item in items:
            name = names[_first_class(item["label"], multilabel)]
            seen[name] = seen.get(name, -1) + 1
            tags.append(f"val_heatmaps/{name}_{seen[name]}")
        return items, tags

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or "num_classes" not in pl_module.hparams:
            return
        writer = self._writer(trainer)
        if writer is None:
            return
        from .evaluation import example_heatmaps

        # Lightning validates under inference mode; leave it so that tensors made here are ordinary
        # ones and explainers that differentiate can do so (each explainer sets its own grad mode).
        with torch.inference_mode(False):
            if self._examples is None:
                self._examples = self._choose(trainer, pl_module)
            items, tags = self._examples
            if not items:
                return
            weight = next((p for p in pl_module.parameters() if p.is_floating_point()), None)
            device = weight.device if weight is not None else torch.device("cpu")
            dtype = weight.dtype if weight is not None else torch.float32
            explain = pl_module.explainer()
            modes = [(m, m.training) for m in pl_module.modules()]
            pl_module.eval()
            try:
                images, maps, _ = example_heatmaps(
                    {"model": lambda x: explain(x.to(device=device, dtype=dtype))}, items, range(len(items)),
                    multilabel=pl_module.hparams.get("multilabel", False))
            finally:
                for m, training in modes:
                    m.training = training
        step = _logged_step(trainer)
        for tag, image, heatmap in zip(tags, images, maps[0]):
            writer.add_image(tag, heatmap_picture(image, heatmap, min_size=self.min_size), step, dataformats="HWC")
        writer.flush()


def _logged_step(trainer: L.Trainer) -> int:
    """The step Lightning gives the validation metrics of this epoch, so that the pictures line up
    with the scalars (validation runs before the last batch's step is counted; Lightning keeps
    that count in a private attribute, hence the fallback to ``global_step``)."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))
