"""Every statistic of a model on one test set, from its outputs (pure function).

Shapes: ``y_true`` is ``(N,)`` class indices (single-label) or ``(N, K)`` 0/1 targets
(multi-label); ``scores`` are ``(N, K)`` logits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.special import expit, softmax

from .classification import multilabel_counts, multilabel_metrics, single_label_metrics
from .intervals import DEFAULT_DRAWS, DEFAULT_PRIOR, bayesian_metrics, wilson_metrics
from .labels import check_labels
from .roc import hand_till_auc, one_vs_rest_auc


def evaluate_scores(y_true: np.ndarray, scores: np.ndarray, *, class_names: Sequence[str], multilabel: bool = False,
                    thresholds: np.ndarray | None = None, prior: float = DEFAULT_PRIOR, draws: int = DEFAULT_DRAWS,
                    seed: int = 0, confidence: float = 0.95) -> dict:
    """Point estimates, interval estimates and AUCs (Appendix J) as one JSON-ready dict.

    Single-label: decisions by the highest score; the confusion matrix; per-class and
    macro precision, recall, F1, specificity and accuracy with their Bayesian posterior
    (mean, std, HDI); for two classes also Wilson intervals (per class, one versus
    rest); one-versus-rest AUC per class from softmax probabilities with DeLong's
    interval and Hand and Till's macro AUC.

    Multi-label: decisions ``sigmoid(score) >= threshold`` (per label; default 0.5);
    per-label and macro rates with Wilson intervals; per-label AUC with DeLong's
    interval and their mean as the macro AUC.

    Args:
        class_names: K names, used as keys of the per-class entries.
        thresholds: ``(K,)`` multi-label thresholds on probabilities (e.g. from
            :func:`~isnet.metrics.best_thresholds` on the validation set).
        prior, draws, seed: the Dirichlet prior and posterior sampling of the Bayesian model.
        confidence: mass of the HDIs and confidence of the other intervals.
    """
    s = np.asarray(scores, dtype=np.float64)
    names = list(class_names)
    if s.ndim != 2 or s.shape[1] != len(names):
        raise ValueError(f"scores must have shape (N, {len(names)}), got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("model outputs contain NaN or infinite values")
    y = check_labels(y_true, 2, "y_true", ndim=2) if multilabel else check_labels(y_true, len(names), "y_true")
    if len(y) != len(s):
        raise ValueError(f"y_true has {len(y)} samples but scores have {len(s)}")
    if multilabel:
        probs = expit(s)
        t = np.full(len(names), 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
        if t.shape != (len(names),):
            raise ValueError(f"thresholds must have shape ({len(names)},), got {t.shape}")
        y_pred = (probs >= t).astype(int)
        out = multilabel_metrics(y, y_pred)
        out["task"] = "multi-label"
        out["thresholds"] = t.tolist()
        out["wilson"] = wilson_metrics(*multilabel_counts(y, y_pred), confidence=confidence)
        aucs = one_vs_rest_auc(y, probs, confidence)
        defined = [a["auc"] for a in aucs if a["auc"] is not None]
        out["auc"] = {"macro": float(np.mean(defined)) if defined else None, "macro_method": "mean of labels",
                      "per_class": aucs}
    else:
        probs = softmax(s, axis=1)
        out = single_label_metrics(y, probs.argmax(1), len(names))
        out["task"] = "single-label"
        out["bayesian"] = bayesian_metrics(np.asarray(out["confusion_matrix"]), prior=prior, draws=draws, seed=seed,
                                           mass=confidence)
        if len(names) == 2:
            onehot_true = (y[:, None] == np.arange(2)).astype(int)
            onehot_pred = (probs.argmax(1)[:, None] == np.arange(2)).astype(int)
            out["wilson"] = wilson_metrics(*multilabel_counts(onehot_true, onehot_pred), confidence=confidence)
        aucs = one_vs_rest_auc(y, probs, confidence)
        out["auc"] = {"macro": hand_till_auc(y, probs), "macro_method": "Hand and Till",
                      "per_class": aucs}
    out["classes"] = names
    return out
