"""A loss on the heatmaps backpropagates to the backbone's parameters (the ISNet's training signal)."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from isnet import ISNet, LRPGraph


def heatmap_loss(heatmaps, mask):
    """Any smooth function of the heatmaps will do; this one resembles the background loss."""
    return ((heatmaps * (1 - mask)) ** 2).mean() + (heatmaps * mask).sum() * 1e-2


def tiny_net(bias):
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3, bias=bias),
    ).double()


def finite_difference(net, loss_fn, param, index, h=1e-6):
    with torch.no_grad():
        original = param[index].item()
        param[index] = original + h
        up = loss_fn().item()
        param[index] = original - h
        down = loss_fn().item()
        param[index] = original
    return (up - down) / (2 * h)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("eps,zb,rule", [(0.01, True, "epsilon"), (0.0, False, "epsilon"),
                                         (0.01, True, "zplus"), (0.01, False, "zplus")])
def test_weight_gradients_agree_with_finite_differences(bias, eps, zb, rule):
    """With biases the comparison holds for weights: biases only enter the detached denominators
    and the activations, which the weights do not change."""
    net = tiny_net(bias).eval()
    graph = LRPGraph(net, epsilon=eps, zb=zb, rule=rule)
    x = torch.rand(2, 2, 8, 8, dtype=torch.float64)
    mask = (torch.rand(2, 1, 1, 8, 8) > 0.5).double()

    def loss_fn():
        return heatmap_loss(graph(x)[1], mask)

    loss = loss_fn()
    weights = [m.weight for m in net if isinstance(m, (nn.Conv2d, nn.Linear))]
    grads = torch.autograd.grad(loss, weights)
    generator = torch.Generator().manual_seed(1)
    for weight, grad in zip(weights, grads):
        assert grad.abs().sum() > 0
        for flat in torch.randperm(weight.numel(), generator=generator)[:8].tolist():
            index = tuple(torch.unravel_index(torch.tensor(flat), weight.shape))
            index = tuple(int(i) for i in index)
            expected = finite_difference(net, loss_fn, weight, index)
            assert grad[index].item() == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_bias_is_detached_in_the_denominator():
    """One linear layer: H_kj = x_j w_kj y_k / (z_k + eps) with z's bias detached, so
    dH/db_k = x_j w_kj / (y_k + eps): only through the starting relevance y_k."""
    layer = nn.Linear(5, 2).double()
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.3, 0.7], dtype=torch.float64))
    x = torch.rand(1, 5, dtype=torch.float64) + 0.5
    with torch.no_grad():
        layer.weight.abs_()  # positive logits, so sign(z) = +1
    eps = 0.1
    heatmaps = LRPGraph(layer, epsilon=eps, zb=False)(x)[1]  # (1, 2, 5)
    (grad,) = torch.autograd.grad(heatmaps.sum(), layer.bias)
    y = layer(x).detach()[0]
    expected = (x[0] * layer.weight.detach()).sum(1) / (y + eps)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,train,rule", [
    ("vgg11_bn", False, "epsilon"), ("vgg11_bn", True, "epsilon"),
    ("resnet18", False, "epsilon"), ("resnet18", True, "epsilon"),
    ("densenet121", False, "epsilon"), ("densenet121", True, "epsilon"),
    ("resnet18", True, "zplus"),
])
def test_every_layer_weight_receives_a_gradient(name, train, rule):
    model = getattr(torchvision.models, name)(weights=None, num_classes=3)
    net = ISNet(model, rule=rule).train(train)
    # 64x64 keeps DenseNet's last maps at 2x2: batch statistics of 1x1 maps of 2 images are degenerate.
    x = torch.rand(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    _, heatmaps = net(x, heatmaps=True)
    heatmap_loss(heatmaps, mask).backward()
    for module_name, module in net.backbone.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            grad = module.weight.grad
            assert grad is not None, module_name
            assert torch.isfinite(grad).all(), module_name
            assert grad.abs().sum() > 0, module_name


@pytest.mark.parametrize("train", [False, True])
def test_gradients_match_a_literal_algorithm_6_in_both_modes(train):
    """Against the paper's LRP block written out by hand: the fused layer recomputed from its input
    with K' = K gamma / sigma and B' = beta + gamma (B - mu) / sigma (Eqs. 25, 26, Alg. 6), the bias
    parameters beta and B detached in the denominator, batch statistics in training mode (with their
    gradient: the forward depends on them).  Gradients must agree for every parameter."""
    torch.manual_seed(0)
    conv, norm, fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4 * 36, 3)
    net = nn.Sequential(conv, norm, nn.ReLU(), nn.Flatten(), fc).double().train(train)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
        norm.running_mean.uniform_(-0.2, 0.2)
    x = torch.rand(3, 3, 6, 6, dtype=torch.float64)
    mask = (torch.rand(3, 1, 1, 6, 6) > 0.5).double()
    eps = 0.01
    params = [conv.weight, conv.bias, norm.weight, norm.bias, fc.weight, fc.bias]

    engine = torch.autograd.grad(heatmap_loss(LRPGraph(net, epsilon=eps, zb=False)(x)[1], mask), params)

    def stab(z):
        return z + eps * torch.where(z >= 0, 1.0, -1.0).double()

    y = F.conv2d(x, conv.weight, conv.bias, padding=1)
    if train:
        mu, var = y.mean((0, 2, 3)), y.var((0, 2, 3), unbiased=False)
    else:
        mu, var = norm.running_mean, norm.running_var
    sigma = torch.sqrt(var + norm.eps)
    K = conv.weight * (norm.weight / sigma).view(-1, 1, 1, 1)
    B = norm.bias + norm.weight * (conv.bias - mu) / sigma
    h = torch.relu(F.conv2d(x, K, B, padding=1))
    logits = fc(h.flatten(1))
    maps = []
    for k in range(3):
        R = logits * F.one_hot(torch.tensor(k), 3).double()
        z = F.linear(h.flatten(1), fc.weight, fc.bias.detach())
        Rh = (h.flatten(1) * ((R / stab(z)) @ fc.weight)).view_as(h)
        z1 = F.conv2d(x, K, norm.bias.detach() + norm.weight * (conv.bias.detach() - mu) / sigma, padding=1)
        maps.append(x * F.conv_transpose2d(Rh / stab(z1), K, padding=1))
    literal = torch.autograd.grad(heatmap_loss(torch.stack(maps, 1), mask), params)
    for name, a, b in zip(["conv.w", "conv.b", "bn.w", "bn.b", "fc.w", "fc.b"], engine, literal):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
@pytest.mark.parametrize("train", [False, True])
def test_batch_norm_weight_gradients_are_true_gradients_in_both_modes(train, rule):
    """With batch norm in training mode the heatmaps depend on the weights through the batch mean
    and variance too: the gradient of a heatmap loss with respect to every weight (not bias) must
    be its true gradient, or gradient descent on the heatmap loss can raise it."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    ).double().train(train)
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.2, 0.2)
    net.apply(lambda m: setattr(m, "momentum", 0.0) if isinstance(m, nn.BatchNorm2d) else None)  # frozen buffers
    graph = LRPGraph(net, epsilon=0.01, zb=True, rule=rule)
    x = torch.rand(4, 2, 8, 8, dtype=torch.float64)
    mask = (torch.rand(4, 1, 1, 8, 8) > 0.5).double()

    def loss_fn():
        return heatmap_loss(graph(x)[1], mask)

    weights = [m.weight for m in net if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]
    grads = torch.autograd.grad(loss_fn(), weights)
    generator = torch.Generator().manual_seed(1)
    for weight, grad in zip(weights, grads):
        for flat in torch.randperm(weight.numel(), generator=generator)[:6].tolist():
            index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), weight.shape))
            expected = finite_difference(net, loss_fn, weight, index)
            assert grad[index].item() == pytest.approx(expected, rel=1e-5, abs=1e-9)
