"""The ISNet: a backbone classifier together with its LRP block (Section 4.2)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .lrp import LRPGraph
from .lrp.composites import RuleSpec
from .lrp.graph import Explanation
from .lrp.outputs import ClassesSpec, WeightsSpec
from .lrp.settings import Bound, LRPSettings, settings_from


class ISNet(nn.Module):
    """A classifier that can also return its differentiable LRP heatmaps.

    The backbone is kept untouched (no hooks, no replaced layers); the LRP block
    shares its parameters, so a heatmap loss trains the backbone.  After
    training, deploy ``isnet.backbone``: it runs exactly as fast as before.

    Args:
        backbone: the classifier, images ``(B, C, H, W)`` -> logits ``(B, K)``.
        epsilon, zb, low, high: LRP settings, see :func:`isnet.explain` (defaults:
            :mod:`isnet.defaults`); or ``settings``, an :class:`isnet.lrp.LRPSettings`.
        rule: ``"epsilon"`` (the paper's), ``"zplus"``, a composite, or a list of them
            (then ``heatmaps=True`` returns a tuple of heatmaps from one forward pass).  Pickling
            the ISNet pickles the composite too: the named presets always pickle.

    Example:
        >>> net = ISNet(torchvision.models.resnet18(num_classes=3))
        >>> logits, heatmaps = net(images, heatmaps=True)   # heatmaps: (B, 3, C, H, W)
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        epsilon: float | None = None,
        zb: bool | None = None,
        low: Bound | None = None,
        high: Bound | None = None,
        rule: RuleSpec | Sequence[RuleSpec] = "epsilon",
        settings: LRPSettings | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.lrp_settings = settings_from(settings, epsilon, zb, low, high)
        self._rule = rule
        # A plain attribute, not a submodule: the parameters are registered once, under backbone.
        self.lrp_graph = self._new_graph()

    def _new_graph(self) -> LRPGraph:
        return LRPGraph(self.backbone, rule=self._rule, settings=self.lrp_settings)

    def forward(
        self, x: Tensor, heatmaps: bool = False, classes: ClassesSpec = None, *, logit_weights: WeightsSpec = None
    ) -> Tensor | tuple[Tensor, Tensor | tuple[Tensor, ...]]:
        """Logits ``(B, K)``; with ``heatmaps=True``, ``(logits, heatmaps)`` where heatmaps
        has shape ``(B, K', C, H, W)`` for the ``K'`` explained ``classes`` (default all; a
        ``(B, K')`` integer tensor gives a class list per image) or ``logit_weights``
        (``(K', K)`` or ``(B, K', K)`` weights over the logits, see :func:`isnet.explain`);
        either may be a function of the logits."""
        if not heatmaps:
            return self.backbone(x)
        return self.graph()(x, classes, logit_weights=logit_weights)

    def explain(
        self, x: Tensor, classes: ClassesSpec = None, *, logit_weights: WeightsSpec = None,
        layers: Sequence[str] = (),
    ) -> Explanation:
        """Logits, the heatmaps of every rule set and the relevance at intermediate ``layers``
        of the backbone, from one forward pass (see :meth:`isnet.lrp.LRPGraph.run`)."""
        return self.graph().run(x, classes, logit_weights=logit_weights, layers=layers)

    def graph(self) -> LRPGraph:
        """The LRP graph of the current backbone (rebuilt if its modules were replaced)."""
        if self.lrp_graph.model is not self.backbone or not self.lrp_graph.is_current():  # modules replaced
            self.lrp_graph = self._new_graph()
        return self.lrp_graph

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("lrp_graph", None)  # rebuilt from the backbone on unpickling
        return state

    def __setstate__(self, state: dict) -> None:
        legacy = state.pop("_lrp_settings", None)  # an ISNet pickled before LRPSettings existed
        if legacy is not None:
            state["lrp_settings"] = LRPSettings(**legacy)
        state.setdefault("_rule", "epsilon")
        self.__dict__.update(state)
        self.lrp_graph = self._new_graph()
