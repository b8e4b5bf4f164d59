"""The ISNet loss (Section 4.3, Algorithms 2 and 3, Appendix A).

``L_IS = (1 - P) L_C + P (w1 L1 + w2 L2)``: a classification loss ``L_C``, the
background loss ``L1`` that penalises relevance outside the foreground masks, and
the foreground loss ``L2`` that keeps the total foreground relevance in a natural
range ``[C1, C2]``.  The terms are pure functions with documented shapes;
:class:`ISNetLoss` combines them.

Mask rule: masks hold values in [0, 1] with 1 = foreground; a mask whose size
differs from the heatmaps' is resized bilinearly, and every mask is binarised at
0.5.  An empty mask (no foreground) is an error: the normalisation of Eq. 12
would be meaningless for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from . import defaults


def gwrp(x: Tensor, d: float) -> Tensor:
    """Global Weighted Ranked Pooling over the last two dimensions (Eq. 14).

    ``r = sum_i d^i V_i / sum_i d^i`` with ``V`` the values sorted in descending
    order; ``d = 0`` is max pooling, ``d = 1`` average pooling.

    Args:
        x: ``(..., H, W)``.
        d: decay in [0, 1].

    Returns:
        ``(...)``.
    """
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"GWRP decay d must lie in [0, 1], got {d}")
    flat = x.flatten(-2)
    if d == 1.0:
        return flat.mean(-1)
    if d == 0.0:
        return flat.amax(-1)
    n = flat.shape[-1]
    # Weights below 1e-12 of the largest change nothing in float32/64: rank only the top values.
    keep = min(n, int(math.log(1e-12) / math.log(d)) + 1)
    values = flat.topk(keep, dim=-1).values if keep < n else flat.sort(dim=-1, descending=True).values
    weights = d ** torch.arange(keep, device=flat.device, dtype=flat.dtype)
    total = (1 - d**n) / (1 - d)  # the sum of all n weights
    return (values * weights).sum(-1) / total


def prepare_masks(masks: Tensor, heatmaps: Tensor) -> Tensor:
    """Masks as ``(B, 1, 1, H, W)`` binary tensors matching heatmaps ``(B, K, C, H, W)``.

    Args:
        masks: ``(B, H', W')`` or ``(B, 1, H', W')``, values in [0, 1], 1 = foreground.

    Raises:
        ValueError: wrong shape or batch size, values outside [0, 1] or NaN, or an empty mask.
    """
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must have shape (B, H, W) or (B, 1, H, W), got {tuple(masks.shape)}")
    if masks.shape[0] != heatmaps.shape[0]:
        raise ValueError(f"{masks.shape[0]} masks for a batch of {heatmaps.shape[0]} heatmaps")
    masks = masks.to(device=heatmaps.device, dtype=heatmaps.dtype)
    if torch.isnan(masks).any() or (masks < 0).any() or (masks > 1).any():
        raise ValueError("masks must hold values in [0, 1] (1 = foreground) and no NaN")
    size = heatmaps.shape[-2:]
    if masks.shape[-2:] != size:
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False, antialias=True)
    masks = (masks >= 0.5).to(heatmaps.dtype)
    empty = (masks.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"the masks of batch item(s) {empty} are empty: every training image needs foreground")
    return masks.unsqueeze(1)


def background_loss(
    heatmaps: Tensor, masks: Tensor, d: float, E: float = defaults.E, e: float = defaults.NORMALISATION_E
) -> Tensor:
    """L1, Algorithm 2 / Eqs. 12-18.

    Args:
        heatmaps: ``(B, K, C, H, W)``.
        masks: ``(B, 1, 1, H, W)`` binary (see :func:`prepare_masks`).
        d: GWRP decay.
        E: saturation constant of ``f(x) = x / (x + E)``.

    Returns:
        Scalar: ``mean_{b,k,c} -ln(1 - clamp(f(r_bkc), 0, 1 - 1e-7))``.
    """
    absolute = heatmaps.abs()
    foreground = masks.expand_as(absolute)
    mean_inside = (absolute * foreground).sum((2, 3, 4)) / (foreground.sum((2, 3, 4)) + e)  # (B, K)
    normalised = absolute / (mean_inside[..., None, None, None] + e)  # Eq. 12
    outside = (1 - masks) * normalised  # Eq. 13
    r = gwrp(outside, d)  # (B, K, C), Eq. 14
    f = (r / (r + E)).clamp(0.0, 1.0 - defaults.CLAMP)  # Eq. 16
    return -torch.log1p(-f).mean()  # Eqs. 17, 18


def foreground_relevance(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Total absolute foreground relevance ``g(H_bk) = Sum(|H_bk| M_b)`` (Eq. 19).

    Args:
        heatmaps: ``(B, K, C, H, W)``.
        masks: ``(B, 1, 1, H, W)`` binary (see :func:`prepare_masks`).

    Returns:
        ``(B, K)``.
    """
    return (heatmaps.abs() * masks).sum((2, 3, 4))


def foreground_moments(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Count, sum and sum of squares of the foreground relevances ``g(H_bk)`` (Eq. 19) of a
    batch, in float64 and detached: what :func:`natural_range_from_moments` needs, summed over
    batches.

    Args:
        heatmaps: ``(B, K, C, H, W)``.
        masks: ``(B, [1,] H', W')`` in [0, 1] (see :func:`prepare_masks`).

    Returns:
        ``(3,)``: ``[n, sum g, sum g^2]``.
    """
    h = heatmaps.detach().double()
    g = foreground_relevance(h, prepare_masks(masks, h))
    return torch.stack([g.new_tensor(g.numel()), g.sum(), (g**2).sum()])


def natural_range(relevance: Tensor, *, spread: float = defaults.AUTO_C_SPREAD,
                  c1_fraction: float = defaults.AUTO_C1_FRACTION,
                  c2_ratio: float = defaults.AUTO_C2_RATIO) -> tuple[float, float]:
    """``(C1, C2)`` of the foreground loss from observed foreground relevances (the authors' rule).

    With ``m`` and ``s`` the mean and standard deviation of ``relevance``:
    ``C1 = max(c1_fraction * m, m - spread * s)`` and ``C2 = min(c2_ratio * C1, m + spread * s)``
    (defaults: ``max(m / 5, m - 3 s)`` and ``min(25 C1, m + 3 s)``).  Computed in float64.

    Args:
        relevance: total absolute foreground relevances ``g(H_bk)`` of any shape (e.g. ``(B, K)``
            from :func:`foreground_relevance`), at least two values.

    Raises:
        ValueError: fewer than two values, a non-finite value, a mean that is not positive, or
            values so alike that the rule gives no range (``C1 >= C2``).
    """
    values = relevance.detach().double().flatten()
    std = float(values.std()) if values.numel() > 1 else 0.0
    return natural_range_from_moments(float(values.mean()), std, values.numel(), spread=spread,
                                      c1_fraction=c1_fraction, c2_ratio=c2_ratio)


def natural_range_from_moments(mean: float, std: float, count: int, *, spread: float = defaults.AUTO_C_SPREAD,
                               c1_fraction: float = defaults.AUTO_C1_FRACTION,
                               c2_ratio: float = defaults.AUTO_C2_RATIO) -> tuple[float, float]:
    """:func:`natural_range` from the mean, (sample) standard deviation and number of the values."""
    if count < 2:
        raise ValueError(f"the natural range of foreground relevance needs at least 2 values, got {count}")
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise ValueError("foreground relevances for the natural range contain NaN or infinity")
    if not mean > 0:
        raise ValueError(f"foreground relevances have mean {mean:.3g}: the heatmaps are empty, no natural range")
    c1 = max(c1_fraction * mean, mean - spread * std)
    c2 = min(c2_ratio * c1, mean + spread * std)
    if not 0 < c1 < c2:
        raise ValueError(f"foreground relevances (mean {mean:.3g}, std {std:.3g}) give no range: C1 = {c1:.3g}, "
                         f"C2 = {c2:.3g}")
    return c1, c2


def foreground_loss(heatmaps: Tensor, masks: Tensor, C1: float = defaults.C1, C2: float = defaults.C2) -> Tensor:
    """L2, Algorithm 3 / Eqs. 19-21.

    Args:
        heatmaps: ``(B, K, C, H, W)``.
        masks: ``(B, 1, 1, H, W)`` binary.

    Returns:
        Scalar: mean over b, k of the squared distance of ``g = sum |H| M`` to
        ``[C1, C2]``, divided by ``C1^2``.
    """
    g = foreground_relevance(heatmaps, masks)  # (B, K), Eq. 19
    below = (C1 - g).clamp(min=0)
    above = (g - C2).clamp(min=0)
    return ((below**2 + above**2) / C1**2).mean()  # Eqs. 20, 21


def classification_loss(logits: Tensor, labels: Tensor, multilabel: bool = False) -> Tensor:
    """Cross-entropy (labels ``(B,)`` class indices) or, for multi-label tasks, binary
    cross-entropy on logits (labels ``(B, K)`` in {0, 1}); mean over the batch."""
    if multilabel:
        if labels.shape != logits.shape:
            raise ValueError(f"multi-label targets must have the logits' shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must be class indices of shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    return F.cross_entropy(logits, labels)


@dataclass
class ISNetLossOutput:
    """The loss and its parts (scalars), for optimisation and logging."""

    total: Tensor  # L_IS
    classification: Tensor  # L_C
    heatmap: Tensor  # L_LRP = w1 L1 + w2 L2
    background: Tensor  # L1
    foreground: Tensor  # L2


class ISNetLoss:
    """``L_IS = (1 - P) L_C + P (w1 L1 + w2 L2)`` (Eq. 22).

    Args:
        P: balance between classification and heatmap loss, in [0, 1]; with ``P = 0``
            heatmaps may be ``None`` (a standard classifier).
        d: GWRP decay of the background loss, in [0, 1].
        E, w1, w2, C1, C2: see Section 4.3; defaults from the paper.
        multilabel: binary cross-entropy instead of cross-entropy for ``L_C``.

    Call as ``loss(logits (B, K), labels, heatmaps (B, K', C, H, W), masks (B, [1,] H, W))``
    (``K' = K`` for the original ISNet, 1 for the Faster ISNet's one map per image);
    ``P=`` overrides the balance for this call (a heatmap-loss warm-up), ``foreground=False``
    leaves ``L2`` out (reported as 0; while ``C1``, ``C2`` are not yet known).  Several sets of
    heatmaps (a list: the Dual ISNet's rules, deep supervision's layers) count alike: ``L1`` and
    ``L2`` are their means, with masks per set (or one for all) and ``ranges=[(C1, C2), ...]``.
    Computed in float32 (or float64 for float64 inputs) whatever precision the model ran in.
    """

    def __init__(
        self,
        P: float,
        d: float,
        *,
        E: float = defaults.E,
        w1: float = defaults.W1,
        w2: float = defaults.W2,
        C1: float = defaults.C1,
        C2: float = defaults.C2,
        multilabel: bool = False,
    ) -> None:
        if not 0.0 <= P <= 1.0:
            raise ValueError(f"P must lie in [0, 1], got {P}")
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"d must lie in [0, 1], got {d}")
        if E <= 0 or w1 <= 0 or w2 <= 0:
            raise ValueError(f"E, w1 and w2 must be positive, got E={E}, w1={w1}, w2={w2}")
        if not 0 < C1 < C2:
            raise ValueError(f"need 0 < C1 < C2, got C1={C1}, C2={C2}")
        self.P, self.d, self.E, self.w1, self.w2, self.C1, self.C2 = P, d, E, w1, w2, C1, C2
        self.multilabel = multilabel

    def __call__(self, logits: Tensor, labels: Tensor, heatmaps: Tensor | Sequence[Tensor] | None,
                 masks: Tensor | Sequence[Tensor] | None, *, P: float | None = None, foreground: bool = True,
                 ranges: Sequence[tuple[float, float]] | None = None) -> ISNetLossOutput:
        P = self.P if P is None else P
        if not 0.0 <= P <= 1.0:
            raise ValueError(f"P must lie in [0, 1], got {P}")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = _at_least_float32(logits)
            lc = classification_loss(logits, labels, self.multilabel)
            if P == 0 and heatmaps is None:
                zero = lc.new_zeros(())
                return ISNetLossOutput(lc, lc, zero, zero, zero)
            if heatmaps is None or masks is None:
                raise ValueError("the heatmap loss (P > 0) needs heatmaps and masks")
            if isinstance(heatmaps, Tensor):
                l1, l2 = self._one_set(logits, heatmaps, masks, (self.C1, self.C2), foreground)
            else:
                l1, l2 = self._several_sets(logits, heatmaps, masks, ranges, foreground)
            heat = self.w1 * l1 + self.w2 * l2
            total = (1 - P) * lc + P * heat
        return ISNetLossOutput(total, lc, heat, l1, l2)

    def _one_set(self, logits: Tensor, heatmaps: Tensor, masks: Tensor, bounds: tuple[float, float],
                 foreground: bool) -> tuple[Tensor, Tensor]:
        """``(L1, L2)`` of heatmaps ``(B, K', C, H, W)``: the ``K'`` maps of each image."""
        if heatmaps.dim() != 5 or heatmaps.shape[0] != logits.shape[0]:
            raise ValueError(
                f"heatmaps must have shape (B, K', C, H, W) with B = {logits.shape[0]}, got {tuple(heatmaps.shape)}"
            )
        heatmaps = _at_least_float32(heatmaps)
        m = prepare_masks(masks, heatmaps)
        l1 = background_loss(heatmaps, m, self.d, self.E)
        l2 = foreground_loss(heatmaps, m, *bounds) if foreground else l1.new_zeros(())
        return l1, l2

    def _several_sets(self, logits: Tensor, heatmaps: Sequence[Tensor], masks: Tensor | Sequence[Tensor],
                      ranges: Sequence[tuple[float, float]] | None, foreground: bool) -> tuple[Tensor, Tensor]:
        """The mean ``L1`` and ``L2`` over several sets of heatmaps (rules, layers), each with its masks
        (one tensor for all, or one per set) and its range ``[C1, C2]`` (default: this loss's)."""
        if not heatmaps:
            raise ValueError("no heatmaps for the heatmap loss")
        per_set = masks if not isinstance(masks, Tensor) else [masks] * len(heatmaps)
        bounds = ranges if ranges is not None else [(self.C1, self.C2)] * len(heatmaps)
        if len(per_set) != len(heatmaps) or len(bounds) != len(heatmaps):
            raise ValueError(f"{len(heatmaps)} sets of heatmaps need as many masks and ranges, got "
                             f"{len(per_set)} and {len(bounds)}")
        parts = [self._one_set(logits, h, m, b, foreground) for h, m, b in zip(heatmaps, per_set, bounds)]
        return torch.stack([p[0] for p in parts]).mean(), torch.stack([p[1] for p in parts]).mean()


def _at_least_float32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
