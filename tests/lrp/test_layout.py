"""Speed-motivated parts of the engine give the same numbers: channels-last tensors, the merged
DenseNet concatenations, lone norms absorbed by the next layer, the batch statistics' closed-form
gradient, the stabiliser's sign, and 1x1 convolutions as matrix products."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from isnet import LRPGraph
from isnet.lrp import passes
from isnet.lrp import layers
from isnet.lrp.layers import AffineLayer, _channel_mean_var
from isnet.lrp.rules import Concat, WinnerTakesAll, class_product, stabilized_reciprocal


class TinyDense(nn.Module):
    """Two DenseNet-style blocks: every layer concatenates all earlier feature maps."""

    def __init__(self, growth=3, layers=3, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        channels, self.blocks = 4, nn.ModuleList()
        for _ in range(2):
            block = nn.ModuleList()
            for i in range(layers):
                block.append(nn.Sequential(nn.BatchNorm2d(channels + i * growth), nn.ReLU(),
                                           nn.Conv2d(channels + i * growth, growth, 3, padding=1)))
            self.blocks.append(block)
            channels += layers * growth
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for block in self.blocks:
            features = [x]
            for layer in block:
                features.append(layer(torch.cat(features, 1)))
            x = F.max_pool2d(torch.cat(features, 1), 2)
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def heatmaps_and_gradients(model, x, **kwargs):
    graph = LRPGraph(model, **kwargs)
    logits, heatmaps = graph(x)
    loss = (heatmaps ** 2).sum() + logits.sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return logits.detach(), heatmaps.detach(), grads


def test_merged_concatenations_give_bit_identical_heatmaps_and_gradients(monkeypatch):
    torch.manual_seed(0)
    model = TinyDense().double().train()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    merged = LRPGraph(model)
    concats = [s.rule for s in merged._steps.values() if isinstance(s.rule, Concat)]
    # Layers 3 of each block and each block's output reuse the previous concatenation.
    assert sum(rule.merged > 1 for rule in concats) == 4
    running = {name: b.clone() for name, b in model.named_buffers()}
    logits, heatmaps, grads = heatmaps_and_gradients(model, x)
    for name, b in model.named_buffers():
        b.copy_(running[name])
    monkeypatch.setattr(passes, "_merge_concat_prefixes", lambda plan: None)
    plain = LRPGraph(model)
    assert all(s.rule.merged == 1 for s in plain._steps.values() if isinstance(s.rule, Concat))
    ref_logits, ref_heatmaps, ref_grads = heatmaps_and_gradients(model, x)
    assert torch.equal(logits, ref_logits) and torch.equal(heatmaps, ref_heatmaps)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)


def test_concatenations_along_another_dim_or_order_are_not_merged():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)
            self.fc = nn.Linear(24, 2)

        def forward(self, x):
            a, b, c = self.a(x), self.b(x), self.c(x)
            first = torch.cat([a, b], 1)  # (2+2) channels
            wide = torch.cat([a, b, c], 3)  # same prefix, other dimension
            swapped = torch.cat([b, a, c], 1)  # other order
            pooled = [F.adaptive_avg_pool2d(t, 1).flatten(1) for t in (first, wide, swapped)]
            return self.fc(torch.cat([pooled[0], pooled[1], pooled[2]], 1).repeat(1, 2))

    graph = LRPGraph(Mixed(), zb=False)
    assert all(s.rule.merged == 1 for s in graph._steps.values() if isinstance(s.rule, Concat))


def cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def test_channels_last_model_gives_the_same_heatmaps_and_gradients():
    torch.manual_seed(0)
    model = TinyDense().double().train()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    logits, heatmaps, grads = heatmaps_and_gradients(model, x)
    model.load_state_dict(state)
    model = model.to(memory_format=torch.channels_last)
    cl_logits, cl_heatmaps, cl_grads = heatmaps_and_gradients(model, cl(x))
    torch.testing.assert_close(cl_logits, logits, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cl_heatmaps, heatmaps, rtol=1e-9, atol=1e-12)
    for g, r in zip(cl_grads, grads):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)


def test_class_product_keeps_the_channels_last_layout_of_its_gradients():
    x = cl(torch.rand(2, 5, 4, 4, dtype=torch.float64)).requires_grad_()
    r = torch.rand(2, 3, 5, 4, 4, dtype=torch.float64).requires_grad_()
    out = class_product(x, r)
    torch.testing.assert_close(out, x.unsqueeze(1) * r)
    gx, gr = torch.autograd.grad((out * torch.rand_like(out)).sum(), (x, r))
    assert gx.is_contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(class_product, (x, r))


def _no_convolution(*args, **kwargs):
    raise AssertionError("a convolution was called for a pointwise layer on a channels-last tensor")


def test_pointwise_convolutions_on_channels_last_tensors_are_matrix_products_with_equal_values_and_gradients(
    monkeypatch,
):
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 1).double()
    affine = AffineLayer(conv, None)
    weight = cl(conv.weight.detach().clone()).requires_grad_()
    x = cl(torch.randn(3, 6, 5, 4, dtype=torch.float64)).requires_grad_()
    s = cl(torch.randn(6, 4, 5, 4, dtype=torch.float64)).requires_grad_()  # N = 6: two maps per image
    ref_z, ref_c = F.conv2d(x, weight), F.conv_transpose2d(s, weight)
    ref_grads = torch.autograd.grad((ref_z.sin().sum() + ref_c.cos().sum()), (x, s, weight))
    monkeypatch.setitem(layers._CONV, 2, _no_convolution)
    monkeypatch.setitem(layers._CONV_TRANSPOSE, 2, _no_convolution)
    z, c = affine.linear(x, weight), affine.transpose(s, weight, x.shape)
    assert z.is_contiguous(memory_format=torch.channels_last) and c.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(z, ref_z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c, ref_c, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((z.sin().sum() + c.cos().sum()), (x, s, weight))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("conv", [nn.Conv2d(6, 4, 1, stride=2), nn.Conv2d(6, 4, 3, padding=1),
                                  nn.Conv2d(6, 4, 1, groups=2), nn.Conv2d(6, 4, 1, padding=1)])
def test_other_convolutions_keep_the_convolution_and_its_transpose_stays_the_adjoint(conv):
    affine = AffineLayer(conv.double(), None)
    assert not affine._pointwise
    x = cl(torch.randn(2, 6, 6, 6, dtype=torch.float64))
    z = affine.linear(x, conv.weight)
    torch.testing.assert_close(z, F.conv2d(x, conv.weight, None, conv.stride, conv.padding, 1, conv.groups))
    s = cl(torch.randn_like(z))
    # <W^T s, x> = <s, W x>
    torch.testing.assert_close((affine.transpose(s, conv.weight, x.shape) * x).sum(), (s * z).sum())


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 4, 5, 5), (2, 3, 2, 3, 4)])
def test_channel_statistics_and_their_gradients(shape):
    y = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    dims = [d for d in range(y.dim()) if d != 1]
    mean, var = _channel_mean_var(y)
    torch.testing.assert_close(mean, y.mean(dims))
    torch.testing.assert_close(var, y.var(dims, unbiased=False))
    assert torch.autograd.gradcheck(_channel_mean_var, (y,))
    assert torch.autograd.gradgradcheck(_channel_mean_var, (y,))
    (g,) = torch.autograd.grad(_channel_mean_var(cl(y) if y.dim() == 4 else y)[1].sum(), y)
    torch.testing.assert_close(g, 2 * (y - y.mean(dims, keepdim=True)) / (y.numel() // y.shape[1]))


def test_stabiliser_treats_both_zeros_as_positive():
    z = torch.tensor([0.0, -0.0, 0.5, -0.5], dtype=torch.float64, requires_grad=True)
    r = stabilized_reciprocal(z, 0.25)
    torch.testing.assert_close(r.detach(), torch.tensor([4.0, 4.0, 1 / 0.75, -1 / 0.75], dtype=torch.float64))
    (g,) = torch.autograd.grad(r.sum(), z)
    torch.testing.assert_close(g, -r.detach() ** 2)  # d/dz 1/(z + eps sign z) = -1/(z + eps sign z)^2


# -- a lone norm absorbed by the layer after it -------------------------------------------------
def _absorbed(graph, plan=0):
    return [step.absorbed.target for step in graph.plans[plan].steps.values() if step.absorbed is not None]


@pytest.mark.parametrize("rule", ["epsilon", "zplus", ["epsilon", "zplus"]])
def test_densenet_norms_after_concatenations_are_absorbed_with_equal_heatmaps_and_gradients(monkeypatch, rule):
    """Absorbing a lone norm into the layer after it regroups the same products: heatmaps
    and the heatmap loss's parameter gradients must not change (float64, training mode), for
    LRP-epsilon, LRP-z+ (two input factors, x+ and x-, both scaled) and both from one forward."""
    torch.manual_seed(0)
    net = torchvision.models.densenet121(weights=None, num_classes=3).double().train()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    plans = len(rule) if isinstance(rule, list) else 1

    def heatmaps_and_gradients(graph):
        net.zero_grad()
        _, heatmaps = graph(x)
        heatmaps = torch.stack(heatmaps) if plans > 1 else heatmaps[None]
        (heatmaps.abs().sum() + heatmaps.pow(2).sum()).backward()
        return heatmaps.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])

    absorbing = LRPGraph(net, epsilon=0.01, rule=rule)
    # every dense layer's norm1, the transitions' norms and norm5 (before the classifier's pooling)
    assert [len(_absorbed(absorbing, i)) for i in range(plans)] == [58 + 3 + 1] * plans
    monkeypatch.setattr(passes, "_absorb_lone_norms", lambda plan: None)
    plain = LRPGraph(net, epsilon=0.01, rule=rule)
    assert _absorbed(plain) == []
    h1, g1 = heatmaps_and_gradients(absorbing)
    h0, g0 = heatmaps_and_gradients(plain)
    # Near-zero batch-norm denominators amplify rounding in single entries; compare against the largest.
    for i in range(plans):
        assert (h1[i] - h0[i]).abs().max() <= 1e-12 * h0[i].abs().max()
    assert (g1 - g0).abs().max() <= 1e-12 * g0.abs().max()
    assert g0.abs().max() > 0


def test_a_lone_norm_with_two_consumers_keeps_its_own_rule():
    class TwoConsumers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.norm = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            a = F.relu(self.norm(F.relu(self.conv(x))))
            y = F.relu(self.conv2(a)) + a  # the norm's activation also feeds the skip
            return self.fc(y.mean((2, 3)))

    class Chain(TwoConsumers):
        def forward(self, x):
            a = nn.functional.dropout(F.relu(self.norm(F.relu(self.conv(x)))), 0.0)
            return self.fc(F.relu(self.conv2(a)).mean((2, 3)))

    assert _absorbed(LRPGraph(TwoConsumers())) == []
    assert _absorbed(LRPGraph(Chain())) == ["norm"]  # through ReLU and dropout to conv2


def test_max_pool_relevance_keeps_the_channels_last_layout():
    """Overlapping windows: an input that wins several windows gets their sum in either layout."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64)
    rule = WinnerTakesAll(lambda t: F.max_pool2d(t, 3, stride=2, padding=1, return_indices=True))
    R = torch.randn(2, 3, 5, 5, 5, dtype=torch.float64)
    (expected,) = rule.relevance(R, rule.forward((x,), {})[1])
    _, (shape, indices) = rule.forward((cl(x),), {})
    (got,) = rule.relevance(R, (shape, indices))
    assert indices.is_contiguous(memory_format=torch.channels_last)
    assert got.permute(0, 1, 3, 4, 2).is_contiguous()  # channels innermost
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.sum((2, 3, 4)), R.sum((2, 3, 4)))  # nothing lost


# -- a max pool applies the denominator of the layer before it --------------------------------
def _scaled(graph):
    return [step.scaled_by for step in graph._steps.values() if step.scaled_by is not None]


@pytest.mark.parametrize("name, pools, layout", [
    ("vgg11_bn", 5, "contiguous"),  # conv + batch norm (fused) -> ReLU -> 2x2 max pool; zB before the first
    ("resnet18", 1, "channels_last"),  # the stem's overlapping 3x3 / stride-2 max pool
    ("small_cnn", 3, "channels_last"),  # the built-in benchmark's backbone, without batch norm
])
def test_max_pools_divide_by_the_layer_denominator_with_equal_heatmaps_and_gradients(monkeypatch, name, pools, layout):
    """Dividing each window's relevance by the layer's denominator at the window's maximum is the
    same arithmetic as dividing after the pool hands it on (float64, training mode)."""
    from isnet.backbones import build_backbone

    torch.manual_seed(0)
    kwargs = {"batch_norm": False} if name == "small_cnn" else {}
    net = build_backbone(name, 3, **kwargs).double().train()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    if layout == "channels_last":
        net, x = net.to(memory_format=torch.channels_last), cl(x)

    def heatmaps_and_gradients(graph):
        net.zero_grad()
        torch.manual_seed(1)  # the same dropout masks (VGG's classifier)
        _, heatmaps = graph(x)
        (heatmaps.abs().sum() + heatmaps.pow(2).sum()).backward()
        return heatmaps.detach(), torch.cat([p.grad.flatten() for p in net.parameters()])

    dividing = LRPGraph(net, epsilon=0.01)
    assert len(_scaled(dividing)) == pools
    assert all(dividing._steps[key].divided for key in _scaled(dividing))
    monkeypatch.setattr(passes, "_divide_at_max_pools", lambda plan: None)
    plain = LRPGraph(net, epsilon=0.01)
    assert _scaled(plain) == [] and not any(step.divided for step in plain._steps.values())
    h1, g1 = heatmaps_and_gradients(dividing)
    h0, g0 = heatmaps_and_gradients(plain)
    assert h0.abs().max() > 0 and g0.abs().max() > 0
    assert (h1 - h0).abs().max() <= 1e-12 * h0.abs().max()
    assert (g1 - g0).abs().max() <= 1e-12 * g0.abs().max()


def test_a_layer_whose_output_has_another_consumer_divides_its_own_relevance():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            a = F.relu(self.conv(x))
            return self.fc(torch.cat([F.max_pool2d(a, 2).mean((2, 3)), a.mean((2, 3))], 1))

    class Chain(Skip):
        def forward(self, x):
            a = F.max_pool2d(F.dropout(F.relu(self.conv(x)), 0.0), 2).mean((2, 3))
            return self.fc(torch.cat([a, a], 1))

    assert _scaled(LRPGraph(Skip())) == []
    assert [node.target for node in _scaled(LRPGraph(Chain()))] == ["conv"]  # through ReLU and dropout
