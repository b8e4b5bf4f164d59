"""Running models over test sets: outputs, background attention from LRP heatmaps, thresholds."""

import numpy as np
import pytest
import torch
from torch import nn

from isnet.evaluation import (
    background_swap_test,
    collect_outputs,
    evaluate,
    example_heatmaps,
    explained_maps,
    lrp_explainer,
    pick_examples,
    validation_thresholds,
)
from isnet.data.swap import swap_plan
from isnet.lrp import LRPSettings
from tests.data.test_swap import Items, border_model, centre_model, coloured_set

NO_ZB = LRPSettings(zb=False)


def _left_half_model(num_classes=2):
    """A linear model that only looks at the left half of an 8x8 image."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
    with torch.no_grad():
        w = torch.zeros(num_classes, 1, 8, 8)
        w[:, :, :, :4] = torch.randn(num_classes, 1, 8, 4)
        model[1].weight.copy_(w.flatten(1))
        model[1].bias.zero_()
    return model


def test_attention_of_a_model_that_looks_only_at_the_left_half():
    images = torch.rand(6, 1, 8, 8) + 0.1
    left, right = torch.zeros(6, 1, 8, 8), torch.zeros(6, 1, 8, 8)
    left[..., :4] = 1
    right[..., 4:] = 1
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    model = _left_half_model()
    explain = lrp_explainer(model, LRPSettings(epsilon=0.0, zb=False))
    on_left = collect_outputs(model, Items(images, left, labels), explainer=explain, batch_size=4)
    on_right = collect_outputs(model, Items(images, right, labels), explainer=explain, batch_size=4)
    np.testing.assert_allclose(on_left.attention["background_share"], 0.0, atol=1e-6)
    np.testing.assert_allclose(on_right.attention["background_share"], 1.0, atol=1e-6)
    assert on_left.scores.shape == (6, 2)
    np.testing.assert_allclose(on_left.scores, model(images).detach().numpy(), rtol=1e-5)


def test_explained_maps_single_and_multilabel():
    h = torch.arange(2 * 3 * 1 * 2 * 2, dtype=torch.float).view(2, 3, 1, 2, 2)
    maps, owner = explained_maps(h, torch.tensor([2, 0]), multilabel=False)
    assert torch.equal(maps, torch.stack([h[0, 2], h[1, 0]])) and owner.tolist() == [0, 1]
    maps, owner = explained_maps(h, torch.tensor([[1.0, 0, 1], [0, 0, 0]]), multilabel=True)
    assert torch.equal(maps, torch.stack([h[0, 0], h[0, 2]])) and owner.tolist() == [0, 0]


def test_evaluate_multilabel_with_validation_thresholds():
    torch.manual_seed(0)
    images = torch.rand(40, 1, 8, 8)
    masks = torch.ones(40, 1, 8, 8)
    labels = (torch.rand(40, 3) < 0.5).float()
    model = _left_half_model(3)
    data = Items(images, masks, labels)
    t = validation_thresholds(model, data)
    assert t.shape == (3,) and np.isfinite(t).all()
    out = evaluate(model, {"val": data}, class_names=["a", "b", "c"], multilabel=True, thresholds=t,
                   explainer=lrp_explainer(model, NO_ZB))
    m = out["val"]
    assert m["task"] == "multi-label" and m["thresholds"] == pytest.approx(t.tolist())
    # full masks: no background at all, so no relevance can be in it
    assert m["attention"]["background_share"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert m["attention"]["background_share"]["n"] == int((labels.sum(1) > 0).sum())


def test_examples_for_figures():
    labels = torch.tensor([1, 1, 0, 2, 0, 2])
    data = Items(torch.rand(6, 1, 8, 8), torch.ones(6, 1, 8, 8), labels)
    picks = pick_examples(data, 3, per_class=1)
    assert picks == [2, 0, 3]
    model = _left_half_model(3)
    images, maps, classes = example_heatmaps({"a": lrp_explainer(model, NO_ZB),
                                              "b": lrp_explainer(model, NO_ZB)}, data, picks)
    assert images.shape == (3, 1, 8, 8) and maps.shape == (2, 3, 1, 8, 8) and classes == [0, 1, 2]


def test_a_multilabel_batch_without_positive_labels_has_no_maps_and_no_crash():
    images = torch.rand(6, 1, 8, 8)
    masks = torch.ones(6, 1, 8, 8)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    model = _left_half_model(3)
    out = collect_outputs(model, Items(images, masks, labels), multilabel=True, batch_size=4,
                          explainer=lrp_explainer(model, NO_ZB))  # second batch: no positive label at all
    share = out.attention["background_share"]
    assert share.shape == (6,) and np.isnan(share[4:]).all()
    np.testing.assert_allclose(share[:4], 0.0, atol=1e-6)  # full masks: no background


def test_fractional_labels_are_an_error_not_truncated():
    data = Items(torch.rand(4, 1, 8, 8), torch.ones(4, 1, 8, 8), torch.tensor([0.0, 1.0, 1.5, 0.0]))
    with pytest.raises(ValueError, match="got 1.5 at position 2"):
        evaluate(_left_half_model(), {"t": data}, class_names=["a", "b"], draws=10)


class _DeviceSpy(nn.Module):
    """A 2-class model whose only parameter lives on the 'meta' device: it records the device of
    the images it receives and answers with CPU logits (the image's number in the batch)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, device="meta"))
        self.devices = []

    def forward(self, x):
        self.devices.append(x.device)
        return torch.stack([torch.zeros(len(x)), torch.arange(len(x), dtype=torch.float32)], 1)


def test_evaluation_runs_on_the_models_device():
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    data = Items(torch.rand(6, 1, 4, 4), torch.ones(6, 1, 4, 4), labels)
    model = _DeviceSpy()
    out = collect_outputs(model, data, batch_size=4)
    assert model.devices == [torch.device("meta")] * 2
    assert out.scores[:, 1].tolist() == [0, 1, 2, 3, 0, 1] and out.labels.tolist() == labels.tolist()

    seen = []

    def explain(images):
        seen.append(images.device)
        return torch.zeros(len(images), 2), torch.ones(len(images), 2, 1, 4, 4)

    results = evaluate(model, {"test": data}, class_names=["a", "b"], explainer=explain, batch_size=4)
    assert seen == [torch.device("meta")] * 2
    # full masks: no background, so no background relevance
    assert results["test"]["attention"]["background_share"]["mean"] == pytest.approx(0.0)


def test_a_model_that_reads_only_the_background_flips_on_mixed_next():
    data = coloured_set(per_class=4)
    model = border_model()
    out = evaluate(model, {"t": data}, class_names=["a", "b", "c"], batch_size=5)["t"]
    swap = out["background_swap"]
    assert set(swap) == {"mixed_rand", "mixed_next"}
    nxt = swap["mixed_next"]
    assert nxt["flip_rate"] >= 0.5 and (nxt["n"], nxt["skipped"]) == (12, 0)
    # the border comes from an image of the next class, so every decision moves to it
    assert nxt["flip_rate"] == 1.0 and nxt["macro_f1"] == 0.0
    assert nxt["original_macro_f1"] == out["macro_f1"] == 1.0
    # mixed_rand: a decision flips exactly when the donor is of another class
    recipients, donors = swap_plan(data, num_classes=3, seed=0).pairs["mixed_rand"]
    other = (data.labels[donors] != data.labels[recipients]).double().mean().item()
    assert 0 < other < 1 and swap["mixed_rand"]["flip_rate"] == pytest.approx(other, abs=1e-12)


def test_a_model_that_reads_only_the_foreground_never_flips():
    data = coloured_set(per_class=4)
    out = evaluate(centre_model(), {"t": data}, class_names=["a", "b", "c"], batch_size=5)["t"]
    for variant in ("mixed_rand", "mixed_next"):
        s = out["background_swap"][variant]
        assert s["flip_rate"] == 0.0 and s["macro_f1"] == s["original_macro_f1"] == 1.0 and s["n"] == 12


def test_background_swap_counts_images_without_masks_and_can_be_switched_off():
    data = coloured_set(per_class=2)
    data.masks[1] = torch.zeros(1, 16, 16)
    swap = evaluate(border_model(), {"t": data}, class_names=["a", "b", "c"])["t"]["background_swap"]
    # image 1 (class 1) has no mask, image 4 (class 1) is the only class-1 donor left for class-0 images
    assert (swap["mixed_rand"]["n"], swap["mixed_rand"]["skipped"]) == (5, 1)
    assert (swap["mixed_next"]["n"], swap["mixed_next"]["skipped"]) == (5, 1)
    off = evaluate(border_model(), {"t": data}, class_names=["a", "b", "c"], background_swap=False)["t"]
    assert "background_swap" not in off
    with pytest.raises(ValueError, match="scores have 3 rows for a dataset of 6 items"):
        background_swap_test(border_model(), data, np.zeros((3, 3)), num_classes=3)


def test_background_swap_of_multilabel_tasks_uses_random_donors_only():
    data = coloured_set(per_class=2)
    data.labels = torch.nn.functional.one_hot(data.labels, 3).float()
    model = border_model()
    scores = model(torch.stack(data.images)).detach().numpy()
    swap = background_swap_test(model, data, scores, num_classes=3, multilabel=True, thresholds=np.full(3, 0.99))
    assert list(swap) == ["mixed_rand"] and swap["mixed_rand"]["n"] == 6
    # a label is called when 10 x its channel's border mean passes logit(0.99) = 4.6: the bright channel only
    assert swap["mixed_rand"]["original_macro_f1"] == 1.0
    recipients, donors = swap_plan(data, num_classes=3, multilabel=True, seed=0).pairs["mixed_rand"]
    other = (data.labels[donors] != data.labels[recipients]).any(1).double().mean().item()
    assert swap["mixed_rand"]["flip_rate"] == pytest.approx(other, abs=1e-12)
    empty = background_swap_test(model, Items(data.images, [torch.ones(1, 16, 16)] * 6, data.labels), scores,
                                 num_classes=3, multilabel=True)
    assert empty["mixed_rand"] == {"macro_f1": None, "original_macro_f1": None, "flip_rate": None, "n": 0,
                                   "skipped": 6}
