"""Classification statistics (pure functions).  Shapes: ``y_true`` and ``y_pred`` are
``(N,)`` integer class indices; ``scores`` are ``(N, K)`` logits or probabilities."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def classification_summary(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Macro F1, accuracy, per-class F1 and the confusion matrix (rows: true class, columns: predicted)."""
    labels = list(range(num_classes))
    return {
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_per_class": [float(v) for v in f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": int(len(y_true)),
    }


def multilabel_summary(y_true: np.ndarray, scores: np.ndarray, threshold: float | np.ndarray = 0.5) -> dict:
    """Macro and per-label F1 and exact-match accuracy for multi-label tasks.

    Args:
        y_true: ``(N, K)`` 0/1 targets.
        scores: ``(N, K)`` probabilities.
        threshold: decision threshold, one for all labels or one per label ``(K,)``.
    """
    y_pred = (scores >= np.asarray(threshold)).astype(int)
    return {
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "accuracy": float((y_pred == y_true).all(axis=1).mean()),
        "f1_per_class": [float(v) for v in f1_score(y_true, y_pred, average=None, zero_division=0)],
        "n": int(len(y_true)),
    }
