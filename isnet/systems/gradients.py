"""Differentiable input-gradient explanations used by the comparison systems' losses:
input gradients (RRR), Gradient*Input (the ISNet Grad*Input ablation) and Grad-CAM (GAIN).

All of them are built with ``create_graph=True`` so that a loss on the explanation
can be minimised (double backpropagation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import SmallCNN


def input_gradient(model: nn.Module, x: Tensor, score_fn) -> tuple[Tensor, Tensor]:
    """``(logits, d score / d x)`` with the graph kept for a second differentiation.

    Args:
        x: ``(B, C, H, W)`` images.
        score_fn: ``logits (B, K) -> (B,)`` score per image whose input gradient is taken.
    """
    x = x.detach().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(score_fn(logits).sum(), x, create_graph=True)
    return logits, grad


def gradient_times_input(model: nn.Module, x: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Gradient*Input heatmaps of every class, differentiable w.r.t. the parameters.

    The batch is repeated K times so that one backward pass gives all K maps; batch
    statistics of batch norm do not change when every sample is repeated K times.

    Returns:
        ``(logits (B, K), heatmaps (B, K, C, H, W))``.
    """
    b, k = x.shape[0], num_classes
    xr = x.detach().repeat_interleave(k, dim=0).requires_grad_(True)  # row i*K + j: sample i, class j
    logits = model(xr).view(b, k, -1)
    if logits.shape[2] != k:
        raise ValueError(f"the model gives {logits.shape[2]} logits, expected {k}")
    (grad,) = torch.autograd.grad(logits.diagonal(dim1=1, dim2=2).sum(), xr, create_graph=True)
    return logits[:, 0], (xr * grad).view(b, k, *x.shape[1:])


def grad_cam_layer(model: nn.Module) -> nn.Module:
    """The module whose output is the last convolutional feature map (Grad-CAM's layer):
    the last ReLU before the final pooling of VGG and the small CNN, DenseNet's
    ``features`` (rectified in place right after), ResNet's ``layer4``."""
    import torchvision

    if isinstance(model, SmallCNN) or isinstance(model, torchvision.models.VGG):
        return model.features[-2]
    if isinstance(model, torchvision.models.DenseNet):
        return model.features
    if isinstance(model, torchvision.models.ResNet):
        return model.layer4
    raise TypeError(f"no Grad-CAM layer known for {type(model).__name__}; supported: small_cnn, VGG, ResNet, DenseNet")


def features_and_logits(model: nn.Module, layer: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Run ``model`` and also return the output of ``layer`` (a temporary forward hook)."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the Grad-CAM layer ran {len(captured)} times in one forward pass; expected once")
    return captured[0], logits


def grad_cam(features: Tensor, score: Tensor, size: tuple[int, int]) -> Tensor:
    """Grad-CAM maps ``ReLU(sum_k alpha_k A_k)``, ``alpha_k`` the spatial mean of ``d score / d A_k``,
    upsampled (bilinear) to ``size`` and divided by each map's maximum, so values lie in [0, 1].

    Args:
        features: ``(B, C, h, w)`` feature map A (part of the graph that produced ``score``).
        score: ``(B,)`` scores to explain (e.g. each image's true-class logit).

    Returns:
        ``(B, 1, H, W)``, differentiable w.r.t. the parameters.
    """
    (grads,) = torch.autograd.grad(score.sum(), features, create_graph=True)
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * features).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
    peak = cam.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return cam / (peak + 1e-8)
