"""Rules as data: composites choose each operation's rule, first match wins, and a user's rule
is honoured for every layer type, a convolution followed by batch norm included."""

import operator

import pytest
import torch
from torch import nn

from isnet import LRPGraph, UnsupportedOperationError, explain
from isnet.lrp import (
    FIRST_LAYER,
    Add,
    AffineLayer,
    Composite,
    Epsilon,
    Exactly,
    ZBox,
    ZPlus,
    epsilon_composite,
    zplus_composite,
)


def conv_bn_net():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
    ).double().eval()


def rules_by_module(graph):
    """``{module name: rule}``, a fused layer + norm under the layer's name."""
    return {step.call_node.target: step.rule for step in graph._steps.values() if step.call_node.op == "call_module"}


class Marked(Epsilon):
    """LRP-epsilon with its own stabiliser: a stand-in for a user's rule."""


def test_presets_give_the_paper_rules_and_zplus():
    eps = rules_by_module(LRPGraph(conv_bn_net()))
    assert type(eps["0"]) is ZBox and type(eps["3"]) is Epsilon and type(eps["7"]) is Epsilon
    assert eps["0"].layer.norm is not None and eps["3"].layer.norm is not None  # batch norms fused
    zplus = rules_by_module(LRPGraph(conv_bn_net(), rule="zplus"))
    assert type(zplus["0"]) is ZBox and type(zplus["3"]) is ZPlus and type(zplus["7"]) is ZPlus
    no_zb = rules_by_module(LRPGraph(conv_bn_net(), rule="zplus", zb=False))
    assert type(no_zb["0"]) is ZPlus  # the first layer's entry gives no rule without zB: the next one decides


def test_a_user_rule_for_a_convolution_followed_by_batch_norm_is_honoured():
    composite = epsilon_composite().with_rules({nn.Conv2d: lambda ctx: Marked(ctx.layer, 0.5)})
    graph = LRPGraph(conv_bn_net(), rule=composite, zb=False)
    rules = rules_by_module(graph)
    assert type(rules["0"]) is Marked and type(rules["3"]) is Marked  # also the first layer: first match wins
    assert rules["3"].layer.norm is graph.model[4] and rules["0"].layer.norm is graph.model[1]  # fused
    assert rules["3"].epsilon == 0.5
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    assert not torch.allclose(graph(x)[1], explain(graph.model, x, zb=False))


def test_a_legacy_rule_for_a_convolution_is_honoured_and_the_norm_keeps_its_own_rule():
    """``rules={type: factory(module, epsilon)}`` builds rules for the layer alone: the norm after
    it is then a lone norm (before, the fusion ignored such a rule)."""
    made = []

    def factory(module, epsilon):
        made.append(module)
        return Marked(AffineLayer(module, None), epsilon)

    net = conv_bn_net()
    graph = LRPGraph(net, rules={nn.Conv2d: factory}, zb=False)
    rules = rules_by_module(graph)
    assert type(rules["0"]) is Marked and type(rules["3"]) is Marked
    assert type(rules["1"]) is Epsilon and rules["1"].layer.layer is None  # the lone norm
    assert net[0] in made and net[3] in made
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    assert torch.isfinite(graph(x)[1]).all()


def test_first_match_wins_and_a_factory_may_pass():
    passed = []

    def undecided(ctx):
        passed.append((ctx.where, ctx.first))

    composite = Composite([(nn.Linear, undecided), (nn.Linear, lambda ctx: ZPlus(ctx.layer, 0.0)),
                           (nn.Linear, lambda ctx: Epsilon(ctx.layer, 0.0))], name="mine")
    layer = nn.Linear(4, 2)
    graph = LRPGraph(layer, rule=composite, zb=False)
    assert [type(s.rule) for s in graph._steps.values()] == [ZPlus]
    # asked once, and again as the layer that takes the image
    assert passed == [("module '0' (Linear)", False), ("module '0' (Linear)", True)]


def test_first_layer_entry_sees_the_layer_that_takes_the_image():
    firsts = []

    def record(ctx):
        firsts.append(ctx.node.target)

    LRPGraph(conv_bn_net(), rule=epsilon_composite().with_rules([(FIRST_LAYER, record)]))
    assert firsts == ["0"]


def test_function_and_method_keys():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3 * 16, 2)

        def forward(self, x):
            h = self.conv(x)
            return self.fc(torch.flatten(h + x, 1).add(0.0))

    composite = epsilon_composite().with_rules([(operator.add, lambda ctx: Add(0.7, ctx.where))])
    graph = LRPGraph(Skip(), rule=composite)
    adds = {s.call_node.op: s.rule.epsilon for s in graph._steps.values() if isinstance(s.rule, Add)}
    assert adds == {"call_function": 0.7, "call_method": 0.01}  # h + x is operator.add; .add the method


def test_built_in_entries_match_exact_types_only():
    class MyConv(nn.Conv2d):
        def forward(self, x):
            return super().forward(x) * 2

    net = nn.Sequential(MyConv(3, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 2))
    with pytest.raises(UnsupportedOperationError, match="MyConv"):
        LRPGraph(net)
    graph = LRPGraph(net, rule=epsilon_composite().with_rules({MyConv: lambda ctx: Marked(ctx.layer, 0.01)}))
    assert type(rules_by_module(graph)["0"]) is Marked
    assert "Conv2d" in repr(Exactly(nn.Conv2d)) and "epsilon" in repr(epsilon_composite())


def test_bad_composites_are_rejected():
    with pytest.raises(ValueError, match="'epsilon', 'zplus'"):
        LRPGraph(conv_bn_net(), rule="lrp-gamma")
    with pytest.raises(TypeError, match="factory"):
        Composite([(nn.Conv2d, "not callable")])
    with pytest.raises(TypeError, match="module types"):
        LRPGraph(conv_bn_net(), rules={"Conv2d": lambda m, e: None})


def test_zplus_composite_keeps_lone_norms_under_epsilon():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(4), nn.Flatten(),
                        nn.Linear(4 * 2 * 2, 2))
    rules = rules_by_module(LRPGraph(net, rule=zplus_composite()))
    assert type(rules["3"]) is Epsilon and rules["3"].layer.layer is None
    assert type(rules["5"]) is ZPlus


def test_a_rule_that_does_not_say_it_fuses_gets_the_layer_without_the_norm():
    """A user's rule built on ``ctx.layer`` that does not override ``Rule.fuses`` is asked for
    again with the layer alone: the norm runs once, under its own rule."""

    class Plain(Epsilon):
        def fuses(self, norm):
            return False

    net = conv_bn_net()
    graph = LRPGraph(net, rule=epsilon_composite().with_rules({nn.Conv2d: lambda ctx: Plain(ctx.layer, 0.01)}),
                     zb=False)
    rules = rules_by_module(graph)
    assert rules["0"].layer.norm is None and rules["3"].layer.norm is None
    assert rules["1"].layer.layer is None and rules["1"].layer.norm is net[1]
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    logits, heatmaps = graph(x)
    torch.testing.assert_close(logits, net(x), rtol=0, atol=0)  # each norm ran once
    # Unfused, a norm is a lone per-channel layer: at epsilon = 0 the heatmaps are still Gradient*Input.
    h0 = LRPGraph(net, rule=epsilon_composite().with_rules({nn.Conv2d: lambda ctx: Plain(ctx.layer, 0.0)}),
                  epsilon=0.0, zb=False)(x)[1]
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(net(xg)[:, 1].sum(), xg)[0]
    torch.testing.assert_close(h0[:, 1], (x * grad), rtol=1e-10, atol=1e-12)
