"""Heatmap pictures: red positive, blue negative, white zero."""

import numpy as np
import pytest
import torch
from PIL import Image

from isnet.render import heatmap_grid, heatmap_to_rgb, image_to_rgb, overlay_rgb, save_png


def test_colours_follow_the_sign_of_relevance():
    h = torch.zeros(1, 1, 3)
    h[0, 0, 0], h[0, 0, 2] = 2.0, -2.0
    rgb = heatmap_to_rgb(h)
    assert rgb.shape == (1, 3, 3) and rgb.dtype == np.uint8
    red, white, blue = rgb[0]
    assert red[0] > 200 and red[2] < 50  # positive: red
    assert blue[2] > 200 and blue[0] < 50  # negative: blue
    assert (white > 250).all()  # zero: white


def test_channels_are_summed_and_scale_is_symmetric():
    h = torch.tensor([[[1.0, -0.5]], [[1.0, -0.5]]])  # (C=2, 1, 2)
    rgb = heatmap_to_rgb(h)
    assert rgb[0, 0, 0] > rgb[0, 1, 0]  # the stronger relevance is more saturated
    faded = heatmap_to_rgb(h, scale=100.0)
    assert (faded > 240).all()


def test_overlay_keeps_the_image_where_relevance_is_zero():
    image = torch.full((3, 4, 4), 0.5)
    h = torch.zeros(3, 4, 4)
    h[:, 0, 0] = 1.0
    out = overlay_rgb(image, h)
    assert tuple(out[3, 3]) == (128, 128, 128)
    assert out[0, 0, 0] > out[0, 0, 2]


def test_bad_heatmaps_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        heatmap_to_rgb(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="shape"):
        heatmap_to_rgb(torch.zeros(2, 2, 2, 2))
    with pytest.raises(ValueError, match="differ in size"):
        overlay_rgb(torch.zeros(3, 4, 4), torch.zeros(3, 5, 5))


def test_png_files_open(tmp_path):
    path = save_png(tmp_path / "a" / "map.png", heatmap_to_rgb(torch.randn(3, 8, 8)))
    assert Image.open(path).size == (8, 8)
    assert image_to_rgb(torch.rand(1, 8, 8)).shape == (8, 8, 3)
    grid = heatmap_grid(tmp_path / "grid.png", torch.rand(2, 3, 8, 8), torch.randn(2, 3, 3, 8, 8),
                        row_labels=["a", "b"], column_labels=["x", "y", "z"], title="t")
    assert Image.open(grid).size[0] > 100


def test_model_heatmap_grid_and_training_curves(tmp_path):
    from PIL import Image

    from isnet.render import model_heatmap_grid, read_log, training_curves

    path = model_heatmap_grid(tmp_path / "g.png", torch.rand(3, 3, 8, 8), torch.randn(2, 3, 3, 8, 8),
                              model_names=["standard", "isnet"], column_labels=["a", "b", "c"], title="t")
    w, h = Image.open(path).size
    assert w > 300 and h > 300
    with pytest.raises(ValueError, match="need 2 model names"):
        model_heatmap_grid(tmp_path / "x.png", torch.rand(3, 3, 8, 8), torch.randn(2, 3, 3, 8, 8),
                           model_names=["one"], column_labels=["a", "b", "c"])
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,step,train/loss,val/loss,val/L1\n0,5,,1.5,0.3\n0,5,2.0,,\n1,10,,1.2,0.2\n1,10,1.7,,\n")
    series = read_log(log)
    assert series["val/loss"] == [(0, 1.5), (1, 1.2)] and series["train/loss"] == [(0, 2.0), (1, 1.7)]
    assert Image.open(training_curves(tmp_path / "c.png", {"isnet": log})).size[0] > 300
    log.write_text("epoch,step,lr\n0,1,0.1\n")
    with pytest.raises(ValueError, match="no train/ or val/ columns"):
        training_curves(tmp_path / "d.png", {"x": log})
