"""The ISNet loss against a direct NumPy evaluation of the paper's formulas."""

import numpy as np
import pytest
import torch

from isnet.loss import ISNetLoss, background_loss, foreground_loss, gwrp, prepare_masks


def np_gwrp(v, d):
    v = np.sort(v.ravel())[::-1]
    w = d ** np.arange(v.size)  # 0**0 = 1: d = 0 is max pooling
    return (w * v).sum() / w.sum()


def np_isnet_loss(logits, labels, H, M, P, d, E, w1, w2, C1, C2, e=1e-10):
    """Algorithms 2 and 3, Eqs. 11-22, one heatmap at a time."""
    B, K, C = H.shape[:3]
    ce = []
    for b in range(B):
        z = logits[b] - logits[b].max()
        ce.append(-(z[labels[b]] - np.log(np.exp(z).sum())))
    LC = np.mean(ce)
    L1_terms, L2_terms = [], []
    for b in range(B):
        Mb = np.broadcast_to(M[b], H.shape[2:])
        for k in range(K):
            A = np.abs(H[b, k])
            Hn = A / ((A * Mb).sum() / (Mb.sum() + e) + e)  # Eq. 12
            U = (1 - Mb) * Hn  # Eq. 13
            for c in range(C):
                r = np_gwrp(U[c], d)  # Eq. 14
                f = min(max(r / (r + E), 0), 1 - 1e-7)
                L1_terms.append(-np.log(1 - f))  # Eq. 17
            g = (A * Mb).sum()  # Eq. 19
            if g < C1:
                L2_terms.append((C1 - g) ** 2 / C1**2)
            elif g > C2:
                L2_terms.append((g - C2) ** 2 / C1**2)
            else:
                L2_terms.append(0.0)
    L1, L2 = np.mean(L1_terms), np.mean(L2_terms)
    return (1 - P) * LC + P * (w1 * L1 + w2 * L2), LC, L1, L2


def sample(B=3, K=4, C=2, S=6, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, K, generator=g, dtype=torch.float64)
    labels = torch.randint(0, K, (B,), generator=g)
    H = torch.randn(B, K, C, S, S, generator=g, dtype=torch.float64) * scale
    M = (torch.rand(B, 1, S, S, generator=g) > 0.5).double()
    M[:, :, 0, 0] = 1  # never empty
    return logits, labels, H, M


@pytest.mark.parametrize("d", [0.0, 0.5, 0.9, 0.996, 1.0])
def test_gwrp_matches_formula(d):
    x = torch.rand(2, 3, 7, 5, dtype=torch.float64)
    out = gwrp(x, d)
    expected = np.array([[np_gwrp(x[i, j].numpy(), d) for j in range(3)] for i in range(2)])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-10)


def test_gwrp_limits_are_max_and_mean():
    x = torch.rand(4, 9, 9)
    torch.testing.assert_close(gwrp(x, 0.0), x.flatten(1).max(1).values)
    torch.testing.assert_close(gwrp(x, 1.0), x.flatten(1).mean(1))
    assert (gwrp(x, 0.5) <= x.flatten(1).max(1).values).all()
    assert (gwrp(x, 0.5) >= x.flatten(1).mean(1)).all()
    with pytest.raises(ValueError, match="decay"):
        gwrp(x, 1.5)


@pytest.mark.parametrize("P,d,scale", [(0.7, 0.9, 1.0), (0.5, 0.996, 0.05), (0.3, 1.0, 10.0), (1.0, 0.0, 1.0)])
def test_total_and_parts_match_numpy(P, d, scale):
    logits, labels, H, M = sample(scale=scale)
    E, w1, w2, C1, C2 = 1.0, 1.0, 3.0, 1.0, 25.0
    out = ISNetLoss(P, d)(logits, labels, H, M)
    total, LC, L1, L2 = np_isnet_loss(logits.numpy(), labels.numpy(), H.numpy(), M.numpy(), P, d, E, w1, w2, C1, C2)
    for got, want in ((out.total, total), (out.classification, LC), (out.background, L1), (out.foreground, L2)):
        assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert out.heatmap.item() == pytest.approx(w1 * L1 + w2 * L2, rel=1e-9)


def test_foreground_loss_range_and_c1_scaling():
    logits, labels, H, M = sample()
    m = prepare_masks(M, H)
    g = (H.abs() * m).sum((2, 3, 4))
    assert foreground_loss(H, m, C1=float(g.min()) - 1e-6, C2=float(g.max()) + 1e-6).item() == 0.0
    below = foreground_loss(H * 0, m, C1=0.1, C2=1.0)
    assert below.item() == pytest.approx(1.0)  # (C1 - 0)^2 / C1^2, whatever C1


def test_zero_background_relevance_gives_zero_background_loss():
    logits, labels, H, M = sample()
    m = prepare_masks(M, H)
    assert background_loss(H * m, m, d=0.9).item() == 0.0
    assert background_loss(H, m, d=0.9).item() > 0


def test_gradients_are_finite_for_all_zero_heatmaps():
    logits, labels, H, M = sample()
    H = torch.zeros_like(H, requires_grad=True)
    logits.requires_grad_(True)
    out = ISNetLoss(0.7, 0.9)(logits, labels, H, M)
    out.total.backward()
    assert torch.isfinite(H.grad).all() and torch.isfinite(logits.grad).all()
    assert out.background.item() == 0.0


def test_multilabel_uses_binary_cross_entropy():
    logits, _, H, M = sample()
    targets = (torch.rand(3, 4) > 0.5).double()
    out = ISNetLoss(0.0, 1.0, multilabel=True)(logits, targets, None, None)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    torch.testing.assert_close(out.total, expected)


def test_standard_classifier_needs_no_heatmaps():
    logits, labels, _, _ = sample()
    out = ISNetLoss(0.0, 0.9)(logits, labels, None, None)
    torch.testing.assert_close(out.total, torch.nn.functional.cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="needs heatmaps and masks"):
        ISNetLoss(0.5, 0.9)(logits, labels, None, None)


def test_masks_are_broadcast_resized_and_validated():
    logits, labels, H, M = sample(S=8)
    loss = ISNetLoss(0.7, 0.9)
    big = M.repeat_interleave(2, -1).repeat_interleave(2, -2)  # (B, 1, 16, 16)
    torch.testing.assert_close(loss(logits, labels, H, big).total, loss(logits, labels, H, M).total)
    torch.testing.assert_close(loss(logits, labels, H, M[:, 0]).total, loss(logits, labels, H, M).total)
    empty = M.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"batch item\(s\) \[1\] are empty"):
        loss(logits, labels, H, empty)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        loss(logits, labels, H, M * 2)
    with pytest.raises(ValueError, match="2 masks for a batch of 3"):
        loss(logits, labels, H, M[:2])
    with pytest.raises(ValueError, match=r"shape \(B, K', C, H, W\) with B = 3"):
        loss(logits, labels, H[:2], M)
    with pytest.raises(ValueError, match=r"shape \(B, K', C, H, W\)"):
        loss(logits, labels, H[:, 0], M)


def test_one_map_per_image_and_several_sets_of_maps():
    """The Faster ISNet's K' = 1 maps per image, and sets of maps (rules, layers) that count alike."""
    logits, labels, H, M = sample(S=8)
    loss = ISNetLoss(0.7, 0.9, C1=0.5, C2=4.0)
    one = loss(logits, labels, H[:, :1], M)
    assert torch.isfinite(one.total)
    a, b = H[:, :1], 3 * H[:, 1:]
    both = loss(logits, labels, [a, b], M, ranges=[(0.5, 4.0), (2.0, 9.0)])
    first, second = loss(logits, labels, a, M), ISNetLoss(0.7, 0.9, C1=2.0, C2=9.0)(logits, labels, b, M)
    torch.testing.assert_close(both.background, (first.background + second.background) / 2)
    torch.testing.assert_close(both.foreground, (first.foreground + second.foreground) / 2)
    torch.testing.assert_close(both.total, 0.3 * first.classification + 0.7 * (both.background + 3 * both.foreground))
    small = torch.nn.functional.adaptive_max_pool2d(M.flatten(0, 1), 4).view(M.shape[0], 1, 4, 4)
    pooled = loss(logits, labels, [a, H[:, :1, :, ::2, ::2]], [M, small])  # masks per set, at each size
    assert torch.isfinite(pooled.total)
    with pytest.raises(ValueError, match="need as many masks and ranges"):
        loss(logits, labels, [a, b], [M])


def test_reduced_precision_inputs_are_computed_in_float32():
    logits, labels, H, M = sample()
    out = ISNetLoss(0.7, 0.9)(logits.half(), labels, H.bfloat16(), M)
    assert out.total.dtype == torch.float32
    ref = ISNetLoss(0.7, 0.9)(logits.half().float(), labels, H.bfloat16().float(), M)
    torch.testing.assert_close(out.total, ref.total)


def test_bad_hyper_parameters():
    for kwargs in ({"P": 1.5, "d": 0.9}, {"P": 0.5, "d": -0.1}, {"P": 0.5, "d": 0.9, "C1": 2.0, "C2": 1.0}):
        with pytest.raises(ValueError):
            ISNetLoss(**kwargs)


def test_natural_range_follows_the_authors_rule():
    from isnet.loss import foreground_relevance, natural_range

    # g = Sum(|H| M) per heatmap, built from constructed heatmaps: one relevance value per image row
    H = torch.zeros(4, 2, 1, 4, 4, dtype=torch.float64)
    M = torch.zeros(4, 1, 1, 4, 4, dtype=torch.float64)
    M[..., :2, :] = 1  # foreground: the top two rows (8 pixels)
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], dtype=torch.float64)
    H[..., :2, :] = -(values / 8)[..., None, None, None]  # signs do not matter: absolute relevance
    H[..., 2:, :] = 100.0  # background relevance does not count
    g = foreground_relevance(H, M)
    torch.testing.assert_close(g, values)
    m, s = values.mean().item(), values.std().item()  # 4.5, 2.449 (sample std)
    c1, c2 = natural_range(g)
    assert c1 == pytest.approx(max(m / 5, m - 3 * s)) and c1 == pytest.approx(0.9)  # m - 3 s < 0: m / 5 wins
    assert c2 == pytest.approx(min(25 * c1, m + 3 * s)) and c2 == pytest.approx(m + 3 * s)
    # a narrow spread: C1 = m - 3 s; a wide one capped by C2 = 25 C1
    narrow = torch.tensor([10.0, 10.2, 9.8, 10.1, 9.9], dtype=torch.float64)
    s = narrow.std().item()
    assert natural_range(narrow) == pytest.approx((10 - 3 * s, 10 + 3 * s))
    wide = torch.tensor([0.0] * 99 + [100.0], dtype=torch.float64)  # m = 1, s = 10
    c1, c2 = natural_range(wide)
    assert c1 == pytest.approx(0.2) and c2 == pytest.approx(5.0)


def test_natural_range_rejects_what_gives_no_range():
    from isnet.loss import natural_range

    with pytest.raises(ValueError, match="at least 2"):
        natural_range(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="empty"):
        natural_range(torch.zeros(6))
    with pytest.raises(ValueError, match="NaN"):
        natural_range(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="no range"):
        natural_range(torch.full((5,), 2.0))  # std 0: C1 = C2 = 2


def test_p_override_and_loss_without_the_foreground_term():
    logits, labels = torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 1, 1])
    H = torch.randn(3, 2, 1, 8, 8, dtype=torch.float64)
    M = torch.zeros(3, 8, 8, dtype=torch.float64)
    M[:, 2:6, 2:6] = 1
    loss = ISNetLoss(0.7, 0.9, C1=50.0, C2=60.0)  # the foreground term is far from zero here
    full, at_p0 = loss(logits, labels, H, M), loss(logits, labels, H, M, P=0.0)
    torch.testing.assert_close(at_p0.total, full.classification)
    at_half = loss(logits, labels, H, M, P=0.5)
    torch.testing.assert_close(at_half.total, 0.5 * full.classification + 0.5 * full.heatmap)
    assert full.foreground > 0
    no_l2 = loss(logits, labels, H, M, foreground=False)
    assert no_l2.foreground == 0
    torch.testing.assert_close(no_l2.total, 0.3 * full.classification + 0.7 * full.background)
    with pytest.raises(ValueError, match="P must lie"):
        loss(logits, labels, H, M, P=1.5)
