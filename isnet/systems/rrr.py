"""Right for the Right Reasons (RRR, Ross et al. 2017; Appendix B.1).

``L = L_C + lambda1 * sum_background (d/dx sum_k log p_k)^2``: the squared input
gradients of the summed log-probabilities are penalised where the mask says
background.  The sum runs over channels and pixels of each image and is averaged
over the batch; ``log p`` is log-softmax (single-label) or log-sigmoid (multi-label).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from ..loss import classification_loss, prepare_masks
from .base import BackboneSystem
from .gradients import input_gradient


def right_reasons_loss(grad: Tensor, masks: Tensor) -> Tensor:
    """``mean_b sum_{c,h,w} (1 - M)^2 grad^2``.

    Args:
        grad: ``(B, C, H, W)`` input gradients.
        masks: ``(B, 1, H, W)`` foreground masks (1 = foreground), broadcast over channels.
    """
    return ((1.0 - masks) * grad).pow(2).flatten(1).sum(1).mean()


class RRRModule(BackboneSystem):
    """RRR on a backbone; ``lambda1`` weighs the right-reasons term (the paper used 1e6 to 1e8
    for DenseNet121 at 224x224; it depends strongly on the network and the image size)."""

    method = "rrr"
    needs_input_gradients = True

    def __init__(self, backbone: str = "densenet121", num_classes: int = 3, *, lambda1: float = 1e6,
                 **kwargs: Any) -> None:
        if lambda1 < 0:
            raise ValueError(f"lambda1 must be >= 0, got {lambda1}")
        super().__init__(backbone, num_classes, **kwargs)

    def losses(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        images, labels = batch["image"], batch["label"]
        multilabel = self.hparams.multilabel

        def log_probs(logits: Tensor) -> Tensor:
            lp = F.logsigmoid(logits) if multilabel else F.log_softmax(logits, dim=1)
            return lp.sum(1)

        logits, grad = input_gradient(self.backbone, images, log_probs)
        masks = prepare_masks(batch["mask"], grad.unsqueeze(1))[:, 0]
        l_c = classification_loss(logits, labels, multilabel)
        l_rr = right_reasons_loss(grad, masks)
        return {"loss": l_c + self.hparams.lambda1 * l_rr, "L_C": l_c, "L_RR": l_rr}, logits
