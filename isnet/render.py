"""Heatmaps as pictures: red positive, blue negative, white zero relevance (the paper's Figures 1 and 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image  # noqa: E402
from torch import Tensor  # noqa: E402

_CMAP = colormaps["bwr"]


def _to_numpy(a: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(a, Tensor):
        a = a.detach().to("cpu").float().numpy()
    return np.asarray(a, dtype=np.float64)


def _to_map(heatmap: Tensor | np.ndarray) -> np.ndarray:
    """``(C, H, W)`` or ``(H, W)`` -> ``(H, W)``, channels summed (relevance is additive)."""
    h = _to_numpy(heatmap)
    if h.ndim == 3:
        h = h.sum(axis=0)
    if h.ndim != 2:
        raise ValueError(f"a heatmap must have shape (C, H, W) or (H, W), got {h.shape}")
    if not np.isfinite(h).all():
        raise ValueError("the heatmap contains NaN or infinite values")
    return h


def _scaled(h: np.ndarray, scale: float | None) -> np.ndarray:
    """Relevance mapped to [-1, 1] by ``scale`` (default: the map's largest absolute value)."""
    scale = float(np.abs(h).max()) if scale is None else float(scale)
    return np.clip(h / scale, -1.0, 1.0) if scale > 0 else np.zeros_like(h)


def heatmap_to_rgb(heatmap: Tensor | np.ndarray, *, scale: float | None = None) -> np.ndarray:
    """Colour a heatmap: red positive, blue negative, white zero.

    Args:
        heatmap: ``(C, H, W)`` (channels summed) or ``(H, W)`` relevance.
        scale: relevance shown at full colour; default the map's largest ``|value|``.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    v = _scaled(_to_map(heatmap), scale)
    return (_CMAP((v + 1.0) / 2.0)[..., :3] * 255).round().astype(np.uint8)


def image_to_rgb(image: Tensor | np.ndarray) -> np.ndarray:
    """``(C, H, W)`` image with values in [0, 1] (C = 1 or 3) -> ``(H, W, 3)`` uint8."""
    a = _to_numpy(image)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"an image must have shape (1 or 3, H, W), got {a.shape}")
    a = np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a
    return (np.clip(a.transpose(1, 2, 0), 0.0, 1.0) * 255).round().astype(np.uint8)


def overlay_rgb(
    image: Tensor | np.ndarray, heatmap: Tensor | np.ndarray, *, scale: float | None = None, alpha: float = 0.8
) -> np.ndarray:
    """The heatmap's colours over a grey version of the image, opaque where relevance is strong.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.
    """
    grey = image_to_rgb(image).astype(np.float64).mean(axis=2, keepdims=True).repeat(3, axis=2)
    v = _scaled(_to_map(heatmap), scale)
    if v.shape != grey.shape[:2]:
        raise ValueError(f"image {grey.shape[:2]} and heatmap {v.shape} differ in size")
    colour = _CMAP((v + 1.0) / 2.0)[..., :3] * 255
    weight = alpha * np.abs(v)[..., None]
    return ((1 - weight) * grey + weight * colour).round().astype(np.uint8)


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an ``(H, W, 3)`` uint8 array as PNG, creating folders as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _save(fig: plt.Figure, path: str | Path, title: str | None, hide_ticks: np.ndarray | None = None) -> Path:
    """Add the title, write the figure as PNG (creating folders) and close it."""
    for ax in (hide_ticks.flat if hide_ticks is not None else ()):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    # leave the top strip to the title so that it does not cover the column labels
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()) if title else None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def heatmap_grid(
    path: str | Path,
    images: Tensor | np.ndarray,
    heatmaps: Tensor | np.ndarray,
    *,
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """A figure of images and their heatmaps: one row per image, the input then one
    column per explained class.

    Args:
        images: ``(N, C, H, W)`` in [0, 1].
        heatmaps: ``(N, K, C, H, W)``; each map scaled by its own largest ``|value|``.
        row_labels: N labels written left of each row (e.g. model or true class).
        column_labels: K labels above the heatmap columns (e.g. class names).
    """
    imgs, maps = _to_numpy(images), _to_numpy(heatmaps)
    if imgs.ndim != 4 or maps.ndim != 5 or maps.shape[0] != imgs.shape[0]:
        raise ValueError(f"need images (N, C, H, W) and heatmaps (N, K, C, H, W), got {imgs.shape} and {maps.shape}")
    n, k = maps.shape[:2]
    fig, axes = plt.subplots(n, k + 1, figsize=(1.8 * (k + 1), 1.8 * n + (0.4 if title else 0)), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(image_to_rgb(imgs[i]))
        for j in range(k):
            axes[i, j + 1].imshow(heatmap_to_rgb(maps[i, j]))
        if row_labels is not None:
            axes[i, 0].set_ylabel(row_labels[i], fontsize=9)
    axes[0, 0].set_title("input", fontsize=9)
    for j in range(k):
        axes[0, j + 1].set_title(column_labels[j] if column_labels is not None else f"class {j}", fontsize=9)
    return _save(fig, path, title, axes)


def model_heatmap_grid(
    path: str | Path,
    images: Tensor | np.ndarray,
    heatmaps: Tensor | np.ndarray,
    *,
    model_names: Sequence[str],
    column_labels: Sequence[str],
    title: str | None = None,
) -> Path:
    """Figures 1 and 2 of the paper: the input images in the first row, then one row of
    heatmaps per model with its name on the left; each column's label (e.g. the true
    class) above it.

    Args:
        images: ``(N, C, H, W)`` in [0, 1].
        heatmaps: ``(M, N, C, H, W)`` for M models; each map scaled by its own largest ``|value|``.
        model_names: M row labels.
        column_labels: N column labels.
    """
    imgs, maps = _to_numpy(images), _to_numpy(heatmaps)
    if imgs.ndim != 4 or maps.ndim != 5 or maps.shape[1] != imgs.shape[0]:
        raise ValueError(f"need images (N, C, H, W) and heatmaps (M, N, C, H, W), got {imgs.shape} and {maps.shape}")
    m, n = maps.shape[:2]
    if len(model_names) != m or len(column_labels) != n:
        raise ValueError(f"need {m} model names and {n} column labels, got {len(model_names)} and {len(column_labels)}")
    fig, axes = plt.subplots(m + 1, n, figsize=(1.7 * n + 0.8, 1.7 * (m + 1) + (0.4 if title else 0)), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(image_to_rgb(imgs[j]))
        axes[0, j].set_title(column_labels[j], fontsize=9)
        for i in range(m):
            axes[i + 1, j].imshow(heatmap_to_rgb(maps[i, j]))
    axes[0, 0].set_ylabel("input", fontsize=9)
    for i, name in enumerate(model_names):
        axes[i + 1, 0].set_ylabel(name, fontsize=9)
    return _save(fig, path, title, axes)


def read_log(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Epoch-level values of a Lightning ``CSVLogger`` ``metrics.csv``: ``{column: [(epoch, value)]}``."""
    import csv

    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = row.get("epoch", "")
            if epoch == "":
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or value in ("", None):
                    continue
                series.setdefault(key, []).append((int(float(epoch)), float(value)))
    return series


def training_curves(path: str | Path, logs: dict[str, str | Path], *, title: str | None = None) -> Path:
    """Training and validation losses per epoch from each model's ``metrics.csv``.

    One panel per quantity found (``loss`` = L_IS, ``L_C``, ``L1``, ``L2``, ``accuracy``), one
    colour per model, solid for training and dashed for validation.

    Args:
        logs: ``{model name: path of its metrics.csv}``.
    """
    data = {name: read_log(p) for name, p in logs.items()}
    quantities = [q for q in ("loss", "L_C", "L1", "L2", "accuracy")
                  if any(f"train/{q}" in d or f"val/{q}" in d for d in data.values())]
    if not quantities:
        raise ValueError(f"no train/ or val/ columns in the logs {list(map(str, logs.values()))}")
    fig, axes = plt.subplots(1, len(quantities), figsize=(3.2 * len(quantities), 2.8), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, q in zip(axes[0], quantities):
        for c, (name, d) in enumerate(data.items()):
            for stage, style in (("train", "-"), ("val", "--")):
                points = d.get(f"{stage}/{q}")
                if points:
                    e, v = zip(*points)
                    ax.plot(e, v, style, marker=".", color=colours[c % len(colours)], label=f"{name} {stage}")
        ax.set_title({"loss": "loss (L_IS)"}.get(q, q), fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=6)
    return _save(fig, path, title)
