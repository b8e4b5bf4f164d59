"""What a heatmap explains: weights over the logits, functions of the logits, and the
Selective ISNet's softmax quantity."""

import math
import pytest
import torch
import torchvision
from torch import nn

from isnet import ISNet, LRPGraph, explain
from isnet.lrp.quantities import eta, selected_class, selective_weights


def small_net(classes=4, bias=True):
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=bias),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1, bias=bias),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes, bias=bias),
    ).double()


def largest_error(a, b):
    return float(((a - b).abs().max() / b.abs().max()).detach())


@pytest.mark.parametrize("name", ["vgg11_bn", "resnet18", "densenet121"])
@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_weighted_heatmap_is_the_weighted_sum_of_the_class_heatmaps(name, rule):
    model = getattr(torchvision.models, name)(weights=None, num_classes=5).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    graph = LRPGraph(model, rule=rule)
    _, full = graph(x)  # (B, 5, C, H, W)
    weights = torch.randn(2, 3, 5, dtype=torch.float64)  # three maps per image, each a mix of logits
    _, mixed = graph(x, logit_weights=weights)
    expected = torch.einsum("bkj,bjchw->bkchw", weights, full)
    assert mixed.shape == (2, 3, 3, 32, 32)
    assert largest_error(mixed, expected) <= 1e-12
    shared = torch.randn(2, 5, dtype=torch.float64)  # the same two mixes for every image
    _, both = graph(x, logit_weights=shared)
    assert largest_error(both, torch.einsum("kj,bjchw->bkchw", shared, full)) <= 1e-12


def test_one_hot_weights_give_the_class_heatmaps_exactly():
    net = small_net().eval()
    x = torch.rand(3, 3, 12, 12, dtype=torch.float64)
    classes = torch.tensor([[2], [0], [3]])
    onehot = torch.nn.functional.one_hot(classes, 4).double()
    torch.testing.assert_close(explain(net, x, logit_weights=onehot), explain(net, x, classes=classes),
                               rtol=0, atol=0)


def test_classes_and_weights_may_be_functions_of_the_logits():
    net = small_net().eval()
    x = torch.rand(3, 3, 12, 12, dtype=torch.float64)
    logits, full = LRPGraph(net)(x)
    winners = logits.argmax(1)
    by_function = explain(net, x, classes=lambda z: z.argmax(1, keepdim=True))
    torch.testing.assert_close(by_function[:, 0], full[torch.arange(3), winners], rtol=0, atol=0)
    summed = explain(net, x, logit_weights=lambda z: torch.ones(1, z.shape[1], dtype=z.dtype))
    assert largest_error(summed[:, 0], full.sum(1)) <= 1e-12


def test_lrp0_of_the_weights_conserves_the_explained_quantity():
    """Without biases, LRP-0 hands every image exactly sum_j w_j z_j to its pixels."""
    net = small_net(bias=False).eval()
    net[1].bias.data.zero_()
    net[1].running_mean.zero_()
    x = torch.rand(2, 3, 12, 12, dtype=torch.float64)
    weights = torch.randn(2, 2, 4, dtype=torch.float64)
    logits, maps = LRPGraph(net, epsilon=0.0, zb=False)(x, logit_weights=weights)
    torch.testing.assert_close(maps.sum((2, 3, 4)), (weights * logits[:, None]).sum(-1), rtol=1e-10, atol=1e-12)


def test_selective_heatmap_under_lrp0_is_gradient_times_input_of_eta():
    """LRP-0 equals Gradient*Input (Appendix H), so the heatmap of the weights d eta / dz is
    Gradient*Input of eta itself: the weights explain the Selective ISNet's quantity."""
    model = torchvision.models.resnet18(weights=None, num_classes=4).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    for which in ("highest", "lowest"):
        maps = explain(model, x, epsilon=0.0, zb=False,
                       logit_weights=lambda z, which=which: selective_weights(z, selected_class(z, which)))
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        (grad,) = torch.autograd.grad(eta(logits, selected_class(logits, which)).sum(), xg)
        assert maps.shape == (2, 1, 3, 32, 32)
        assert largest_error(maps[:, 0], xg.detach() * grad) <= 1e-10


@pytest.mark.parametrize("eps", [0.0, 0.01])
def test_selective_weights_are_the_derivatives_of_eta_and_differentiable(eps):
    logits = (4 * torch.randn(5, 6, dtype=torch.float64)).requires_grad_(True)
    classes = torch.tensor([0, 5, 2, 2, 1])
    weights = selective_weights(logits, classes, eps)
    (expected,) = torch.autograd.grad(eta(logits, classes, eps).sum(), logits, create_graph=True)
    assert weights.shape == (5, 1, 6)
    torch.testing.assert_close(weights[:, 0], expected, rtol=1e-12, atol=1e-14)
    torch.autograd.gradcheck(lambda z: selective_weights(z, classes, eps), (logits,))
    several = selective_weights(logits, torch.tensor([[0, 1]] * 5), eps)  # (B, K') classes: one map each
    assert several.shape == (5, 2, 6)
    torch.testing.assert_close(several[:, 1], selective_weights(logits, torch.ones(5, dtype=torch.long), eps)[:, 0])


def test_eta_is_the_log_odds_and_its_weights_do_not_vanish_when_the_softmax_saturates():
    logits = torch.tensor([[1.0, -0.5, 2.0], [0.3, 0.2, -1.0]], dtype=torch.float64)
    classes = torch.tensor([2, 0])
    p = torch.softmax(logits, 1).gather(1, classes[:, None])[:, 0]
    torch.testing.assert_close(eta(logits, classes), torch.log(p) - torch.log1p(-p), rtol=1e-12, atol=1e-12)
    # A confident classifier: a logit gap of 40 (1 - p_c about 4e-18, 0 in float32).
    confident = torch.tensor([[40.0, 0.0, -1.0]])
    chosen = torch.tensor([0])
    exact = selective_weights(confident, chosen)
    assert exact[0, 0, 0] == 1.0 and abs(float(exact[0, 0, 1:].sum()) + 1.0) < 1e-6  # a logit's scale
    torch.testing.assert_close(eta(confident, chosen), torch.tensor([40.0 - math.log(1 + math.exp(-1.0))]))
    smoothed = selective_weights(confident, chosen, eps=0.01)
    assert float(smoothed.abs().max()) < 1e-12  # the regularised form vanishes there


def test_selective_quantity_rejects_bad_settings():
    with pytest.raises(ValueError, match="eps must be at least 0"):
        selective_weights(torch.zeros(2, 3), torch.tensor([0, 1]), eps=-1.0)
    with pytest.raises(ValueError, match="K >= 2"):
        eta(torch.zeros(2, 1), torch.tensor([0, 0]))


def test_selected_class_and_bad_choices():
    logits = torch.tensor([[0.1, 3.0, -2.0], [5.0, 1.0, 2.0]])
    assert selected_class(logits, "highest").tolist() == [1, 0]
    assert selected_class(logits, "lowest").tolist() == [2, 1]
    with pytest.raises(ValueError, match=r"selective_class must be one of \('highest', 'lowest'\)"):
        selected_class(logits, "middle")


def test_a_loss_on_selective_heatmaps_backpropagates_through_the_weights():
    """Training differentiates through d eta / dz as well (the authors' autograd-based code does):
    the parameter gradient agrees with finite differences only with that path."""
    torch.manual_seed(0)
    net = small_net(classes=3).eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    mask = (torch.rand(2, 1, 1, 8, 8) > 0.5).double()
    isnet = ISNet(net, epsilon=0.01, zb=True)

    def loss(detach_weights):
        def weights(z):
            w = selective_weights(z, selected_class(z))
            return w.detach() if detach_weights else w
        maps = isnet(x, heatmaps=True, logit_weights=weights)[1]
        return ((maps * (1 - mask)) ** 2).sum()

    weight = net[4].weight
    (grad,) = torch.autograd.grad(loss(False), weight)
    (partial,) = torch.autograd.grad(loss(True), weight)
    index, h = (1, 2, 0, 1), 1e-6
    with torch.no_grad():
        original = weight[index].item()
        weight[index] = original + h
        up = loss(False).item()
        weight[index] = original - h
        down = loss(False).item()
        weight[index] = original
    numeric = (up - down) / (2 * h)
    assert abs(grad[index].item() - numeric) <= 1e-6 * max(1.0, abs(numeric))
    assert abs(partial[index].item() - numeric) > 1e-4 * abs(numeric)


@pytest.mark.parametrize("kwargs,error,message", [
    ({"logit_weights": torch.ones(2, 5, dtype=torch.float64)}, ValueError, r"shape \(K', 4\)"),
    ({"logit_weights": torch.ones(3, 1, 4, dtype=torch.float64)}, ValueError, r"\(B, K', 4\) = \(2, K', 4\)"),
    ({"logit_weights": torch.ones(2, 0, 4, dtype=torch.float64)}, ValueError, "shape"),
    ({"logit_weights": torch.ones(1, 4, dtype=torch.long)}, TypeError, "floating-point"),
    ({"logit_weights": torch.full((1, 4), float("nan"), dtype=torch.float64)}, ValueError, "NaN"),
    ({"logit_weights": torch.ones(1, 4, dtype=torch.float64), "classes": [0]}, ValueError, "not both"),
])
def test_bad_weights_get_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        explain(small_net().eval(), torch.rand(2, 3, 8, 8, dtype=torch.float64), **kwargs)
