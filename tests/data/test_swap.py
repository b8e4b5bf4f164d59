"""Background-swapped test images: foreground kept, background from a donor, donors drawn by the rules."""

import numpy as np
import pytest
import torch
from torch import nn

from isnet.data.swap import (
    SwappedBackgrounds,
    binary_mask,
    fill_foreground,
    fill_foreground_batch,
    jitter_backgrounds,
    plan_swaps,
    scan_masks,
    swap_background,
    swap_batch_backgrounds,
    swap_plan,
)

SIZE = 16


class Items(torch.utils.data.Dataset):
    def __init__(self, images, masks, labels):
        self.images, self.masks, self.labels = images, masks, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i], "label": self.labels[i]}


def coloured_set(per_class=4, k=3, seed=0, foreground_encodes_class=True):
    """``k``-class images whose background colour encodes the class (channel ``label`` bright).

    The foreground is a rectangle that always covers the central 4x4 block and never the
    2-pixel border; with ``foreground_encodes_class`` its colour encodes the class too (a
    different channel pattern), else it is noise.  Returns ``Items`` with float64 images.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat(per_class)
    images, masks = [], []
    for y in labels.tolist():
        image = 0.1 + 0.05 * torch.rand(k, SIZE, SIZE, generator=g, dtype=torch.float64)
        image[y] += 0.7
        top, left = (int(v) for v in torch.randint(3, 7, (2,), generator=g))
        bottom, right = (int(v) for v in torch.randint(10, 14, (2,), generator=g))
        mask = torch.zeros(1, SIZE, SIZE, dtype=torch.float64)
        mask[:, top:bottom, left:right] = 1
        fg = torch.rand(k, bottom - top, right - left, generator=g, dtype=torch.float64)
        if foreground_encodes_class:
            fg = 0.3 + 0.1 * fg
            fg[(y + 2) % k] += 0.5
        image[:, top:bottom, left:right] = fg
        images.append(image)
        masks.append(mask)
    return Items(images, masks, labels)


class RegionMean(nn.Module):
    """Logits = 10 x the mean of each channel over a fixed pixel region (channels = classes)."""

    def __init__(self, region: torch.Tensor, shift: int = 0):
        super().__init__()
        self.register_buffer("weight", region.double() / region.sum())
        self.shift = shift

    def forward(self, x):
        return 10 * torch.roll((x * self.weight).sum((-2, -1)), -self.shift, dims=1)


def border_model():
    """Reads only the 2-pixel image border, always background in :func:`coloured_set`."""
    region = torch.ones(SIZE, SIZE)
    region[2:-2, 2:-2] = 0
    return RegionMean(region)


def centre_model():
    """Reads only the central 4x4 block, always foreground in :func:`coloured_set`; its
    colour's bright channel is ``(label + 2) mod 3``, so the logits are rolled back."""
    region = torch.zeros(SIZE, SIZE)
    region[6:10, 6:10] = 1
    return RegionMean(region, shift=2)


def test_the_constructed_models_read_the_class_from_their_region():
    data = coloured_set()
    images = torch.stack(data.images)
    assert torch.equal(border_model()(images).argmax(1), data.labels)
    assert torch.equal(centre_model()(images).argmax(1), data.labels)


def test_swap_keeps_foreground_exactly_and_takes_the_donors_background():
    data = coloured_set(per_class=1)
    image, mask, donor, donor_mask = data.images[0], data.masks[0], data.images[1], data.masks[1]
    out = swap_background(image, mask, donor, donor_mask)
    fg, donor_fg = mask[0] > 0, donor_mask[0] > 0
    assert out.dtype == image.dtype and out.shape == image.shape
    assert torch.equal(out[:, fg], image[:, fg])
    both_background = ~fg & ~donor_fg
    assert torch.equal(out[:, both_background], donor[:, both_background])


def test_the_donors_foreground_never_shows_through():
    g = torch.Generator().manual_seed(1)
    donor = 0.5 * torch.rand(3, SIZE, SIZE, generator=g, dtype=torch.float64)  # background in [0, 0.5]
    donor_mask = torch.zeros(1, SIZE, SIZE, dtype=torch.float64)
    donor_mask[:, 3:12, 2:9] = 1
    donor[:, 3:12, 2:9] = 1.0  # a foreground brighter than any background value
    image = torch.rand(3, SIZE, SIZE, generator=g, dtype=torch.float64)
    mask = torch.zeros(1, SIZE, SIZE, dtype=torch.float64)
    mask[:, 10:14, 10:14] = 1
    out = swap_background(image, mask, donor, donor_mask)
    shown = donor_mask[0].bool() & ~mask[0].bool()  # donor foreground not covered by the recipient's
    assert shown.sum() > 0
    background = donor[:, ~donor_mask[0].bool()]
    low, high = background.min(1).values, background.max(1).values
    assert (out[:, shown] <= high[:, None]).all() and (out[:, shown] >= low[:, None]).all()
    assert (out[:, ~mask[0].bool()] < 1.0).all()


def test_fill_takes_the_nearest_background_pixel():
    columns = torch.arange(8, dtype=torch.float64).expand(1, 4, 8).clone()  # value = column index
    mask = torch.zeros(4, 8)
    mask[:, 3:7] = 1  # background columns 0-2 and 7
    filled = fill_foreground(columns, mask, sigma=0)
    assert filled[0, 0].tolist() == [0, 1, 2, 2, 2, 7, 7, 7]  # column 5: 3 from column 2, 2 from column 7
    blurred = fill_foreground(columns, mask, sigma=1.0)
    assert torch.equal(blurred[:, :, [0, 1, 2, 7]], columns[:, :, [0, 1, 2, 7]])  # background unchanged
    assert 2 < blurred[0, 0, 4] < 7  # the step inside the filled region is smoothed


def test_soft_masks_are_binarised_at_one_half_and_sizes_must_match():
    m = torch.tensor([[[0.49, 0.5], [0.51, 0.0]]])
    assert binary_mask(m, 2, 2).tolist() == [[False, True], [True, False]]
    with pytest.raises(ValueError, match=r"does not match its image's size 16x16"):
        swap_background(torch.rand(3, SIZE, SIZE), torch.ones(1, 8, 8), torch.rand(3, SIZE, SIZE),
                        torch.ones(1, SIZE, SIZE))
    with pytest.raises(ValueError, match="differ in shape"):
        swap_background(torch.rand(3, SIZE, SIZE), torch.ones(1, SIZE, SIZE), torch.rand(3, 8, 8), torch.ones(1, 8, 8))
    with pytest.raises(ValueError, match="no background to fill"):
        fill_foreground(torch.rand(3, 4, 4), torch.ones(1, 4, 4))
    data = coloured_set(per_class=1)
    data.masks[2] = torch.ones(1, 8, 8)
    with pytest.raises(ValueError, match=r"test item 2: mask of shape \(1, 8, 8\)"):
        scan_masks(data)


def test_mixed_next_donors_are_of_the_next_class_and_mixed_rand_donors_are_other_images():
    labels = np.array([0, 1, 2, 3] * 6)
    plan = plan_swaps(labels, np.ones(24, bool), num_classes=4, seed=3)
    recipients, donors = plan.pairs["mixed_next"]
    assert recipients.tolist() == list(range(24))
    assert (labels[donors] == (labels[recipients] + 1) % 4).all()
    recipients, donors = plan.pairs["mixed_rand"]
    assert recipients.tolist() == list(range(24)) and (donors != recipients).all()
    assert set(donors.tolist()) <= set(range(24))


def test_plans_are_deterministic_for_a_seed():
    labels = np.array([0, 1, 2] * 10)
    a, b = (plan_swaps(labels, np.ones(30, bool), num_classes=3, seed=7) for _ in range(2))
    c = plan_swaps(labels, np.ones(30, bool), num_classes=3, seed=8)
    for variant in ("mixed_rand", "mixed_next"):
        assert np.array_equal(a.pairs[variant][1], b.pairs[variant][1])
    assert not np.array_equal(a.pairs["mixed_rand"][1], c.pairs["mixed_rand"][1])
    data = coloured_set(per_class=2)
    plan = swap_plan(data, num_classes=3, seed=7)
    swapped = SwappedBackgrounds(data, *plan.pairs["mixed_next"])
    assert torch.equal(swapped[3]["image"], SwappedBackgrounds(data, *plan.pairs["mixed_next"])[3]["image"])


def test_images_without_a_mask_or_without_background_are_skipped_and_counted():
    data = coloured_set(per_class=3)
    data.masks[0] = torch.zeros(1, SIZE, SIZE)  # no mask
    data.masks[4] = torch.ones(1, SIZE, SIZE)  # nothing but foreground
    plan = swap_plan(data, num_classes=3)
    assert plan.usable.sum() == 7 and not plan.usable[0] and not plan.usable[4]
    for variant in ("mixed_rand", "mixed_next"):
        recipients, donors = plan.pairs[variant]
        assert 0 not in recipients and 4 not in recipients and 0 not in donors and 4 not in donors
        assert plan.skipped(variant) == 2 and len(recipients) == 7
    # class 2 without any usable image: class-1 images have no mixed_next donor
    labels = np.array([0, 1, 2, 0, 1, 2])
    plan = plan_swaps(labels, labels != 2, num_classes=3)
    assert plan.no_donor["mixed_next"] == 2 and plan.skipped("mixed_next") == 4
    assert (labels[plan.pairs["mixed_next"][0]] == 0).all()
    assert len(plan_swaps([0], [True], num_classes=2).pairs["mixed_rand"][0]) == 0  # nobody to swap with


def test_multilabel_data_get_mixed_rand_only():
    labels = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    plan = plan_swaps(labels, np.ones(4, bool), num_classes=2, multilabel=True)
    assert list(plan.pairs) == ["mixed_rand"]


def test_swapped_items_carry_the_recipients_label_mask_and_indices():
    data = coloured_set(per_class=2)
    soft = data.masks[1] * 0.8
    data.masks[1] = soft
    swapped = SwappedBackgrounds(data, [1, 2], [2, 0])
    item = swapped[0]
    assert item["label"] == data.labels[1] and (item["index"], item["donor"]) == (1, 2)
    assert torch.equal(item["mask"], (soft >= 0.5).float())
    assert torch.equal(item["image"], swap_background(data.images[1], soft, data.images[2], data.masks[2]))
    assert len(swapped) == 2
    with pytest.raises(ValueError, match="equal-length"):
        SwappedBackgrounds(data, [1, 2], [0])


# -- training-time swaps -----------------------------------------------------------------------


def _boxes(n=6, size=20, seed=0):
    """Images whose background has one value per image (i / 10) and whose foreground box is 1."""
    g = torch.Generator().manual_seed(seed)
    images = torch.arange(n, dtype=torch.float64).div(10).view(n, 1, 1, 1).repeat(1, 3, size, size)
    masks = torch.zeros(n, 1, size, size, dtype=torch.float64)
    for i in range(n):
        top, left = torch.randint(0, size - 8, (2,), generator=g).tolist()
        masks[i, :, top:top + 8, left:left + 5] = 1
    images = torch.where(masks >= 0.5, torch.ones_like(images), images)
    return images, masks


def test_batch_fill_keeps_the_background_and_leaves_nothing_of_the_foreground():
    images, masks = _boxes()
    images = images + torch.rand(images.shape, dtype=images.dtype) * 0.05 * (masks < 0.5)  # textured backgrounds
    filled = fill_foreground_batch(images, masks)
    background = (masks < 0.5).expand_as(images)
    assert torch.equal(filled[background], images[background])
    for i in range(len(images)):  # every filled value is a mean of the image's own background values
        values = images[i][background[i]]
        inside = filled[i][~background[i]]
        assert inside.min() >= values.min() - 1e-12 and inside.max() <= values.max() + 1e-12


def test_batch_fill_leaves_an_image_without_background_unchanged():
    images, masks = _boxes(n=2)
    masks[1] = 1
    assert torch.equal(fill_foreground_batch(images, masks)[1], images[1])


def test_batch_swap_keeps_foregrounds_and_takes_another_images_background():
    images, masks = _boxes()
    swapped, which = swap_batch_backgrounds(images, masks, 1.0, generator=torch.Generator().manual_seed(3))
    assert which.all()
    fg = (masks >= 0.5).expand_as(images)
    assert torch.equal(swapped[fg], images[fg])
    donors = []
    for i in range(len(images)):
        values = swapped[i][~fg[i]]
        assert values.max() - values.min() < 1e-12  # one donor's (filled) background, exactly
        donor = round(values.mean().item() * 10)
        assert donor != i
        donors.append(donor)
    assert sorted(donors) == list(range(len(images)))  # one cycle: every background given once


def test_batch_swap_keeps_images_it_cannot_swap_and_respects_the_fraction():
    images, masks = _boxes(n=4)
    masks[0] = 0  # no mask: nothing to keep
    masks[1] = 1  # all foreground: nothing to replace, and no background to give
    swapped, which = swap_batch_backgrounds(images, masks, 1.0, generator=torch.Generator().manual_seed(0))
    assert not which[0] and not which[1]
    assert torch.equal(swapped[:2], images[:2])
    none, which = swap_batch_backgrounds(images, masks, 0.0)
    assert not which.any() and torch.equal(none, images)
    many = torch.stack([swap_batch_backgrounds(*_boxes(n=8, seed=s), 0.5, generator=torch.Generator().manual_seed(s))[1]
                        for s in range(200)]).float().mean()
    assert 0.4 < many < 0.6


def test_batch_swap_rejects_bad_input():
    images, masks = _boxes(n=2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        swap_batch_backgrounds(images, masks, 1.5)
    with pytest.raises(ValueError, match="masks"):
        swap_batch_backgrounds(images, masks[:, :, :10])
    with pytest.raises(ValueError, match="masks"):
        fill_foreground_batch(images, masks[:1])


def test_jitter_changes_only_the_chosen_backgrounds_within_the_value_range():
    images, masks = _boxes(n=4)
    images = images + 0.05 * torch.rand_like(images)
    which = torch.tensor([True, False, True, False])
    out = jitter_backgrounds(images, masks, which, 1.0, generator=torch.Generator().manual_seed(0))
    fg = (masks >= 0.5).expand_as(images)
    assert torch.equal(out[fg], images[fg])
    assert torch.equal(out[~which], images[~which])
    for i in (0, 2):
        assert not torch.equal(out[i][~fg[i]], images[i][~fg[i]])
    assert images.min() <= out.min() and out.max() <= images.max()
    assert torch.equal(jitter_backgrounds(images, masks, which, 0.0), images)


def test_jitter_draws_a_different_change_for_each_image():
    images = torch.linspace(0.1, 0.9, 16 * 16).view(1, 1, 16, 16).repeat(8, 3, 1, 1).double()
    masks = torch.zeros(8, 1, 16, 16, dtype=torch.float64)
    masks[:, :, 6:10, 6:10] = 1
    out = jitter_backgrounds(images, masks, torch.ones(8, dtype=torch.bool), 1.0,
                             generator=torch.Generator().manual_seed(1))
    background = out[:, 0][masks[:, 0] < 0.5].view(8, -1)
    assert background.mean(1).unique().numel() == 8  # shift / tone differ per image
    assert (background.std(1).max() - background.std(1).min()) > 0.02  # contrast and noise too
    assert torch.equal(out[:, 0], out[:, 1])  # all channels alike (grayscale stays grayscale)


def test_swap_applies_the_jitter_to_swapped_images_only():
    images, masks = _boxes(n=4)
    masks[1] = 1  # cannot be swapped, so not jittered
    plain, which = swap_batch_backgrounds(images, masks, 1.0, generator=torch.Generator().manual_seed(5))
    jittered, which2 = swap_batch_backgrounds(images, masks, 1.0, generator=torch.Generator().manual_seed(5),
                                              jitter=1.0)
    assert torch.equal(which, which2) and not which[1]
    assert torch.equal(jittered[1], images[1])
    fg = (masks >= 0.5).expand_as(images)
    assert torch.equal(jittered[fg], images[fg])
    assert not torch.equal(jittered[which], plain[which])
    with pytest.raises(ValueError, match="jitter"):
        swap_batch_backgrounds(images, masks, 1.0, jitter=2.0)
    with pytest.raises(ValueError, match="jitter"):
        jitter_backgrounds(images, masks, which, -0.5)
