"""The Faster ISNet family: which heatmaps each ISNet variant penalises.

Bassi, Decherchi and Cavalli ("Faster ISNet for background bias mitigation on deep neural
networks", IEEE Access 2024) make the ISNet's training cost independent of the number of
classes ``K`` by penalising one heatmap per image instead of ``K``:

* ``full``: every class's heatmap (the original ISNet of the Nature Communications paper);
  the relevance pass costs ``K`` maps per image.
* ``selective``: one map per image explaining the softmax-based quantity
  ``eta_c = log p_c - log(1 - p_c)`` (the log-odds) of one class ``c``
  (:mod:`isnet.lrp.quantities`); single-label tasks only (``p`` is a softmax).
* ``stochastic``: one map per image for a logit drawn at each step: the highest logit with
  probability 1/2, otherwise one of the other classes uniformly.
* ``dual``: the stochastic choice explained twice, with LRP-epsilon and LRP-z+, both from one
  forward pass; the background loss penalises both and each rule has its own foreground
  range ``[C1, C2]``.

:data:`VARIANTS` is the one list of variants: the ISNet module's validation, the registry's
``isnet_<variant>`` methods and the command line's help read it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import defaults
from ..lrp.quantities import check_selective_class, selected_class, selective_weights

VARIANTS: tuple[str, ...] = ("full", "selective", "stochastic", "dual")
"""``model.variant`` values; ``full`` is the original ISNet."""

RULES: dict[str, tuple[str, ...]] = {
    "full": ("epsilon",),
    "selective": ("epsilon",),
    "stochastic": ("epsilon",),
    "dual": ("epsilon", "zplus"),
}
"""The LRP composites whose heatmaps each variant penalises, in order."""

RANDOM: frozenset[str] = frozenset({"stochastic", "dual"})
"""Variants that draw the explained logit at random."""


def check_variant(variant: str, multilabel: bool = False) -> str:
    """``variant`` if the ISNet module can train it, else a ValueError that says why.

    Raises:
        ValueError: an unknown variant (naming the choices), or ``selective`` on a multi-label
            task (its quantity is a softmax probability, which independent labels lack).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown ISNet variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant == "selective" and multilabel:
        raise ValueError(
            "the selective ISNet explains a softmax probability and needs single-label classes; for a multi-label "
            "task choose variant 'full', 'stochastic' or 'dual'"
        )
    return variant


def draw_logits(logits: Tensor, generator: torch.Generator) -> Tensor:
    """The stochastic ISNet's logit for each image: the highest with probability 1/2, otherwise
    one of the other ``K - 1`` uniformly (always the highest when ``K = 1``).

    Args:
        logits: ``(B, K)``.
        generator: a CPU generator; the draws do not depend on the logits' device.

    Returns:
        ``(B, 1)`` long indices on the logits' device.
    """
    batch, total = logits.shape
    winner = logits.detach().argmax(1).cpu()
    heads = torch.rand(batch, generator=generator) < 0.5
    other = torch.randint(0, max(1, total - 1), (batch,), generator=generator)
    other = other + (other >= winner).long()  # skip the winner: uniform over the other classes
    chosen = torch.where(heads | (total == 1), winner, other)
    return chosen.unsqueeze(1).to(logits.device)


def explained(variant: str, *, generator: torch.Generator | None = None,
              selective_class: str = defaults.SELECTIVE_CLASS) -> dict[str, Any]:
    """What the variant's heatmaps explain, as keyword arguments of :meth:`isnet.ISNet.explain`:
    ``classes`` (``None``: all; or a function of the logits ``(B, K)`` giving ``(B, 1)`` indices)
    or ``logit_weights`` (a function of the logits giving the selective quantity's derivatives
    ``(B, 1, K)``, differentiable in the logits).

    Args:
        variant: one of :data:`VARIANTS`.
        generator: the random variants' draws.
        selective_class: ``highest`` or ``lowest`` logit for ``selective``.
    """
    check_variant(variant)
    if variant == "full":
        return {"classes": None}
    if variant == "selective":
        check_selective_class(selective_class)
        return {"logit_weights": lambda logits: selective_weights(logits, selected_class(logits, selective_class))}
    if generator is None:
        raise ValueError(f"the {variant} ISNet needs a random generator")
    return {"classes": lambda logits: draw_logits(logits, generator)}
