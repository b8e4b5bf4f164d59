"""Evaluation statistics (Appendix J) as pure functions over arrays, in the manner of
scikit-learn's metrics: point estimates, Bayesian and Wilson intervals, ROC-AUC with
DeLong's interval and Hand and Till's multi-class AUC, multi-label thresholds, and
background-attention metrics of heatmaps."""

from .attention import (
    attention_metrics,
    attention_summary,
    background_share,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from .classification import (
    best_thresholds,
    confusion_matrix,
    multilabel_metrics,
    rates_from_confusion,
    rates_from_counts,
    single_label_metrics,
)
from .intervals import bayesian_metrics, dirichlet_posterior, hdi, wilson_interval, wilson_metrics
from .labels import check_labels
from .roc import auc_interval, delong_auc, hand_till_auc, one_vs_rest_auc
from .summary import evaluate_scores

__all__ = [
    "attention_metrics", "attention_summary", "auc_interval", "background_share", "bayesian_metrics",
    "best_thresholds", "check_labels", "confusion_matrix", "delong_auc", "dirichlet_posterior", "evaluate_scores",
    "hand_till_auc", "hdi", "multilabel_metrics", "one_vs_rest_auc", "rates_from_confusion", "rates_from_counts",
    "relevance_mass_accuracy", "relevance_rank_accuracy", "single_label_metrics", "wilson_interval",
    "wilson_metrics",
]
