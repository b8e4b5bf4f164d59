"""The plan's passes ask the rules what they can do, so a user's rule takes part on the same terms."""

import torch
import torch.nn.functional as F
from torch import nn

from isnet import LRPGraph
from isnet.lrp import Concat, PassThrough, epsilon_composite, passes


class Gate(nn.Module):
    """A custom element-wise gate (e.g. a clipped ReLU)."""

    def forward(self, x):
        return x.clamp(min=0)


class GateRule(PassThrough):
    """A user's rule that hands relevance on unchanged, and says so through ``passes_relevance``."""

    def __init__(self):
        super().__init__(lambda x: x.clamp(min=0))


class NormGateConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.gate, self.conv2, self.gate2 = Gate(), nn.Conv2d(4, 4, 3, padding=1), Gate()
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        a = self.norm(F.relu(self.conv1(x)))  # a lone norm ...
        b = self.conv2(self.gate(a))  # ... that conv2 absorbs through the gate
        return self.fc(F.max_pool2d(self.gate2(b), 2).flatten(1))  # the pool divides by conv2's z


def _flags(graph):
    steps = graph._steps.values()
    return ([s.absorbed.target for s in steps if s.absorbed is not None],
            [s.scaled_by.target for s in steps if s.scaled_by is not None])


def test_a_user_gate_takes_part_in_the_norm_and_max_pool_passes(monkeypatch):
    torch.manual_seed(0)
    net = NormGateConv().double().eval()
    with torch.no_grad():
        net.norm.running_mean.uniform_(-0.3, 0.3)
    composite = epsilon_composite().with_rules({Gate: lambda ctx: GateRule()})
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    optimised = LRPGraph(net, rule=composite)
    assert _flags(optimised) == (["norm"], ["conv2"])  # both passes look through the user's gate
    monkeypatch.setattr(passes, "_divide_at_max_pools", lambda plan: None)
    monkeypatch.setattr(passes, "_absorb_lone_norms", lambda plan: None)
    plain = LRPGraph(net, rule=composite)
    assert _flags(plain) == ([], [])
    h1, h0 = optimised(x)[1], plain(x)[1]
    assert h0.abs().max() > 0 and (h1 - h0).abs().max() <= 1e-12 * h0.abs().max()


def test_a_concatenation_subclass_is_not_merged():
    class MyConcat(Concat):
        pass

    class Dense(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 2, 1), nn.Conv2d(5, 2, 1), nn.Linear(7 * 4, 2)

        def forward(self, x):
            f = self.a(x)
            g = self.b(torch.cat([x, f], 1))
            return self.fc(torch.cat([x, f, g], 1).flatten(1))

    merged = [s.rule.merged for s in LRPGraph(Dense())._steps.values() if isinstance(s.rule, Concat)]
    assert sorted(merged) == [1, 2]
    assert Concat("x").merge_prefix(2).merged == 2 and MyConcat("x").merge_prefix(2) is None
