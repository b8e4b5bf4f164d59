"""The ISNet module: plain backbone outputs, heatmaps on request, nothing left on the backbone."""

import copy
import pickle

import pytest
import torch
import torchvision
from torch import nn

from isnet import ISNet, UnsupportedOperationError, explain
from isnet.backbones import build_backbone


def make(name="resnet18"):
    return ISNet(getattr(torchvision.models, name)(weights=None, num_classes=3)).eval()


def test_forward_returns_backbone_logits_and_heatmaps_on_request():
    net = make()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(net(x), net.backbone(x))
    logits, heatmaps = net(x, heatmaps=True)
    torch.testing.assert_close(logits, net.backbone(x))
    assert heatmaps.shape == (2, 3, 3, 32, 32)
    torch.testing.assert_close(heatmaps, explain(net.backbone, x))
    assert net(x, heatmaps=True, classes=[1])[1].shape == (2, 1, 3, 32, 32)


def test_backbone_is_untouched_and_parameters_registered_once():
    backbone = torchvision.models.densenet121(weights=None, num_classes=3)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    net = ISNet(backbone).eval()
    net(torch.rand(1, 3, 32, 32), heatmaps=True)
    assert net.backbone is backbone
    for module in backbone.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    assert set(net.state_dict()) == {f"backbone.{k}" for k in before}
    assert len(list(net.parameters())) == len(list(backbone.parameters()))


def test_copy_and_pickle_give_an_independent_working_isnet():
    net = make()
    x = torch.rand(1, 3, 32, 32)
    expected = net(x, heatmaps=True)[1]
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        torch.testing.assert_close(clone(x, heatmaps=True)[1], expected)
        with torch.no_grad():
            next(clone.backbone.parameters()).mul_(3)
        assert not torch.allclose(clone(x, heatmaps=True)[1], expected)
    torch.testing.assert_close(net(x, heatmaps=True)[1], expected)


def test_moving_the_isnet_moves_the_heatmaps():
    net = make("vgg11").double()
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    assert net(x, heatmaps=True)[1].dtype == torch.float64


def _background_share_problem(seed: int):
    """A small ISNet in float64 (no batch norm), four random images with a centred square mask, and the
    background's share of |relevance| as a differentiable function of the weights."""
    torch.manual_seed(seed)
    net = ISNet(build_backbone("small_cnn", 2, width=8, batch_norm=False)).double().train()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    mask = torch.zeros(4, 1, 1, 32, 32, dtype=torch.float64)
    mask[..., 8:24, 8:24] = 1

    def background_share() -> torch.Tensor:
        h = net(x, heatmaps=True)[1].abs()
        return (h * (1 - mask)).sum() / h.sum()

    return net, background_share


def test_training_steps_move_relevance_out_of_the_background():
    """Gradient descent on the heatmaps trains the backbone: the background's share of |relevance| falls.
    Float64 and a learning rate far from chaotic, on several seeds, so that the assertion does not depend
    on the order of floating-point sums (a property of the method, not of one trajectory)."""
    ratios = []
    for seed in range(5):
        net, share = _background_share_problem(seed)
        optimiser = torch.optim.SGD(net.parameters(), lr=0.03)
        start = share().item()
        for _ in range(30):
            loss = share()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        end = share().item()
        assert end < start, f"seed {seed}: share {start:.3f} -> {end:.3f}"
        ratios.append(end / start)
    assert sum(ratios) / len(ratios) < 0.85, ratios


def test_explain_accepts_an_isnet():
    net = make()
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(explain(net, x, epsilon=0.1), explain(net.backbone, x, epsilon=0.1))


def test_replaced_backbone_modules_are_picked_up():
    """A layer swapped after the ISNet was built (as training frameworks do) is used by the heatmaps."""
    net = make()
    x = torch.rand(2, 3, 32, 32)
    net.eval()
    old = net(x, heatmaps=True)[1]
    first = net.backbone.conv1
    net.backbone.conv1 = nn.Conv2d(first.in_channels, first.out_channels, 7, stride=2, padding=3, bias=False)
    logits, heatmaps = net(x, heatmaps=True)
    torch.testing.assert_close(logits, net.backbone(x))
    assert not torch.allclose(heatmaps, old)


def test_sync_batch_norm_gets_a_clear_error():
    net = make()
    net.backbone = nn.SyncBatchNorm.convert_sync_batchnorm(net.backbone)
    with pytest.raises(UnsupportedOperationError, match="SyncBatchNorm.*sync_batchnorm=False"):
        net(torch.rand(2, 3, 32, 32), heatmaps=True)


def test_per_image_classes_rules_and_several_composites_through_the_isnet():
    net = ISNet(build_backbone("small_cnn", 3)).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    _, full = net(x, heatmaps=True)
    labels = torch.tensor([[2], [0]])
    _, own = net(x, heatmaps=True, classes=labels)
    assert own.shape == (2, 1, 3, 32, 32)
    assert (own[:, 0] - full[[0, 1], [2, 0]]).abs().max() <= 1e-12 * full.abs().max()
    zplus = ISNet(net.backbone, rule="zplus").eval()
    torch.testing.assert_close(zplus(x, heatmaps=True)[1], explain(net.backbone, x, rule="zplus"))
    both = ISNet(net.backbone, rule=["epsilon", "zplus"], epsilon=0.1).eval()
    _, (a, b) = both(x, heatmaps=True, classes=labels)
    torch.testing.assert_close(a, explain(net.backbone, x, epsilon=0.1, classes=labels))
    torch.testing.assert_close(b, explain(net.backbone, x, epsilon=0.1, classes=labels, rule="zplus"))
    clone = pickle.loads(pickle.dumps(both))
    torch.testing.assert_close(clone(x, heatmaps=True, classes=labels)[1][1], b)


def test_an_isnet_pickled_with_loose_settings_still_loads():
    """ISNets pickled before LRPSettings kept the settings as a dict."""
    net = ISNet(build_backbone("small_cnn", 3)).eval()
    state = net.__getstate__()
    del state["lrp_settings"], state["_rule"]
    state["_lrp_settings"] = {"epsilon": 0.2, "zb": False, "low": 0.0, "high": 1.0}
    old = ISNet.__new__(ISNet)
    old.__setstate__(state)
    assert old.lrp_settings.epsilon == 0.2 and not old.lrp_settings.zb
    x = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(old(x, heatmaps=True)[1], explain(net.backbone, x, epsilon=0.2, zb=False))
