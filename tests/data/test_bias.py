import pytest
import torch

from isnet.data.bias import ShapeBias, shape_stencil


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
