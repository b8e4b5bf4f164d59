"""The benchmark runs end to end and reports computed statistics (tiny profile)."""

import json
from dataclasses import replace

import pytest
import torch
from PIL import Image

from isnet.benchmark import _BIAS_TEXT, ALL_MODELS, PROFILES, Profile, _settings, run_benchmark
from isnet.data.bias import BIAS_KINDS
from isnet.cli import main
from isnet.systems.registry import METHODS, build_system

TINY = Profile("tiny", per_class=(16, 6, 9), size=32, width=8, batch_size=16, standard_epochs=2, isnet_epochs=1)


def test_benchmark_writes_reports(tmp_path):
    report = run_benchmark(tmp_path, profile=TINY, progress=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["bias"] == "shapes"
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
    for name, tests in saved["models"].items():
        for test, m in tests.items():
            swap = m["background_swap"]
            assert (swap["mixed_rand"]["n"], swap["mixed_next"]["n"]) == (27, 27)
            assert swap["mixed_next"]["original_macro_f1"] == pytest.approx(m["macro_f1"])
            assert 0.0 <= swap["mixed_next"]["flip_rate"] <= 1.0
            assert f"| {name} | {test} | 27 | {m['macro_f1']:.3f} | {swap['mixed_rand']['macro_f1']:.3f} |" in text
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
                   unet_width=4, unet_depth=2, multitask_hidden=16, sononet_width=4, vit_epochs=1, radiograph_width=4,
                   radiograph_standard_epochs=1)
    report = run_benchmark(tmp_path, profile=tiny, progress=False, models="all", datasets="all")
    digits, radiographs = report["benchmarks"]["digits"], report["benchmarks"]["radiographs"]
    systems = {"standard", "isnet", "isnet_selective", "isnet_stochastic", "isnet_dual", "pipeline",
               "pipeline (no segmenter)", "multitask", "sononet", "gain", "rrr", "isnet_gi", "vit"}
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


def _record_benchmark_arguments(tmp_path, monkeypatch) -> dict:
    """Replace run_benchmark by a stub; the returned dict fills with the arguments the CLI passes."""
    seen = {}

    def fake(out, **kwargs):
        seen.update(kwargs)
        (tmp_path / "report.md").write_text("report")
        return {"total_seconds": 0.0}

    monkeypatch.setattr("isnet.benchmark.run_benchmark", fake)
    return seen


def test_cli_benchmark_can_skip_the_background_swap(tmp_path, monkeypatch):
    seen = _record_benchmark_arguments(tmp_path, monkeypatch)
    assert main(["benchmark", "--out", str(tmp_path), "--quiet"]) == 0
    assert seen["background_swap"] is True
    assert seen["bias"] == "shapes"
    assert main(["benchmark", "--out", str(tmp_path), "--quiet", "--no-background-swap", "--bias", "scene"]) == 0
    assert seen["background_swap"] is False
    assert seen["bias"] == "scene"


def test_cli_radiograph_variant_reaches_the_profile(tmp_path, monkeypatch):
    seen = _record_benchmark_arguments(tmp_path, monkeypatch)
    assert main(["benchmark", "--out", str(tmp_path), "--quiet", "--datasets", "radiographs"]) == 0
    assert "radiograph_variant" not in seen  # the profile's default
    assert main(["benchmark", "--out", str(tmp_path), "--quiet", "--radiograph-variant", "in-lung"]) == 0
    assert seen["radiograph_variant"] == "in-lung"
    assert main(["benchmark", "--out", str(tmp_path), "--quiet", "--standard-epochs", "3"]) == 0
    assert seen["standard_epochs"] == seen["radiograph_standard_epochs"] == 3


def test_unknown_radiograph_variant_is_named_before_training(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown radiograph variant 'lungs'; choose from background, in-lung"):
        run_benchmark(tmp_path, profile=TINY, progress=False, datasets="radiographs", radiograph_variant="lungs")
    assert not any(tmp_path.iterdir())
    assert main(["benchmark", "--out", str(tmp_path), "--quiet", "--radiograph-variant", "lungs"]) == 2
    assert "unknown radiograph variant 'lungs'" in capsys.readouterr().err


def test_radiograph_variant_reaches_the_data_and_the_report(tmp_path):
    tiny = replace(TINY, radiograph_per_class=(4, 2, 2, 2), radiograph_standard_epochs=1)
    report = run_benchmark(tmp_path, profile=tiny, progress=False, models="standard", datasets="radiographs",
                           background_swap=False, radiograph_variant="in-lung")
    assert report["profile"]["radiograph_variant"] == "in-lung"
    assert json.loads((tmp_path / "radiographs" / "settings.json").read_text())["variant"] == "in-lung"
    assert "Variant `in-lung`" in (tmp_path / "report.md").read_text()


def test_the_benchmark_trains_every_method_of_the_registry_and_the_reference():
    assert [m for m in ALL_MODELS if m != "reference"] == list(METHODS)
    assert ALL_MODELS[:3] == ("standard", "isnet", "reference")  # the order of the reports


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_system_builds_with_the_radiograph_profile(profile):
    """Every system of the profile's radiograph runs builds, classifies and explains a batch of its images."""
    prof = PROFILES[profile]
    classes = ["ground_glass", "normal", "opacity"]
    c = {"lrp": (0.1, 1.0), "grad_input": (0.1, 1.0)}
    images = torch.rand(2, 3, prof.size, prof.size)
    for name in ALL_MODELS:
        method, settings, epochs = _settings(name, prof, classes, c, "radiographs")
        assert epochs >= 1
        if "backbone" in settings:
            assert settings["backbone"] == prof.radiograph_backbone
        module = build_system(method, len(classes), **settings).eval()
        assert module.deployed(images).shape == (2, 3), name
        logits, heatmaps = module.explainer()(images)
        assert logits.shape == (2, 3) and heatmaps.shape[0] == 2 and torch.isfinite(heatmaps).all(), name


@pytest.mark.parametrize("kind", ["scene", "text"])
def test_benchmark_with_a_written_bias_kind(tmp_path, kind):
    report = run_benchmark(tmp_path, profile=TINY, progress=False, models="standard,reference", bias=kind,
                           background_swap=False)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["bias"] == report["bias"] == kind
    assert list(saved["models"]["standard"]) == ["biased", "standard", "deceiving"]
    assert set(saved["models"]["reference"]) == {"standard"}
    assert all(m["n"] == 27 for tests in saved["models"].values() for m in tests.values())
    assert (tmp_path / f"data_{kind}" / "clean" / "manifest.csv").is_file() and not (tmp_path / "data").exists()
    words = "class-linked scenes" if kind == "scene" else "class-linked words"
    text = (tmp_path / "report.md").read_text()
    assert f"digits on textures with {words}" in text and f"digits bias `{kind}`" in text


def test_every_bias_kind_is_described():
    assert list(_BIAS_TEXT) == list(BIAS_KINDS)


def test_unknown_bias_kind_is_named_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"unknown bias kind 'stripes'; choose from shapes, scene, text"):
        run_benchmark(tmp_path / "run", profile=TINY, bias="stripes")
    assert not (tmp_path / "run").exists()
    assert main(["benchmark", "--out", str(tmp_path / "cli"), "--bias", "stripes", "--quiet"]) == 2
    assert "unknown bias kind 'stripes'" in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_the_benchmark_isnet_keeps_its_recipe_without_heatmap_warmup():
    from isnet.benchmark import _settings

    method, settings, _ = _settings("isnet", TINY, ["a", "b", "c"], {"lrp": (0.5, 7.0)})
    assert method == "isnet" and settings["heatmap_warmup_epochs"] == 0.0
    assert (settings["C1"], settings["C2"], settings["optimizer"]) == (0.5, 7.0, "adam")


@pytest.mark.parametrize("method", ["isnet", "isnet_stochastic"])
def test_isnet_epochs_and_background_jitter_come_from_the_profile_per_dataset(method):
    prof = Profile("p", isnet_epochs=7, radiograph_isnet_epochs=11, isnet_background_jitter=0.25)
    c = {"lrp": (0.5, 7.0)}
    _, settings, epochs = _settings(method, prof, ["a", "b", "c"], c)
    assert epochs == 7 and settings["background_jitter"] == 0.25
    _, settings, epochs = _settings(method, prof, ["a", "b", "c"], c, "radiographs")
    assert epochs == 11 and settings["background_jitter"] == 0.25
    _, settings, _ = _settings(method, Profile("default"), ["a", "b", "c"], c)
    assert settings["background_jitter"] is None  # the ISNet's own default


def test_cli_isnet_epochs_reach_both_benchmarks(tmp_path, monkeypatch):
    seen = _record_benchmark_arguments(tmp_path, monkeypatch)
    assert main(["benchmark", "--out", str(tmp_path), "--quiet", "--isnet-epochs", "5"]) == 0
    assert seen["isnet_epochs"] == seen["radiograph_isnet_epochs"] == 5
