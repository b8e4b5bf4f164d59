"""Extended GAIN (Guided Attention Inference Network, Li et al. 2018; Appendix B.1).

For each present class c, Grad-CAM ``A_c`` on the last convolutional feature map
(values in [0, 1] at input size) is used twice:

* attention mining: the attended region is erased, ``I* = I - T(A_c) * I`` with the
  soft mask ``T(A) = sigmoid(omega (A - sigma))``, and the model's score for c on
  ``I*`` is minimised (softmax probability for single-label tasks, sigmoid for
  multi-label ones), averaged over the present classes;
* external supervision: ``mean (A_c - M)^2`` against the foreground mask M.

``L = L_C + alpha L_am + omega_e L_e`` with weights 1, 1 and 10 as in the paper.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..loss import classification_loss, prepare_masks
from .base import BackboneSystem
from .gradients import features_and_logits, grad_cam, grad_cam_layer


def soft_mask(cam: Tensor, sigma: float = 0.5, omega: float = 10.0) -> Tensor:
    """``T(A) = sigmoid(omega (A - sigma))``, the differentiable threshold of GAIN."""
    return torch.sigmoid(omega * (cam - sigma))


class GAINModule(BackboneSystem):
    """Extended GAIN on a backbone (single-label and multi-label).

    Args:
        alpha: weight of the attention-mining loss (paper: 1).
        omega_e: weight of the external-supervision loss (paper: 10).
        sigma, omega: threshold and sharpness of the soft mask T.
        other arguments: see :class:`~isnet.systems.base.BackboneSystem`.
    """

    method = "gain"
    needs_input_gradients = True

    def __init__(self, backbone: str = "densenet121", num_classes: int = 3, *, alpha: float = 1.0,
                 omega_e: float = 10.0, sigma: float = 0.5, omega: float = 10.0, **kwargs: Any) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        self.cam_layer = grad_cam_layer(self.backbone)

    def _present(self, labels: Tensor) -> list[tuple[Tensor, Tensor]]:
        """``(image index, class)`` pairs of the present classes, grouped so each group has one class per image."""
        if not self.hparams.multilabel:
            return [(torch.arange(len(labels), device=labels.device), labels.long())]
        groups = []
        for k in range(labels.shape[1]):
            idx = torch.nonzero(labels[:, k] > 0.5).flatten()
            if len(idx):
                groups.append((idx, torch.full_like(idx, k)))
        return groups

    def losses(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        hp = self.hparams
        images, labels = batch["image"], batch["label"]
        features, logits = features_and_logits(self.backbone, self.cam_layer, images)
        l_c = classification_loss(logits, labels, hp.multilabel)
        masks = prepare_masks(batch["mask"], images.unsqueeze(1))[:, 0]  # (B, 1, H, W)
        mining, supervision, count = logits.new_zeros(()), logits.new_zeros(()), 0
        for idx, cls in self._present(labels):
            cam = grad_cam(features, _class_scores(logits, idx, cls), images.shape[-2:])[idx]
            erased = images[idx] - soft_mask(cam, hp.sigma, hp.omega) * images[idx]
            scores = self.backbone(erased)
            probs = torch.sigmoid(scores) if hp.multilabel else torch.softmax(scores, dim=1)
            mining = mining + probs.gather(1, cls.unsqueeze(1)).sum()
            supervision = supervision + (cam - masks[idx]).pow(2).flatten(1).mean(1).sum()
            count += len(idx)
        l_am, l_e = mining / max(count, 1), supervision / max(count, 1)
        total = l_c + hp.alpha * l_am + hp.omega_e * l_e
        return {"loss": total, "L_C": l_c, "L_am": l_am, "L_e": l_e}, logits


def _class_scores(logits: Tensor, idx: Tensor, cls: Tensor) -> Tensor:
    """``(B,)`` scores: the logit of class ``cls[j]`` for image ``idx[j]``, 0 for the other images."""
    score = logits.new_zeros(logits.shape[0])
    return score.index_put((idx,), logits[idx, cls])
