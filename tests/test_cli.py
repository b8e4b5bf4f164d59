"""The command line: ``isnet explain`` on images on disk with a saved model, help texts."""

import argparse
import re

import numpy as np
import pytest
import torch
from PIL import Image

from isnet.backbones import build_backbone, load_model, save_model
from isnet.cli import build_parser, main
from isnet.systems.registry import METHODS, TUNABLE


@pytest.fixture
def model_file(tmp_path):
    model = build_backbone("small_cnn", num_classes=2, in_channels=3, width=4)
    return save_model(tmp_path / "model.pt", model, arch="small_cnn", num_classes=2,
                      class_names=["cat", "dog"], preprocessing={"size": 16},
                      arch_kwargs={"width": 4})


def write_images(folder, n=2):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_explain_writes_pngs_and_arrays(tmp_path, model_file):
    images = write_images(tmp_path / "images")
    out = tmp_path / "out"
    assert main(["explain", "--model", str(model_file), "--images", str(images), "--out", str(out), "--quiet"]) == 0
    for stem in ("img0", "img1"):
        for k in (0, 1):
            assert Image.open(out / f"{stem}_class{k}.png").size == (16, 16)
            assert (out / f"{stem}_class{k}_overlay.png").exists()
    assert (out / "heatmaps.png").exists()
    data = np.load(out / "heatmaps.npz")
    assert data["heatmaps"].shape == (2, 2, 3, 16, 16)


def test_explain_reports_bad_input(tmp_path, model_file, capsys):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    code = main(["explain", "--model", str(model_file), "--images", str(tmp_path / "broken.png"),
                 "--out", str(tmp_path / "o")])
    assert code == 2
    assert "cannot read image" in capsys.readouterr().err
    code = main(["explain", "--model", str(tmp_path / "missing.pt"), "--images", str(tmp_path), "--out", "x"])
    assert code == 2
    assert "no model file" in capsys.readouterr().err


def test_model_file_round_trip(model_file):
    model, info = load_model(model_file)
    assert info["class_names"] == ["cat", "dog"] and info["preprocessing"] == {"size": 16}
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 2)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_backbone("alexnet", 2)


def test_the_command_sets_up_the_allocator_before_it_runs(tmp_path, model_file, monkeypatch):
    calls = []
    monkeypatch.setattr("isnet.cli.keep_freed_memory", lambda: calls.append(True) or True)
    images = write_images(tmp_path / "images", n=1)
    assert main(["explain", "--model", str(model_file), "--images", str(images), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    assert calls == [True]


def _help(command, option):
    """The help text of ``option`` of ``isnet command``."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return next(a.help for a in commands[command]._actions if option in a.option_strings)


def _listed(text):
    return set(re.findall(r"\w+", text))


def test_the_help_lists_the_methods_of_the_registry():
    assert set(METHODS) <= _listed(_help("fit", "--method"))
    assert set(METHODS) | {"reference"} <= _listed(_help("benchmark", "--models"))
    tunable = _help("tune", "--method")
    assert set(TUNABLE) <= _listed(tunable) and not (set(METHODS) - set(TUNABLE)) & _listed(tunable)


def test_test_command_writes_strict_json_with_null_for_an_undefined_variance(tmp_path):
    import json

    import yaml

    from tests.data.test_datamodule import make_folder

    labels = ["smile|cheeks", "cheeks", "smile", "smile|cheeks"]
    rows = [(f"t{i}", True, labels[i % 4], "train") for i in range(8)]
    rows += [(f"v{i}", True, labels[i % 4], "val") for i in range(4)]
    # test: one "smile" case (its AUC has no DeLong variance) and a batch of 4 without any positive label
    test_labels = ["smile|cheeks", "cheeks", "cheeks", "cheeks", "", "", "", ""]
    rows += [(f"x{i}", True, label, "test") for i, label in enumerate(test_labels)]
    root = make_folder(tmp_path / "ml", rows)
    cfg = {"out": str(tmp_path / "run"),
           "model": {"backbone": "small_cnn", "arch_kwargs": {"width": 4}, "P": 0.5, "d": 0.9, "multilabel": True},
           "data": {"root": str(root), "size": 16, "multilabel": True, "augment": False, "batch_size": 4},
           "trainer": {"max_epochs": 1}}
    config = tmp_path / "ml.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(config), "--quiet"]) == 0
    checkpoint = next((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert main(["test", "--config", str(config), "--checkpoint", f"m={checkpoint}", "--quiet",
                 "--out", str(tmp_path / "report")]) == 0

    def refuse(word):
        raise ValueError(f"metrics.json is not strict JSON: it holds {word}")

    saved = json.loads((tmp_path / "report" / "metrics.json").read_text(), parse_constant=refuse)
    m = saved["models"]["m"]["test"]
    smile = m["auc"]["per_class"][m["classes"].index("smile")]
    assert m["n"] == 8 and smile["auc"] is not None and smile["std"] is None and smile["ci"] == [0.0, 1.0]
    assert m["attention"]["background_share"]["n"] == 4 and m["attention"]["background_share"]["skipped"] == 4
