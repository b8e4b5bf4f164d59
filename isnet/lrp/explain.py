"""One-call LRP heatmaps: :func:`explain`."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .. import defaults
from .graph import LRPGraph


def explain(
    model: nn.Module,
    images: Tensor,
    *,
    epsilon: float = defaults.EPSILON,
    zb: bool = defaults.ZB,
    low: float | Sequence[float] | Tensor = defaults.ZB_LOW,
    high: float | Sequence[float] | Tensor = defaults.ZB_HIGH,
    classes: Sequence[int] | Tensor | None = None,
) -> Tensor:
    """LRP heatmaps of ``model`` for ``images``, one per explained logit.

    LRP-epsilon in every layer, LRP-zB in the first (Alg. 1, step 2c); with
    ``epsilon=0, zb=False`` this is LRP-0, which equals Gradient*Input.

    Args:
        model: a classifier returning logits ``(B, K_total)``; an
            :class:`isnet.ISNet` is explained through its backbone.  The model's
            mode (train / eval) is used as it is.
        images: ``(B, C, H, W)`` floating-point tensor, within ``[low, high]`` when
            ``zb`` is on.
        epsilon: LRP-epsilon stabiliser (0 gives LRP-0).
        zb: use LRP-zB for the first layer.
        low, high: input bounds for zB, numbers or per-channel sequences.
        classes: logit indices to explain; default all ``K_total``.

    Returns:
        Heatmaps of shape ``(B, K, C, H, W)`` (``K = len(classes)``), dtype and device
        of ``images``; differentiable with respect to the model's parameters.
    """
    from ..model import ISNet  # the model module imports this package

    if isinstance(model, ISNet):
        model = model.backbone
    graph = LRPGraph(model, epsilon=epsilon, zb=zb, low=low, high=high)
    return graph(images, classes=classes)[1]
