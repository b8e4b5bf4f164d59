"""The external-style acceptance dataset of ``benchmarks/external_bias_check.py``."""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "external_bias_check.py"
SIZES = {"train": 2, "val": 1, "test_biased": 3, "test_standard": 3, "test_deceiving": 3}


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("external_bias_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(root: Path) -> list[dict]:
    with (root / "manifest.csv").open() as handle:
        return list(csv.DictReader(handle))


def _image(root: Path, path: str) -> np.ndarray:
    return np.asarray(Image.open(root / path), np.int16)


@pytest.mark.parametrize("bias", ["stripe", "border", "patch"])
def test_paired_tests_share_images_and_differ_only_by_the_bias(script, tmp_path, bias):
    root = script.generate(tmp_path, seed=0, bias=bias, digits=(2, 5, 7), sizes=SIZES)
    rows = _rows(root)
    by_split = {}
    for row in rows:
        by_split.setdefault(row["split"], []).append(row)
    assert {s: len(r) for s, r in by_split.items()} == {s: 3 * n for s, n in SIZES.items()}
    for row in by_split["test_standard"]:
        name = Path(row["image"]).name.removeprefix("test_standard")
        clean = _image(root, row["image"])
        biased = _image(root, "images/test_biased" + name)
        deceiving = _image(root, "images/test_deceiving" + name)
        assert row["mask"].endswith(name)
        assert (Image.open(root / row["mask"]).tobytes() == Image.open(root / ("masks/test_biased" + name)).tobytes())
        # the bias changes some pixels, and the deceiving image shows another class's bias
        assert (biased != clean).any() and (deceiving != clean).any() and (deceiving != biased).any()
        mask = np.asarray(Image.open(root / row["mask"])) > 0
        changed = (biased != clean).any(-1) | (deceiving != clean).any(-1)
        assert changed[~mask].sum() > 0.9 * changed.sum()  # the bias lies (almost) only in the background


def test_unpaired_tests_draw_their_own_digits(script, tmp_path):
    root = script.generate(tmp_path, seed=0, bias="stripe", digits=(2, 5, 7), sizes=SIZES, paired=False)
    names = {s: {Path(r["image"]).name.split("_")[-1] for r in _rows(root) if r["split"] == s}
             for s in ("test_biased", "test_standard", "test_deceiving")}
    assert not names["test_biased"] & names["test_standard"]
    assert not names["test_standard"] & names["test_deceiving"]
