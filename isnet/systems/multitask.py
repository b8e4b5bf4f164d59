"""The multi-task U-Net (Appendix B.1): segmentation and classification from one network,
trained with ``L = P L_S + (1 - P) L_C`` (L_S per-pixel binary cross-entropy against the
mask, L_C the classification loss).  It deploys its classification path (contracting
path, bottleneck and head), which the LRP engine explains."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..loss import classification_loss
from .base import ConfiguredSystem
from .unet import MultiTaskUNet


class MultiTaskModule(ConfiguredSystem):
    """Args:
        num_classes, in_channels: the task.
        width, depth, hidden, dropout: the network (paper: 64, 4, 4096, 0.5).
        P: weight of the segmentation loss (paper: 0.75 for COVID-19 and faces, 0.9 for TB).
        kwargs: the shared settings of :class:`~isnet.systems.base.ConfiguredSystem`.
    """

    method = "multitask"

    def __init__(self, num_classes: int = 3, *, in_channels: int = 3, width: int = 64, depth: int = 4,
                 hidden: int = 4096, dropout: float = 0.5, P: float = 0.75, **kwargs: Any) -> None:
        if not 0 <= P <= 1:
            raise ValueError(f"P must lie in [0, 1], got {P}")
        super().__init__(**kwargs)
        self.net = MultiTaskUNet(in_channels, num_classes, width, depth, hidden, dropout)

    @property
    def deployed(self) -> nn.Module:
        return self.net.classifier

    def losses(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        logits, segmentation = self.net(batch["image"])
        l_s = F.binary_cross_entropy_with_logits(segmentation, (batch["mask"] >= 0.5).to(segmentation.dtype))
        l_c = classification_loss(logits, batch["label"], self.hparams.multilabel)
        P = self.hparams.P
        return {"loss": P * l_s + (1 - P) * l_c, "L_C": l_c, "L_S": l_s}, logits
