"""The ISNet: a backbone classifier together with its LRP block (Section 4.2)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from . import defaults
from .lrp import LRPGraph


class ISNet(nn.Module):
    """A classifier that can also return its differentiable LRP heatmaps.

    The backbone is kept untouched (no hooks, no replaced layers); the LRP block
    shares its parameters, so a heatmap loss trains the backbone.  After
    training, deploy ``isnet.backbone``: it runs exactly as fast as before.

    Args:
        backbone: the classifier, images ``(B, C, H, W)`` -> logits ``(B, K)``.
        epsilon, zb, low, high: LRP settings, see :func:`isnet.explain`.

    Example:
        >>> net = ISNet(torchvision.models.resnet18(num_classes=3))
        >>> logits, heatmaps = net(images, heatmaps=True)   # heatmaps: (B, 3, C, H, W)
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        epsilon: float = defaults.EPSILON,
        zb: bool = defaults.ZB,
        low: float | Sequence[float] | Tensor = defaults.ZB_LOW,
        high: float | Sequence[float] | Tensor = defaults.ZB_HIGH,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self._lrp_settings = dict(epsilon=epsilon, zb=zb, low=low, high=high)
        # A plain attribute, not a submodule: the parameters are registered once, under backbone.
        self.lrp_graph = LRPGraph(backbone, **self._lrp_settings)

    def forward(
        self, x: Tensor, heatmaps: bool = False, classes: Sequence[int] | Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``(B, K)``; with ``heatmaps=True``, ``(logits, heatmaps)`` where heatmaps
        has shape ``(B, K', C, H, W)`` for the ``K'`` explained ``classes`` (default all)."""
        if not heatmaps:
            return self.backbone(x)
        if self.lrp_graph.model is not self.backbone or not self.lrp_graph.is_current():  # modules replaced
            self.lrp_graph = LRPGraph(self.backbone, **self._lrp_settings)
        return self.lrp_graph(x, classes=classes)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("lrp_graph", None)  # rebuilt from the backbone on unpickling
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lrp_graph = LRPGraph(self.backbone, **self._lrp_settings)
