"""U-Net and the multi-task U-Net (Appendix B.1)."""

import pytest
import torch
import torch.nn.functional as F

from isnet import LRPGraph, explain
from isnet.systems.unet import MultiTaskUNet, UNet

from .helpers import gradient_times_input, relative_error


def trained_multitask(depth=2, **kwargs):
    """A small multi-task U-Net with non-trivial batch-norm statistics, in eval mode, float64."""
    model = MultiTaskUNet(3, 3, width=4, depth=depth, hidden=16, **kwargs).double()
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32, dtype=torch.float64))  # train-mode pass updates the running statistics
    return model.eval()


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_unet_output_has_input_size(depth, batch_norm):
    model = UNet(in_channels=3, out_channels=2, width=4, depth=depth, batch_norm=batch_norm)
    x = torch.rand(2, 3, 32, 48)
    assert model(x).shape == (2, 2, 32, 48)


def test_unet_batch_norm_follows_each_3x3_conv():
    plain = UNet(width=4, depth=2)
    normed = UNet(width=4, depth=2, batch_norm=True)
    convs = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in normed.modules())
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in normed.modules())
    assert convs == norms == 2 * (2 * 2 + 1)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())


def test_unet_channels_per_level():
    model = UNet(in_channels=1, width=4, depth=3)
    bottleneck, skips = model.encoder(torch.rand(1, 1, 16, 16))
    assert [s.shape[1:] for s in skips] == [(4, 16, 16), (8, 8, 8), (16, 4, 4)]
    assert bottleneck.shape[1:] == (32, 2, 2)


@pytest.mark.parametrize("size", [(30, 32), (32, 36)])
def test_unet_rejects_sizes_not_divisible_by_two_to_the_depth(size):
    with pytest.raises(ValueError, match=r"divisible by 2\*\*depth = 8"):
        UNet(width=4, depth=3)(torch.rand(1, 3, *size))


def test_unet_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        UNet(in_channels=3, width=4, depth=2)(torch.rand(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        MultiTaskUNet(1, 2, width=4, depth=2, hidden=8).classifier(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("depth", [2, 4])
def test_multitask_returns_logits_and_segmentation(depth):
    model = MultiTaskUNet(in_channels=1, num_classes=5, width=4, depth=depth, hidden=16)
    logits, segmentation = model(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, 5)
    assert segmentation.shape == (2, 1, 32, 32)


def test_multitask_has_batch_norm_after_every_3x3_conv():
    model = MultiTaskUNet(3, 2, width=4, depth=2, hidden=8)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 10


def test_classifier_matches_full_forward_in_eval_mode():
    model = trained_multitask()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(model.classifier(x), model(x)[0])


def test_classifier_shares_parameters_and_adds_no_state():
    model = MultiTaskUNet(3, 2, width=4, depth=2, hidden=8)
    full = {id(p) for p in model.parameters()}
    assert {id(p) for p in model.classifier.parameters()} <= full
    assert not any(k.startswith("classifier") for k in model.state_dict())
    x = torch.rand(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        before = model.classifier(x)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logits, segmentation = model(x)
    (F.cross_entropy(logits, torch.tensor([0, 1])) + segmentation.mean()).backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model.classifier(x), before)


@pytest.mark.parametrize("depth", [2, 4])
def test_classifier_lrp0_equals_gradient_times_input(depth):
    """Appendix H: LRP-0 of the classification path is Gradient*Input."""
    model = trained_multitask(depth)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    heatmaps = explain(model.classifier.eval(), x, epsilon=0.0, zb=False)
    reference = gradient_times_input(model.classifier, x)
    assert heatmaps.shape == (2, 3, 3, 32, 32)
    assert reference.abs().max() > 0
    assert relative_error(heatmaps, reference) < 1e-6


def test_classifier_explained_with_default_rules():
    model = trained_multitask().float()
    x = torch.rand(2, 3, 32, 32)
    logits, heatmaps = LRPGraph(model.classifier)(x)
    assert logits.shape == (2, 3)
    assert heatmaps.shape == (2, 3, 3, 32, 32)
    assert torch.isfinite(heatmaps).all()


def test_unet_learns_a_tiny_segmentation_task():
    """Segment a bright 6x6 square in noise: 30 SGD steps at least halve the BCE loss."""
    torch.manual_seed(0)
    target = torch.zeros(8, 1, 16, 16)
    for i in range(8):
        row, col = torch.randint(0, 10, (2,)).tolist()
        target[i, :, row : row + 6, col : col + 6] = 1
    x = 0.6 * target + 0.4 * torch.rand(8, 1, 16, 16)
    model = UNet(in_channels=1, out_channels=1, width=8, depth=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
