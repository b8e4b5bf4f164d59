"""ISNet Grad*Input (the paper's ablation, Appendix B.1): the ISNet loss applied to
Gradient*Input heatmaps instead of LRP, trained by double backpropagation."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .. import defaults
from ..loss import ISNetLoss
from .base import BackboneSystem, require_relevance
from .gradients import gradient_times_input


class GradInputISNetModule(BackboneSystem):
    """``L_IS = (1-P) L_C + P (w1 L1 + w2 L2)`` on the Gradient*Input maps of all K classes.

    Args:
        P, d, E, w1, w2, C1, C2: the heatmap loss (Section 4.3); C1 and C2 refer to
            Gradient*Input relevance, whose scale differs from LRP's.
        other arguments: see :class:`~isnet.systems.base.BackboneSystem`.
    """

    method = "isnet_gi"
    needs_input_gradients = True

    def __init__(self, backbone: str = "densenet121", num_classes: int = 3, *, P: float = 0.7, d: float = 0.9,
                 E: float = defaults.E, w1: float = defaults.W1, w2: float = defaults.W2, C1: float = defaults.C1,
                 C2: float = defaults.C2, **kwargs: Any) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        self.criterion = ISNetLoss(P, d, E=E, w1=w1, w2=w2, C1=C1, C2=C2, multilabel=self.hparams.multilabel)

    def losses(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        logits, heatmaps = gradient_times_input(self.backbone, batch["image"], self.hparams.num_classes)
        require_relevance(heatmaps)
        out = self.criterion(logits, batch["label"], heatmaps, batch["mask"])
        parts = {"loss": out.total, "L_C": out.classification, "L_LRP": out.heatmap, "L1": out.background,
                 "L2": out.foreground}
        return parts, logits
