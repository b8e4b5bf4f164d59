"""Hierarchical Attention Mining (HAM, Ouyang et al. 2021; the paper's Appendix G.2).

For data with lesion masks and a ``normal`` class.  A backbone's last feature map
passes a foreground attention block (FAB: channel attention from pooled features,
spatial attention from channel-pooled maps, both sigmoid gates) and global average
pooling into two heads: one "abnormal" logit ``a`` and one logit ``b_j`` per
abnormality.  The class probabilities are hierarchical:
``p(normal) = 1 - sigmoid(a)`` and ``p(j) = sigmoid(a) softmax(b)_j``; the deployed
network returns their logarithms, so ``argmax`` and ``softmax`` of its output are the
hierarchical decision and probabilities.

Losses, on Grad-CAM maps of the FAB output (values in [0, 1] at input size): the
positive attention map ``P`` (Grad-CAM of ``a``) and the abnormality map ``A`` of the
image's abnormality (Grad-CAM of its ``b_j``):

* classification: ``BCE(a, abnormal) + CE(b, abnormality)`` (the latter on abnormal images);
* attention bound: ``mean relu(A - P)``, abnormality attention stays inside the positive map;
* attention union: ``mean |A - P|`` on abnormal images, the union of the abnormality
  maps (one per single-label image) matches the positive map;
* adaptive MSE: ``(A - L)^2`` averaged separately over the lesion's pixels and the
  others, then summed, against the lesion mask ``L`` (images whose lesion mask is not empty).

``L = L_C + w_bound L_bound + w_union L_union + w_amse L_amse``, weights 1 by default.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torch.fx import Node

from ..backbones import SmallCNN, build_backbone
from ..lrp import LRPGraph, Rule
from .base import ConfiguredSystem, Explainer
from .gradients import grad_cam


def feature_extractor(backbone: nn.Module) -> tuple[nn.Module, int]:
    """The convolutional part of a backbone, up to its last feature map, and that map's channels."""
    if isinstance(backbone, SmallCNN):
        return nn.Sequential(*list(backbone.features)[:-1]), backbone.classifier.in_features
    if isinstance(backbone, torchvision.models.ResNet):
        b = backbone
        return nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2, b.layer3, b.layer4), b.fc.in_features
    if isinstance(backbone, torchvision.models.DenseNet):
        return nn.Sequential(backbone.features, nn.ReLU()), backbone.classifier.in_features
    if isinstance(backbone, torchvision.models.VGG):
        return nn.Sequential(*list(backbone.features)[:-1]), 512
    raise TypeError(f"no feature extractor known for {type(backbone).__name__}; supported: small_cnn, ResNet, "
                    "DenseNet, VGG")


class ForegroundAttention(nn.Module):
    """FAB: ``x * channel_gate(x) * spatial_gate(x)``, both gates sigmoid outputs.

    Channel gate: global average pooling, ``Linear(C, C/r)``, ReLU, ``Linear(C/r, C)``.
    Spatial gate: a 7x7 convolution of the channel mean and maximum maps.
    """

    def __init__(self, channels: int, reduction: int = 8) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channel = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def gates(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(channel gate (B, C, 1, 1), spatial gate (B, 1, H, W))``."""
        c = torch.sigmoid(self.channel(x.mean((2, 3)))).unsqueeze(-1).unsqueeze(-1)
        y = x * c
        s = torch.sigmoid(self.spatial(torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)))
        return c, s

    def forward(self, x: Tensor) -> Tensor:
        c, s = self.gates(x)
        return x * c * s


class ConstantAttentionRule(Rule):
    """LRP through FAB with its gates taken as constants: ``x -> g * x`` is diagonal, so the
    relevance of each output goes to the same element of the input."""

    def __init__(self, module: ForegroundAttention) -> None:
        self.module = module

    def input_nodes(self, node: Node) -> list[Any]:
        return [node.args[0]]

    def forward(self, args: tuple, kwargs: dict) -> tuple[Tensor, tuple]:
        return self.module(args[0]), ()

    def relevance(self, R: Tensor, saved: tuple) -> Sequence[Tensor | None]:
        return (R,)


class HAMNet(nn.Module):
    """Features -> FAB -> pooled features -> abnormal logit ``a`` (B,) and abnormality logits ``b`` (B, K-1)."""

    def __init__(self, backbone: nn.Module, num_abnormal: int) -> None:
        super().__init__()
        self.features, channels = feature_extractor(backbone)
        self.attention = ForegroundAttention(channels)
        self.abnormal = nn.Linear(channels, 1)
        self.abnormality = nn.Linear(channels, num_abnormal)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(feature map after FAB (B, C, h, w), a (B,), b (B, K-1))``."""
        f = self.attention(self.features(x))
        pooled = f.mean((2, 3))
        return f, self.abnormal(pooled).squeeze(1), self.abnormality(pooled)


class HierarchicalClassifier(nn.Module):
    """``images -> (B, K)`` log-probabilities of the hierarchy, class ``normal_index`` being normal."""

    def __init__(self, net: HAMNet, normal_index: int) -> None:
        super().__init__()
        self.net = net
        self.normal_index = normal_index

    def forward(self, x: Tensor) -> Tensor:
        _, a, b = self.net.heads(x)
        return hierarchical_log_probs(a, b, self.normal_index)


class HAMScores(nn.Module):
    """The raw head scores ``(-a, b)`` in class order, for LRP: one linear head on the pooled
    FAB features (its weights copied from the two heads at construction)."""

    def __init__(self, net: HAMNet, normal_index: int) -> None:
        super().__init__()
        self.features, self.attention = net.features, net.attention
        self.pool = nn.AdaptiveAvgPool2d(1)
        weight = torch.cat([net.abnormality.weight[:normal_index], -net.abnormal.weight,
                            net.abnormality.weight[normal_index:]]).detach()
        bias = torch.cat([net.abnormality.bias[:normal_index], -net.abnormal.bias,
                          net.abnormality.bias[normal_index:]]).detach()
        self.head = nn.Linear(weight.shape[1], weight.shape[0]).to(weight)
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(self.pool(self.attention(self.features(x))), 1))


def adaptive_mse(maps: Tensor, lesions: Tensor) -> Tensor:
    """Mean over images of ``mean_{lesion}(A - L)^2 + mean_{outside}(A - L)^2``; ``(N, 1, H, W)`` each."""
    inside = lesions >= 0.5
    err = (maps - lesions).pow(2)
    n_in = inside.flatten(1).sum(1).clamp(min=1)
    n_out = (~inside).flatten(1).sum(1).clamp(min=1)
    per_image = (err * inside).flatten(1).sum(1) / n_in + (err * ~inside).flatten(1).sum(1) / n_out
    return per_image.mean()


class HAMModule(ConfiguredSystem):
    """HAM on a backbone (single-label tasks with a normal class and lesion masks).

    Args:
        backbone: the feature extractor's architecture (paper: ``resnet50``).
        num_classes, in_channels, arch_kwargs: the task and backbone.
        normal_class: name of the class without abnormality (in ``class_names``).
        w_bound, w_union, w_amse: loss weights.
        kwargs: the shared settings of :class:`~isnet.systems.base.ConfiguredSystem` (``class_names`` is required).
    """

    method = "ham"
    needs_input_gradients = True

    def __init__(self, backbone: str = "resnet50", num_classes: int = 3, *, in_channels: int = 3,
                 arch_kwargs: dict[str, Any] | None = None, normal_class: str = "normal", w_bound: float = 1.0,
                 w_union: float = 1.0, w_amse: float = 1.0, **kwargs: Any) -> None:
        if kwargs.get("multilabel"):
            raise ValueError("this HAM implementation handles single-label tasks with a normal class")
        names = list(kwargs.get("class_names") or [])
        if normal_class not in names:
            raise ValueError(f"HAM needs a normal class: {normal_class!r} is not among the classes {names}")
        if num_classes < 2 or len(names) != num_classes:
            raise ValueError(f"need {num_classes} class names including {normal_class!r}, got {names}")
        super().__init__(**kwargs)
        self.normal_index = names.index(normal_class)
        base = build_backbone(backbone, num_classes, in_channels, **(arch_kwargs or {}))
        self.net = HAMNet(base, num_classes - 1)

    @property
    def deployed(self) -> nn.Module:
        # a new wrapper each time, so the parameters are not registered twice
        return HierarchicalClassifier(self.net, self.normal_index)

    def explainer(self) -> Explainer:
        """LRP heatmaps of the head scores (``-a`` for normal, ``b_j`` for abnormality j), FAB gates constant."""
        classifier = self.deployed
        graph = LRPGraph(HAMScores(self.net, self.normal_index), settings=self.lrp_settings(),
                         rules={ForegroundAttention: lambda m, eps: ConstantAttentionRule(m)})

        def explain(images: Tensor) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                return classifier(images), graph(images)[1]

        return explain

    def losses(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        if "lesion" not in batch:
            raise ValueError("HAM needs lesion masks: add a 'lesion' column to manifest.csv")
        images, labels, lesions = batch["image"], batch["label"].long(), batch["lesion"]
        features, a, b = self.net.heads(images)
        abnormal = labels != self.normal_index
        target = labels - (labels > self.normal_index).long()  # index among the abnormalities
        l_c = F.binary_cross_entropy_with_logits(a, abnormal.to(a.dtype))
        if abnormal.any():
            l_c = l_c + F.cross_entropy(b[abnormal], target[abnormal])
        logits = hierarchical_log_probs(a, b, self.normal_index)
        size = images.shape[-2:]
        positive = grad_cam(features, a, size)
        zero = a.new_zeros(())
        bound = union = amse = zero
        if abnormal.any():
            idx = torch.nonzero(abnormal).flatten()
            score = b.new_zeros(len(labels)).index_put((idx,), b[idx, target[idx]])
            maps = grad_cam(features, score, size)[idx]
            bound = F.relu(maps - positive[idx]).mean()
            union = (maps - positive[idx]).abs().mean()
            has = lesions[idx].flatten(1).amax(1) >= 0.5
            if has.any():
                amse = adaptive_mse(maps[has], lesions[idx][has])
        hp = self.hparams
        total = l_c + hp.w_bound * bound + hp.w_union * union + hp.w_amse * amse
        return {"loss": total, "L_C": l_c, "L_bound": bound, "L_union": union, "L_amse": amse}, logits


def hierarchical_log_probs(a: Tensor, b: Tensor, normal_index: int) -> Tensor:
    """``(B, K)`` log-probabilities: ``log(1 - sigmoid(a))`` for the normal class at ``normal_index``,
    ``log sigmoid(a) + log_softmax(b)_j`` for abnormality j (the other classes in order)."""
    abnormal = F.logsigmoid(a).unsqueeze(1) + F.log_softmax(b, dim=1)
    normal = F.logsigmoid(-a).unsqueeze(1)
    return torch.cat([abnormal[:, :normal_index], normal, abnormal[:, normal_index:]], dim=1)
