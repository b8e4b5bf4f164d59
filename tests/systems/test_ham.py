"""HAM: hierarchical probabilities, attention losses, lesion masks, learning, errors."""

import pytest
import torch

from isnet.systems.ham import ForegroundAttention, HAMModule, adaptive_mse, hierarchical_log_probs
from isnet.systems.registry import build_system

from .helpers import loss_drops, tiny_batch

CLASSES = ["ground_glass", "normal", "opacity"]


def _batch():
    batch = tiny_batch(n=6)
    batch["label"] = torch.tensor([0, 1, 2, 0, 1, 2])
    lesion = torch.zeros(6, 1, 16, 16)
    lesion[[0, 2, 3, 5], :, 5:9, 5:9] = 1.0  # abnormal images have lesions inside the foreground
    batch["lesion"] = lesion
    return batch


def test_hierarchical_probabilities():
    a = torch.tensor([0.3, -2.0])
    b = torch.tensor([[1.0, -1.0], [0.0, 2.0]])
    logp = hierarchical_log_probs(a, b, normal_index=1)
    p = logp.exp()
    torch.testing.assert_close(p.sum(1), torch.ones(2))
    torch.testing.assert_close(p[:, 1], 1 - torch.sigmoid(a))
    torch.testing.assert_close(p[:, [0, 2]], torch.sigmoid(a).unsqueeze(1) * torch.softmax(b, 1))


def test_adaptive_mse_balances_lesion_and_background():
    maps = torch.zeros(1, 1, 2, 2)
    lesion = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    # inside: (0-1)^2 averaged over 1 pixel = 1; outside: 0 -> 1 (plain MSE would give 0.25)
    assert float(adaptive_mse(maps, lesion)) == pytest.approx(1.0)
    maps[0, 0, 1, 1] = 1.0
    assert float(adaptive_mse(maps, lesion)) == pytest.approx(1.0 + 1 / 3)


def test_foreground_attention_gates():
    fab = ForegroundAttention(8)
    x = torch.rand(2, 8, 4, 4)
    c, s = fab.gates(x)
    assert c.shape == (2, 8, 1, 1) and s.shape == (2, 1, 4, 4)
    assert ((c > 0) & (c < 1)).all() and ((s > 0) & (s < 1)).all()
    torch.testing.assert_close(fab(x), x * c * s)


def test_losses_learning_and_heatmaps():
    torch.manual_seed(0)
    module = build_system("ham", 3, backbone="small_cnn", arch_kwargs={"width": 8, "batch_norm": False},
                          class_names=CLASSES)
    batch = _batch()
    parts, logits = module.losses(batch)
    assert set(parts) == {"loss", "L_C", "L_bound", "L_union", "L_amse"}
    assert float(parts["L_amse"]) > 0 and torch.isfinite(parts["loss"])
    module.eval()
    torch.testing.assert_close(logits, module.deployed(batch["image"]))
    module.train()
    first, last = loss_drops(module, batch, steps=20)
    assert last < first
    module.eval()
    out, heatmaps = module.explainer()(batch["image"])
    assert out.shape == (6, 3) and heatmaps.shape == (6, 3, 3, 16, 16) and torch.isfinite(heatmaps).all()


def test_errors_are_named():
    with pytest.raises(ValueError, match="'normal' is not among the classes"):
        HAMModule("small_cnn", 2, class_names=["cat", "dog"])
    module = HAMModule("small_cnn", 3, arch_kwargs={"width": 4}, class_names=CLASSES)
    batch = _batch()
    del batch["lesion"]
    with pytest.raises(ValueError, match="HAM needs lesion masks"):
        module.losses(batch)
