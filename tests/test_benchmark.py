"""The benchmark runs end to end and reports computed statistics (tiny profile)."""

import json

from PIL import Image

from isnet.benchmark import Profile, run_benchmark
from isnet.cli import main

TINY = Profile("tiny", per_class=(16, 6, 9), size=32, width=8, batch_size=16, standard_epochs=2, isnet_epochs=1)


def test_benchmark_writes_reports(tmp_path):
    report = run_benchmark(tmp_path, profile=TINY, progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["models"].keys() == {"standard", "isnet", "reference"}
    assert set(saved["models"]["standard"]) == {"biased", "standard", "deceiving"}
    assert set(saved["models"]["reference"]) == {"standard"}
    for tests in saved["models"].values():
        for m in tests.values():
            assert 0.0 <= m["macro_f1"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0 and m["n"] == 27
            assert sum(map(sum, m["confusion_matrix"])) == 27
    drops = saved["drops"]["standard"]
    m = saved["models"]["standard"]
    assert drops["biased_to_deceiving"] == m["biased"]["macro_f1"] - m["deceiving"]["macro_f1"]
    assert 0 < report["C1"] < report["C2"]
    assert Image.open(tmp_path / "heatmaps.png").size[0] > 200
    text = (tmp_path / "report.md").read_text()
    assert "| isnet | deceiving |" in text and "heatmaps.png" in text and "Table 4" in text
    f1 = m["deceiving"]["bayesian"]["macro"]["f1"]
    assert f"{f1['mean']:.3f} ± {f1['std']:.3f}" in text
    assert f"standard: biased → standard {drops['biased_to_standard']:.3f}" in text
    for tests in saved["models"].values():
        for m in tests.values():
            assert m["attention"]["background_share"]["n"] == 27
            assert 0.0 <= m["attention"]["mass_accuracy"]["mean"] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text()) == saved["models"]
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    for name in ("heatmaps_biased.png", "heatmaps_standard.png", "training_curves.png"):
        assert (tmp_path / name).exists()
    assert (tmp_path / "runs" / "isnet" / "logs" / "metrics.csv").exists()


def test_cli_benchmark_rejects_unknown_profile(capsys):
    try:
        main(["benchmark", "--profile", "huge"])
    except SystemExit as exit:
        assert exit.code == 2
    assert "invalid choice" in capsys.readouterr().err
