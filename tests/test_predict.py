"""``isnet predict`` and its library: the data module's test preprocessing, probabilities, CSV, heatmaps, errors."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from isnet.backbones import build_backbone, save_model
from isnet.cli import main
from isnet.data import MaskedImageDataModule
from isnet.export import deployment_metadata, export_network
from isnet.evaluation import lrp_explainer
from isnet.lrp import LRPGraph
from isnet.predict import (data_preprocessing, decisions, heatmaps_of_classes, model_preprocessing, probabilities,
                           read_images)
from tests.data.test_datamodule import make_folder

NAMES = ["cat", "dog", "owl"]


@pytest.fixture
def model_file(tmp_path):
    model = build_backbone("small_cnn", num_classes=3, width=4).eval()
    prep = {"size": 16, "grayscale": False, "equalize": True, "channels": 3, "square": True}
    path = save_model(tmp_path / "model" / "backbone.pt", model, arch="small_cnn", num_classes=3,
                      class_names=NAMES, preprocessing=prep, arch_kwargs={"width": 4})
    return path, model, prep


def write_images(folder, n=20):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (18 + i % 3, 24, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return folder


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_predict_writes_one_row_per_image_with_probabilities(tmp_path, model_file):
    path, model, prep = model_file
    images = write_images(tmp_path / "images")
    out = tmp_path / "preds.csv"
    assert main(["predict", "--model", str(path), "--images", str(images), "--out", str(out), "--batch-size", "6",
                 "--quiet"]) == 0
    header, *rows = read_csv(out)
    assert header == ["image", "predicted_class", *NAMES] and len(rows) == 20
    probs = torch.tensor([[float(v) for v in r[2:]] for r in rows], dtype=torch.float64)
    torch.testing.assert_close(probs.sum(1), torch.ones(20, dtype=torch.float64), rtol=0, atol=1e-5)
    assert [r[1] for r in rows] == [NAMES[k] for k in probs.argmax(1)]
    # the same numbers as the model on the images read with the stored preprocessing
    paths = sorted(images.iterdir())
    with torch.no_grad():
        expected = torch.softmax(model(read_images(paths, model_preprocessing({"preprocessing": prep}))), 1)
    torch.testing.assert_close(probs, expected.double(), rtol=0, atol=1e-5)
    assert [r[0] for r in rows] == [str(p) for p in paths]


def test_onnx_and_pt2_models_predict_the_same(tmp_path, model_file, capsys):
    path, model, prep = model_file
    meta = deployment_metadata(class_names=NAMES, num_classes=3, in_channels=3, preprocessing=prep)
    files = export_network(model, tmp_path / "export", stem="backbone", metadata=meta,
                           formats=["onnx", "torch_export"], write_model=lambda p: p)
    images = write_images(tmp_path / "images", n=5)
    results = {}
    for name, file in (("pt", path), ("onnx", files["onnx"]), ("pt2", files["torch_export"])):
        out = tmp_path / f"{name}.csv"
        assert main(["predict", "--model", str(file), "--images", str(images), "--out", str(out), "--quiet"]) == 0
        rows = read_csv(out)[1:]
        results[name] = np.array([[float(v) for v in r[2:]] for r in rows])
        assert [r[1] for r in rows] == [NAMES[k] for k in results[name].argmax(1)]
    np.testing.assert_allclose(results["onnx"], results["pt"], atol=1e-5)
    np.testing.assert_allclose(results["pt2"], results["pt"], atol=1e-5)
    onnx_args = ["predict", "--model", str(files["onnx"]), "--images", str(images), "--out", str(tmp_path / "x.csv")]
    assert main(onnx_args + ["--heatmaps", str(tmp_path / "maps")]) == 2
    assert "--heatmaps needs an isnet model file (.pt)" in capsys.readouterr().err
    assert main(onnx_args + ["--size", "24"]) == 2
    assert "takes 16 x 16 images (onnx graphs fix the size)" in capsys.readouterr().err


def test_predict_heatmaps_are_lrp_of_the_predicted_class(tmp_path, model_file):
    path, model, prep = model_file
    images = write_images(tmp_path / "images", n=6)
    out = tmp_path / "maps"
    assert main(["predict", "--model", str(path), "--images", str(images), "--out", str(tmp_path / "p.csv"),
                 "--heatmaps", str(out), "--batch-size", "4", "--quiet"]) == 0
    rows = read_csv(tmp_path / "p.csv")[1:]
    paths = sorted(images.iterdir())
    batch = read_images(paths, model_preprocessing({"preprocessing": prep}))
    with torch.no_grad():
        _, all_maps = LRPGraph(model)(batch)
    written = sorted(p.name for p in out.iterdir())
    expected_names = []
    for i, (p, row) in enumerate(zip(paths, rows)):
        k = NAMES.index(row[1])
        expected_names += [f"{p.stem}_class{k}.png", f"{p.stem}_class{k}_overlay.png"]
    assert written == sorted(expected_names)
    # the picture of one predicted class equals the one `isnet explain` draws for that class
    assert main(["explain", "--model", str(path), "--images", str(paths[0]), "--out", str(tmp_path / "e"),
                 "--quiet"]) == 0
    k = NAMES.index(rows[0][1])
    name = f"{paths[0].stem}_class{k}.png"
    np.testing.assert_array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(tmp_path / "e" / name)))
    # grouping the images by predicted class gives each image its own class's map
    predicted = [NAMES.index(r[1]) for r in rows]
    maps = heatmaps_of_classes(lrp_explainer(model), batch, predicted, batch_size=4)
    torch.testing.assert_close(maps, all_maps[torch.arange(6), torch.tensor(predicted)])


def test_preprocessing_is_what_the_data_module_does_to_test_images(tmp_path):
    rows = [("a", True, "cat", "train"), ("b", True, "dog", "train"), ("c", True, "cat", "val"),
            ("d", True, "dog", "val"), ("e", False, "cat", "test"), ("f", False, "dog", "test")]
    root = make_folder(tmp_path / "ds", rows, size=(20, 12))  # not square: the padding matters
    settings = {"root": root, "size": 16, "grayscale": True, "equalize": True, "augment": False}
    dm = MaskedImageDataModule(**settings)
    dm.setup()
    prep = data_preprocessing(settings)
    assert prep == {"size": 16, "grayscale": True, "equalize": True, "channels": 3, "square": True}
    images = read_images([root / "e.png", root / "f.png"], model_preprocessing({"preprocessing": prep}))
    expected = torch.stack([dm.test_sets["test"][i]["image"] for i in range(2)])
    torch.testing.assert_close(images, expected, rtol=0, atol=0)


def test_probabilities_and_multilabel_decisions():
    logits = torch.tensor([[0.0, 2.0, -1.0], [3.0, 3.0, 0.0]], dtype=torch.float64)
    soft = probabilities(logits, multilabel=False)
    torch.testing.assert_close(soft.sum(1), torch.ones(2, dtype=torch.float64))
    assert decisions(soft, multilabel=False) == [[1], [0]]
    sig = probabilities(logits, multilabel=True)
    torch.testing.assert_close(sig, 1 / (1 + torch.exp(-logits)))
    assert decisions(sig, multilabel=True) == [[1], [0, 1]]  # over 0.5
    assert decisions(sig, multilabel=True, thresholds=[0.4, 0.9, 0.2]) == [[0, 2], [0, 1, 2]]


def test_multilabel_model_writes_its_labels_over_the_stored_thresholds(tmp_path):
    model = build_backbone("small_cnn", num_classes=2, width=4).eval()
    path = save_model(tmp_path / "m.pt", model, arch="small_cnn", num_classes=2, arch_kwargs={"width": 4},
                      class_names=["smile", "cheeks"], preprocessing={"size": 16}, multilabel=True,
                      thresholds=[0.0, 1.0])  # every image smiles, none has cheeks
    images = write_images(tmp_path / "images", n=3)
    assert main(["predict", "--model", str(path), "--images", str(images), "--out", str(tmp_path / "p.csv"),
                 "--quiet"]) == 0
    rows = read_csv(tmp_path / "p.csv")
    assert rows[0] == ["image", "predicted_class", "smile", "cheeks"]
    assert [r[1] for r in rows[1:]] == ["smile"] * 3


def test_predict_reports_bad_input(tmp_path, model_file, capsys):
    path = model_file[0]
    folder = write_images(tmp_path / "images", n=2)
    (folder / "broken.png").write_bytes(b"not an image")
    assert main(["predict", "--model", str(path), "--images", str(folder), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and "broken.png" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert main(["predict", "--model", str(path), "--images", str(empty), "--out", str(tmp_path / "p.csv")]) == 2
    assert f"no images found in {empty}" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "none.pt"), "--images", str(folder),
                 "--out", str(tmp_path / "p.csv")]) == 2
    assert "no model file at" in capsys.readouterr().err


def test_predict_runs_as_a_command(tmp_path, model_file):
    """The installed entry point's module, in a fresh process (as CI runs it)."""
    images = write_images(tmp_path / "images", n=3)
    out = tmp_path / "p.csv"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "isnet.cli", "predict", "--model", str(model_file[0]),
                           "--images", str(images), "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "wrote predictions for 3 image(s)" in done.stdout and len(read_csv(out)) == 4
