"""Background-attention metrics on constructed heatmaps with known answers."""

import numpy as np
import pytest

from isnet.metrics import (
    attention_metrics,
    attention_summary,
    background_share,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)


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


def _expected_by_all_orders(r, m):
    """Share of the top |mask| pixels in the mask, averaged over every order of the pixels.

    A stable sort on the relevance keeps a given order among equal values, so averaging
    over all P! orders is exactly the expectation under uniformly random tie-breaking.
    """
    import itertools

    k = int(m.sum())
    shares = []
    for order in itertools.permutations(range(len(r))):
        order = np.array(order)
        top = order[np.argsort(-r[order], kind="stable")[:k]]
        shares.append(m[top].mean())
    return float(np.mean(shares))


def test_rank_accuracy_does_not_depend_on_the_order_of_tied_pixels():
    # 4x4 map with one positive pixel outside the top-half mask (k = 8 of P = 16 pixels):
    # that pixel takes one of the 8 places; the other 7 go to 7 of the 15 zeros, 8 of
    # which are in the mask -> expected share (8/15 * 7) / 8 = 7/15
    m = np.zeros((1, 1, 4, 4))
    m[0, 0, :2] = 1
    h = np.zeros((1, 1, 4, 4))
    h[0, 0, 3, 1] = 2.0
    assert relevance_rank_accuracy(h, m)[0] == pytest.approx(7 / 15, abs=1e-15)
    # the positive pixel inside the mask instead: 1 + 7 places among 15 zeros, 7 of them inside
    inside = np.zeros((1, 1, 4, 4))
    inside[0, 0, 0, 2] = 2.0
    assert relevance_rank_accuracy(inside, m)[0] == pytest.approx((1 + 7 * 7 / 15) / 8, abs=1e-15)
    # flipping both (negative-stride views) or permuting the pixels gives the same values
    for axis in (2, 3):
        assert relevance_rank_accuracy(np.flip(h, axis), np.flip(m, axis))[0] == relevance_rank_accuracy(h, m)[0]
    rng = np.random.default_rng(0)
    both, masks = np.concatenate([h, inside]), np.concatenate([m, m])
    for _ in range(5):
        p = rng.permutation(16)
        shuffled_h = both.reshape(2, 1, 16)[..., p].reshape(2, 1, 4, 4)
        shuffled_m = masks.reshape(2, 1, 16)[..., p].reshape(2, 1, 4, 4)
        np.testing.assert_array_equal(relevance_rank_accuracy(shuffled_h, shuffled_m),
                                      relevance_rank_accuracy(both, masks))


def test_rank_accuracy_is_the_expectation_over_all_tie_breaks():
    rng = np.random.default_rng(1)
    h = rng.integers(-1, 3, (12, 1, 2, 3)).astype(np.float64)  # values in {-1, 0, 1, 2}: many ties
    m = rng.random((12, 1, 2, 3)) < 0.5
    m[0] = False  # empty mask: NaN
    m[1] = True  # full mask: 1
    h[2] = 0.0  # no relevance: NaN
    got = relevance_rank_accuracy(h, m)
    assert np.isnan(got[[0, 2]]).all() and got[1] == 1.0
    for i in range(3, 12):
        if m[i].any():
            assert got[i] == pytest.approx(_expected_by_all_orders(h[i].ravel(), m[i].ravel()), abs=1e-12)


def test_rank_accuracy_agrees_with_random_tie_breaking():
    rng = np.random.default_rng(2)
    h = rng.integers(0, 3, (4, 2, 5, 5)).astype(np.float64)  # channel sums in 0..4
    m = np.zeros((4, 1, 5, 5))
    m[:, :, 1:4, 1:3] = 1
    got = relevance_rank_accuracy(h, m)
    r, inside = h.sum(1).reshape(4, -1), m.reshape(4, -1) > 0
    draws = 4000
    for i in range(4):
        keys = rng.random((draws, r.shape[1]))
        order = np.lexsort((keys, np.broadcast_to(-r[i], keys.shape)), axis=1)  # by relevance, then random key
        shares = inside[i][order[:, :6]].mean(1)  # |mask| = 6
        # standard error of the mean of shares in [0, 1] is at most 0.5 / sqrt(4000) < 0.008
        assert got[i] == pytest.approx(shares.mean(), abs=0.04)


def test_rank_accuracy_without_ties_is_the_plain_top_k_share():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(6, 3, 5, 4))
    m = rng.random((6, 1, 5, 4)) < 0.3
    m[:, 0, 0, 0] = True
    r, inside = h.sum(1).reshape(6, -1), m.reshape(6, -1)
    k = inside.sum(1)
    plain = [inside[i, np.argsort(-r[i])[: k[i]]].mean() for i in range(6)]
    np.testing.assert_allclose(relevance_rank_accuracy(h, m), plain, rtol=0, atol=1e-15)


def test_an_empty_batch_gives_empty_results():
    for h, m in ((np.zeros((0, 3, 4, 4)), np.zeros((0, 1, 4, 4))), (np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))):
        values = attention_metrics(h, m)
        assert set(values) == {"background_share", "mass_accuracy", "rank_accuracy"}
        assert all(v.shape == (0,) and v.dtype == np.float64 for v in values.values())
        summary = attention_summary(values)
        assert summary["rank_accuracy"] == {"mean": None, "std": None, "n": 0, "skipped": 0}
    with pytest.raises(ValueError, match="differ in batch"):
        attention_metrics(np.zeros((0, 3, 4, 4)), np.zeros((1, 1, 4, 4)))
