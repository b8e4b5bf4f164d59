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
