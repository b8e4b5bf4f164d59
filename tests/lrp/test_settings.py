"""One settings object for epsilon, zb, low, high; the loose keyword arguments still work."""

import dataclasses

import pytest
import torch
from torch import nn

from isnet import ISNet, LRPGraph, LRPSettings, defaults, explain


def net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 25, 2)).double().eval()


def test_defaults_are_the_papers_and_the_object_is_frozen():
    s = LRPSettings()
    assert (s.epsilon, s.zb, s.low, s.high) == (defaults.EPSILON, defaults.ZB, defaults.ZB_LOW, defaults.ZB_HIGH)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.epsilon = 0.5
    assert LRPSettings(low=[0, -1], high=torch.tensor([1.0, 1.0])) == LRPSettings(low=(0.0, -1.0), high=(1.0, 1.0))
    per_channel = LRPSettings(low=[0, -1], high=1)
    assert per_channel.per_channel and not s.per_channel
    assert per_channel.low_tensor.dtype == torch.float64 and per_channel.low_tensor.shape == (2,)
    assert hash(per_channel) == hash(LRPSettings(low=(0, -1), high=1.0))


@pytest.mark.parametrize("kwargs,message", [
    ({"epsilon": -0.1}, "epsilon"),
    ({"epsilon": float("nan")}, "epsilon"),
    ({"low": 1.0, "high": 0.0}, "low <= high"),
    ({"low": [0, 0], "high": [1, 1, 1]}, "different lengths"),
    ({"low": [[0.0]]}, "1-D per-channel"),
    ({"high": float("inf")}, "finite"),
])
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LRPSettings(**kwargs)


def test_settings_object_and_keywords_give_the_same_heatmaps():
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    settings = LRPSettings(epsilon=0.2, zb=True, low=0.0, high=1.0)
    by_keywords = explain(net_ := net(), x, epsilon=0.2, zb=True, low=0.0, high=1.0)
    torch.testing.assert_close(explain(net_, x, settings=settings), by_keywords, rtol=0, atol=0)
    graph = LRPGraph(net_, settings=settings)
    assert graph.settings is settings and graph.epsilon == 0.2 and graph.zb
    assert ISNet(net_, epsilon=0.2).lrp_settings == LRPSettings(epsilon=0.2)


def test_settings_and_keywords_together_are_refused():
    with pytest.raises(ValueError, match="either"):
        LRPGraph(net(), settings=LRPSettings(), epsilon=0.1)
    with pytest.raises(TypeError, match="LRPSettings"):
        LRPGraph(net(), settings={"epsilon": 0.1})
