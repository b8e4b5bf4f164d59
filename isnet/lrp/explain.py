"""One-call LRP heatmaps: :func:`explain`."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .composites import RuleSpec
from .graph import LRPGraph
from .outputs import ClassesSpec, WeightsSpec
from .settings import Bound, LRPSettings


def explain(
    model: nn.Module,
    images: Tensor,
    *,
    epsilon: float | None = None,
    zb: bool | None = None,
    low: Bound | None = None,
    high: Bound | None = None,
    classes: ClassesSpec = None,
    logit_weights: WeightsSpec = None,
    rule: RuleSpec | Sequence[RuleSpec] = "epsilon",
    settings: LRPSettings | None = None,
) -> Tensor | tuple[Tensor, ...]:
    """LRP heatmaps of ``model`` for ``images``, one per explained logit.

    With the default ``rule="epsilon"``: LRP-epsilon in every layer, LRP-zB in the first
    (Alg. 1, step 2c); with ``epsilon=0, zb=False`` this is LRP-0, which equals
    Gradient*Input.  ``rule="zplus"``: LRP-z+ in every convolution and linear layer but
    the first (zB when ``zb``).

    Args:
        model: a classifier returning logits ``(B, K_total)``; an
            :class:`isnet.ISNet` is explained through its backbone.  The model's
            mode (train / eval) is used as it is.
        images: ``(B, C, H, W)`` floating-point tensor, within ``[low, high]`` when
            ``zb`` is on.
        epsilon: LRP-epsilon stabiliser (0 gives LRP-0); default 0.01.
        zb: use LRP-zB for the first layer; default True.
        low, high: input bounds for zB, numbers or per-channel sequences; default 0 and 1.
        classes: logit indices to explain: ``None`` (all ``K_total``), a list shared by the
            batch, or a ``(B, K)`` integer tensor with a class list per image; or a function
            of the logits ``(B, K_total)`` returning one.
        logit_weights: instead of ``classes``, weights over the logits, ``(K, K_total)``
            shared or ``(B, K, K_total)`` per image, or a function of the logits returning
            them: map ``k`` explains the quantity whose derivative by the logits is
            ``w[k]``, e.g. the Selective ISNet's ``eta``
            (:func:`isnet.lrp.quantities.selective_weights`); the one-hot weights of a class
            give that class's heatmap.
        rule: ``"epsilon"``, ``"zplus"``, an :class:`isnet.lrp.Composite`, or a list of these
            (one forward pass, a tuple of heatmaps back).
        settings: an :class:`isnet.lrp.LRPSettings` instead of ``epsilon, zb, low, high``.

    Returns:
        Heatmaps of shape ``(B, K, C, H, W)`` (``K = len(classes)``, ``classes.shape[1]``
        per image, or the weights' ``K``), dtype and device of ``images``; differentiable with respect to the
        model's parameters.  A tuple of them when ``rule`` is a list.
    """
    from ..model import ISNet  # the model module imports this package

    if isinstance(model, ISNet):
        model = model.backbone
    graph = LRPGraph(model, epsilon=epsilon, zb=zb, low=low, high=high, rule=rule, settings=settings)
    return graph(images, classes, logit_weights=logit_weights)[1]
