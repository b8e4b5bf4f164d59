"""The traced graph: shapes, modes, coexistence, extension by one rule, and clear errors."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from isnet import LRPGraph, UnsupportedOperationError, explain
from isnet.lrp import AffineLayer, Composite, Epsilon, PassThrough, epsilon_composite
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


# -- per-image classes ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18", "densenet121"])
def test_per_image_classes_equal_the_matching_slices_of_all_class_heatmaps(name):
    model = getattr(torchvision.models, name)(weights=None, num_classes=5).double().eval()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    graph = LRPGraph(model)
    _, full = graph(x)
    classes = torch.tensor([[4, 0], [1, 1], [3, 2]])
    _, picked = graph(x, classes=classes)
    assert picked.shape == (3, 2, 3, 32, 32)
    expected = full[torch.arange(3)[:, None], classes]
    assert full.abs().max() > 0
    assert (picked - expected).abs().max() <= 1e-12 * expected.abs().max()
    one = graph(x, classes=torch.tensor([[2], [0], [4]]))[1]  # one map per image, e.g. the label's
    assert (one[:, 0] - full[torch.arange(3), [2, 0, 4]]).abs().max() <= 1e-12 * full.abs().max()


def test_per_image_classes_propagate_b_times_k_maps():
    """The relevance batch is B*K' maps, not B*K_total: a rule sees (B, K', ...) relevance."""
    seen = []

    class Recording(PassThrough):
        def relevance(self, R, saved):
            seen.append(tuple(R.shape[:2]))
            return (R,)

    composite = epsilon_composite().with_rules({nn.ReLU: lambda ctx: Recording(torch.relu)})
    net = small_cnn(classes=10).eval()
    LRPGraph(net, rule=composite)(torch.rand(4, 3, 16, 16), classes=torch.tensor([[1], [9], [0], [3]]))
    assert seen and set(seen) == {(4, 1)}


@pytest.mark.parametrize("classes,message", [
    (torch.tensor([[0, 1], [2, 3]]), r"shape \(B, K\) = \(3, K\)"),
    (torch.tensor([[0], [1], [4]]), r"lie in \[0, 3\]"),
    (torch.tensor([[0], [-1], [2]]), r"lie in \[0, 3\]"),
    (torch.zeros(3, 0, dtype=torch.long), "non-empty"),
    (torch.zeros(3, 1, 1, dtype=torch.long), "non-empty"),
    (torch.tensor([[0.0], [1.0], [2.0]]), "integer"),
    ("two", "logit indices"),
])
def test_bad_per_image_classes_get_clear_errors(classes, message):
    net = small_cnn().eval()
    with pytest.raises(ValueError, match=message):
        explain(net, torch.rand(3, 3, 8, 8), classes=classes)


# -- several composites from one forward pass ------------------------------------------------------
def test_two_composites_from_one_forward_equal_two_separate_calls():
    net = torchvision.models.resnet18(weights=None, num_classes=3).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    logits, (eps_maps, zplus_maps) = LRPGraph(net, rule=["epsilon", "zplus"])(x)
    torch.testing.assert_close(logits, net(x), rtol=0, atol=0)
    torch.testing.assert_close(eps_maps, explain(net, x), rtol=0, atol=0)
    torch.testing.assert_close(zplus_maps, explain(net, x, rule="zplus"), rtol=0, atol=0)
    assert not torch.allclose(eps_maps, zplus_maps)
    classes = torch.tensor([[2], [0]])
    both = explain(net, x, rule=("zplus", "epsilon"), classes=classes)
    torch.testing.assert_close(both[0], zplus_maps[torch.arange(2)[:, None], classes], rtol=0, atol=1e-12)


def test_two_composites_share_the_batch_quantities_of_their_forward_pass(monkeypatch):
    """A DenseNet in training mode (fused conv + batch norm with batch statistics, lone norms after the
    concatenations): both composites' maps and their gradients equal two separate calls, while the
    fused weights are computed once per layer for both."""
    from isnet.lrp.layers import AffineLayer

    torch.manual_seed(0)
    net = torchvision.models.DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2,
                                      num_classes=3).double().train()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    classes = torch.tensor([[1], [0], [2]])
    calls = []
    original = AffineLayer.fused
    monkeypatch.setattr(AffineLayer, "fused", lambda self, y: calls.append(self) or original(self, y))

    def gradients(rules):
        net.zero_grad()
        maps = LRPGraph(net, rule=rules)(x, classes)[1]
        maps = maps if isinstance(maps, tuple) else (maps,)
        sum(m.square().sum() for m in maps).backward()
        return maps, [p.grad.clone() for p in net.parameters()]

    (eps_alone,), eps_grads = gradients("epsilon")
    single = len(calls)
    (zplus_alone,), zplus_grads = gradients("zplus")
    calls.clear()
    (eps_maps, zplus_maps), both_grads = gradients(["epsilon", "zplus"])
    assert len(calls) == single  # once per layer, not once per composite
    torch.testing.assert_close(eps_maps, eps_alone, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(zplus_maps, zplus_alone, rtol=1e-12, atol=1e-14)
    for both, a, b in zip(both_grads, eps_grads, zplus_grads):
        torch.testing.assert_close(both, a + b, rtol=1e-9, atol=1e-12)


def test_two_composites_in_training_mode_update_the_running_statistics_once():
    torch.manual_seed(0)
    net = small_cnn().train()
    net[6].p = 0.0
    reference = small_cnn()
    reference.load_state_dict(net.state_dict())
    reference.train()
    x = torch.rand(4, 3, 16, 16)
    _, maps = LRPGraph(net, rule=["epsilon", "zplus"])(x)
    reference(x)
    assert len(maps) == 2 and all(torch.isfinite(m).all() for m in maps)
    assert net[1].num_batches_tracked.item() == 1
    torch.testing.assert_close(net[1].running_mean, reference[1].running_mean, rtol=0, atol=0)
    torch.testing.assert_close(net[1].running_var, reference[1].running_var, rtol=0, atol=0)


def test_composites_that_run_different_forwards_are_refused():
    unfused = Composite([(nn.Conv2d, lambda ctx: Epsilon(AffineLayer(ctx.module, None, ctx.where), 0.01))]
                        + epsilon_composite().entries, name="unfused")
    with pytest.raises(ValueError, match="separate calls"):
        LRPGraph(small_cnn(), rule=["epsilon", unfused], zb=False)
    with pytest.raises(ValueError, match="at least one"):
        LRPGraph(small_cnn(), rule=[])
