"""LRP deep supervision: the heatmap loss also on the relevance at intermediate layers.

The Faster ISNet paper's LRP deep supervision penalises background relevance not only in
the input heatmaps but at the outputs of the backbone's stages, where the relevance of a
feature map still has its spatial layout.  As in the authors' code:

* the supervised layers are the stage outputs: ResNet's ``layer1`` to ``layer4``,
  DenseNet's dense blocks, VGG's (and the small CNN's) max pools;
* each layer's masks are the image masks pooled to the layer's size, a cell being
  foreground when any pixel in it is (only relevance where there is no foreground at all
  is pushed away): :func:`pool_masks`;
* the heatmap loss ``w1 L1 + w2 L2`` of every level (the input and each layer) counts
  alike (their mean; the authors' GWRP over levels with decay 1), each level with its own
  foreground range ``[C1, C2]``: relevance at a feature map has its own scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INPUT = "input"
"""The level name of the heatmaps at the image."""


def supervised_layers(model: nn.Module) -> list[str]:
    """The stage outputs of ``model`` that LRP deep supervision penalises, as names of
    ``model.named_modules()``, from the image to the logits.

    Raises:
        ValueError: a model whose stages are not known (not a ResNet, DenseNet, VGG or small CNN).
    """
    modules = dict(model.named_modules())
    if all(f"layer{i}" in modules for i in range(1, 5)):  # torchvision ResNet
        return [f"layer{i}" for i in range(1, 5)]
    blocks = [name for name in modules if name.startswith("features.denseblock") and name.count(".") == 1]
    if blocks:  # torchvision DenseNet
        return blocks
    features = modules.get("features")
    if isinstance(features, nn.Sequential):  # torchvision VGG and the small CNN: each block ends in a max pool
        pools = [f"features.{name}" for name, m in features.named_children() if isinstance(m, nn.MaxPool2d)]
        if pools:
            return pools
    raise ValueError(
        f"LRP deep supervision does not know the stages of {type(model).__name__}; it supports torchvision's "
        "ResNet, DenseNet and VGG and the small CNN"
    )


def pool_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Image masks pooled to a layer's spatial size: a cell is foreground if any pixel in it is.

    Args:
        masks: ``(B, H, W)`` or ``(B, 1, H, W)`` in [0, 1] (1 = foreground), binarised at 0.5.
        size: the layer's ``(h, w)``.

    Returns:
        ``(B, 1, h, w)`` binary masks in the masks' dtype.
    """
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    binary = (masks >= 0.5).to(masks.dtype if masks.is_floating_point() else torch.float32)
    if tuple(binary.shape[-2:]) == tuple(size):
        return binary
    return F.adaptive_max_pool2d(binary, size)
