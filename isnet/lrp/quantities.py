"""Quantities of the logits that a heatmap may explain instead of a single logit.

The Selective ISNet (Bassi, Decherchi and Cavalli, "Faster ISNet for background bias
mitigation on deep neural networks", IEEE Access 2024) explains, for one class ``c`` per
image, the softmax-based quantity

    ``eta_c = log(p_c + e) - log(1 - p_c + e)``,   ``p = softmax(z)``,

which rises with the evidence for ``c`` against every other class (``e`` keeps it finite
when ``p_c`` reaches 0 or 1).  Its heatmap is the propagation of the start relevance
``z * d eta_c / dz`` (see :mod:`isnet.lrp.outputs`); :func:`selective_weights` gives those
derivatives in closed form, differentiable in the logits:

    ``d eta_c / dz_k = (1 / (p_c + e) + 1 / (1 - p_c + e)) * p_c * (delta_ck - p_k)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

SELECTIVE_EPS: float = 1e-2
"""``e`` of the Selective ISNet's ``eta`` (the authors' value)."""

SELECTIVE_CLASSES = ("highest", "lowest")
"""Which class a selective heatmap explains: the highest logit (the prediction) or the lowest."""


def eta(logits: Tensor, classes: Tensor, eps: float = SELECTIVE_EPS) -> Tensor:
    """``eta_c = log(p_c + e) - log(1 - p_c + e)`` for each image's class(es).

    Args:
        logits: ``(B, K)``.
        classes: ``(B,)`` or ``(B, K')`` class indices.

    Returns:
        ``(B,)`` or ``(B, K')``, in at least float32.
    """
    pc, rest, _, _ = _class_probabilities(logits, classes)
    value = torch.log(pc + eps) - torch.log(rest + eps)
    return value if classes.dim() == 2 else value.squeeze(1)


def selective_weights(logits: Tensor, classes: Tensor, eps: float = SELECTIVE_EPS) -> Tensor:
    """``d eta_c / dz`` as weights over the logits, one map per chosen class.

    ``1 - p_c`` is computed as the sum of the other classes' probabilities, which keeps the
    weights from rounding to zero while ``p_c`` rounds to 1 (a logit gap above about 17 in
    float32); they still shrink like the other classes' probabilities as the softmax saturates.

    Args:
        logits: ``(B, K)``.
        classes: ``(B,)`` (one map per image) or ``(B, K')`` class indices.
        eps: ``e`` of ``eta``.

    Returns:
        ``(B, K', K)`` weights (``K' = 1`` for ``(B,)`` classes) in the logits' dtype (at
        least float32), differentiable in the logits.
    """
    if eps <= 0:
        raise ValueError(f"the selective quantity's eps must be positive, got {eps}")
    pc, rest, p, onehot = _class_probabilities(logits, classes)  # (B, K'), (B, K'), (B, K), (B, K', K)
    scale = (1 / (pc + eps) + 1 / (rest + eps)) * pc  # d eta / d p_c * p_c
    delta = torch.where(onehot, rest.unsqueeze(-1), -p.unsqueeze(1))  # delta_ck - p_k, with 1 - p_c = rest
    return scale.unsqueeze(-1) * delta


def _class_probabilities(logits: Tensor, classes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(p_c, 1 - p_c, p, onehot)``: ``(B, K')``, ``(B, K')`` as the sum of the other classes'
    probabilities, ``(B, K)`` and the boolean ``(B, K', K)`` one-hot of the classes."""
    index = classes if classes.dim() == 2 else classes.unsqueeze(1)  # (B, K')
    p = _softmax(logits)
    onehot = torch.nn.functional.one_hot(index, p.shape[1]).bool()
    pc = p.gather(1, index)
    rest = p.unsqueeze(1).masked_fill(onehot, 0.0).sum(-1)
    return pc, rest, p, onehot


def selected_class(logits: Tensor, which: str = "highest") -> Tensor:
    """The class that a selective heatmap explains: ``(B,)`` indices of the highest or
    lowest logit (ties: the first)."""
    check_selective_class(which)
    return (logits.argmax(1) if which == "highest" else logits.argmin(1)).detach()


def check_selective_class(which: str) -> str:
    """``which`` if it names a selective class choice, else a ValueError naming the choices."""
    if which not in SELECTIVE_CLASSES:
        raise ValueError(f"selective_class must be one of {SELECTIVE_CLASSES}, got {which!r}")
    return which


def _softmax(logits: Tensor) -> Tensor:
    """Softmax in at least float32 (half-precision logits would round ``p`` near 0 and 1)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return torch.softmax(logits, dim=1)
