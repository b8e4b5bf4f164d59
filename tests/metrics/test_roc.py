"""DeLong's AUC and variance, Hand and Till's multi-class AUC."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from isnet.metrics import auc_interval, delong_auc, hand_till_auc, one_vs_rest_auc


def test_delong_worked_example():
    # positives 0.8, 0.6, 0.4; negatives 0.5, 0.3.
    # V10 = [1, 1, 1/2], V01 = [2/3, 1] -> AUC = 5/6,
    # Var = var(V10)/3 + var(V01)/2 = (1/12)/3 + (1/18)/2 = 1/18
    auc, var = delong_auc(np.array([1, 1, 1, 0, 0]), np.array([0.8, 0.6, 0.4, 0.5, 0.3]))
    assert auc == pytest.approx(5 / 6) and var == pytest.approx(1 / 18)


def _slow_delong(y, s):
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None]).astype(float) + 0.5 * (pos[:, None] == neg[None])
    v10, v01 = psi.mean(1), psi.mean(0)
    return psi.mean(), np.var(v10, ddof=1) / len(pos) + np.var(v01, ddof=1) / len(neg)


def test_fast_delong_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.normal(size=400) + y, 1)  # many ties
    auc, var = delong_auc(y, s)
    ref_auc, ref_var = _slow_delong(y, s)
    assert auc == pytest.approx(ref_auc) and var == pytest.approx(ref_var)
    assert auc == pytest.approx(roc_auc_score(y, s))


def test_delong_interval_covers_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    hits, reps = 0, 300
    true_auc = 0.7602499389065233  # P(X > Y) for X ~ N(1, 1), Y ~ N(0, 1): Phi(1 / sqrt 2)
    for _ in range(reps):
        y = np.r_[np.ones(60), np.zeros(90)].astype(int)
        s = rng.normal(size=150) + y
        a = auc_interval(y, s)
        hits += a["ci"][0] <= true_auc <= a["ci"][1]
    assert 0.91 <= hits / reps <= 0.98


def test_undefined_auc_is_reported_not_raised():
    a = auc_interval(np.zeros(5, int), np.arange(5.0))
    assert a["auc"] is None and "undefined" in a["note"]
    with pytest.raises(ValueError, match="positive and negative"):
        delong_auc(np.zeros(5, int), np.arange(5.0))
    with pytest.raises(ValueError, match="NaN"):
        delong_auc(np.array([0, 1]), np.array([0.1, np.nan]))


def test_one_vs_rest_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 200)
    p = rng.dirichlet(np.ones(3), 200)
    p[np.arange(200), y] += 0.3
    aucs = one_vs_rest_auc(y, p)
    for k in range(3):
        assert aucs[k]["auc"] == pytest.approx(roc_auc_score(y == k, p[:, k]))


def test_hand_till_by_hand():
    # classes 0, 1, 2 with two samples each
    y = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([
        [0.7, 0.2, 0.1],
        [0.3, 0.4, 0.3],
        [0.2, 0.6, 0.2],
        [0.5, 0.3, 0.2],
        [0.1, 0.2, 0.7],
        [0.4, 0.1, 0.5],
    ])
    # A(0|1): p0 of class 0 {0.7, 0.3} vs class 1 {0.2, 0.5}: 0.7>0.2, 0.7>0.5, 0.3>0.2, 0.3<0.5 -> 3/4
    # A(1|0): p1 of class 1 {0.6, 0.3} vs class 0 {0.2, 0.4}: 1 + 1 + 1 + 0 -> 3/4
    # A(0|2): p0 {0.7, 0.3} vs {0.1, 0.4}: 1 + 1 + 1 + 0 -> 3/4
    # A(2|0): p2 {0.7, 0.5} vs {0.1, 0.3}: 4/4 -> 1
    # A(1|2): p1 {0.6, 0.3} vs {0.2, 0.1}: 4/4 -> 1
    # A(2|1): p2 {0.7, 0.5} vs {0.2, 0.2}: 4/4 -> 1
    expected = ((0.75 + 0.75) / 2 + (0.75 + 1) / 2 + (1 + 1) / 2) / 3
    assert hand_till_auc(y, p) == pytest.approx(expected)
    assert hand_till_auc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovo"))


def test_hand_till_matches_sklearn_and_skips_absent_classes():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 300)
    p = rng.dirichlet(np.ones(4), 300)
    p[np.arange(300), y] += 0.2
    p /= p.sum(1, keepdims=True)
    assert hand_till_auc(y, p) == pytest.approx(roc_auc_score(y, p, multi_class="ovo", average="macro"))
    only_two = y < 2
    assert hand_till_auc(y[only_two], p[only_two]) == pytest.approx(
        roc_auc_score(y[only_two] == 0, p[only_two, 0]) / 2 + roc_auc_score(y[only_two] == 1, p[only_two, 1]) / 2)
    assert hand_till_auc(np.zeros(4, int), p[:4]) is None


@pytest.mark.parametrize("bad", [0.5, -1.0, 2.0, np.nan])
def test_labels_that_are_not_0_or_1_or_class_indices_are_errors(bad):
    y = np.array([0.0, 1.0, 1.0, bad, 0.0])
    s = np.linspace(0, 1, 5)
    for f in (delong_auc, auc_interval):
        with pytest.raises(ValueError, match=rf"y_true must hold only 0 and 1, got {bad!r} at position 3"):
            f(y, s)
    p = np.full((5, 3), 1 / 3)
    y3 = np.array([0.0, 1.0, 2.0, 1.0, 0.0])
    y3[3] = 3.0 if bad == 2.0 else bad  # 2 is a valid class of three
    for f in (one_vs_rest_auc, hand_till_auc):
        with pytest.raises(ValueError, match=r"y_true must hold class indices in \[0, 3\), got .* at position 3"):
            f(y3, p)
    onehot = np.eye(3)[[0, 1, 2, 1, 0]]
    onehot[3, 2] = bad
    with pytest.raises(ValueError, match=r"only 0 and 1, got .* at position \(3, 2\)"):
        one_vs_rest_auc(onehot, p)


def test_a_single_positive_case_has_an_auc_but_no_variance():
    a = auc_interval(np.array([0, 0, 1, 0]), np.array([0.1, 0.4, 0.35, 0.2]))
    assert a["auc"] == pytest.approx(2 / 3) and a["std"] is None and a["ci"] == [0.0, 1.0]
    assert "variance undefined: 1 positives, 3 negatives" in a["note"]
    assert np.isnan(delong_auc(np.array([0, 0, 1, 0]), np.array([0.1, 0.4, 0.35, 0.2]))[1])
