"""Quantities of the logits that a heatmap may explain instead of a single logit.

The Selective ISNet (Bassi, Decherchi and Cavalli, "Faster ISNet for background bias
mitigation on deep neural networks", IEEE Access 2024) explains, for one class ``c`` per
image, the softmax-based quantity

    ``eta_c = log p_c - log(1 - p_c)``,   ``p = softmax(z)``,

the log-odds of ``c`` against every other class.  It is computed in closed form as
``eta_c = z_c - logsumexp_{k != c} z_k``, finite and exact however saturated the softmax.
Its heatmap is the propagation of the start relevance ``z * d eta_c / dz`` (see
:mod:`isnet.lrp.outputs`); :func:`selective_weights` gives those derivatives, differentiable
in the logits:

    ``d eta_c / dz_c = 1``,  ``d eta_c / dz_k = -q_k`` for ``k != c``, with ``q`` the softmax
    of the other classes' logits alone.

They do not shrink as the softmax saturates, so a selective map keeps the scale of a logit's
map (its start relevance is ``z_c - sum_k q_k z_k``, the selected logit's margin over a soft
maximum of the others) on confident and unconfident images alike.

With ``eps = e > 0`` the functions give the regularised form of the authors' code instead,
``log(p_c + e) - log(1 - p_c + e)``, whose derivatives
``(1 / (p_c + e) + 1 / (1 - p_c + e)) * p_c * (delta_ck - p_k)`` fall like ``(1 - p_c) / e``
once ``1 - p_c`` drops below ``e``: on a confident classifier its maps are orders of magnitude
smaller than a logit's, and they grow by as much when the confidence drops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import defaults

SELECTIVE_CLASSES = ("highest", "lowest")
"""Which class a selective heatmap explains: the highest logit (the prediction) or the lowest."""


def eta(logits: Tensor, classes: Tensor, eps: float = defaults.SELECTIVE_EPS) -> Tensor:
    """``eta_c = log p_c - log(1 - p_c)`` for each image's class(es) (``eps = 0``, exact), or
    ``log(p_c + e) - log(1 - p_c + e)`` with ``e = eps > 0``.

    Args:
        logits: ``(B, K)``, ``K >= 2``.
        classes: ``(B,)`` or ``(B, K')`` class indices.

    Returns:
        ``(B,)`` or ``(B, K')``, in at least float32.
    """
    _check(logits, eps)
    if eps == 0:
        chosen, others, _ = _logits_against_others(logits, classes)
        value = chosen - torch.logsumexp(others, dim=-1)
    else:
        pc, rest, _, _ = _class_probabilities(logits, classes)
        value = torch.log(pc + eps) - torch.log(rest + eps)
    return value if classes.dim() == 2 else value.squeeze(1)


def selective_weights(logits: Tensor, classes: Tensor, eps: float = defaults.SELECTIVE_EPS) -> Tensor:
    """``d eta_c / dz`` as weights over the logits, one map per chosen class.

    With ``eps = 0`` (exact log-odds): 1 for the chosen class and ``-q_k`` for the others, ``q``
    the softmax of the other logits alone.  With ``eps > 0`` ``1 - p_c`` is computed as the sum of
    the other classes' probabilities (no rounding to zero while ``p_c`` rounds to 1), and the
    weights shrink like ``(1 - p_c) / eps`` as the softmax saturates.

    Args:
        logits: ``(B, K)``, ``K >= 2``.
        classes: ``(B,)`` (one map per image) or ``(B, K')`` class indices.
        eps: ``e`` of ``eta``, at least 0.

    Returns:
        ``(B, K', K)`` weights (``K' = 1`` for ``(B,)`` classes) in the logits' dtype (at
        least float32), differentiable in the logits.
    """
    _check(logits, eps)
    if eps == 0:
        _, others, onehot = _logits_against_others(logits, classes)
        return torch.softmax(others, dim=-1).neg().masked_fill(onehot, 1.0)  # -q_k, 1 at the chosen class
    pc, rest, p, onehot = _class_probabilities(logits, classes)  # (B, K'), (B, K'), (B, K), (B, K', K)
    scale = (1 / (pc + eps) + 1 / (rest + eps)) * pc  # d eta / d p_c * p_c
    delta = torch.where(onehot, rest.unsqueeze(-1), -p.unsqueeze(1))  # delta_ck - p_k, with 1 - p_c = rest
    return scale.unsqueeze(-1) * delta


def _check(logits: Tensor, eps: float) -> None:
    if eps < 0:
        raise ValueError(f"the selective quantity's eps must be at least 0, got {eps}")
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"the selective quantity needs logits (B, K) with K >= 2 classes, got {tuple(logits.shape)}")


def _logits_against_others(logits: Tensor, classes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(z_c, others, onehot)``: the chosen logits ``(B, K')``, every logit with the chosen
    one set to ``-inf`` ``(B, K', K)`` (at least float32), and the boolean one-hot ``(B, K', K)``."""
    z = _at_least_float32(logits)
    index, onehot = _one_hot(classes, z.shape[1])
    others = z.unsqueeze(1).masked_fill(onehot, float("-inf"))
    return z.gather(1, index), others, onehot


def _class_probabilities(logits: Tensor, classes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(p_c, 1 - p_c, p, onehot)``: ``(B, K')``, ``(B, K')`` as the sum of the other classes'
    probabilities, ``(B, K)`` and the boolean ``(B, K', K)`` one-hot of the classes."""
    p = torch.softmax(_at_least_float32(logits), dim=1)
    index, onehot = _one_hot(classes, p.shape[1])
    pc = p.gather(1, index)
    rest = p.unsqueeze(1).masked_fill(onehot, 0.0).sum(-1)
    return pc, rest, p, onehot


def selected_class(logits: Tensor, which: str = defaults.SELECTIVE_CLASS) -> Tensor:
    """The class that a selective heatmap explains: ``(B,)`` indices of the highest or
    lowest logit (ties: the first; default :data:`isnet.defaults.SELECTIVE_CLASS`)."""
    check_selective_class(which)
    return (logits.argmax(1) if which == "highest" else logits.argmin(1)).detach()


def check_selective_class(which: str) -> str:
    """``which`` if it names a selective class choice, else a ValueError naming the choices."""
    if which not in SELECTIVE_CLASSES:
        raise ValueError(f"selective_class must be one of {SELECTIVE_CLASSES}, got {which!r}")
    return which


def _one_hot(classes: Tensor, total: int) -> tuple[Tensor, Tensor]:
    """``(index, onehot)``: the classes as ``(B, K')`` indices and their boolean ``(B, K', total)`` one-hot."""
    index = classes if classes.dim() == 2 else classes.unsqueeze(1)
    return index, torch.nn.functional.one_hot(index, total).bool()


def _at_least_float32(logits: Tensor) -> Tensor:
    """Half-precision logits as float32 (softmax and logsumexp would round near 0 and 1)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
