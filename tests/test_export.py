"""Deployment formats: ONNX and torch.export give PyTorch's logits, metadata travels with them, errors are clear."""

import json
import warnings

import onnx
import pytest
import torch
from torch import nn

from isnet.backbones import build_backbone, save_model
from isnet.export import (ONNX_OPSET, ExportError, check_formats, deployment_metadata, export_network, export_torch,
                          load_deployed)
from isnet.systems.registry import build_system, load_exported
from isnet.systems.isnet import ISNetModule


def small_backbone(arch: str) -> nn.Module:
    if arch == "small_cnn":
        return build_backbone(arch, 3, width=4)
    model = build_backbone(arch, 3)
    if arch.startswith("vgg"):
        # the same layers with a narrower head: torchvision's 4096-wide one weighs 0.5 GB in ONNX
        model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 32), nn.ReLU(True), nn.Dropout(),
                                         nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 3))
    return model


def metadata(size: int = 32, **kwargs) -> dict:
    return deployment_metadata(class_names=["a", "b", "c"], num_classes=3, in_channels=3,
                               preprocessing={"size": size}, **kwargs)


# torch.export round trips for two families only: the ONNX exporter runs torch.export itself,
# and DenseNet121 takes most of a minute per format on a busy 2-core machine
@pytest.mark.parametrize("arch, formats", [
    ("small_cnn", ["onnx", "torch_export"]), ("vgg11_bn", ["onnx"]), ("resnet18", ["onnx", "torch_export"]),
    ("densenet121", ["onnx"]),
])
def test_onnx_and_torch_export_give_pytorchs_logits_at_any_batch_size(tmp_path, arch, formats):
    model = small_backbone(arch).eval()
    files = export_network(model, tmp_path, stem="net", metadata=metadata(), formats=formats,
                           write_model=lambda path: pytest.fail("model file not asked for"))
    assert set(files) == {*formats, "preprocessing"}
    loaded = {fmt: load_deployed(files[fmt]) for fmt in formats}
    for batch in (2, 5):  # the example batch was 2: 5 checks the dynamic axis
        x = torch.rand(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(x)
            if "torch_export" in loaded:
                torch.testing.assert_close(loaded["torch_export"][0](x), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(loaded["onnx"][0](x), expected, rtol=0, atol=1e-4)
    for _, info in loaded.values():
        assert info["class_names"] == ["a", "b", "c"] and info["preprocessing"] == {"size": 32}
        assert info["multilabel"] is False and info["explainer"] is None
    proto = onnx.load(str(files["onnx"]))
    assert [o.version for o in proto.opset_import if o.domain == ""] == [ONNX_OPSET]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis
    assert json.loads(files["preprocessing"].read_text())["class_names"] == ["a", "b", "c"]


def test_export_uses_no_deprecated_torchscript(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("TorchScript used")

    monkeypatch.setattr(torch.jit, "script", refuse)
    monkeypatch.setattr(torch.jit, "trace", refuse)
    module = ISNetModule("small_cnn", 3, P=0.5, arch_kwargs={"width": 4}, class_names=["a", "b", "c"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = module.export(tmp_path, preprocessing={"size": 16})
    deprecated = [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert not [str(w.message) for w in deprecated if "jit" in str(w.message).lower() or "torchscript" in
                str(w.message).lower() or "jit" in w.filename]
    assert {p.name for p in files.values()} == {"backbone.pt", "backbone.onnx", "backbone.pt2", "preprocessing.json"}
    assert module.training  # export leaves the module's mode alone


def test_channels_last_weights_export_plainly(tmp_path):
    module = ISNetModule("small_cnn", 3, P=0.5, arch_kwargs={"width": 4}, channels_last=True).eval()
    files = module.export(tmp_path, preprocessing={"size": 16}, formats="torch_export")
    x = torch.rand(3, 3, 16, 16)
    program, _ = load_deployed(files["torch_export"])
    with torch.no_grad():
        torch.testing.assert_close(program(x), module.backbone(x), rtol=0, atol=1e-5)
    conv = module.backbone.features[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)  # the module itself is untouched


def test_system_model_file_keeps_preprocessing_thresholds_and_explainer(tmp_path):
    module = build_system("rrr", 2, backbone="small_cnn", arch_kwargs={"width": 4}, multilabel=True,
                          class_names=["smile", "cheeks"]).eval()
    files = module.export(tmp_path, preprocessing={"size": 16, "grayscale": True}, formats="model",
                          thresholds=[0.3, 0.7])
    assert set(files) == {"model", "preprocessing"} and files["model"].name == "model.pt"
    network, info = load_deployed(files["model"])
    assert info["multilabel"] is True and info["thresholds"] == [0.3, 0.7]
    assert info["preprocessing"] == {"size": 16, "grayscale": True} and info["method"] == "rrr"
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(network(x), module.deployed(x))
        torch.testing.assert_close(load_exported(files["model"])(x), module.deployed(x))
    logits, heatmaps = info["explainer"](x)
    assert heatmaps.shape == (2, 2, 3, 16, 16)
    with pytest.raises(ValueError, match="3 thresholds for a model with 2 labels"):
        module.export(tmp_path, formats="model", thresholds=[0.1, 0.2, 0.3])


def test_formats_are_checked():
    assert check_formats("all") == ("model", "onnx", "torch_export")
    assert check_formats(["torch_export", "model"]) == ("model", "torch_export")
    with pytest.raises(ValueError, match=r"unknown export format\(s\) \['torchscript'\]"):
        check_formats(["model", "torchscript"])
    with pytest.raises(ValueError, match="2 class names for a model with 3 logits"):
        deployment_metadata(class_names=["a", "b"], num_classes=3, in_channels=3, preprocessing=None)


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # control flow on values: torch.export cannot capture it
            return x.flatten(1)[:, :2]
        return -x.flatten(1)[:, :2]


def test_unexportable_network_and_unreadable_files_give_clear_errors(tmp_path):
    with pytest.raises(ExportError, match="cannot export DataDependent with torch.export"):
        export_torch(DataDependent(), tmp_path / "x.pt2", torch.rand(2, 1, 4, 4), metadata())
    with pytest.raises(ValueError, match="no model file at"):
        load_deployed(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt is not an isnet model file"):
        load_deployed(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not an exported isnet model"):
        load_deployed(tmp_path / "other.pt")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.onnx is not a readable ONNX model"):
        load_deployed(tmp_path / "junk.onnx")


def test_backbone_model_file_loads_for_prediction(tmp_path):
    model = build_backbone("small_cnn", 3, width=4).eval()
    path = save_model(tmp_path / "m.pt", model, arch="small_cnn", num_classes=3, arch_kwargs={"width": 4},
                      preprocessing={"size": 16})
    network, info = load_deployed(path)
    assert info["class_names"] == ["0", "1", "2"] and info["thresholds"] is None and info["format"] == "model"
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(network(x), model(x))
