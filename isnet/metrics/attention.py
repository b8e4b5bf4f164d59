"""How much of a heatmap's relevance lies in the background (beyond the paper).

Shapes: ``heatmaps`` are ``(N, C, H, W)`` or ``(N, H, W)`` relevance for one explained
class per image; ``masks`` are ``(N, 1, H, W)`` or ``(N, H, W)`` with nonzero =
foreground, of the same height and width.  Every function returns one value per image,
``(N,)``; an image whose mask is empty, or whose heatmap has none of the relevance the
metric needs, gets NaN (it carries no information) and :func:`attention_summary`
leaves it out and counts it.  An empty batch (N = 0, e.g. the maps of a multi-label
batch without positive labels) gives empty ``(0,)`` results, and its summary has
``n = 0`` and ``None`` for the undefined mean and standard deviation.
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("background_share", "mass_accuracy", "rank_accuracy")


def _prepare(heatmaps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C, H*W)`` float heatmaps and ``(N, H*W)`` boolean masks."""
    h = np.asarray(heatmaps, dtype=np.float64)
    m = np.asarray(masks)
    if h.ndim == 3:
        h = h[:, None]
    if m.ndim == 4:
        if m.shape[1] != 1:
            raise ValueError(f"masks must have one channel, got shape {m.shape}")
        m = m[:, 0]
    if h.ndim != 4 or m.ndim != 3:
        raise ValueError(f"need heatmaps (N, C, H, W) and masks (N, 1, H, W), got {h.shape} and {m.shape}")
    if h.shape[0] != m.shape[0] or h.shape[2:] != m.shape[1:]:
        raise ValueError(f"heatmaps {h.shape} and masks {m.shape} differ in batch or spatial size")
    if not np.isfinite(h).all():
        raise ValueError("heatmaps contain NaN or infinite values")
    pixels = h.shape[2] * h.shape[3]  # explicit: -1 cannot be inferred when N = 0
    return h.reshape(h.shape[0], h.shape[1], pixels), m.reshape(m.shape[0], pixels) != 0


def _share(part: np.ndarray, total: np.ndarray, valid: np.ndarray) -> np.ndarray:
    ok = valid & (total > 0)
    return np.where(ok, part / np.where(ok, total, 1.0), np.nan)


def background_share(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of the absolute relevance (every channel and pixel) that lies outside the mask.

    0 means all relevance is on the foreground; 1 means all of it is on the background.
    """
    h, m = _prepare(heatmaps, masks)
    a = np.abs(h).sum(axis=1)
    return _share((a * ~m).sum(1), a.sum(1), m.any(1))


def relevance_mass_accuracy(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Positive relevance inside the mask divided by all positive relevance.

    Pixel relevance is the sum over channels; only its positive part counts.
    """
    h, m = _prepare(heatmaps, masks)
    pos = np.clip(h.sum(axis=1), 0, None)
    return _share((pos * m).sum(1), pos.sum(1), m.any(1))


def relevance_rank_accuracy(heatmaps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Share of the ``k = |mask|`` most relevant pixels (channel-summed relevance) that lie in the mask.

    Ties are broken at random and the expected share is returned, so the value does not
    depend on the order of the pixels (sparse LRP maps have many exact zeros).  With
    ``v`` the k-th largest relevance, the pixels above ``v`` are all among the top k,
    and the ``k - #above`` places left go to a uniformly random subset of the pixels
    equal to ``v``, of which a share ``in-mask tied / tied`` lies in the mask:

        ``(in-mask above + in-mask tied / tied * (k - #above)) / k``.

    NaN for an empty mask or an all-zero map.
    """
    h, m = _prepare(heatmaps, masks)
    r = torch.from_numpy(np.ascontiguousarray(h.sum(axis=1)))  # (N, P) float64; views may have negative strides
    inside = torch.from_numpy(np.ascontiguousarray(m))
    k = inside.sum(dim=1)  # (N,)
    if r.shape[0] == 0 or r.shape[1] == 0:
        return np.full(r.shape[0], np.nan)
    ordered = torch.sort(r, dim=1, descending=True).values
    kth = ordered.gather(1, (k - 1).clamp(min=0)[:, None])  # (N, 1): the k-th largest value
    above, tied = r > kth, r == kth
    n_above = above.sum(dim=1)
    in_above = (above & inside).sum(dim=1)
    in_tied = (tied & inside).sum(dim=1)
    n_tied = tied.sum(dim=1)  # >= 1: kth is one of the values
    expected = in_above + in_tied.double() / n_tied * (k - n_above)
    valid = (k > 0) & (r != 0).any(dim=1)
    return torch.where(valid, expected / k.clamp(min=1), torch.full_like(expected, float("nan"))).numpy()


def attention_metrics(heatmaps: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """All three per-image metrics: ``{name: (N,)}`` for the names in :data:`METRICS` (``(0,)`` when N = 0)."""
    return {
        "background_share": background_share(heatmaps, masks),
        "mass_accuracy": relevance_mass_accuracy(heatmaps, masks),
        "rank_accuracy": relevance_rank_accuracy(heatmaps, masks),
    }


def attention_summary(values: dict[str, np.ndarray]) -> dict:
    """``{name: {"mean", "std", "n", "skipped"}}`` over the images that have a value.

    ``mean`` is ``None`` when no image has a value (also for no images at all) and ``std``
    when fewer than two have one.
    """
    out = {}
    for name, v in values.items():
        v = np.asarray(v, dtype=np.float64)
        ok = v[np.isfinite(v)]
        out[name] = {
            "mean": float(ok.mean()) if len(ok) else None,
            "std": float(ok.std(ddof=1)) if len(ok) > 1 else None,
            "n": int(len(ok)),
            "skipped": int(len(v) - len(ok)),
        }
    return out
