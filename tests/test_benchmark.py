"""The benchmark runs end to end and reports computed statistics (tiny profile)."""

import json

import pytest

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
    assert json.loads((tmp_path / "metrics.json").read_text())["digits"] == saved["models"]
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


def test_all_systems_on_both_benchmarks(tmp_path):
    tiny = Profile("tiny", per_class=(12, 6, 6), radiograph_per_class=(10, 4, 6, 6), size=32, width=4, batch_size=16,
                   standard_epochs=1, isnet_epochs=1, system_epochs=1, gradient_epochs=1, segmenter_epochs=1,
                   unet_width=4, unet_depth=2, multitask_hidden=16, sononet_width=4, vit_epochs=1)
    report = run_benchmark(tmp_path, profile=tiny, progress=False, models="all", datasets="all")
    digits, radiographs = report["benchmarks"]["digits"], report["benchmarks"]["radiographs"]
    systems = {"standard", "isnet", "pipeline", "pipeline (no segmenter)", "multitask", "sononet", "gain", "rrr",
               "isnet_gi", "vit"}
    assert set(digits["models"]) == systems | {"reference"}
    assert set(radiographs["models"]) == systems | {"ham"}
    for name in systems:
        assert set(digits["models"][name]) == {"biased", "standard", "deceiving"}
        assert set(radiographs["models"][name]) == {"test", "external"}
        m = radiographs["models"][name]["external"]
        assert m["n"] == 18 and m["attention"]["background_share"]["n"] == 18
        d = radiographs["drops"][name]["test_to_external"]
        assert d == pytest.approx(radiographs["models"][name]["test"]["macro_f1"] - m["macro_f1"])
    text = (tmp_path / "report.md").read_text()
    assert "## mixed-source radiographs with an external test source" in text
    assert "| pipeline (no segmenter) |" in text and "| vit |" in text and "| ham |" in text
    assert "Not run on this benchmark: ham" in text
    assert (tmp_path / "radiographs" / "heatmaps_external.png").exists()
    assert (tmp_path / "digits" / "heatmaps.png").exists()
    assert json.loads((tmp_path / "metrics.json").read_text()).keys() == {"digits", "radiographs"}


def test_unknown_models_and_datasets_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model\(s\) \['resnet'\]"):
        run_benchmark(tmp_path, profile=TINY, models="standard,resnet")
    with pytest.raises(ValueError, match=r"unknown dataset\(s\) \['mnist'\]"):
        run_benchmark(tmp_path, profile=TINY, datasets="mnist")


def _initial_weights(monkeypatch) -> dict:
    """Record every model's weights as training starts, and the standard classifier's when it ends."""
    import isnet.benchmark as bench

    seen: dict = {}
    real = bench.train

    def train(module, data, folder, **kw):
        name = folder.name
        seen[name] = {k: v.clone() for k, v in module.deployed.state_dict().items()}
        out = real(module, data, folder, **kw)
        if name == "standard":
            seen["standard (trained)"] = {k: v.clone() for k, v in out[0].deployed.state_dict().items()}
        return out

    monkeypatch.setattr(bench, "train", train)
    return seen


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_isnet_starts_from_the_trained_standard_classifier(tmp_path, monkeypatch):
    seen = _initial_weights(monkeypatch)
    run_benchmark(tmp_path, profile=TINY, progress=False, models="isnet")
    assert _same(seen["isnet"], seen["standard (trained)"])
    assert not _same(seen["standard"], seen["standard (trained)"])  # the standard classifier did train
    assert "Started from the standard classifier's trained weights" in (tmp_path / "report.md").read_text()


def test_no_warm_start_gives_the_papers_random_start(tmp_path, monkeypatch):
    seen = _initial_weights(monkeypatch)
    run_benchmark(tmp_path, profile=TINY, progress=False, models="isnet", warm_start=())
    assert not _same(seen["isnet"], seen["standard (trained)"])
    assert "Started from the standard" not in (tmp_path / "report.md").read_text()


def test_warm_start_of_a_system_without_a_plain_backbone_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"warm_start: \['vit'\]"):
        run_benchmark(tmp_path, profile=TINY, progress=False, models="vit", warm_start=("vit",))


def test_cli_warm_start_option_reaches_the_profile(tmp_path, capsys):
    assert main(["benchmark", "--out", str(tmp_path), "--models", "vit", "--warm-start", "vit,isnet", "--quiet"]) == 2
    assert "warm_start: ['vit']" in capsys.readouterr().err


def test_c1_c2_set_by_hand_replace_the_estimate(tmp_path):
    report = run_benchmark(tmp_path, profile=TINY, progress=False, models="isnet", C1=0.5, C2=7.0)
    assert (report["C1"], report["C2"]) == (0.5, 7.0)
    assert "C1 = 0.5, C2 = 7" in (tmp_path / "report.md").read_text()


def test_the_benchmark_isnet_keeps_its_recipe_without_heatmap_warmup():
    from isnet.benchmark import _settings

    method, settings, _ = _settings("isnet", TINY, ["a", "b", "c"], {"lrp": (0.5, 7.0)})
    assert method == "isnet" and settings["heatmap_warmup_epochs"] == 0.0
    assert (settings["C1"], settings["C2"], settings["optimizer"]) == (0.5, 7.0, "adam")
