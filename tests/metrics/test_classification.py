"""Point estimates agree with scikit-learn; multi-label thresholds maximise F1."""

import numpy as np
import pytest
from sklearn import metrics as skm

from isnet.metrics import best_thresholds, confusion_matrix, multilabel_metrics, rates_from_confusion, single_label_metrics


@pytest.fixture
def predictions():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 4, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 4, 300))
    y_pred[y_pred == 3] = 2  # class 3 is never predicted: precision 0/0 -> 0
    return y_true, y_pred


def test_single_label_metrics_match_sklearn(predictions):
    y_true, y_pred = predictions
    m = single_label_metrics(y_true, y_pred, 4)
    labels = [0, 1, 2, 3]
    np.testing.assert_array_equal(m["confusion_matrix"], skm.confusion_matrix(y_true, y_pred, labels=labels))
    for name, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
        np.testing.assert_allclose(m["per_class"][name], fn(y_true, y_pred, labels=labels, average=None,
                                                            zero_division=0))
        assert m["macro"][name] == pytest.approx(fn(y_true, y_pred, labels=labels, average="macro", zero_division=0))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    # specificity of class k = recall of "not k"
    for k in labels:
        assert m["per_class"]["specificity"][k] == pytest.approx(skm.recall_score(y_true != k, y_pred != k))
    assert m["per_class"]["precision"][3] == 0.0


def test_rates_broadcast_over_leading_axes(predictions):
    y_true, y_pred = predictions
    cm = confusion_matrix(y_true, y_pred, 4)
    stacked = rates_from_confusion(np.stack([cm, 2 * cm, cm / cm.sum()]))
    assert stacked["f1"].shape == (3, 4) and stacked["macro_f1"].shape == (3,)
    np.testing.assert_allclose(stacked["macro_f1"], stacked["macro_f1"][0])  # scale-free


def test_bad_labels_are_named():
    with pytest.raises(ValueError, match=r"y_pred must hold class indices in \[0, 3\)"):
        confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="differ in length"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(ValueError, match="must have shape"):
        rates_from_confusion(np.ones((2, 3)))


def test_multilabel_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y_true = (rng.random((120, 5)) < 0.3).astype(int)
    y_pred = np.where(rng.random((120, 5)) < 0.7, y_true, 1 - y_true)
    m = multilabel_metrics(y_true, y_pred)
    np.testing.assert_allclose(m["per_class"]["f1"], skm.f1_score(y_true, y_pred, average=None))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))  # exact match
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_metrics(y_true * 2, y_pred)


def test_best_thresholds_maximise_each_label_f1():
    rng = np.random.default_rng(1)
    y = (rng.random((200, 3)) < 0.4).astype(int)
    scores = np.clip(0.3 * y + rng.random((200, 3)) * 0.8, 0, 1).round(2)  # ties on purpose
    t = best_thresholds(y, scores)
    for k in range(3):
        achieved = skm.f1_score(y[:, k], scores[:, k] >= t[k])
        best = max(skm.f1_score(y[:, k], scores[:, k] >= c) for c in np.unique(scores[:, k]))
        assert achieved == pytest.approx(best)
    # a label with no positives: nothing is called positive
    y[:, 0] = 0
    assert (scores[:, 0] < best_thresholds(y, scores)[0]).all()


@pytest.mark.parametrize("bad", [1.5, -1.0, 3.0, np.nan])
def test_labels_that_are_not_class_indices_are_errors(bad):
    y = np.array([0.0, 2.0, bad, 1.0])
    with pytest.raises(ValueError, match=rf"y_true must hold class indices in \[0, 3\), got {bad!r} at position 2"):
        confusion_matrix(y, np.zeros(4, int), 3)
    with pytest.raises(ValueError, match=rf"y_pred must hold class indices in \[0, 3\), got {bad!r} at position 2"):
        single_label_metrics(np.zeros(4, int), y, 3)
    targets = np.array([[0.0, 1.0], [1.0, 0.0]])
    wrong = targets.copy()
    wrong[1, 1] = bad
    with pytest.raises(ValueError, match=rf"y_true must hold only 0 and 1, got {bad!r} at position \(1, 1\)"):
        multilabel_metrics(wrong, targets)
    with pytest.raises(ValueError, match=rf"y_pred must hold only 0 and 1, got {bad!r} at position \(1, 1\)"):
        multilabel_metrics(targets, wrong)
    with pytest.raises(ValueError, match=r"only 0 and 1, got .* at position \(1, 1\)"):
        best_thresholds(wrong, np.zeros((2, 2)))


def test_float_labels_with_integer_values_count_like_integers(predictions):
    y_true, y_pred = predictions
    assert single_label_metrics(y_true.astype(np.float32), y_pred, 4) == single_label_metrics(y_true, y_pred, 4)


def test_no_samples_give_zero_counts_and_an_undefined_accuracy():
    m = single_label_metrics(np.zeros(0), np.zeros(0, int), 3)
    assert m["n"] == 0 and m["accuracy"] is None and m["confusion_matrix"] == [[0] * 3] * 3
    assert m["macro_f1"] == 0.0  # rates keep the zero_division=0 convention
    ml = multilabel_metrics(np.zeros((0, 2)), np.zeros((0, 2)))
    assert ml["n"] == 0 and ml["accuracy"] is None and ml["counts"]["tp"] == [0, 0]
    assert best_thresholds(np.zeros((0, 2)), np.zeros((0, 2))).shape == (2,)
