"""Relevance at intermediate layers: what LRP deep supervision penalises."""

import pytest
import torch
import torchvision
from torch import nn

from isnet import ISNet, LRPGraph
from isnet.backbones import SmallCNN

STAGES = {
    "resnet18": ["layer1", "layer2", "layer3", "layer4"],
    "densenet121": ["features.denseblock1", "features.denseblock2", "features.denseblock3"],
    "vgg11": ["features.2", "features.5", "features.10"],
}


def gradient_times_activation(model, x, names, classes):
    """``a * d z_c / d a`` at each named module's output, for each image's class ``classes[b]``."""
    modules = dict(model.named_modules())
    outputs = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in names]
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    picked = logits.gather(1, classes[:, None]).sum()
    grads = torch.autograd.grad(picked, [outputs[n] for n in names])
    return {n: (outputs[n] * g).detach() for n, g in zip(names, grads)}


@pytest.mark.parametrize("name", list(STAGES))
def test_lrp0_relevance_at_block_outputs_is_gradient_times_activation(name):
    """Appendix H's identity holds at every layer: LRP-0 relevance at a tensor is the tensor
    times the logit's gradient there."""
    model = getattr(torchvision.models, name)(weights=None, num_classes=3).double().eval()
    for module in model.modules():  # no in-place ReLU, so that the hooks see each block's output intact
        if isinstance(module, nn.ReLU):
            module.inplace = False
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    classes = torch.tensor([2, 0])
    out = LRPGraph(model, epsilon=0.0, zb=False).run(x, classes[:, None], layers=STAGES[name])
    expected = gradient_times_activation(model, x, STAGES[name], classes)
    assert list(out.layers[0]) == STAGES[name]
    for layer, relevance in out.layers[0].items():
        assert relevance.shape == (2, 1, *expected[layer].shape[1:])
        error = (relevance[:, 0] - expected[layer]).abs().max() / expected[layer].abs().max()
        assert error <= 1e-10, layer


def test_layers_of_every_composite_come_from_one_forward_pass():
    model = SmallCNN(3, width=4).double().eval()
    layers = ["features.3", "features.7"]
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    both = LRPGraph(model, rule=["epsilon", "zplus"]).run(x, torch.tensor([[1], [2]]), layers=layers)
    for i, rule in enumerate(["epsilon", "zplus"]):
        alone = LRPGraph(model, rule=rule).run(x, torch.tensor([[1], [2]]), layers=layers)
        torch.testing.assert_close(both.heatmaps[i], alone.heatmaps[0], rtol=0, atol=0)
        for layer in layers:
            torch.testing.assert_close(both.layers[i][layer], alone.layers[0][layer], rtol=0, atol=0)
    assert both.layers[0]["features.3"].shape == (2, 1, 4, 8, 8)
    assert both.layers[0]["features.7"].shape == (2, 1, 8, 4, 4)


def test_isnet_explain_keeps_the_heatmaps_of_a_plain_call():
    net = ISNet(SmallCNN(3, width=4).eval())
    x = torch.rand(2, 3, 16, 16)
    out = net.explain(x, layers=["features.11"])
    torch.testing.assert_close(out.heatmaps[0], net(x, heatmaps=True)[1], rtol=0, atol=0)
    assert out.layers[0]["features.11"].shape == (2, 3, 16, 2, 2)


@pytest.mark.parametrize("layer,message", [
    ("features.nope", "no layer 'features.nope'"),
    ("features.0", "not held by the optimised propagation"),  # a convolution fused with its batch norm
    ("features.2", "not held by the optimised propagation"),  # between a convolution and its max pool
])
def test_layers_that_the_propagation_does_not_hold_are_refused(layer, message):
    with pytest.raises(ValueError, match=message):
        LRPGraph(SmallCNN(3, width=4).eval()).run(torch.rand(1, 3, 16, 16), layers=[layer])


def test_a_densenet_norm_absorbed_by_its_convolution_is_refused():
    model = torchvision.models.densenet121(weights=None, num_classes=3).eval()
    with pytest.raises(ValueError, match="features.transition1.norm"):
        LRPGraph(model).layer_nodes(["features.transition1.norm"])
    assert len(LRPGraph(model).layer_nodes(["features.denseblock4", "features.transition1"])) == 2
