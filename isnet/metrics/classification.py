"""Point estimates of classification performance (pure functions).

Shapes: ``y_true`` and ``y_pred`` are ``(N,)`` class indices for single-label tasks and
``(N, K)`` 0/1 arrays for multi-label tasks; ``scores`` are ``(N, K)``.  A confusion
matrix has the true class in rows and the predicted class in columns.  A ratio whose
denominator is zero (e.g. the precision of a class never predicted) is 0, as in
scikit-learn's ``zero_division=0``; the accuracy of no samples at all, a mean over
nothing, is ``None``.  Labels are checked by :func:`~isnet.metrics.labels.check_labels`.
"""

from __future__ import annotations

import numpy as np

from .labels import check_labels

RATES = ("precision", "recall", "f1", "specificity")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts ``C[i, j]`` of samples of true class ``i`` predicted as ``j``; shape ``(K, K)``."""
    y_true, y_pred = check_labels(y_true, num_classes, "y_true"), check_labels(y_pred, num_classes, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} differ in length")
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)


def rates_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall (sensitivity), F1 and specificity from one-versus-rest counts.

    All arguments broadcast together (counts or probabilities); each result has their shape.
    """
    tp, fp, fn, tn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn))
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


def one_vs_rest_counts(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(tp, fp, fn, tn)`` per class from confusion matrices of shape ``(..., K, K)``; each ``(..., K)``."""
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    fp = c.sum(axis=-2) - tp  # predicted k, true class another
    fn = c.sum(axis=-1) - tp  # true k, predicted another
    tn = c.sum(axis=(-2, -1))[..., None] - tp - fp - fn
    return tp, fp, fn, tn


def rates_from_confusion(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class rates ``(..., K)``, their macro averages ``macro_<rate>`` ``(...)`` and
    ``accuracy`` ``(...)`` from confusion matrices (counts or cell probabilities) ``(..., K, K)``."""
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim < 2 or c.shape[-1] != c.shape[-2]:
        raise ValueError(f"a confusion matrix must have shape (..., K, K), got {c.shape}")
    rates = rates_from_counts(*one_vs_rest_counts(c))
    out = dict(rates)
    out.update({f"macro_{k}": v.mean(axis=-1) for k, v in rates.items()})
    out["accuracy"] = _ratio(np.trace(c, axis1=-2, axis2=-1), c.sum(axis=(-2, -1)))
    return out


def single_label_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Confusion matrix, per-class and macro precision / recall / F1 / specificity, accuracy.

    Returns:
        JSON-ready dict: ``confusion_matrix`` (K x K list), ``per_class`` (rate -> K floats),
        ``macro`` (rate -> float), ``accuracy`` (``None`` when ``n = 0``), ``macro_f1`` and ``n``.
    """
    cm = confusion_matrix(y_true, y_pred, num_classes)
    r = rates_from_confusion(cm)
    return {
        "n": int(cm.sum()),
        "accuracy": float(r["accuracy"]) if cm.sum() else None,
        "macro_f1": float(r["macro_f1"]),
        "macro": {k: float(r[f"macro_{k}"]) for k in RATES},
        "per_class": {k: r[k].tolist() for k in RATES},
        "confusion_matrix": cm.tolist(),
    }


def _binary(y: np.ndarray, name: str) -> np.ndarray:
    return check_labels(y, 2, name, ndim=2).astype(bool)


def multilabel_counts(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(tp, fp, fn, tn)`` per label, each ``(K,)``, from ``(N, K)`` 0/1 arrays."""
    t, p = _binary(y_true, "y_true"), _binary(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    return ((t & p).sum(0), (~t & p).sum(0), (t & ~p).sum(0), (~t & ~p).sum(0))


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Per-label and macro precision / recall / F1 / specificity, per-label counts, and
    exact-match accuracy (all labels right; ``None`` when N = 0) for ``(N, K)`` 0/1 targets and decisions."""
    tp, fp, fn, tn = multilabel_counts(y_true, y_pred)
    r = rates_from_counts(tp, fp, fn, tn)
    exact = (_binary(y_true, "y_true") == _binary(y_pred, "y_pred")).all(axis=1)
    return {
        "n": int(len(exact)),
        "accuracy": float(exact.mean()) if len(exact) else None,
        "macro_f1": float(r["f1"].mean()),
        "macro": {k: float(r[k].mean()) for k in RATES},
        "per_class": {k: r[k].tolist() for k in RATES},
        "counts": {"tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist(), "tn": tn.tolist()},
    }


def best_thresholds(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-label decision thresholds that maximise each label's F1, hence the macro-F1
    (Appendix F.2: chosen on the validation set).

    Each threshold lies midway between the lowest score called positive and the next
    lower score, so a sample with a score equal to a training score is decided the same
    way.  A label with no positive sample gets a threshold above every score.

    Args:
        y_true: ``(N, K)`` 0/1 targets.
        scores: ``(N, K)`` scores (e.g. probabilities); decide positive if ``score >= t``.

    Returns:
        ``(K,)`` thresholds.
    """
    t = _binary(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"scores {s.shape} and y_true {t.shape} differ in shape")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    out = np.empty(t.shape[1])
    for k in range(t.shape[1]):
        order = np.argsort(-s[:, k], kind="stable")
        sk, tk = s[order, k], t[order, k]
        if not tk.any():
            out[k] = np.nextafter(sk[0], np.inf) if len(sk) else 0.5
            continue
        # candidate cuts: after the last of each run of equal scores
        last = np.r_[sk[1:] != sk[:-1], True]
        tp = np.cumsum(tk)[last]
        called = (np.nonzero(last)[0] + 1).astype(np.float64)
        f1 = 2 * tp / (called + tk.sum())
        best = int(np.argmax(f1))
        cut = np.nonzero(last)[0][best]
        out[k] = sk[cut] if cut + 1 == len(sk) else (sk[cut] + sk[cut + 1]) / 2
    return out
