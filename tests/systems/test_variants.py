"""The Faster ISNet family: selective, stochastic and dual ISNets, and LRP deep supervision."""

import pytest
import torch
import torchvision

from isnet.backbones import SmallCNN
from isnet.systems.deep_supervision import pool_masks, supervised_layers
from isnet.systems.variants import VARIANTS, check_variant, draw_logits, explained


# -- which logits each variant explains --------------------------------------------------------------
def test_stochastic_draws_the_winner_about_half_of_the_time_and_the_others_uniformly():
    logits = torch.randn(4000, 5, generator=torch.Generator().manual_seed(3))
    winners = logits.argmax(1)
    drawn = draw_logits(logits, torch.Generator().manual_seed(0))[:, 0]
    assert drawn.shape == (4000,)
    won = (drawn == winners).float().mean().item()
    assert 0.46 < won < 0.54, won  # 1/2, with about 5 standard deviations of slack
    others = drawn[drawn != winners]
    rank = others - (others > winners[drawn != winners]).long()  # position among the other 4 classes
    counts = torch.bincount(rank, minlength=4).float() / len(others)
    assert counts.min() > 0.21 and counts.max() < 0.29, counts  # uniform over the other classes
    again = draw_logits(logits, torch.Generator().manual_seed(0))[:, 0]
    assert torch.equal(drawn, again)  # deterministic given the generator
    assert draw_logits(torch.randn(6, 1), torch.Generator()).eq(0).all()  # one class: always it


def test_each_variant_says_what_its_maps_explain():
    logits = torch.tensor([[0.2, 2.0, -1.0], [1.0, 0.0, 3.0]], requires_grad=True)
    assert explained("full") == {"classes": None}
    selective = explained("selective")["logit_weights"](logits)
    assert selective.shape == (2, 1, 3) and selective.requires_grad
    assert selective[0, 0, 1] > 0 and selective[1, 0, 2] > 0  # the highest logit by default
    assert explained("selective", selective_class="lowest")["logit_weights"](logits)[0, 0, 2] > 0
    for variant in ("stochastic", "dual"):
        classes = explained(variant, generator=torch.Generator().manual_seed(1))["classes"](logits)
        assert classes.shape == (2, 1) and classes.dtype == torch.long
    with pytest.raises(ValueError, match="random generator"):
        explained("stochastic")
    with pytest.raises(ValueError, match="selective_class must be one of"):
        explained("selective", selective_class="median")


def test_bad_variants_get_errors_naming_the_choices():
    assert VARIANTS == ("full", "selective", "stochastic", "dual")
    with pytest.raises(ValueError, match="choose one of full, selective, stochastic, dual"):
        check_variant("fast")
    with pytest.raises(ValueError, match="single-label"):
        check_variant("selective", multilabel=True)
    assert check_variant("stochastic", multilabel=True) == "stochastic"


# -- deep supervision --------------------------------------------------------------------------------
def test_supervised_layers_are_the_stage_outputs():
    assert supervised_layers(torchvision.models.resnet18(num_classes=2)) == ["layer1", "layer2", "layer3", "layer4"]
    assert supervised_layers(torchvision.models.densenet121(num_classes=2)) == [
        f"features.denseblock{i}" for i in range(1, 5)]
    assert supervised_layers(torchvision.models.vgg11(num_classes=2)) == [
        "features.2", "features.5", "features.10", "features.15", "features.20"]
    assert supervised_layers(SmallCNN(2, batch_norm=False)) == ["features.2", "features.5", "features.8"]
    with pytest.raises(ValueError, match="does not know the stages of Linear"):
        supervised_layers(torch.nn.Linear(2, 2))


def test_masks_are_pooled_so_that_any_foreground_pixel_makes_a_foreground_cell():
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 1, 1] = 1  # one pixel: its 4x4 cell is foreground
    masks[1, 0, 4:, :] = 0.7
    pooled = pool_masks(masks, (2, 2))
    assert pooled.shape == (2, 1, 2, 2)
    assert pooled[0, 0].tolist() == [[1, 0], [0, 0]]
    assert pooled[1, 0].tolist() == [[0, 0], [1, 1]]
    assert torch.equal(pool_masks(masks[:, 0] * 0.4 + 0.3, (8, 8)), (masks * 0.4 + 0.3 >= 0.5).float())
