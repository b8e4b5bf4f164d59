"""Hyper-parameter search (Appendix F.3): protocol, refinement, grid files, CLI."""

import csv
import json

import pytest
import yaml

from isnet.cli import main
from isnet.data import MaskedImageDataModule
from isnet.data.builtin import generate_digits_on_textures
from isnet.tune import GRIDS, refinement, run_tune, tune_score


def test_score_penalises_the_gap_to_the_biased_validation_set():
    assert tune_score(0.8, 0.8) == pytest.approx(0.8)
    assert tune_score(0.6, 0.9) == pytest.approx(0.3)
    assert tune_score(0.7, 0.5) == pytest.approx(0.5)


def test_paper_grids_and_refinement():
    assert GRIDS["isnet"] == {"P": [0.2, 0.4, 0.6, 0.8], "d": [0.9, 0.996, 1.0]}
    assert refinement("isnet", {"P": 0.6, "d": 0.996}) == [{"P": 0.5, "d": 0.996}, {"P": 0.7, "d": 0.996}]
    assert refinement("isnet", {"P": 0.95, "d": 1.0}) == [{"P": 0.85, "d": 1.0}]
    assert refinement("multitask", {"P": 0.3}) == [{"P": 0.25}, {"P": 0.35}]
    assert refinement("rrr", {"lambda1": 10.0}) == []


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return generate_digits_on_textures(tmp_path_factory.mktemp("tune") / "data", per_class=(8, 6, 2), size=32)


def test_run_tune_trains_every_setting_and_refines(tmp_path, digits):
    dm = MaskedImageDataModule(digits, size=32, bias=True, augment=False, batch_size=12, cache=True)
    settings = {"backbone": "small_cnn", "arch_kwargs": {"width": 4}, "C1": 0.01, "C2": 10.0}
    rows = run_tune("isnet", dm, tmp_path, epochs=1, settings=settings, grid={"P": [0.3, 0.6], "d": [0.9]},
                    progress=False, log=lambda s: None)
    assert [(r["P"], r["stage"]) for r in rows][:2] == [(0.3, "grid"), (0.6, "grid")]
    best = max(rows[:2], key=lambda r: r["score"])
    assert {r["P"] for r in rows[2:]} == {round(best["P"] + s, 6) for s in (-0.1, 0.1)}
    for r in rows:
        assert r["score"] == pytest.approx(tune_score(r["val_standard_macro_f1"], r["val_biased_macro_f1"]))
    with (tmp_path / "grid.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    best_all = max(rows, key=lambda r: r["score"])
    assert json.loads((tmp_path / "best.json").read_text())["best"]["P"] == best_all["P"]
    assert "| P | d |" in (tmp_path / "grid.md").read_text()


def test_tune_needs_the_synthetic_bias(tmp_path, digits):
    dm = MaskedImageDataModule(digits, size=32, bias=False)
    with pytest.raises(ValueError, match="needs the synthetic bias"):
        run_tune("isnet", dm, tmp_path, epochs=1)
    dm = MaskedImageDataModule(digits, size=32, bias=True)
    with pytest.raises(ValueError, match="no search grid for method 'vit'"):
        run_tune("vit", dm, tmp_path, epochs=1)


def test_cli_tune_writes_the_grid(tmp_path, digits, capsys):
    config = tmp_path / "t.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp_path / "out"),
        "model": {"backbone": "small_cnn", "arch_kwargs": {"width": 4}},
        "data": {"root": str(digits), "size": 32, "augment": False, "batch_size": 12},
        "trainer": {"max_epochs": 1},
    }))
    assert main(["tune", "--method", "rrr", "--config", str(config), "--grid", "lambda1=1,100", "--quiet"]) == 0
    text = (tmp_path / "out" / "tune_rrr" / "grid.md").read_text()
    assert "| lambda1 |" in text and text.count("| grid |") == 2
    assert main(["tune", "--method", "rrr", "--config", str(config), "--grid", "lambda1=a,b", "--quiet"]) == 2
    assert "values must be numbers" in capsys.readouterr().err
