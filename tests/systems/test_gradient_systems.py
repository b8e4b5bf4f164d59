"""RRR, ISNet Grad*Input and GAIN: explanation terms against their formulas, shapes, learning."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet.systems.gain import GAINModule, soft_mask
from isnet.systems.gradients import grad_cam, gradient_times_input, input_gradient
from isnet.systems.gradinput import GradInputISNetModule
from isnet.systems.rrr import RRRModule, right_reasons_loss

from .helpers import loss_drops, tiny_batch


def _linear(k=3, c=2, s=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, k)).double()


def test_input_gradient_of_summed_log_probabilities_is_analytic():
    model = _linear()
    x = torch.rand(5, 2, 4, 4, dtype=torch.float64)
    logits, grad = input_gradient(model, x, lambda z: F.log_softmax(z, 1).sum(1))
    W = model[1].weight  # (K, D)
    p = torch.softmax(logits, 1)
    expected = W.sum(0) - 3 * p @ W  # sum_k dz_k/dx - K sum_j p_j dz_j/dx
    torch.testing.assert_close(grad.flatten(1), expected)


def test_right_reasons_loss_formula():
    grad = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    assert float(right_reasons_loss(grad, mask)) == pytest.approx(4.0 + 9.0)


def test_gradient_times_input_of_a_linear_model_is_x_times_w():
    model = _linear()
    x = torch.rand(4, 2, 4, 4, dtype=torch.float64)
    logits, maps = gradient_times_input(model, x, 3)
    torch.testing.assert_close(logits, model(x))
    expected = x.unsqueeze(1) * model[1].weight.view(1, 3, 2, 4, 4)
    torch.testing.assert_close(maps, expected)
    with pytest.raises(ValueError, match="gives 3 logits, expected 4"):
        gradient_times_input(model, x, 4)


def test_grad_cam_and_soft_mask_formulas():
    A = torch.rand(2, 3, 4, 4, requires_grad=True)
    v = torch.tensor([1.0, -0.5, 2.0])
    score = (A * v.view(1, 3, 1, 1)).sum((1, 2, 3))  # d score / dA_c = v_c everywhere: alpha_c = v_c
    cam = grad_cam(A, score, (4, 4))
    raw = F.relu((A * v.view(1, 3, 1, 1)).sum(1, keepdim=True))
    torch.testing.assert_close(cam, raw / (raw.flatten(1).max(1).values.view(2, 1, 1, 1) + 1e-8))
    assert cam.requires_grad and float(cam.max()) == pytest.approx(1.0, abs=1e-6)
    t = soft_mask(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(t, torch.sigmoid(10 * (torch.tensor([0.0, 0.5, 1.0]) - 0.5)))


def test_gain_loss_parts_follow_their_definitions():
    module = GAINModule("small_cnn", 3, arch_kwargs={"width": 4, "batch_norm": False})
    batch = tiny_batch(n=4)
    parts, logits = module.losses(batch)
    # recompute with the same pieces: Grad-CAM of the true class, erase, re-classify
    feats = []
    h = module.cam_layer.register_forward_hook(lambda m, i, o: feats.append(o))
    out = module.backbone(batch["image"])
    h.remove()
    cam = grad_cam(feats[0], out.gather(1, batch["label"].view(-1, 1)).squeeze(1), (16, 16))
    erased = batch["image"] - soft_mask(cam) * batch["image"]
    p = torch.softmax(module.backbone(erased), 1).gather(1, batch["label"].view(-1, 1)).mean()
    mse = (cam - batch["mask"]).pow(2).mean()
    assert float(parts["L_am"]) == pytest.approx(float(p), rel=1e-5)
    assert float(parts["L_e"]) == pytest.approx(float(mse), rel=1e-5)
    assert float(parts["loss"]) == pytest.approx(float(parts["L_C"] + parts["L_am"] + 10 * parts["L_e"]), rel=1e-5)
    assert logits.shape == (4, 3)


@pytest.mark.parametrize("multilabel", [False, True])
@pytest.mark.parametrize("cls, kwargs", [
    (RRRModule, {"lambda1": 10.0}),
    (GradInputISNetModule, {"P": 0.5, "d": 0.9, "C1": 0.01, "C2": 10.0}),
    (GAINModule, {}),
], ids=["rrr", "isnet_gi", "gain"])
def test_short_training_lowers_the_loss(cls, kwargs, multilabel):
    torch.manual_seed(0)
    module = cls("small_cnn", 3, arch_kwargs={"width": 8, "batch_norm": False}, multilabel=multilabel, **kwargs)
    batch = tiny_batch(multilabel=multilabel)
    first, last = loss_drops(module, batch)
    assert last < first
    parts, logits = module.losses(batch)
    assert logits.shape == (8, 3) and all(torch.isfinite(v) for v in parts.values())
    heatmaps = module.explainer()(batch["image"])[1]
    assert heatmaps.shape == (8, 3, 3, 16, 16)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="lambda1 must be >= 0"):
        RRRModule("small_cnn", 3, lambda1=-1.0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        GAINModule("small_cnn", 3, optimizer="rmsprop")
    with pytest.raises(ValueError, match="every training image needs foreground"):
        batch = tiny_batch(n=2)
        batch["mask"][0] = 0
        RRRModule("small_cnn", 3, arch_kwargs={"width": 4}).losses(batch)
