"""Reports: Markdown and self-contained HTML with the paper's table shapes."""

import numpy as np
import pytest

from isnet.metrics import evaluate_scores
from isnet.render import save_png
from isnet.report import Report, evaluation_report


def _results(multilabel=False, k=3):
    rng = np.random.default_rng(0)
    out = {}
    for model in ("standard", "isnet"):
        out[model] = {}
        for test in ("biased", "deceiving"):
            if multilabel:
                y = (rng.random((50, k)) < 0.5).astype(int)
            else:
                y = rng.integers(0, k, 50)
            m = evaluate_scores(y, rng.normal(size=(50, k)), class_names=[f"c{i}" for i in range(k)],
                                multilabel=multilabel, draws=500)
            m["attention"] = {name: {"mean": 0.25, "std": 0.1, "n": 50, "skipped": 0}
                              for name in ("background_share", "mass_accuracy", "rank_accuracy")}
            out[model][test] = m
    return out


def test_single_label_report_tables(tmp_path):
    results = _results()
    save_png(tmp_path / "fig.png", np.zeros((4, 4, 3), np.uint8))
    report = evaluation_report(results, title="T", intro=["hello"], drops={"standard": {"biased → deceiving": 0.5}},
                               figures=[("fig.png", "a figure")])
    files = report.write(tmp_path)
    md = files["markdown"].read_text()
    b = results["isnet"]["biased"]["bayesian"]["macro"]["f1"]
    assert f"| isnet | {b['mean']:.3f} ± {b['std']:.3f} |" in md  # Table 1 row, computed values
    assert f"[{b['hdi'][0]:.3f}, {b['hdi'][1]:.3f}]" in md  # HDI in Table 2
    cm = results["standard"]["biased"]["confusion_matrix"]
    assert "| standard | c0 | " + " | ".join(map(str, cm[0])) + " |" in md  # Table 4
    assert "Hand-Till" in md and "DeLong" in md and "background share" in md
    assert "standard: biased → deceiving 0.500" in md and "![a figure](fig.png)" in md
    page = files["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "data:image/png;base64," in page
    assert "src=\"fig.png\"" not in page and "<table>" in page and "http" not in page


def test_multilabel_and_binary_reports_use_wilson_intervals(tmp_path):
    md = evaluation_report(_results(multilabel=True), title="M").markdown()
    assert "Wilson" in md and "threshold" in md and "Hand-Till" not in md
    md = evaluation_report(_results(k=2), title="B").markdown()
    assert "binary task" in md and "HDI" in md


def test_report_blocks_and_escaping(tmp_path):
    r = Report("<title>")
    r.table(["a", "b"], [["1", "x|y"]])
    assert "x\\|y" in r.markdown()
    assert "&lt;title&gt;" in r.html(tmp_path)
    with pytest.raises(ValueError, match="has 1 cells for 2 columns"):
        r.table(["a", "b"], [["1"]])


def test_an_auc_without_a_variance_is_shown_without_a_std():
    results = _results(k=2)
    y = np.array([0, 0, 0, 1, 0, 0])  # one positive case of class 1: DeLong's variance is undefined
    m = evaluate_scores(y, np.stack([np.zeros(6), np.array([-1.0, 0.5, -0.2, 0.3, -2.0, 0.1])], 1),
                        class_names=["c0", "c1"], draws=200)
    results["isnet"]["biased"] = m
    md = evaluation_report(results, title="One positive").markdown()
    auc = m["auc"]["per_class"][1]
    assert auc["std"] is None and "| isnet | c1 | " in md
    assert f"{auc['auc']:.3f} [0.000, 1.000] |" in md and "nan" not in md


def test_background_swap_table(tmp_path):
    results = _results()
    md = evaluation_report(results, title="T").markdown()
    assert "Background swap" not in md  # only when some result has it
    results["standard"]["biased"]["background_swap"] = {
        "mixed_rand": {"macro_f1": 0.5, "original_macro_f1": 0.875, "flip_rate": 0.25, "n": 40, "skipped": 10},
        "mixed_next": {"macro_f1": 0.125, "original_macro_f1": 0.9, "flip_rate": 0.75, "n": 36, "skipped": 14}}
    results["isnet"]["biased"]["background_swap"] = {
        "mixed_rand": {"macro_f1": None, "original_macro_f1": None, "flip_rate": None, "n": 0, "skipped": 50}}
    report = evaluation_report(results, title="T")
    md = report.markdown()
    assert "## Background swap" in md and "flip rate 0" in md
    assert "| model | test set | n | macro-F1 original | mixed_rand | mixed_next | flip rate mixed_rand | " in md
    assert "| standard | biased | 40 / 36 | 0.875 | 0.500 | 0.125 | 0.250 | 0.750 |" in md
    assert "| isnet | biased | 0 | – | – | – | – | – |" in md  # multi-label or no masks: blanks
    assert "| standard | deceiving |" not in md.split("## Background swap")[1]
    assert "<td>40 / 36</td><td>0.875</td>" in report.html(tmp_path)
