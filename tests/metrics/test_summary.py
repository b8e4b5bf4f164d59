"""evaluate_scores: every statistic of one model on one test set."""

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from isnet.metrics import evaluate_scores


def test_single_label_summary_is_consistent_and_json_ready():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 150)
    scores = rng.normal(size=(150, 3))
    scores[np.arange(150), y] += 1.5
    m = evaluate_scores(y, scores, class_names=["a", "b", "c"], draws=3000)
    json.dumps(m)
    assert m["task"] == "single-label" and m["classes"] == ["a", "b", "c"]
    assert m["macro_f1"] == pytest.approx(f1_score(y, scores.argmax(1), average="macro"))
    b = m["bayesian"]["macro"]["f1"]
    assert b["hdi"][0] < m["macro_f1"] < b["hdi"][1]
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    assert m["auc"]["macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovo"))
    assert m["auc"]["per_class"][1]["auc"] == pytest.approx(roc_auc_score(y == 1, probs[:, 1]))
    assert "wilson" not in m


def test_binary_tasks_also_get_wilson_intervals():
    y = np.array([1, 0, 0, 1, 1, 1, 0, 0])  # predicted: 0 then all 1
    scores = np.stack([-np.arange(8.0), np.arange(8.0)], 1)
    m = evaluate_scores(y, scores, class_names=["neg", "pos"], draws=500)
    assert m["wilson"]["per_class"]["recall"][1]["value"] == pytest.approx(3 / 4)
    assert "bayesian" in m


def test_multilabel_summary_uses_thresholds():
    rng = np.random.default_rng(1)
    y = (rng.random((100, 3)) < 0.4).astype(int)
    scores = rng.normal(size=(100, 3)) + 2 * y - 1
    default = evaluate_scores(y, scores, class_names=["x", "y", "z"], multilabel=True)
    assert default["thresholds"] == [0.5] * 3 and default["auc"]["macro_method"] == "mean of labels"
    assert default["macro_f1"] == pytest.approx(f1_score(y, scores >= 0, average="macro"))
    strict = evaluate_scores(y, scores, class_names=["x", "y", "z"], multilabel=True, thresholds=np.full(3, 0.99))
    assert strict["macro"]["recall"] < default["macro"]["recall"]
    assert default["wilson"]["macro"]["f1"]["ci"][0] < default["macro_f1"] < default["wilson"]["macro"]["f1"]["ci"][1]


def test_bad_outputs_are_named():
    with pytest.raises(ValueError, match=r"scores must have shape \(N, 2\)"):
        evaluate_scores(np.zeros(3, int), np.zeros((3, 3)), class_names=["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores(np.zeros(2, int), np.array([[0.0, np.nan], [1.0, 0.0]]), class_names=["a", "b"])


def test_labels_are_checked_before_counting():
    scores = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\), got 1.5 at position 1"):
        evaluate_scores(np.array([0, 1.5, 2, 0]), scores, class_names=["a", "b", "c"], draws=10)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\), got 3 at position 2"):
        evaluate_scores(np.array([0, 1, 3, 0]), scores, class_names=["a", "b", "c"], draws=10)
    with pytest.raises(ValueError, match=r"only 0 and 1, got -1.0 at position \(0, 2\)"):
        evaluate_scores(np.array([[0, 1, -1.0]] * 4), scores, class_names=["a", "b", "c"], multilabel=True)
    with pytest.raises(ValueError, match="3 samples but scores have 4"):
        evaluate_scores(np.array([0, 1, 2]), scores, class_names=["a", "b", "c"], draws=10)


@pytest.mark.parametrize("multilabel", [False, True])
def test_no_samples_give_a_strict_json_summary(multilabel):
    y = np.zeros((0, 2) if multilabel else 0)
    m = evaluate_scores(y, np.zeros((0, 2)), class_names=["a", "b"], multilabel=multilabel, draws=50)
    assert m["n"] == 0 and m["accuracy"] is None and m["auc"]["macro"] is None
    assert all(a["auc"] is None for a in m["auc"]["per_class"])
    json.dumps(m, allow_nan=False)


def test_one_positive_case_gives_a_null_variance():
    y = np.array([0, 0, 0, 1, 0])
    scores = np.stack([np.zeros(5), np.array([-1.0, 0.5, -0.2, 0.3, -2.0])], 1)
    m = evaluate_scores(y, scores, class_names=["neg", "pos"], draws=50)
    assert m["auc"]["per_class"][1]["std"] is None and m["auc"]["per_class"][1]["auc"] == pytest.approx(0.75)
    json.dumps(m, allow_nan=False)
