import pytest
import torch
from torch import nn

from isnet.systems.vit import (
    PRESETS,
    attention_rollout,
    build_vit,
    class_token_map,
    forward_with_attention,
    rollout,
    rollout_explainer,
)


def _tiny(num_classes: int = 3, in_channels: int = 3, **overrides) -> nn.Module:
    model = build_vit(num_classes, 64, preset="tiny", in_channels=in_channels, **overrides)
    # torchvision starts the head at zero, which would make any logits comparison trivial.
    nn.init.normal_(model.heads.head.weight)
    nn.init.normal_(model.heads.head.bias)
    return model.eval()


# -- building -------------------------------------------------------------------------


def test_tiny_preset_logits():
    model = build_vit(5, 64)
    assert model.patch_size == PRESETS["tiny"]["patch_size"]
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_b16_preset_is_vit_b16():
    model = build_vit(2, 32, preset="b16")
    assert model.patch_size == 16 and model.hidden_dim == 768 and model.mlp_dim == 3072
    assert len(model.encoder.layers) == 12
    assert model.encoder.layers[0].self_attention.num_heads == 12
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_one_channel_and_overrides():
    model = build_vit(4, 32, in_channels=1, patch_size=4, num_layers=2, hidden_dim=32, num_heads=2)
    assert model.conv_proj.in_channels == 1 and model.conv_proj.kernel_size == (4, 4)
    assert len(model.encoder.layers) == 2 and model.hidden_dim == 32
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 4)


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 60}, "patch size"),
    ({"num_heads": 5}, "num_heads"),
    ({"preset": "huge"}, "preset"),
    ({"in_channels": 0}, "in_channels"),
    ({"num_classes": 0}, "num_classes"),
    ({"dropout": 1.0}, "dropout"),
])  # fmt: skip
def test_build_errors(kwargs, match):
    args = {"num_classes": 2, "image_size": 64} | kwargs
    with pytest.raises(ValueError, match=match):
        build_vit(**args)


def test_unknown_setting():
    with pytest.raises(TypeError, match="depth"):
        build_vit(2, 64, depth=3)


# -- forward with attention -----------------------------------------------------------


@pytest.mark.parametrize("in_channels", [3, 1])
@pytest.mark.parametrize("grad", [False, True])
def test_logits_equal_model_forward(in_channels, grad):
    model = _tiny(in_channels=in_channels)
    x = torch.randn(2, in_channels, 64, 64)
    with torch.set_grad_enabled(grad):
        expected = model(x)
        logits, maps = attention_rollout(model, x)
    assert torch.equal(logits, expected)
    assert maps.shape == (2, 1, 64, 64)


def test_attentions_are_row_stochastic():
    model = _tiny()
    with torch.no_grad():
        _, attentions = forward_with_attention(model, torch.randn(2, 3, 64, 64))
    assert len(attentions) == 4
    for a in attentions:
        assert a.shape == (2, 65, 65)
        assert (a >= 0).all()
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 65))


@pytest.mark.parametrize("x, match", [
    (torch.randn(3, 64, 64), "B, C, H, W"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.long), "floating"),
    (torch.randn(1, 1, 64, 64), "3-channel"),
    (torch.randn(1, 3, 32, 32), "64x64"),
])  # fmt: skip
def test_input_errors(x, match):
    with pytest.raises(ValueError, match=match):
        attention_rollout(_tiny(), x)


# -- rollout --------------------------------------------------------------------------


def test_rollout_hand_computed_product():
    a1 = torch.tensor([[0.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    a2 = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # (0.5 a2 + 0.5 I) @ (0.5 a1 + 0.5 I), worked out by hand.
    expected = torch.tensor([[0.25, 0.125, 0.625], [0.25, 0.625, 0.125], [0.0, 0.5, 0.5]])
    torch.testing.assert_close(rollout([a1, a2]), expected)
    torch.testing.assert_close(rollout([a1[None], a2[None]]), expected[None])


def test_rollout_discard_keeps_class_token_and_renormalises():
    a = torch.tensor([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
    # The two lowest patch weights (0.1 and 0.2) go; 0.1 to the class token stays.
    expected = torch.tensor([[11 / 18, 0.0, 7 / 18], [6 / 19, 13 / 19, 0.0], [0.15, 0.15, 0.7]])
    torch.testing.assert_close(rollout([a], discard_ratio=0.34), expected)


def test_class_token_attending_one_patch():
    # The class token looks only at the second patch of a 1x2 grid.
    a = torch.tensor([[[0.0, 0.0, 1.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]])
    torch.testing.assert_close(class_token_map(rollout([a]), (1, 2)), torch.tensor([[[[0.0, 1.0]]]]))


def test_rollout_errors():
    with pytest.raises(ValueError, match="at least one"):
        rollout([])
    with pytest.raises(ValueError, match="discard_ratio"):
        rollout([torch.eye(3)], discard_ratio=1.0)
    with pytest.raises(ValueError, match="T, T"):
        rollout([torch.ones(2, 3)])


def test_patch_maps_sum_to_one_and_upsampled_maps_non_negative():
    model = _tiny()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        _, attentions = forward_with_attention(model, x)
        for ratio in (0.0, 0.5):
            joint = rollout(attentions, discard_ratio=ratio)
            torch.testing.assert_close(joint.sum(-1), torch.ones(3, 65))
            grid = class_token_map(joint, (8, 8))
            assert grid.shape == (3, 1, 8, 8) and (grid >= 0).all()
            torch.testing.assert_close(grid.sum((1, 2, 3)), torch.ones(3))
            _, maps = attention_rollout(model, x, discard_ratio=ratio)
            assert maps.shape == (3, 1, 64, 64) and (maps >= 0).all()


def test_uniform_attention_gives_uniform_map():
    model = _tiny()
    with torch.no_grad():
        for block in model.encoder.layers:
            attn = block.self_attention
            e = attn.embed_dim
            attn.in_proj_weight[: 2 * e].zero_()  # queries and keys
            attn.in_proj_bias[: 2 * e].zero_()
        _, maps = attention_rollout(model, torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(maps, torch.full((2, 1, 64, 64), 1 / 64))


def test_hand_built_model_class_token_attends_one_patch():
    # One layer, one head, 4-d tokens, a 2x2 grid of patches.  The tokens are the
    # position embeddings alone, chosen with zero mean and unit variance so that
    # LayerNorm leaves them (almost) unchanged.  The query of the class token (a)
    # meets only the key of the patch at row 1, column 0 (b).
    model = build_vit(2, 16, patch_size=8, num_layers=1, num_heads=1, hidden_dim=4, mlp_dim=4).eval()
    a = torch.tensor([1.0, -1.0, 1.0, -1.0])
    b = torch.tensor([1.0, 1.0, -1.0, -1.0])
    c = torch.tensor([1.0, -1.0, -1.0, 1.0])
    e1 = torch.tensor([1.0, 0.0, 0.0, 0.0])
    with torch.no_grad():
        model.conv_proj.weight.zero_()
        model.conv_proj.bias.zero_()
        model.class_token.zero_()
        model.encoder.pos_embedding.copy_(torch.stack([a, c, c, b, c])[None])
        attn = model.encoder.layers[0].self_attention
        attn.in_proj_weight[:4] = 1000 * torch.outer(e1, a) / 4
        attn.in_proj_weight[4:8] = torch.outer(e1, b) / 4
        attn.in_proj_bias.zero_()
        x = torch.randn(1, 3, 16, 16)
        _, attentions = forward_with_attention(model, x)
        torch.testing.assert_close(attentions[0][0, 0], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0]))
        grid = class_token_map(rollout(attentions), (2, 2))
        torch.testing.assert_close(grid, torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]]]))
        _, maps = attention_rollout(model, x)
    assert maps[0, 0, 8:, :8].mean() > 4 * maps[0, 0, :8].mean()
    assert maps[0, 0, 8:, :8].mean() > 4 * maps[0, 0, 8:, 8:].mean()


# -- explainer ------------------------------------------------------------------------


def test_explainer_shapes_and_class_agnostic_maps():
    model = _tiny(num_classes=3).train()
    explain = rollout_explainer(model)
    x = torch.randn(2, 3, 64, 64)
    logits, heatmaps = explain(x)
    assert model.training  # the mode is left as it is
    assert logits.shape == (2, 3) and heatmaps.shape == (2, 3, 1, 64, 64)
    assert not heatmaps.requires_grad and not logits.requires_grad
    for k in range(1, 3):
        assert torch.equal(heatmaps[:, k], heatmaps[:, 0])
    model.eval()
    with torch.no_grad():
        expected_logits, maps = attention_rollout(model, x)
    logits, heatmaps = rollout_explainer(model)(x)
    assert torch.equal(logits, expected_logits) and torch.equal(heatmaps[:, 0], maps)
