"""Bayesian posterior of the confusion matrix, HDI and Wilson intervals."""

import numpy as np
import pytest

from isnet.metrics import bayesian_metrics, dirichlet_posterior, hdi, rates_from_confusion, wilson_interval
from isnet.metrics.intervals import wilson_metrics


def test_hdi_of_known_distributions():
    rng = np.random.default_rng(0)
    low, high = hdi(rng.normal(size=200000), 0.95)
    assert low == pytest.approx(-1.96, abs=0.03) and high == pytest.approx(1.96, abs=0.03)
    # skewed: the HDI of an exponential starts at 0 and is shorter than the central interval
    e = rng.exponential(size=200000)
    low, high = hdi(e, 0.95)
    assert low == pytest.approx(0.0, abs=0.01) and high == pytest.approx(-np.log(0.05), abs=0.05)
    lows, highs = hdi(np.stack([e, e + 1], axis=1), 0.95)
    assert lows[1] - lows[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mass"):
        hdi(e, 1.0)


def test_posterior_is_the_conjugate_dirichlet():
    cm = np.array([[30, 5], [10, 55]])
    theta = dirichlet_posterior(cm, prior=1.0, draws=100000, seed=1)
    np.testing.assert_allclose(theta.sum(axis=(1, 2)), 1.0)
    alpha = cm + 1.0
    np.testing.assert_allclose(theta.mean(0), alpha / alpha.sum(), atol=2e-3)
    with pytest.raises(ValueError, match="non-negative"):
        dirichlet_posterior(-cm)
    with pytest.raises(ValueError, match="shape"):
        dirichlet_posterior(np.ones((2, 3)))


def test_bayesian_metrics_concentrate_on_the_observed_rates_with_many_samples():
    cm = np.array([[800, 100, 100], [50, 900, 50], [0, 200, 800]]) * 10
    b = bayesian_metrics(cm, draws=4000)
    point = rates_from_confusion(cm)
    assert b["macro"]["f1"]["mean"] == pytest.approx(point["macro_f1"], abs=2e-3)
    for k in range(3):
        s = b["per_class"]["specificity"][k]
        assert s["hdi"][0] < point["specificity"][k] < s["hdi"][1]
        assert s["std"] < 0.01
    assert "Dirichlet(1)" in b["prior"]


def test_hdi_covers_the_true_macro_f1_at_the_nominal_rate():
    """Draw true cell probabilities from the prior, a test set of 150 samples from them, and check
    that the 95% HDI of each metric holds the population value in about 95% of 500 repetitions."""
    rng = np.random.default_rng(2024)
    k, n, reps = 3, 150, 500
    covered = {"macro_f1": 0, "macro_specificity": 0, "accuracy": 0}
    for rep in range(reps):
        theta = rng.dirichlet(np.ones(k * k)).reshape(k, k)
        cm = rng.multinomial(n, theta.ravel()).reshape(k, k)
        truth = rates_from_confusion(theta)
        b = bayesian_metrics(cm, draws=2000, seed=rep)
        for name, summary in (("macro_f1", b["macro"]["f1"]), ("macro_specificity", b["macro"]["specificity"]),
                              ("accuracy", b["accuracy"])):
            covered[name] += summary["hdi"][0] <= truth[name] <= summary["hdi"][1]
    for name, c in covered.items():
        assert 0.92 <= c / reps <= 0.98, (name, c / reps)


def test_wilson_interval_known_values():
    # x = 0 and x = n have closed forms: [0, z^2/(n+z^2)] and [n/(n+z^2), 1]
    z2 = 1.959963984540054**2
    low, high = wilson_interval(np.array([0, 10]), np.array([10, 10]))
    np.testing.assert_allclose(low, [0.0, 10 / (10 + z2)])
    np.testing.assert_allclose(high, [z2 / (10 + z2), 1.0])
    # a textbook case: 81 of 263 -> [0.2553, 0.3662] (95%)
    low, high = wilson_interval(81, 263)
    assert (float(low), float(high)) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    low, high = wilson_interval(0, 0)
    assert (float(low), float(high)) == (0.0, 1.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(5, 3)


def test_wilson_coverage_of_a_proportion():
    rng = np.random.default_rng(5)
    p, n = 0.2, 80
    x = rng.binomial(n, p, size=4000)
    low, high = wilson_interval(x, np.full_like(x, n))
    assert 0.93 <= ((low <= p) & (p <= high)).mean() <= 0.97


def test_wilson_metrics_per_label_and_macro():
    w = wilson_metrics(np.array([40, 5]), np.array([10, 5]), np.array([10, 15]), np.array([140, 175]))
    assert w["per_class"]["precision"][0]["value"] == pytest.approx(0.8)
    assert w["per_class"]["f1"][1]["value"] == pytest.approx(2 * 5 / (2 * 5 + 5 + 15))
    for name, m in w["macro"].items():
        values = [c["value"] for c in w["per_class"][name]]
        assert m["value"] == pytest.approx(np.mean(values))
        assert m["ci"][0] <= m["value"] <= m["ci"][1]
