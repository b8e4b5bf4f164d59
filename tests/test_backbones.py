"""The built-in backbones."""

import pytest
import torch
from torch import nn

from isnet import explain
from isnet.backbones import build_backbone, small_cnn_blocks


@pytest.mark.parametrize("blocks", [2, 3, 4])
def test_small_cnn_blocks_set_its_depth(blocks):
    model = build_backbone("small_cnn", 3, width=4, blocks=blocks).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4 * 2**i for i in range(blocks)]
    assert model.classifier.in_features == 4 * 2 ** (blocks - 1)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    model = model.double()
    assert model.features(x).shape[-1] == 32 // 2**blocks
    assert model(x).shape == (2, 3)
    heatmaps = explain(model, x.detach(), zb=False)
    assert heatmaps.shape == (2, 3, 3, 32, 32)


def test_small_cnn_rejects_no_blocks():
    with pytest.raises(ValueError, match="blocks"):
        build_backbone("small_cnn", 3, blocks=0)


@pytest.mark.parametrize("size, blocks", [(8, 3), (32, 3), (44, 3), (46, 4), (64, 4), (92, 4), (96, 5), (224, 6), (4, 2)])
def test_small_cnn_depth_follows_the_image_size(size, blocks):
    assert small_cnn_blocks(size) == blocks
    chosen = small_cnn_blocks(size)
    assert 3 * 2**chosen - 2 >= size / 2 or chosen == size.bit_length() - 1  # sees half the image, or cannot go deeper
    model = build_backbone("small_cnn", 2, width=2, blocks=chosen).eval()
    assert model(torch.rand(1, 3, size, size)).shape == (1, 2)  # at least one pixel left after the last block


def test_small_cnn_depth_rejects_a_bad_size():
    with pytest.raises(ValueError, match="image size"):
        small_cnn_blocks(0)
