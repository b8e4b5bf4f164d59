"""The traced graph: shapes, modes, coexistence, extension by one rule, and clear errors."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from isnet import LRPGraph, UnsupportedOperationError, explain
from isnet.lrp import PassThrough
from isnet.lrp.layers import UnsupportedLayerError


def small_cnn(classes=4):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Dropout(0.3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
    )


# -- outputs ------------------------------------------------------------------------------------
def test_shapes_dtype_and_logits():
    net = small_cnn().eval()
    x = torch.rand(5, 3, 16, 16)
    logits, heatmaps = LRPGraph(net)(x)
    assert heatmaps.shape == (5, 4, 3, 16, 16)
    assert heatmaps.dtype == torch.float32 and heatmaps.device == x.device
    torch.testing.assert_close(logits, net(x))
    assert explain(net.double(), x.double()).dtype == torch.float64


def test_class_selection_matches_full_heatmaps():
    net = small_cnn().eval()
    x = torch.rand(3, 3, 16, 16)
    full = explain(net, x)
    torch.testing.assert_close(explain(net, x, classes=[2, 0]), full[:, [2, 0]])
    torch.testing.assert_close(explain(net, x, classes=torch.tensor([3])), full[:, [3]])
    assert explain(net, x, classes=1).shape == (3, 1, 3, 16, 16)


def test_each_heatmap_explains_its_own_logit():
    """Heatmap k of image b only depends on logit k of image b (no mixing across the B x K batch)."""
    net = small_cnn().eval()
    x = torch.rand(3, 3, 16, 16)
    together = explain(net, x)
    for b in range(3):
        for k in range(4):
            torch.testing.assert_close(explain(net, x[b : b + 1], classes=[k])[0, 0], together[b, k])


def test_classes_out_of_range_are_rejected():
    net = small_cnn().eval()
    with pytest.raises(ValueError, match=r"classes must lie in \[0, 3\]"):
        explain(net, torch.rand(1, 3, 8, 8), classes=[4])
    with pytest.raises(ValueError, match="classes"):
        explain(net, torch.rand(1, 3, 8, 8), classes=[])


def test_train_mode_uses_this_batch_and_updates_running_stats_once():
    net = small_cnn().train()
    net[6].p = 0.0  # dropout off so that outputs compare exactly
    reference = small_cnn()
    reference.load_state_dict(net.state_dict())
    reference.train()
    reference[6].p = 0.0
    x = torch.rand(4, 3, 16, 16)
    logits, heatmaps = LRPGraph(net)(x)
    torch.testing.assert_close(logits, reference(x))
    torch.testing.assert_close(net[1].running_mean, reference[1].running_mean)
    assert net[1].num_batches_tracked.item() == 1
    assert torch.isfinite(heatmaps).all()


def test_dropout_in_training_mode_keeps_relevance_conserved():
    """Dropped units carry zero activation and so get zero relevance; without biases, LRP-0
    still conserves the logit exactly through the dropout mask."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 12, bias=False), nn.ReLU(), nn.Dropout(0.5),
                        nn.Linear(12, 2, bias=False)).double().train()
    x = torch.rand(3, 12, dtype=torch.float64)
    logits, heatmaps = LRPGraph(net, epsilon=0.0, zb=False)(x)
    torch.testing.assert_close(heatmaps.sum(-1), logits, rtol=1e-10, atol=1e-12)


def test_in_place_operations_do_not_corrupt_the_propagation():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.b = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 36, 2)

        def forward(self, x):
            h = self.a(x)
            h = h.relu_()
            y = self.b(h)
            y += h
            y = F.relu(y, inplace=True)
            return self.fc(y.view(y.size(0), -1))

    net = InPlace().double().eval()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    heatmaps = explain(net, x, epsilon=0.0, zb=False)
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(net(xg)[:, 1].sum(), xg)[0]
    torch.testing.assert_close(heatmaps[:, 1], x * grad, rtol=1e-10, atol=1e-12)


def test_two_models_and_engines_coexist():
    a, b = small_cnn().eval(), torchvision.models.resnet18(weights=None, num_classes=4).eval()
    ga, gb = LRPGraph(a), LRPGraph(b, epsilon=0.1)
    x = torch.rand(2, 3, 32, 32)
    alone_a, alone_b = ga(x)[1], gb(x)[1]
    for _ in range(2):
        torch.testing.assert_close(gb(x)[1], alone_b)
        torch.testing.assert_close(ga(x)[1], alone_a)
    assert not torch.allclose(alone_a, alone_b)


def test_graph_follows_parameter_updates_and_dtype_changes():
    net = small_cnn().eval()
    graph = LRPGraph(net)
    x = torch.rand(2, 3, 16, 16)
    before = graph(x)[1]
    with torch.no_grad():
        net[0].weight.mul_(2)
    after = graph(x)[1]
    assert not torch.allclose(before, after)
    net.double()
    assert graph(x.double())[1].dtype == torch.float64


def test_zb_bounds_per_channel_and_checks():
    net = small_cnn().eval()
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    with pytest.raises(ValueError, match="outside the zB bounds"):
        explain(net, x)
    heatmaps = explain(net, x, low=[-1, -1, -1], high=[1, 1, 1])
    assert torch.isfinite(heatmaps).all()
    explain(net, x, zb=False)  # no bounds needed without zB
    with pytest.raises(ValueError, match="low <= high"):
        LRPGraph(net, low=1.0, high=0.0)
    with pytest.raises(ValueError, match="3 channels|for 2 channels"):
        explain(net, torch.rand(1, 3, 8, 8), low=[0, 0], high=[1, 1])


def test_extension_by_one_rule():
    class Scale(nn.Module):
        def forward(self, x):
            return x * 2

    net = nn.Sequential(nn.Conv2d(3, 4, 3), Scale(), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    x = torch.rand(1, 3, 6, 6)
    with pytest.raises(UnsupportedOperationError, match="mul"):
        explain(net, x)
    graph = LRPGraph(net, rules={Scale: lambda module, eps: PassThrough(module)})
    assert graph(x)[1].shape == (1, 2, 3, 6, 6)


# -- errors ---------------------------------------------------------------------------------------
def test_unsupported_module_is_named_with_its_place():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.GELU()), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    with pytest.raises(UnsupportedOperationError, match=r"module '1\.0' \(GELU\)"):
        LRPGraph(net)


def test_unsupported_function_is_named_with_its_place():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return torch.sigmoid(self.conv(x))

    net = nn.Sequential(Block(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    with pytest.raises(UnsupportedOperationError, match=r"sigmoid.*inside module '0'"):
        explain(net, torch.rand(1, 3, 4, 4))


def test_untraceable_model_gets_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(UnsupportedOperationError, match="torch.fx"):
        LRPGraph(Branchy())


def test_unsupported_padding_mode():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(UnsupportedLayerError, match="padding_mode='reflect'"):
        LRPGraph(net)


@pytest.mark.parametrize(
    "images,error,message",
    [
        (torch.rand(3, 16, 16), ValueError, r"shape \(B, 3, H, W\)"),
        (torch.rand(2, 1, 16, 16), ValueError, r"shape \(B, 3, H, W\)"),
        (torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8), TypeError, "floating-point"),
        (torch.full((1, 3, 16, 16), float("nan")), ValueError, "NaN"),
        (torch.rand(0, 3, 16, 16), ValueError, "non-empty batch"),
        ([[0.0]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_images(images, error, message):
    with pytest.raises(error, match=message):
        explain(small_cnn().eval(), images)


def test_model_must_return_logits():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            y = self.fc(x)
            return y, y

    with pytest.raises(ValueError, match="one logits tensor"):
        LRPGraph(Pair())
    conv = nn.Sequential(nn.Conv2d(3, 2, 3))
    with pytest.raises(ValueError, match=r"logits of shape \(B, K\)"):
        explain(conv, torch.rand(1, 3, 5, 5))


def test_reshape_across_the_batch_is_rejected():
    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(x.reshape(-1, 8))

    with pytest.raises(ValueError, match="batch"):
        explain(Mixer(), torch.rand(2, 4, 4), zb=False)


def test_negative_epsilon_is_rejected():
    with pytest.raises(ValueError, match="epsilon"):
        LRPGraph(small_cnn(), epsilon=-0.1)
