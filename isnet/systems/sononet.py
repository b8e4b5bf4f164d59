"""AG-Sononet: a VGG-style classifier with attention gates (Schlemper et al., 2019,
"Attention gated networks: learning to leverage salient regions in medical images").

A Sononet feature extractor of five blocks (as VGG-16: 2, 2, 3, 3 and 3 layers of
3x3 convolution, batch norm and ReLU, with 2x2 max pooling between blocks) whose
last feature map ``g`` gates the outputs of blocks 3 and 4 through additive grid
attention gates (:class:`AttentionGate`).  The two gated features and ``g`` are
globally average-pooled, concatenated, and mapped to the logits by one linear
layer.

LRP through a gate (:class:`ConstantGateRule`): the gate's output ``alpha * x``
hands all its relevance to ``x`` and none to the gating signal ``g``, i.e. the
attention coefficients are treated as constants, the usual treatment of
multiplicative gates in LRP.  With LRP-0 this equals Gradient*Input of the same
network with ``alpha`` detached.  :func:`sononet_rules` gives the rule to
:class:`isnet.lrp.LRPGraph`; :func:`sononet_explainer` builds the explainer.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Node

from ..lrp import LRPGraph, LRPSettings, Rule
from .base import ClassifierSystem

__all__ = ["AGSononet", "AttentionGate", "ConstantGateRule", "sononet_explainer", "sononet_rules"]

AGGREGATIONS = ("concat",)
#: Convolutions per block and channels per block as multiples of ``width`` (VGG-16).
_CONVS = (2, 2, 3, 3, 3)
_WIDTHS = (1, 2, 4, 8, 8)


class AttentionGate(nn.Module):
    """Additive grid attention gate: ``alpha * x`` with ``alpha = sigmoid(psi(ReLU(W_x x + W_g up(g))))``.

    ``W_x``, ``W_g`` and ``psi`` are 1x1 convolutions; ``up`` resizes to ``x``'s grid
    bilinearly.  ``W_g`` is applied before resizing: bilinear weights sum to one, so
    ``up(W_g g) = W_g up(g)``, at the cost of the coarse grid.

    Args:
        x_channels: channels of the gated feature ``x``.
        g_channels: channels of the gating signal ``g``.
        inter_channels: channels of the intermediate map ``W_x x + W_g up(g)``.
        detach_alpha: treat ``alpha`` as a constant in backpropagation (no gradient
            reaches ``g`` or the gate's parameters through the product); for
            checking the LRP rule against Gradient*Input.
    """

    def __init__(self, x_channels: int, g_channels: int, inter_channels: int, detach_alpha: bool = False) -> None:
        super().__init__()
        self.W_x = nn.Conv2d(x_channels, inter_channels, 1, bias=False)
        self.W_g = nn.Conv2d(g_channels, inter_channels, 1)
        self.psi = nn.Conv2d(inter_channels, 1, 1)
        self.detach_alpha = detach_alpha

    def coefficients(self, x: Tensor, g: Tensor) -> Tensor:
        """Attention coefficients ``alpha (B, 1, h, w)`` in (0, 1) for ``x (B, C_x, h, w)`` and
        ``g (B, C_g, h', w')``."""
        gate = F.interpolate(self.W_g(g), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(self.psi(F.relu(self.W_x(x) + gate)))

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        """Gated feature ``alpha * x``, ``(B, C_x, h, w)``."""
        alpha = self.coefficients(x, g)
        if self.detach_alpha:
            alpha = alpha.detach()
        return alpha * x


def _block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        # No bias before batch norm: its mean subtraction would cancel it.
        layers.append(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False))
        layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class AGSononet(nn.Module):
    """Sononet classifier with attention gates on blocks 3 and 4, gated by block 5.

    Args:
        in_channels: image channels C.
        num_classes: number of logits K.
        width: channels of block 1; blocks 1-5 have ``width * (1, 2, 4, 8, 8)``.
        aggregation: how the gated features become logits; ``"concat"`` (global
            average pooling of both gated features and of block 5, concatenated,
            one linear layer) is the one implemented.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, aggregation: str = "concat") -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("width", width)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        self.in_channels = in_channels
        self.aggregation = aggregation
        channels = [width * m for m in _WIDTHS]
        self.blocks = nn.ModuleList(
            _block(c_in, c_out, n) for c_in, c_out, n in zip([in_channels, *channels[:-1]], channels, _CONVS)
        )
        self.pool = nn.MaxPool2d(2)
        self.gate3 = AttentionGate(channels[2], channels[4], max(channels[2] // 2, 1))
        self.gate4 = AttentionGate(channels[3], channels[4], max(channels[3] // 2, 1))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[2] + channels[3] + channels[4], num_classes)

    @property
    def gates(self) -> list[AttentionGate]:
        """The attention gates, on blocks 3 and 4."""
        return [self.gate3, self.gate4]

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            return  # a torch.fx proxy while tracing
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"images must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 16:
            raise ValueError(f"images must be at least 16x16 (four 2x2 poolings), got {x.shape[-2]}x{x.shape[-1]}")

    def features(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Outputs of blocks 3, 4 and 5 for ``x (B, C, H, W)``: ``(B, 4w, H/4, W/4)``,
        ``(B, 8w, H/8, W/8)`` and the gating signal ``(B, 8w, H/16, W/16)`` (sizes rounded down)."""
        self._check_input(x)
        outputs = []
        for i, block in enumerate(self.blocks):
            x = block(x if i == 0 else self.pool(x))
            outputs.append(x)
        return outputs[2], outputs[3], outputs[4]

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C, H, W)`` -> logits ``(B, K)``."""
        x3, x4, g = self.features(x)
        pooled = [torch.flatten(self.global_pool(f), 1) for f in (self.gate3(x3, g), self.gate4(x4, g), g)]
        return self.fc(torch.cat(pooled, dim=1))

    def attention_maps(self, x: Tensor) -> list[Tensor]:
        """Attention coefficients of the gates on blocks 3 and 4: ``[(B, 1, H/4, W/4), (B, 1, H/8, W/8)]``."""
        x3, x4, g = self.features(x)
        return [self.gate3.coefficients(x3, g), self.gate4.coefficients(x4, g)]


class ConstantGateRule(Rule):
    """LRP through an :class:`AttentionGate` with its coefficients held constant.

    ``alpha * x`` is, for constant ``alpha``, a diagonal linear map of ``x`` without
    bias, so all relevance of the output goes to ``x`` unchanged (for every epsilon
    rule, as with ReLU) and the gating signal ``g`` receives none.

    Args:
        gate: the gate module, run as is in the forward pass.
    """

    def __init__(self, gate: AttentionGate) -> None:
        self.gate = gate

    def input_nodes(self, node: Node) -> list[Any]:
        x = node.args[0] if node.args else node.kwargs["x"]
        g = node.args[1] if len(node.args) > 1 else node.kwargs["g"]
        return [x, g]

    def forward(self, args: tuple, kwargs: dict) -> tuple[Tensor, tuple]:
        return self.gate(*args, **kwargs), ()

    def relevance(self, R: Tensor, saved: tuple) -> Sequence[Tensor | None]:
        return (R, None)


def sononet_rules() -> dict[type, Callable[[nn.Module, float], Rule]]:
    """LRP rules for AG-Sononet's custom modules, for ``LRPGraph(model, rules=sononet_rules())``."""
    return {AttentionGate: lambda module, epsilon: ConstantGateRule(module)}


def sononet_explainer(model: nn.Module,
                      settings: LRPSettings | None = None) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """LRP heatmaps of every class for an AG-Sononet (or any model with attention gates).

    Args:
        model: the classifier, used in its current train / eval mode.
        settings: epsilon and the zB bounds of the first convolution (default: the paper's).

    Returns:
        ``images (B, C, H, W) -> (logits (B, K), heatmaps (B, K, C, H, W))``, computed
        under ``torch.no_grad()``.
    """
    graph = LRPGraph(model, settings=settings, rules=sononet_rules())

    def explain(images: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return graph(images)

    return explain


class AGSononetModule(ClassifierSystem):
    """The AG-Sononet system: trained with the classification loss alone (its gates learn
    where to look from the labels), explained with LRP through constant gates.

    Args:
        num_classes, in_channels: the task.
        width: channels of the first block (paper-size network: 64).
        kwargs: the shared settings (LRP, optimisation) of :class:`~isnet.systems.base.ConfiguredSystem`.
    """

    method = "sononet"

    def __init__(self, num_classes: int = 3, *, in_channels: int = 3, width: int = 64, **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        self.network = AGSononet(in_channels, num_classes, width)

    def explainer(self) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        return sononet_explainer(self.network, self.lrp_settings())
