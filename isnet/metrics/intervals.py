"""Interval estimates of classification metrics (Appendix J).

* Single-label tasks: a Bayesian model of the confusion matrix.  The N test samples fall
  into the K x K cells with probabilities ``theta`` (a multinomial); a Dirichlet prior
  ``theta ~ Dir(alpha)`` is conjugate to it, so the posterior is exactly
  ``Dir(alpha + counts)``.  Posterior samples of ``theta`` are drawn directly (no MCMC)
  and every metric is evaluated on each sample, giving its posterior mean, standard
  deviation and highest-density interval (HDI).  The metrics are those of the
  population the test set was drawn from: precision, recall, F1 and specificity per
  class, their macro averages, and accuracy.
* Multi-label and binary tasks: Wilson score intervals for proportions.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from .classification import RATES, rates_from_confusion

DEFAULT_PRIOR = 1.0  # symmetric Dirichlet: every cell of the confusion matrix equally likely a priori
DEFAULT_DRAWS = 20000


def hdi(samples: np.ndarray, mass: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Highest-density interval: the shortest interval holding ``mass`` of the samples.

    Args:
        samples: ``(S, ...)`` draws along the first axis.
        mass: probability mass inside the interval, in (0, 1).

    Returns:
        ``(low, high)``, each of shape ``samples.shape[1:]``.
    """
    if not 0 < mass < 1:
        raise ValueError(f"mass must lie in (0, 1), got {mass}")
    x = np.sort(np.asarray(samples, dtype=np.float64), axis=0)
    n = x.shape[0]
    inside = int(np.ceil(mass * n))
    if inside < 1 or inside > n:
        raise ValueError(f"need at least one sample, got {n}")
    widths = x[inside - 1:] - x[: n - inside + 1]
    start = np.argmin(widths, axis=0)
    low = np.take_along_axis(x, start[None], axis=0)[0]
    high = np.take_along_axis(x, (start + inside - 1)[None], axis=0)[0]
    return low, high


def dirichlet_posterior(confusion: np.ndarray, *, prior: float | np.ndarray = DEFAULT_PRIOR,
                        draws: int = DEFAULT_DRAWS, seed: int = 0) -> np.ndarray:
    """Samples of the cell probabilities of a confusion matrix under a Dirichlet prior.

    Args:
        confusion: ``(K, K)`` counts.
        prior: Dirichlet concentration, one value for every cell or a ``(K, K)`` array.
        draws: number of posterior samples S.

    Returns:
        ``(S, K, K)`` samples of ``theta`` (each sums to 1).
    """
    c = np.asarray(confusion, dtype=np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"confusion must have shape (K, K), got {c.shape}")
    if (c < 0).any() or not np.isfinite(c).all():
        raise ValueError("confusion counts must be finite and non-negative")
    alpha = c + np.broadcast_to(np.asarray(prior, dtype=np.float64), c.shape)
    if (alpha <= 0).any():
        raise ValueError(f"the Dirichlet prior must be positive, got {prior}")
    rng = np.random.default_rng(seed)
    return rng.dirichlet(alpha.ravel(), size=draws).reshape(draws, *c.shape)


def summarise(samples: np.ndarray, mass: float = 0.95) -> dict:
    """``{"mean", "std", "hdi": [low, high]}`` of 1-D posterior samples."""
    low, high = hdi(samples, mass)
    return {"mean": float(np.mean(samples)), "std": float(np.std(samples, ddof=1)),
            "hdi": [float(low), float(high)]}


def bayesian_metrics(confusion: np.ndarray, *, prior: float = DEFAULT_PRIOR, draws: int = DEFAULT_DRAWS,
                     seed: int = 0, mass: float = 0.95) -> dict:
    """Posterior mean, standard deviation and HDI of every single-label metric.

    Args:
        confusion: ``(K, K)`` counts (rows: true class).
        prior: symmetric Dirichlet concentration (1 = uniform over the cell probabilities).
        draws, seed: posterior samples.
        mass: HDI mass.

    Returns:
        JSON-ready ``{"prior", "draws", "mass", "accuracy": summary, "macro": {rate: summary},
        "per_class": {rate: [summary] * K}}`` with summaries as in :func:`summarise`.
    """
    theta = dirichlet_posterior(confusion, prior=prior, draws=draws, seed=seed)
    r = rates_from_confusion(theta)
    k = theta.shape[-1]
    return {
        "prior": f"symmetric Dirichlet({prior:g}) over the {k}x{k} cells",
        "draws": int(draws),
        "mass": mass,
        "accuracy": summarise(r["accuracy"], mass),
        "macro": {name: summarise(r[f"macro_{name}"], mass) for name in RATES},
        "per_class": {name: [summarise(r[name][:, j], mass) for j in range(k)] for name in RATES},
    }


def wilson_interval(successes: np.ndarray, trials: np.ndarray, confidence: float = 0.95
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion ``successes / trials``.

    Arrays broadcast; ``trials == 0`` gives the uninformative interval ``[0, 1]``.

    Returns:
        ``(low, high)``.
    """
    x = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if (x < 0).any() or (x > n).any():
        raise ValueError("need 0 <= successes <= trials")
    z = norm.ppf(0.5 + confidence / 2)
    safe = np.where(n > 0, n, 1.0)
    p = x / safe
    denom = 1 + z**2 / safe
    centre = (p + z**2 / (2 * safe)) / denom
    half = z * np.sqrt(p * (1 - p) / safe + z**2 / (4 * safe**2)) / denom
    low = np.where(n > 0, np.clip(centre - half, 0, 1), 0.0)
    high = np.where(n > 0, np.clip(centre + half, 0, 1), 1.0)
    return low, high


def wilson_metrics(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray,
                   confidence: float = 0.95) -> dict:
    """Wilson intervals of per-label precision, recall, specificity and F1, and of their macro averages.

    Precision, recall and specificity are proportions of ``tp + fp``, ``tp + fn`` and
    ``tn + fp`` samples.  F1 = ``tp / (tp + (fp + fn) / 2)`` is treated as a proportion
    of ``tp + (fp + fn) / 2`` trials.  The macro average's interval combines the labels'
    standard errors (half-width / z) as if the labels were independent:
    ``mean +/- z * sqrt(sum se_k^2) / K``, clipped to [0, 1].

    Args:
        tp, fp, fn, tn: ``(K,)`` counts per label.

    Returns:
        JSON-ready ``{"confidence", "per_class": {rate: [{"value", "ci"}] * K},
        "macro": {rate: {"value", "ci"}}}``.
    """
    tp, fp, fn, tn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn))
    z = norm.ppf(0.5 + confidence / 2)
    parts = {
        "precision": (tp, tp + fp),
        "recall": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "f1": (tp, tp + (fp + fn) / 2),
    }
    per_class, macro = {}, {}
    for name in RATES:
        x, n = parts[name]
        value = np.where(n > 0, x / np.where(n > 0, n, 1), 0.0)
        low, high = wilson_interval(x, n, confidence)
        per_class[name] = [{"value": float(v), "ci": [float(lo), float(hi)]} for v, lo, hi in zip(value, low, high)]
        se = (high - low) / (2 * z)
        m = float(value.mean())
        half = z * float(np.sqrt((se**2).sum())) / len(value)
        macro[name] = {"value": m, "ci": [max(0.0, m - half), min(1.0, m + half)]}
    return {"confidence": confidence, "per_class": per_class, "macro": macro}
