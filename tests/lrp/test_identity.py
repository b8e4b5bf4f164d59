"""Appendix H: with epsilon = 0 and no zB, LRP (LRP-0) equals Gradient*Input on ReLU networks."""

import pytest
import torch
import torchvision

from isnet import LRPGraph, explain

FAMILIES = [
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "resnet18", "resnet34", "resnet50", "resnet101",
    "densenet121", "densenet161", "densenet169", "densenet201",
]  # fmt: skip
K = 3


def gradient_times_input(model, x, classes):
    """Batched Gradient*Input: the batch repeated for each class, one backward pass."""
    xs = x.repeat_interleave(len(classes), dim=0).requires_grad_(True)
    logits = model(xs).view(x.shape[0], len(classes), -1)
    picked = logits[:, torch.arange(len(classes)), torch.tensor(classes)].sum()
    (grad,) = torch.autograd.grad(picked, xs)
    return (xs * grad).detach().view(x.shape[0], len(classes), *x.shape[1:])


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("size,batch", [(64, 2), (224, 1)])
@pytest.mark.parametrize("name", FAMILIES)
def test_lrp0_equals_gradient_times_input(name, size, batch):
    model = getattr(torchvision.models, name)(weights=None, num_classes=K).double().eval()
    x = torch.rand(batch, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected_logits = model(x)
    logits, heatmaps = LRPGraph(model, epsilon=0.0, zb=False)(x)
    reference = gradient_times_input(model, x, list(range(K)))
    assert heatmaps.shape == (batch, K, 3, size, size)
    assert torch.equal(logits, expected_logits)
    assert reference.abs().max() > 0
    assert relative_error(heatmaps, reference) < 1e-9


def test_identity_detects_a_wrong_rule():
    """The comparison above can fail: LRP-epsilon is not Gradient*Input."""
    model = torchvision.models.resnet18(weights=None, num_classes=K).double().eval()
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    heatmaps = explain(model, x, epsilon=0.5, zb=False)
    assert relative_error(heatmaps, gradient_times_input(model, x, list(range(K)))) > 1e-3


def test_identity_holds_for_a_class_subset():
    model = torchvision.models.vgg11(weights=None, num_classes=5).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    heatmaps = explain(model, x, epsilon=0.0, zb=False, classes=[4, 1])
    assert heatmaps.shape == (2, 2, 3, 32, 32)
    assert relative_error(heatmaps, gradient_times_input(model, x, [4, 1])) < 1e-9
