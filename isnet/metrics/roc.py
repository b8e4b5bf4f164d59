"""ROC-AUC with DeLong's interval, and Hand and Till's multi-class AUC (Appendix J).

Shapes: ``y_true`` is ``(N,)`` 0/1 for a binary problem, ``(N,)`` class indices or
``(N, K)`` 0/1 targets for one-versus-rest AUC per class; ``scores`` are ``(N,)`` or
``(N, K)`` (higher means more likely positive; for single-label tasks use class
probabilities, which Hand and Till's pairwise AUC needs).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata

from .labels import check_labels


def delong_auc(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """AUC and its variance by DeLong's method, in the fast O(N log N) midrank form.

    With ``m`` positives and ``n`` negatives, the structural components are
    ``V10_i`` (share of negatives scored below positive i, ties counting 1/2) and
    ``V01_j`` (share of positives scored above negative j); AUC is their mean and
    ``Var = var(V10) / m + var(V01) / n`` (sample variances).  Midranks give all
    components at once: ``V10_i = (T_i - Tx_i) / n`` and ``V01_j = 1 - (T_j - Ty_j) / m``,
    with ``T`` the midrank among all scores and ``Tx``, ``Ty`` the midranks among
    positives and among negatives.

    Args:
        y_true: ``(N,)`` 0/1 labels.
        scores: ``(N,)`` scores.

    Returns:
        ``(auc, variance)``.  The variance needs at least two positives and two negatives
        (otherwise it is NaN).
    """
    y = check_labels(y_true, 2, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"y_true and scores must both have shape (N,), got {y.shape} and {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    pos, neg = s[y == 1], s[y == 0]
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        raise ValueError(f"AUC needs positive and negative samples, got {m} positives and {n} negatives")
    t = rankdata(np.r_[pos, neg])
    v10 = (t[:m] - rankdata(pos)) / n
    v01 = 1.0 - (t[m:] - rankdata(neg)) / m
    auc = float(v10.mean())
    var = float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n) if m > 1 and n > 1 else float("nan")
    return auc, var


def auc_interval(y_true: np.ndarray, scores: np.ndarray, confidence: float = 0.95) -> dict:
    """``{"auc", "std", "ci": [low, high]}``: AUC with DeLong's normal interval, clipped to [0, 1].

    ``y_true`` is ``(N,)`` 0/1.  Returns ``None`` values (and a ``"note"``) when the AUC is
    undefined because one of the two groups is empty; with a single positive or negative
    case the AUC is defined but its variance is not: ``std`` is ``None`` and ``ci`` the
    uninformative ``[0, 1]``.
    """
    y = check_labels(y_true, 2, "y_true")
    if not (y == 1).any() or not (y == 0).any():
        return {"auc": None, "std": None, "ci": None,
                "note": f"undefined: {int((y == 1).sum())} positives, {int((y == 0).sum())} negatives"}
    auc, var = delong_auc(y, scores)
    if not np.isfinite(var):
        return {"auc": auc, "std": None, "ci": [0.0, 1.0],
                "note": f"variance undefined: {int((y == 1).sum())} positives, {int((y == 0).sum())} negatives"}
    std = float(np.sqrt(var))
    z = norm.ppf(0.5 + confidence / 2)
    return {"auc": auc, "std": std, "ci": [max(0.0, auc - z * std), min(1.0, auc + z * std)]}


def one_vs_rest_auc(y_true: np.ndarray, scores: np.ndarray, confidence: float = 0.95) -> list[dict]:
    """One-versus-rest AUC of each class with DeLong's interval.

    Args:
        y_true: ``(N,)`` class indices or ``(N, K)`` 0/1 targets.
        scores: ``(N, K)``.

    Returns:
        K dicts as returned by :func:`auc_interval`.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must have shape (N, K), got {s.shape}")
    y = np.asarray(y_true)
    if y.ndim == 1:
        onehot = (check_labels(y, s.shape[1], "y_true")[:, None] == np.arange(s.shape[1])).astype(int)
    else:
        onehot = check_labels(y, 2, "y_true", ndim=2)
    if onehot.shape != s.shape:
        raise ValueError(f"y_true {y.shape} does not match scores {s.shape}")
    return [auc_interval(onehot[:, k], s[:, k], confidence) for k in range(s.shape[1])]


def hand_till_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Hand and Till's multi-class AUC: the mean over class pairs ``i < j`` of
    ``(A(i|j) + A(j|i)) / 2``, where ``A(i|j)`` is the AUC of the score of class ``i``
    separating class ``i`` from class ``j`` among the samples of those two classes.

    Pairs with a class absent from ``y_true`` are left out; ``None`` if fewer than two
    classes are present.

    Args:
        y_true: ``(N,)`` class indices.
        probabilities: ``(N, K)`` class probabilities.
    """
    y = np.asarray(y_true)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or len(y) != len(p):
        raise ValueError(f"need y_true (N,) and probabilities (N, K), got {y.shape} and {p.shape}")
    y = check_labels(y, p.shape[1], "y_true")
    present = [k for k in range(p.shape[1]) if (y == k).any()]
    pairs = []
    for a, i in enumerate(present):
        for j in present[a + 1:]:
            both = (y == i) | (y == j)
            a_ij = delong_auc((y[both] == i).astype(int), p[both, i])[0]
            a_ji = delong_auc((y[both] == j).astype(int), p[both, j])[0]
            pairs.append((a_ij + a_ji) / 2)
    return float(np.mean(pairs)) if pairs else None
