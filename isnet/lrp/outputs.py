"""What a heatmap explains: the relevance given to the logits before propagation starts.

LRP starts from the logits ``z`` (``B, K_total``).  Explaining logit ``k`` gives the logits
the relevance ``z * onehot(k)`` (Alg. 1, step 2c).  More generally, a quantity ``q(z)`` of
the logits (the Selective ISNet's softmax-based ``eta``, a sum of logits, ...) is explained
by the start relevance ``z * dq/dz``: LRP-0 then gives Gradient*Input of ``q``, and since
every rule propagates relevance linearly, the heatmap of weights ``w`` over the logits is
``sum_k w_k * heatmap_k`` for any rule.  The one-hot weights are the special case of
explaining single logits.

Two ways to say what to explain, per call:

* ``classes``: logit indices, ``(K',)`` shared by the batch or ``(B, K')`` per image;
* ``logit_weights``: weights over the logits, ``(K', K_total)`` shared or ``(B, K', K_total)``
  per image (e.g. :func:`isnet.lrp.quantities.selective_weights`).

Either may also be a function of the logits ``(B, K_total)`` that returns one (the class
or quantity then depends on the image's own prediction); weights computed from the logits
stay in the autograd graph, so a loss on the heatmaps backpropagates through them too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Classes = Sequence[int] | Tensor | None
"""Logit indices: ``None`` (all), a sequence or ``(K',)`` tensor shared by the batch, or ``(B, K')`` per image."""

ClassesSpec = Classes | Callable[[Tensor], Classes]
WeightsSpec = Tensor | Callable[[Tensor], Tensor] | None


def class_index(classes: Classes, total: int, batch: int, device: torch.device) -> Tensor:
    """The logit indices to explain as a long tensor: ``(K,)`` shared, or ``(B, K)`` per image.

    Raises:
        ValueError: empty, non-integer, wrongly shaped or out-of-range classes.
    """
    if classes is None:
        return torch.arange(total, device=device)
    try:
        index = torch.as_tensor(classes, device=device)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"classes must be logit indices, got {classes!r}") from error
    if index.dim() == 0:
        index = index.view(1)
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise ValueError(f"classes must be integer logit indices, got dtype {index.dtype}")
    if index.dim() > 2 or index.numel() == 0:
        raise ValueError(
            f"classes must be a non-empty sequence of logit indices (K,) or a per-image (B, K) tensor, "
            f"got shape {tuple(index.shape)}"
        )
    if index.dim() == 2 and index.shape[0] != batch:
        raise ValueError(
            f"per-image classes must have shape (B, K) = ({batch}, K) for a batch of {batch} images, "
            f"got {tuple(index.shape)}"
        )
    if (index < 0).any() or (index >= total).any():
        raise ValueError(f"classes must lie in [0, {total - 1}] for a model with {total} logits, got {index.tolist()}")
    return index.long()


def check_weights(weights: Tensor, total: int, batch: int) -> Tensor:
    """Validate weights over the logits: ``(K', K_total)`` shared or ``(B, K', K_total)`` per image.

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: a wrong shape, no map to explain, or a non-finite weight.
    """
    if not isinstance(weights, Tensor) or not weights.is_floating_point():
        kind = weights.dtype if isinstance(weights, Tensor) else type(weights).__name__
        raise TypeError(f"logit_weights must be a floating-point tensor, got {kind}")
    if weights.dim() not in (2, 3) or weights.shape[-1] != total or weights.shape[-2] == 0:
        raise ValueError(
            f"logit_weights must have shape (K', {total}) or (B, K', {total}) for a model with {total} logits, "
            f"got {tuple(weights.shape)}"
        )
    if weights.dim() == 3 and weights.shape[0] != batch:
        raise ValueError(
            f"per-image logit_weights must have shape (B, K', {total}) = ({batch}, K', {total}) for a batch of "
            f"{batch} images, got {tuple(weights.shape)}"
        )
    if not torch.isfinite(weights.detach()).all():
        raise ValueError("logit_weights contain NaN or infinite values")
    return weights


def start_relevance(logits: Tensor, classes: ClassesSpec = None, logit_weights: WeightsSpec = None) -> Tensor:
    """The relevance at the logits that starts the propagation.

    Args:
        logits: ``(B, K_total)``.
        classes: what :func:`class_index` takes, or a function of ``logits`` returning it.
        logit_weights: ``(K', K_total)`` or ``(B, K', K_total)`` weights, or a function of
            ``logits`` returning them; not together with ``classes``.

    Returns:
        ``(B, K', K_total)``: ``logits[b, j] * w[b, k, j]`` for map ``k`` of image ``b`` (one-hot
        ``w`` for classes), in the logits' dtype; differentiable in the logits and the weights.
    """
    batch, total = logits.shape
    if logit_weights is not None:
        if classes is not None:
            raise ValueError("give either classes or logit_weights, not both")
        weights = logit_weights(logits) if callable(logit_weights) else logit_weights
        weights = check_weights(weights, total, batch).to(device=logits.device, dtype=logits.dtype)
    else:
        chosen = classes(logits) if callable(classes) else classes
        index = class_index(chosen, total, batch, logits.device)
        weights = F.one_hot(index, total).to(logits.dtype)  # (K', K_total) or (B, K', K_total)
    return logits.unsqueeze(1) * weights
