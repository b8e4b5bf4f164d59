"""Background-attention metrics on constructed heatmaps with known answers."""

import numpy as np
import pytest

from isnet.metrics import attention_summary, background_share, relevance_mass_accuracy, relevance_rank_accuracy


def _mask():
    m = np.zeros((1, 1, 4, 4))
    m[0, 0, 1:3, 1:3] = 1  # 4 foreground pixels
    return m


def test_known_answers():
    m = _mask()
    h = np.zeros((1, 3, 4, 4))
    h[0, :, 1:3, 1:3] = 1.0  # 12 units of positive relevance inside (4 pixels x 3 channels)
    h[0, 0, 0, 0] = -4.0  # 4 units of negative relevance outside
    h[0, 1, 3, 3] = 2.0  # 2 units of positive relevance outside
    assert background_share(h, m)[0] == pytest.approx(6 / 18)
    assert relevance_mass_accuracy(h, m)[0] == pytest.approx(12 / 14)
    # the 4 most relevant pixels (channel sums 3, 3, 3, 3 inside; 2 and -4 outside) are the foreground
    assert relevance_rank_accuracy(h, m)[0] == pytest.approx(1.0)
    h[0, 1, 3, 3] = 5.0  # now one background pixel beats the foreground ones
    assert relevance_rank_accuracy(h, m)[0] == pytest.approx(3 / 4)


def test_all_relevance_in_the_foreground_or_the_background():
    m = _mask()
    inside = np.zeros((1, 1, 4, 4))
    inside[0, 0, 2, 2] = 3.0
    outside = np.zeros((1, 1, 4, 4))
    outside[0, 0, 0, 3] = 3.0
    both = np.concatenate([inside, outside])
    masks = np.concatenate([m, m])
    np.testing.assert_allclose(background_share(both, masks), [0.0, 1.0])
    np.testing.assert_allclose(relevance_mass_accuracy(both, masks), [1.0, 0.0])


def test_uninformative_images_are_nan_and_skipped():
    m = np.concatenate([_mask(), np.zeros((1, 1, 4, 4))])  # second image: empty mask
    h = np.ones((2, 1, 4, 4))
    h[0] = 0.0  # first image: no relevance at all
    share = background_share(h, m)
    assert np.isnan(share).all()
    s = attention_summary({"background_share": np.array([0.2, np.nan, 0.4])})["background_share"]
    assert s["mean"] == pytest.approx(0.3) and s["n"] == 2 and s["skipped"] == 1


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="differ in batch or spatial size"):
        background_share(np.ones((2, 3, 4, 4)), np.ones((2, 1, 5, 4)))
    with pytest.raises(ValueError, match="one channel"):
        background_share(np.ones((2, 3, 4, 4)), np.ones((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="NaN"):
        background_share(np.full((1, 1, 4, 4), np.nan), _mask())
    # (N, H, W) forms are accepted
    assert background_share(np.ones((1, 4, 4)), _mask()[:, 0])[0] == pytest.approx(12 / 16)
