"""Atomic checkpoints, the random state in them, and resuming a run (in process and after SIGKILL)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from isnet.checkpointing import AtomicCheckpointIO, RandomState, last_checkpoint
from isnet.cli import main
from isnet.data import MaskedImageDataModule
from isnet.data.builtin import generate_digits_on_textures
from isnet.systems.isnet import ISNetModule
from isnet.training import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_digits_on_textures(tmp_path_factory.mktemp("digits"), per_class=(8, 4, 2), size=32)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def max_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


# -- atomic writes ------------------------------------------------------------------------------
def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "c" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 0}, target)
    io.save_checkpoint({"state_dict": {"w": torch.full((2,), 2.0)}, "epoch": 1}, target)
    assert torch.load(target, weights_only=False)["epoch"] == 1
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "epoch": 0}, target)

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "epoch": 1}, target)
    assert torch.load(target, weights_only=False)["epoch"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_non_finite_weights_are_never_written(tmp_path):
    with pytest.raises(FloatingPointError, match=r"non-finite weights in net\.b"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"net.a": torch.ones(2), "net.b": torch.tensor([float("nan")])}},
                                             tmp_path / "x.ckpt")
    assert not list(tmp_path.iterdir())


# -- resuming in process ------------------------------------------------------------------------
def make_data(root):
    data = MaskedImageDataModule(root, size=32, bias=True, augment=True, batch_size=4)
    data.setup()
    return data


def make_module(warmup_epochs=0.0):
    return ISNetModule("small_cnn", 3, P=0.5, arch_kwargs={"width": 4}, lr=0.01, momentum=0.9, optimizer="adam",
                       lr_schedule="cosine", warmup_epochs=warmup_epochs, C1=0.1, C2=50.0)


def fit(root, folder, epochs, warmup_epochs=0.0, **kwargs):
    L.seed_everything(0, verbose=False)
    return train(make_module(warmup_epochs), make_data(root), folder, max_epochs=epochs, progress=False,
                 deterministic=True, accelerator="cpu", **kwargs)


@pytest.mark.parametrize("warmup_epochs", [0.0, 1.5], ids=["per-epoch-schedule", "per-step-schedule"])
def test_a_crashed_run_resumed_ends_with_the_weights_of_an_uninterrupted_one(root, tmp_path, monkeypatch,
                                                                             warmup_epochs):
    """Shuffling, augmentation, Adam's moments and the learning-rate schedule (cosine per epoch, or
    warm-up then cosine per step) all continue where they stopped."""
    fit(root, tmp_path / "whole", 4, warmup_epochs)

    def crash(self):
        if self.current_epoch == 2:
            raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(ISNetModule, "on_train_epoch_start", crash, raising=False)
        with pytest.raises(RuntimeError, match="simulated crash"):
            fit(root, tmp_path / "crashed", 4, warmup_epochs)
    assert torch.load(tmp_path / "crashed" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    torch.manual_seed(123)  # the resumed run must not depend on the process's random state
    module, best = fit(root, tmp_path / "crashed", 4, warmup_epochs, resume=True)
    whole, resumed = (weights(tmp_path / name / "checkpoints" / "last.ckpt") for name in ("whole", "crashed"))
    assert torch.load(tmp_path / "crashed" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 3
    assert max_difference(whole, resumed) <= 1e-6
    assert best is not None and best.name.startswith("best-epoch=")


@pytest.mark.parametrize("forget", [RandomState, MaskedImageDataModule], ids=["global-generators", "loader-generators"])
def test_without_the_random_state_the_resumed_run_differs(root, tmp_path, monkeypatch, forget):
    """The check above can fail: without either part of the random state the weights differ."""
    fit(root, tmp_path / "whole", 3)

    def crash(self):
        if self.current_epoch == 1:
            raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(ISNetModule, "on_train_epoch_start", crash, raising=False)
        with pytest.raises(RuntimeError):
            fit(root, tmp_path / "crashed", 3)
    monkeypatch.setattr(forget, "load_state_dict", lambda *args: None)
    fit(root, tmp_path / "crashed", 3, resume=True)
    whole, resumed = (weights(tmp_path / name / "checkpoints" / "last.ckpt") for name in ("whole", "crashed"))
    assert max_difference(whole, resumed) > 1e-4


def test_resume_needs_a_last_checkpoint(root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint .*last\.ckpt"):
        fit(root, tmp_path / "never", 1, resume=True)
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        last_checkpoint(tmp_path)


# -- the command line ---------------------------------------------------------------------------
def write_config(tmp_path, root, out, method, epochs):
    cfg = {
        "seed_everything": 0,
        "out": str(out),
        "model": {"method": method, "backbone": "small_cnn", "arch_kwargs": {"width": 4}, "lr": 0.01,
                  "momentum": 0.9, "optimizer": "adam", "lr_schedule": "cosine"},
        "data": {"root": str(root), "size": 32, "bias": True, "augment": True, "batch_size": 4},
        "trainer": {"max_epochs": epochs, "deterministic": True, "accelerator": "cpu"},
    }
    if method == "isnet":
        cfg["model"].update(P=0.5, d=0.9, C1=0.1, C2=50.0)
    path = tmp_path / f"{Path(out).name}-{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_resume_refuses_a_missing_checkpoint_or_another_config(root, tmp_path, capsys):
    config = write_config(tmp_path, root, tmp_path / "run", "standard", 1)
    assert main(["fit", "--config", str(config), "--quiet", "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert main(["fit", "--config", str(config), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["fit", "--config", str(config), "--quiet", "--resume", "--set", "model.lr=0.1"]) == 2
    assert "model.lr: 0.01 -> 0.1" in capsys.readouterr().err
    # more epochs is the one change allowed
    assert main(["fit", "--config", str(config), "--quiet", "--resume", "--set", "trainer.max_epochs=2"]) == 0
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1


def run_fit(config, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "isnet.cli", "fit", "--config", str(config), "--quiet", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checkpoint_epoch(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["epoch"]
    except (FileNotFoundError, EOFError, RuntimeError):
        return -1


@pytest.mark.parametrize("method", ["isnet", "standard"])
def test_a_killed_fit_resumes_to_the_weights_of_an_uninterrupted_run(root, tmp_path, method):
    epochs = 6
    whole = run_fit(write_config(tmp_path, root, tmp_path / "whole", method, epochs))
    config = write_config(tmp_path, root, tmp_path / "killed", method, epochs)
    killed = run_fit(config)
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while checkpoint_epoch(last) < 1:
        assert killed.poll() is None, killed.communicate()[0]
        assert time.monotonic() < deadline, "no last.ckpt of epoch >= 1 within 300 s"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL
    assert 1 <= checkpoint_epoch(last) < epochs - 1, "the run was not interrupted before its last epoch"
    resumed = run_fit(config, "--resume")
    for process in (whole, resumed):
        output = process.communicate(timeout=300)[0]
        assert process.returncode == 0, output
    assert checkpoint_epoch(last) == epochs - 1
    difference = max_difference(weights(tmp_path / "whole" / "checkpoints" / "last.ckpt"), weights(last))
    assert difference <= 1e-6
