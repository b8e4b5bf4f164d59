import numpy as np
import pytest
import torch

from isnet.data.bias import (BIAS_KINDS, WORDS, ShapeBias, check_bias_kind, free_positions, scene_groups,
                             shape_stencil, word_stencil)  # fmt: skip


def test_stencils_differ_and_fill_their_box():
    sq, tri, circ = (shape_stencil(s, 9) for s in ("square", "triangle", "circle"))
    assert sq.all()
    assert tri[-1].all() and tri[0].sum() <= 2  # base at the bottom, apex at the top
    assert not circ[0, 0] and circ[4, 4]
    assert len({sq.sum().item(), tri.sum().item(), circ.sum().item()}) == 3


def test_biased_standard_deceiving_single_label():
    bias = ShapeBias.default(3)
    image = torch.zeros(3, 64, 64)
    assert torch.equal(bias.apply(image, 1, "standard"), image)
    biased = bias.apply(image, 1, "biased")
    rows, cols = bias.region(1, 64, 64)
    assert biased[:, rows, cols].sum() > 0 and biased.sum() == biased[:, rows, cols].sum()
    side = rows.stop - rows.start
    assert side == round(0.1 * 64)
    deceiving = bias.apply(image, 1, "deceiving")
    rows2, cols2 = bias.region(2, 64, 64)  # class 2's shape, in class 2's corner
    assert deceiving[:, rows2, cols2].sum() == deceiving.sum() > 0
    assert torch.equal(deceiving, bias.draw(image, 2))
    assert image.sum() == 0  # the input is not modified


def test_multilabel_deceiving_shows_shapes_of_absent_labels():
    bias = ShapeBias.default(3)
    image = torch.zeros(3, 40, 40)
    target = torch.tensor([1, 0, 1])
    assert torch.equal(bias.apply(image, target, "biased", multilabel=True), bias.draw(bias.draw(image, 0), 2))
    assert torch.equal(bias.apply(image, target, "deceiving", multilabel=True), bias.draw(image, 1))


def test_bad_bias_settings():
    with pytest.raises(ValueError, match="unknown bias variant"):
        ShapeBias.default(3).apply(torch.zeros(3, 8, 8), 0, "sideways")
    with pytest.raises(ValueError, match="2 to 4 classes"):
        ShapeBias.default(7)
    with pytest.raises(ValueError, match="label 5"):
        ShapeBias.default(3).apply(torch.zeros(3, 8, 8), 5, "biased")


def test_bias_kinds_are_checked_with_a_clear_error():
    assert BIAS_KINDS == ("shapes", "scene", "text")
    assert all(check_bias_kind(kind) == kind for kind in BIAS_KINDS)
    with pytest.raises(ValueError, match=r"unknown bias kind 'stripes'; choose from shapes, scene, text"):
        check_bias_kind("stripes")


def test_scene_groups_partition_the_backgrounds_round_robin():
    groups = scene_groups(10, 3)
    assert groups == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(i for g in scene_groups(10, 7) for i in g) == list(range(10))
    with pytest.raises(ValueError, match="2 to 10 classes"):
        scene_groups(10, 11)


def test_word_stencils_are_the_bitmap_font_at_the_asked_scale():
    stencils = [word_stencil(w) for w in WORDS[:3]]
    assert all(s.dtype == bool and s.shape == (11, 18) and s.any() for s in stencils)  # 3 glyphs of 6 x 11
    assert len({s.tobytes() for s in stencils}) == 3
    assert word_stencil("sun", 2.0).shape == (22, 36)
    assert torch.equal(torch.from_numpy(word_stencil("sun", 2.0)[::2, ::2]), torch.from_numpy(stencils[0]))
    assert word_stencil("sun", 0.5).shape == (6, 9)
    assert len(set(WORDS)) == len(WORDS) == 10
    with pytest.raises(ValueError, match="must not be empty"):
        word_stencil("")


def test_free_positions_keep_the_box_and_its_margin_off_the_mask():
    mask = np.zeros((12, 10), dtype=bool)
    mask[4:7, 3:6] = True
    places = free_positions(mask, (2, 3), margin=1)
    expected = [(r, c) for r in range(11) for c in range(8)
                if not mask[max(0, r - 1) : r + 3, max(0, c - 1) : c + 4].any()]
    assert sorted(map(tuple, places.tolist())) == expected
    assert (1, 0) in expected and (2, 0) not in expected  # rows 1-2 plus margin stop above row 4
    assert free_positions(mask, (13, 2)).shape == (0, 2)  # taller than the image
    assert free_positions(np.ones((5, 5), bool), (1, 1)).shape == (0, 2)
