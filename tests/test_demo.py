"""The demo trains on real digits and renders heatmaps."""

import json

from PIL import Image

from isnet.demo import run_demo


def test_demo_learns_and_writes_heatmaps(tmp_path):
    summary = run_demo(tmp_path, epochs=3, examples=3, progress=False)
    assert summary["test_accuracy"] > 0.8  # 3 digit classes, chance is 1/3
    assert Image.open(tmp_path / "heatmaps.png").size[0] > 200
    assert json.loads((tmp_path / "summary.json").read_text())["test_images"] == summary["test_images"]
    assert (tmp_path / "model.pt").exists()
    assert len(list(tmp_path.glob("overlay_*.png"))) == 3
