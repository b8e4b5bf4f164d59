"""Warm starts: init_from copies exactly the deployed network's weights, and names any mismatch."""

import lightning as L
import pytest
import torch

from isnet.cli import main
from isnet.data.builtin import generate_digits_on_textures
from isnet.systems.isnet import ISNetModule
from isnet.systems.registry import build_system
from isnet.warm_start import WarmStartError, init_from


def _trained_like(module):
    """Give every weight and buffer distinct non-initial values (as training would)."""
    with torch.no_grad():
        for i, tensor in enumerate(module.deployed.state_dict().values()):
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) + i)
    return module


def _assert_same_weights(a, b):
    sa, sb = a.deployed.state_dict(), b.deployed.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0)


@pytest.fixture
def checkpoint(tmp_path):
    source = _trained_like(ISNetModule("small_cnn", 3, P=0.0, arch_kwargs={"width": 4}))
    trainer = L.Trainer(max_epochs=0, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(source)
    path = tmp_path / "standard.ckpt"
    trainer.save_checkpoint(path)
    return source, path


def test_loads_exactly_the_weights_of_a_checkpoint(checkpoint):
    source, path = checkpoint
    target = ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 4})  # another method, same backbone
    info = init_from(target, path)
    _assert_same_weights(source, target)
    assert info["tensors"] == len(source.deployed.state_dict()) and info["backbone"] == "small_cnn"
    rrr = build_system("rrr", 3, backbone="small_cnn", arch_kwargs={"width": 4})  # any system with this backbone
    init_from(rrr, path)
    _assert_same_weights(source, rrr)


def test_loads_exported_model_files(tmp_path):
    source = _trained_like(ISNetModule("small_cnn", 3, P=0.7, arch_kwargs={"width": 4}))
    files = source.export(tmp_path / "isnet")  # backbone.pt, isnet model file
    target = ISNetModule("small_cnn", 3, P=0.0, arch_kwargs={"width": 4})
    assert init_from(target, files["model"])["kind"] == "isnet model file"
    _assert_same_weights(source, target)
    gain = _trained_like(build_system("gain", 3, backbone="small_cnn", arch_kwargs={"width": 4}))
    exported = gain.export(tmp_path / "gain")["model"]  # model.pt, exported system
    init_from(target, exported)
    _assert_same_weights(gain, target)


@pytest.mark.parametrize("other, message", [
    (dict(backbone="resnet18", num_classes=3), "backbone is 'resnet18', this model's is 'small_cnn'"),
    (dict(backbone="small_cnn", num_classes=4), "number of classes is 4, this model's is 3"),
    (dict(backbone="small_cnn", num_classes=3, in_channels=1), "number of input channels is 1, this model's is 3"),
    (dict(backbone="small_cnn", num_classes=3, arch_kwargs={"batch_norm": False}),
     "missing weights features.1.weight"),
    (dict(backbone="small_cnn", num_classes=3, arch_kwargs={"width": 6}),
     r"shape mismatch \(source vs this model\) features.0.weight \(6, 3, 3, 3\) vs \(4, 3, 3, 3\)"),
])
def test_mismatched_architectures_are_named(tmp_path, other, message):
    source = ISNetModule(P=0.0, **{"arch_kwargs": {"width": 4} if other["backbone"] == "small_cnn" else None, **other})
    path = source.export(tmp_path / "src")["model"]
    target = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4})
    before = {k: v.clone() for k, v in target.deployed.state_dict().items()}
    with pytest.raises(WarmStartError, match=message):
        init_from(target, path)
    for k, v in target.deployed.state_dict().items():  # nothing loaded
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_unexpected_weights_and_bad_files_are_named(tmp_path):
    source = ISNetModule("small_cnn", 3, P=0.0, arch_kwargs={"width": 4, "batch_norm": False})
    path = source.export(tmp_path / "src")["model"]
    with pytest.raises(WarmStartError, match="missing weights"):
        init_from(ISNetModule("small_cnn", 3, arch_kwargs={"width": 4}), path)
    target = ISNetModule("small_cnn", 3, arch_kwargs={"width": 4, "batch_norm": False})
    bn = ISNetModule("small_cnn", 3, P=0.0, arch_kwargs={"width": 4}).export(tmp_path / "bn")["model"]
    with pytest.raises(WarmStartError, match="unexpected weights features.1.weight"):
        init_from(target, bn)
    with pytest.raises(WarmStartError, match="no file"):
        init_from(target, tmp_path / "nothing.ckpt")
    junk = tmp_path / "junk.pt"
    torch.save([1, 2, 3], junk)
    with pytest.raises(WarmStartError, match="neither a Lightning checkpoint nor an isnet model file"):
        init_from(target, junk)


def test_fit_init_from_on_the_command_line(tmp_path, checkpoint, capsys):
    source, path = checkpoint
    root = generate_digits_on_textures(tmp_path / "data", per_class=(6, 3, 3), size=32)
    common = ["--quiet", "--set", f"data.root={root}", "data.size=32", "data.augment=false", "data.batch_size=6",
              "model.backbone=small_cnn", "model.arch_kwargs={width: 4}", "trainer.max_epochs=0"]
    assert main(["fit", "--method", "isnet", "--init-from", str(path), *common, f"out={tmp_path / 'a'}"]) == 0
    assert "from " + str(path) in capsys.readouterr().out
    from isnet.backbones import load_model

    model, _ = load_model(tmp_path / "a" / "export" / "backbone.pt")  # 0 epochs: the loaded weights
    for k, v in source.deployed.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    # the config key does the same; a mismatch is a clear error, exit code 2
    bad = [*common[:-2], "model.arch_kwargs={width: 8}", "trainer.max_epochs=0", f"model.init_from={path}",
           f"out={tmp_path / 'b'}"]
    assert main(["fit", "--method", "standard", *bad]) == 2
    assert "init_from" in capsys.readouterr().err
