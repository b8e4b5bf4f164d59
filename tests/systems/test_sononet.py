"""AG-Sononet (Schlemper et al. 2019) and LRP through its attention gates."""

import copy

import pytest
import torch
import torch.nn.functional as F

from isnet import LRPGraph
from isnet.systems.sononet import AGSononet, AttentionGate, sononet_explainer, sononet_rules

from .helpers import gradient_times_input, relative_error

K = 3


def eval_model(dtype=torch.float64):
    """A small AG-Sononet with non-trivial batch-norm statistics, in eval mode."""
    model = AGSononet(in_channels=3, num_classes=K, width=4).to(dtype)
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64, dtype=dtype))  # train-mode pass updates the running statistics
    return model.eval()


def with_constant_attention(model):
    copied = copy.deepcopy(model)
    for gate in copied.gates:
        gate.detach_alpha = True
    return copied


@pytest.mark.parametrize("size", [32, 64])
def test_logits_shape(size):
    model = AGSononet(in_channels=1, num_classes=5, width=4)
    assert model(torch.rand(2, 1, size, size)).shape == (2, 5)


def test_block_structure_is_vgg16_like():
    model = AGSononet(in_channels=3, num_classes=2, width=4)
    convs = [[m.out_channels for m in block if isinstance(m, torch.nn.Conv2d)] for block in model.blocks]
    assert convs == [[4, 4], [8, 8], [16, 16, 16], [32, 32, 32], [32, 32, 32]]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.blocks.modules()) == 13


def test_attention_maps_shapes_and_range():
    model = eval_model(torch.float32)
    maps = model.attention_maps(torch.rand(2, 3, 64, 64))
    assert [tuple(a.shape) for a in maps] == [(2, 1, 16, 16), (2, 1, 8, 8)]
    for alpha in maps:
        assert ((alpha > 0) & (alpha < 1)).all()


def test_gate_multiplies_its_input_by_the_coefficients():
    gate = AttentionGate(x_channels=6, g_channels=10, inter_channels=3)
    x, g = torch.randn(2, 6, 8, 8), torch.randn(2, 10, 3, 3)
    alpha = gate.coefficients(x, g)
    assert alpha.shape == (2, 1, 8, 8)
    assert torch.allclose(gate(x, g), alpha * x)


def test_rejects_wrong_inputs_and_settings():
    model = AGSononet(in_channels=3, num_classes=2, width=4)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="at least 16x16"):
        model(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="aggregation"):
        AGSononet(3, 2, aggregation="mean")


def test_explainer_heatmaps():
    model = eval_model(torch.float32)
    x = torch.rand(2, 3, 64, 64)
    logits, heatmaps = sononet_explainer(model)(x)
    assert logits.shape == (2, K)
    assert heatmaps.shape == (2, K, 3, 64, 64)
    assert torch.isfinite(heatmaps).all()
    assert heatmaps.abs().sum() > 0
    assert not heatmaps.requires_grad
    with torch.no_grad():
        assert torch.allclose(logits, model(x))


def test_lrp0_equals_gradient_times_input_with_constant_attention():
    """The gate rule's defining identity: LRP-0 = Gradient*Input of the network with alpha detached."""
    model = eval_model()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    logits, heatmaps = LRPGraph(model, epsilon=0.0, zb=False, rules=sononet_rules())(x)
    reference = gradient_times_input(with_constant_attention(model), x)
    with torch.no_grad():
        assert torch.allclose(logits, model(x))
    assert reference.abs().max() > 0
    assert relative_error(heatmaps, reference) < 1e-9
    # The comparison can fail: with alpha's own gradient the two differ.
    assert relative_error(heatmaps, gradient_times_input(model, x)) > 1e-7


def test_detach_alpha_changes_only_gradients():
    model = eval_model()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model(x), with_constant_attention(model)(x))


def test_training_step_reaches_all_parameters():
    model = AGSononet(in_channels=3, num_classes=K, width=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = F.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    optimizer.step()


def test_heatmaps_are_differentiable_for_a_heatmap_loss():
    """The rule keeps the graph differentiable, as the ISNet's heatmap loss needs."""
    model = AGSononet(in_channels=3, num_classes=K, width=4)
    graph = LRPGraph(model, rules=sononet_rules())
    _, heatmaps = graph(torch.rand(2, 3, 32, 32))
    heatmaps.abs().sum().backward()
    assert model.blocks[0][0].weight.grad.abs().sum() > 0
    assert model.gate3.psi.weight.grad.abs().sum() > 0  # alpha scales the activations that the rules reuse
