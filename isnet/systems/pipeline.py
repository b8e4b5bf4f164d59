"""The segmentation-classification pipeline (Algorithm 4, Appendix B.1).

A U-Net is trained on the foreground masks first; its output is binarised with the
threshold that maximises the validation IoU; the classifier is then trained on
segmented images (background erased) with the U-Net frozen.  After training the
pipeline needs its segmenter at run time; :attr:`PipelineModule.without_segmenter`
is the classifier alone, to show what happens without it (the paper's drop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import defaults
from ..backbones import build_backbone
from ..loss import classification_loss
from .base import ConfiguredSystem, Explainer, Fit, SystemModule, check_optimisation
from .unet import UNet

THRESHOLDS = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))
"""Candidate binarisation thresholds of the segmenter's probability."""


class SegmentedClassifier(nn.Module):
    """``images -> classifier(images * [sigmoid(unet(images)) >= threshold])`` (Algorithm 4).

    Args:
        segmenter: U-Net giving one foreground logit per pixel.
        classifier: the classifier of segmented images.
        threshold: 0-d tensor, the binarisation threshold of the foreground probability.
    """

    def __init__(self, segmenter: nn.Module, classifier: nn.Module, threshold: Tensor) -> None:
        super().__init__()
        self.segmenter = segmenter
        self.classifier = classifier
        self.register_buffer("threshold", threshold.detach().clone())

    def segment(self, x: Tensor) -> Tensor:
        """Images with the background (predicted mask 0) erased; no gradient reaches the segmenter."""
        with torch.no_grad():
            mask = (torch.sigmoid(self.segmenter(x)) >= self.threshold).to(x.dtype)
        return x * mask

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.segment(x))


class SegmenterModule(SystemModule):
    """Trains a U-Net on the masks with per-pixel binary cross-entropy (stage 1 of the pipeline)."""

    method = "segmenter"

    def __init__(self, unet: UNet, *, lr: float = 1e-4, momentum: float = defaults.MOMENTUM,
                 weight_decay: float = defaults.WEIGHT_DECAY, optimizer: str = "sgd",
                 lr_schedule: str = "constant") -> None:
        super().__init__()
        check_optimisation(optimizer, lr_schedule)
        self.save_hyperparameters(ignore=["unet"])
        self.unet = unet

    @property
    def deployed(self) -> nn.Module:
        return self.unet

    def losses(self, batch: dict) -> tuple[dict[str, Tensor], None]:
        logits = self.unet(batch["image"])
        loss = F.binary_cross_entropy_with_logits(logits, (batch["mask"] >= 0.5).to(logits.dtype))
        return {"loss": loss}, None


def iou_by_threshold(segmenter: nn.Module, dataset: Any, thresholds: tuple[float, ...] = THRESHOLDS,
                     batch_size: int = 32) -> dict[float, float]:
    """Dataset-wide IoU (sum of intersections / sum of unions) of the binarised segmenter output
    against the masks, for each threshold."""
    inter = np.zeros(len(thresholds))
    union = np.zeros(len(thresholds))
    was = segmenter.training
    segmenter.eval()
    t = torch.tensor(thresholds).view(-1, 1, 1, 1, 1)
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            prob = torch.sigmoid(segmenter(batch["image"])).unsqueeze(0)  # (1, B, 1, H, W)
            truth = (batch["mask"] >= 0.5).unsqueeze(0)
            pred = prob >= t
            inter += (pred & truth).flatten(1).sum(1).double().numpy()
            union += (pred | truth).flatten(1).sum(1).double().numpy()
    segmenter.train(was)
    return {float(th): float(i / u) if u > 0 else 0.0 for th, i, u in zip(thresholds, inter, union)}


class PipelineModule(ConfiguredSystem):
    """U-Net followed by a classifier of segmented images.

    Args:
        backbone, num_classes, in_channels, arch_kwargs: the classifier (see :mod:`isnet.backbones`).
        unet_width, unet_depth: the U-Net's size (paper: 64, 4).
        segmenter_epochs: epochs of stage 1.
        segmenter_lr: stage 1 learning rate (paper: 1e-4).
        kwargs: the shared settings of :class:`~isnet.systems.base.ConfiguredSystem` (the LRP settings
            apply to the classifier, explained on the segmented image).
    """

    method = "pipeline"

    def __init__(self, backbone: str = "densenet121", num_classes: int = 3, *, in_channels: int = 3,
                 arch_kwargs: dict[str, Any] | None = None, unet_width: int = 64, unet_depth: int = 4,
                 segmenter_epochs: int = 50, segmenter_lr: float = 1e-4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.segmenter = UNet(in_channels, 1, unet_width, unet_depth)
        self.classifier = build_backbone(backbone, num_classes, in_channels, **(arch_kwargs or {}))
        # -1: the segmenter is not trained yet; set by before_fit, saved in checkpoints.
        self.register_buffer("threshold", torch.tensor(-1.0))
        self.register_buffer("segmenter_iou", torch.tensor(0.0))

    @property
    def deployed(self) -> nn.Module:
        return SegmentedClassifier(self.segmenter, self.classifier, self.threshold)

    @property
    def without_segmenter(self) -> nn.Module:
        """The classifier alone, on unsegmented images."""
        return self.classifier

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())

    def train(self, mode: bool = True) -> "PipelineModule":
        super().train(mode)
        self.segmenter.eval()  # frozen: its batch norms (if any) and dropout stay in eval mode
        return self

    def before_fit(self, datamodule: Any, folder: Path, fit: Fit) -> None:
        """Stage 1: train the U-Net on the masks and pick the threshold of best validation IoU."""
        if float(self.threshold) >= 0:
            return
        hp = self.hparams
        stage = SegmenterModule(self.segmenter, lr=hp.segmenter_lr, momentum=hp.momentum, optimizer=hp.optimizer,
                                lr_schedule=hp.lr_schedule)
        fit(stage, datamodule, Path(folder) / "segmenter", max_epochs=hp.segmenter_epochs)
        ious = iou_by_threshold(self.segmenter, datamodule.val_set)
        best = max(ious, key=ious.get)
        self.threshold.fill_(best)
        self.segmenter_iou.fill_(ious[best])
        for p in self.segmenter.parameters():
            p.requires_grad_(False)

    def losses(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        if float(self.threshold) < 0:
            raise RuntimeError("the pipeline's segmenter is not trained: fit it with isnet.training.train")
        logits = self.deployed(batch["image"])
        l_c = classification_loss(logits, batch["label"], self.hparams.multilabel)
        return {"loss": l_c, "L_C": l_c}, logits

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for p in self.segmenter.parameters():
            p.requires_grad_(False)

    def explainer(self) -> Explainer:
        """LRP heatmaps of the classifier's decision on the segmented image."""
        from ..evaluation import lrp_explainer

        pipeline = self.deployed
        explain = lrp_explainer(self.classifier, self.lrp_settings())
        return lambda images: explain(pipeline.segment(images))
