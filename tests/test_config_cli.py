"""YAML configs and the fit / test / export commands."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from isnet.cli import main
from isnet.config import ConfigError, load_config
from isnet.data.builtin import generate_digits_on_textures

CONFIGS = sorted(Path(__file__).resolve().parents[1].joinpath("configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg["model"]["P"] > 0 and 0 <= cfg["model"]["d"] <= 1
    assert cfg["data"]["root"].startswith("path/to/")


def test_paper_settings_in_the_configs():
    by_name = {p.stem: load_config(p) for p in CONFIGS}
    assert (by_name["covid19"]["model"]["P"], by_name["covid19"]["model"]["d"]) == (0.7, 0.9)
    assert (by_name["dog_breeds"]["model"]["backbone"], by_name["dog_breeds"]["model"]["C1"]) == ("vgg19", 0.05)
    assert by_name["dog_breeds"]["data"]["augment"] is False
    assert by_name["facial_attributes"]["model"]["multilabel"] and by_name["facial_attributes"]["model"]["d"] == 0.996
    assert (by_name["chexpert"]["model"]["w2"], by_name["chexpert"]["model"]["C1"]) == (1.0, 0.1)
    for cfg in by_name.values():  # the paper's ISNet: no swap, heatmap loss from the first step
        assert cfg["model"]["background_swap"] == 0 and cfg["model"]["heatmap_gate"] is None


def test_broken_configs_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: resnet18\n  Pee: 0.3\ndata:\n  root: x\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['Pee'\] in section 'model'"):
        load_config(bad)
    bad.write_text("model: [1, 2]\n")
    with pytest.raises(ConfigError, match="section 'model' must be a mapping"):
        load_config(bad)
    bad.write_text("model:\n  P: high\ndata:\n  root: x\n")
    with pytest.raises(ConfigError, match="model.P has the wrong type"):
        load_config(bad)
    bad.write_text("trainer: {max_epochs: 2}\n")
    with pytest.raises(ConfigError, match="needs 'root'"):
        load_config(bad)
    bad.write_text("model: {P: 0.5\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["P=0.3"])
    with pytest.raises(ConfigError, match=r"model.background_swap must be a share in \[0, 1\]"):
        load_config(None, ["data.root=x", "model.background_swap=1.5"])
    with pytest.raises(ConfigError, match="model.range_follows must be true or false"):
        load_config(None, ["data.root=x", "model.range_follows=maybe"])
    assert load_config(None, ["data.root=x", "model.background_swap=0.5"])["model"]["background_swap"] == 0.5
    with pytest.raises(ConfigError, match=r"model.background_jitter must be a strength in \[0, 1\]"):
        load_config(None, ["data.root=x", "model.background_jitter=true"])
    assert load_config(None, ["data.root=x", "model.background_jitter=0.3"])["model"]["background_jitter"] == 0.3


def test_fit_test_export_round_trip(tmp_path):
    root = generate_digits_on_textures(tmp_path / "data", per_class=(12, 6, 6), size=32)
    cfg = {
        "out": str(tmp_path / "run"),
        "model": {"backbone": "small_cnn", "arch_kwargs": {"width": 4}, "P": 0.5, "d": 0.9, "C1": 0.1, "C2": 50.0},
        "data": {"root": str(root), "size": 32, "bias": True, "augment": True, "batch_size": 12},
        "trainer": {"max_epochs": 1},
    }
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(config), "--quiet", "--set", "trainer.max_epochs=2"]) == 0
    run = tmp_path / "run"
    checkpoints = list((run / "checkpoints").glob("best-*.ckpt"))
    assert len(checkpoints) == 1 and (run / "checkpoints" / "last.ckpt").is_file()
    assert {f.name for f in (run / "export").iterdir()} == {"backbone.pt", "backbone.onnx", "backbone.pt2",
                                                          "preprocessing.json"}
    metrics = (run / "logs" / "metrics.csv").read_text().splitlines()[0]
    for column in ("train/L_C", "train/L1", "train/L2", "train/loss", "val/loss", "val/L1"):
        assert column in metrics
    assert main(["test", "--config", str(config), "--checkpoint", str(checkpoints[0]), "--quiet"]) == 0
    results = json.loads((run / "test" / "metrics.json").read_text())["models"]["run"]
    assert set(results) == {"test/biased", "test/standard", "test/deceiving"}
    for r in results.values():
        assert r["n"] == 18 and sum(map(sum, r["confusion_matrix"])) == 18
        assert r["bayesian"]["macro"]["f1"]["hdi"][0] <= r["bayesian"]["macro"]["f1"]["hdi"][1]
        assert r["attention"]["background_share"]["n"] == 18
        assert (r["background_swap"]["mixed_rand"]["n"], r["background_swap"]["mixed_next"]["n"]) == (18, 18)
    html = (run / "test" / "report.html").read_text()
    assert "data:image/png;base64," in html and "Table 4" in html and "http" not in html
    assert "Background swap" in html and "flip rate mixed_next" in html
    assert (run / "test" / "heatmaps_test_deceiving.png").exists() and (run / "test" / "training_curves.png").exists()
    assert main(["export", "--checkpoint", str(checkpoints[0]), "--out", str(tmp_path / "exp"), "--size", "32"]) == 0
    second = ["fit", "--config", str(config), "--quiet", "--set", f"out={tmp_path / 'run2'}", "trainer.max_epochs=1",
              "--estimate-c-from", str(checkpoints[0])]
    assert main(second) == 0
    saved = yaml.safe_load((tmp_path / "run2" / "config.yaml").read_text())
    assert 0 < saved["model"]["C1"] < saved["model"]["C2"] and saved["model"]["C1"] != 0.1
    assert saved["model"]["arch_kwargs"] == {"width": 4, "blocks": 3}  # small_cnn's depth chosen for 32 px
    program = torch.export.load(tmp_path / "exp" / "backbone.pt2").module()
    assert program(torch.rand(1, 3, 32, 32)).shape == (1, 3)
    # the run's config.yaml gives the exported model the data module's test preprocessing
    saved_prep = json.loads((tmp_path / "exp" / "preprocessing.json").read_text())["preprocessing"]
    assert saved_prep == {"size": 32, "grayscale": False, "equalize": False, "channels": 3, "square": True}
    assert main(["export", "--checkpoint", str(checkpoints[0]), "--out", str(tmp_path / "m"), "--format", "model"]) == 0
    assert {f.name for f in (tmp_path / "m").iterdir()} == {"backbone.pt", "preprocessing.json"}


def test_fit_reports_a_broken_config(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("data: {root: " + str(tmp_path / "nowhere") + "}\n")
    assert main(["fit", "--config", str(config), "--quiet"]) == 2
    assert "no manifest.csv" in capsys.readouterr().err


def test_multilabel_fit_and_test_compare_two_checkpoints(tmp_path):
    from tests.data.test_datamodule import make_folder

    labels = ["smile|cheeks", "cheeks", "smile", "smile|cheeks"]
    rows = [(f"t{i}", True, labels[i % 4], "train") for i in range(8)]
    rows += [(f"v{i}", True, labels[i % 4], "val") for i in range(4)]
    rows += [(f"x{i}", i % 2 == 0, labels[i % 4], "test") for i in range(6)]  # some test rows without masks
    root = make_folder(tmp_path / "ml", rows)
    cfg = {
        "out": str(tmp_path / "a"),
        "model": {"backbone": "small_cnn", "arch_kwargs": {"width": 4}, "P": 0.5, "d": 0.9, "multilabel": True},
        "data": {"root": str(root), "size": 16, "multilabel": True, "augment": False, "batch_size": 4},
        "trainer": {"max_epochs": 1},
    }
    config = tmp_path / "ml.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(config), "--quiet"]) == 0
    assert main(["fit", "--config", str(config), "--quiet", "--set", f"out={tmp_path / 'b'}", "model.P=0"]) == 0
    a, b = (next((tmp_path / n / "checkpoints").glob("best-*.ckpt")) for n in "ab")
    assert main(["test", "--config", str(config), "--checkpoint", f"isnet={a}", f"standard={b}", "--quiet",
                 "--out", str(tmp_path / "report")]) == 0
    saved = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(saved["models"]) == {"isnet", "standard"} and len(saved["thresholds"]["isnet"]) == 2
    m = saved["models"]["isnet"]["test"]
    assert m["task"] == "multi-label" and m["thresholds"] == saved["thresholds"]["isnet"]
    assert m["attention"]["background_share"]["n"] == 3 and m["attention"]["background_share"]["skipped"] == 3
    assert list(m["background_swap"]) == ["mixed_rand"]  # no "next class" for several labels
    assert (m["background_swap"]["mixed_rand"]["n"], m["background_swap"]["mixed_rand"]["skipped"]) == (3, 3)
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Wilson" in md and "| isnet | cheeks |" in md and "| standard | smile |" in md
    assert main(["test", "--config", str(config), "--checkpoint", str(a), str(a), "--quiet"]) == 2


def test_fit_any_method_then_test_and_export(tmp_path):
    from isnet.systems.registry import load_exported

    root = generate_digits_on_textures(tmp_path / "data", per_class=(8, 4, 4), size=32)
    cfg = {
        "out": str(tmp_path / "rrr"),
        "model": {"method": "rrr", "backbone": "small_cnn", "arch_kwargs": {"width": 4}, "lambda1": 100.0},
        "data": {"root": str(root), "size": 32, "bias": True, "augment": False, "batch_size": 12},
        "trainer": {"max_epochs": 1},
    }
    config = tmp_path / "rrr.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(config), "--quiet"]) == 0
    ckpt = next((tmp_path / "rrr" / "checkpoints").glob("best-*.ckpt"))
    metrics = (tmp_path / "rrr" / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "train/L_RR" in metrics and "val/L_RR" in metrics
    # the same config, another method from the command line
    assert main(["fit", "--config", str(config), "--quiet", "--method", "vit", "--set", f"out={tmp_path / 'vit'}",
                 "model.backbone=null"]) == 2
    vit = dict(cfg, out=str(tmp_path / "vit"), model={"method": "vit", "vit_kwargs": {"patch_size": 8}})
    config.write_text(yaml.safe_dump(vit))
    assert main(["fit", "--config", str(config), "--quiet"]) == 0
    vit_ckpt = next((tmp_path / "vit" / "checkpoints").glob("best-*.ckpt"))
    assert main(["test", "--config", str(config), "--checkpoint", f"rrr={ckpt}", f"vit={vit_ckpt}", "--quiet",
                 "--out", str(tmp_path / "cmp"), "--no-background-swap"]) == 0
    saved = json.loads((tmp_path / "cmp" / "metrics.json").read_text())["models"]
    assert set(saved) == {"rrr", "vit"} and saved["vit"]["test/deceiving"]["attention"]["background_share"]["n"] == 12
    assert not any("background_swap" in m for tests in saved.values() for m in tests.values())
    assert "Background swap" not in (tmp_path / "cmp" / "report.md").read_text()
    deployed = load_exported(tmp_path / "vit" / "export" / "model.pt")
    program = torch.export.load(tmp_path / "vit" / "export" / "model.pt2").module()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(program(x), deployed(x))


def test_method_settings_are_validated(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  method: isnet\n  lambda1: 10\ndata:\n  root: x\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lambda1'\] in section 'model'"):
        load_config(bad)
    bad.write_text("model:\n  method: rrr\n  lambda1: 10\ndata:\n  root: x\n")
    assert load_config(bad)["model"]["lambda1"] == 10
    bad.write_text("model:\n  method: resnet\ndata:\n  root: x\n")
    with pytest.raises(ConfigError, match="model.method 'resnet' is not a method"):
        load_config(bad)


def test_config_accepts_the_heatmap_images_option():
    cfg = load_config(None, ["data.root=somewhere", "trainer.heatmap_images=0"])
    assert cfg["trainer"]["heatmap_images"] == 0


def test_fit_reports_a_diverged_run(tmp_path, monkeypatch, capsys):
    """A non-finite loss stops `isnet fit` with a clear error (exit code 3), not a traceback."""
    from isnet.systems.isnet import ISNetModule

    root = generate_digits_on_textures(tmp_path / "data", per_class=(8, 4, 4), size=32)
    original = ISNetModule.losses

    def losses(self, batch):
        parts, logits = original(self, batch)
        if self.training and self.current_epoch == 1:
            parts["L_C"] = parts["L_C"] + float("inf")
            parts["loss"] = parts["loss"] + parts["L_C"]
        return parts, logits

    monkeypatch.setattr(ISNetModule, "losses", losses)
    cfg = {"out": str(tmp_path / "run"),
           "model": {"backbone": "small_cnn", "arch_kwargs": {"width": 4}, "P": 0.5, "C1": 0.1, "C2": 50.0},
           "data": {"root": str(root), "size": 32, "augment": False, "batch_size": 12}, "trainer": {"max_epochs": 3}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(config), "--quiet"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("isnet fit: error: training of isnet stopped at epoch 1, global step 2, train batch 0 "
                          "of the epoch: loss part(s) not finite: L_C = inf")
    assert "L_C = inf" in err and "last.ckpt" in err and "Traceback" not in err
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
