"""Predictions and heatmaps of an exported model for image files (``isnet predict`` / ``isnet explain``).

Images are read with the preprocessing stored with the model
(:class:`isnet.data.images.Preprocessing`: size, grayscale, equalisation, channels,
square padding), exactly as the data module read the test images the model was
evaluated on.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .data.images import Preprocessing, load_image, read_image


def data_preprocessing(data: dict[str, Any]) -> dict[str, Any]:
    """What :class:`~isnet.data.MaskedImageDataModule` with the settings ``data`` (its keyword
    arguments, the ``data`` section of a config) does to test images, as the preprocessing
    to store with an exported model: ``size``, ``grayscale``, ``equalize``, ``channels``
    and ``square`` (``square_test``: padding to a square), each from ``data`` or the data
    module's default."""
    import inspect

    from .data import MaskedImageDataModule

    defaults = {k: p.default for k, p in inspect.signature(MaskedImageDataModule.__init__).parameters.items()}
    setting = {k: data.get(k, defaults[k]) for k in ("size", "grayscale", "equalize", "channels", "square_test")}
    return {"size": int(setting["size"]), "grayscale": bool(setting["grayscale"]),
            "equalize": bool(setting["equalize"]), "channels": int(setting["channels"]),
            "square": bool(setting["square_test"])}


def model_preprocessing(info: dict[str, Any], size: int | None = None) -> Preprocessing | None:
    """The :class:`Preprocessing` stored with a model (``info`` from :func:`isnet.export.load_deployed`
    or :func:`isnet.backbones.load_model`), with ``size`` overriding the stored side; ``None`` when
    neither gives a size (images are then read at their own size)."""
    prep = dict(info.get("preprocessing") or {})
    side = size or prep.get("size")
    if side is None:
        return None
    channels = int(prep.get("channels", info.get("in_channels", 3)))
    return Preprocessing(size=int(side), grayscale=bool(prep.get("grayscale", False)),
                         equalize=bool(prep.get("equalize", False)), channels=channels,
                         square=bool(prep.get("square", False)))


def read_images(paths: Sequence[Path], prep: Preprocessing | None, channels: int = 3) -> Tensor:
    """Image files as one batch ``(N, C, S, S)`` in [0, 1].

    With ``prep`` every image is read by :func:`isnet.data.images.read_image`; without it
    images keep their own size (``channels`` channels), which must then be the same for all.
    An unreadable file raises a ValueError naming it.
    """
    if prep is not None:
        images = [read_image(p, prep) for p in paths]
    else:
        images = [load_image(p, channels=channels) for p in paths]
        sizes = {tuple(i.shape[1:]) for i in images}
        if len(sizes) > 1:
            raise ValueError(f"the images differ in size ({sorted(sizes)}) and the model stores no input size; "
                             "give one with --size")
    return torch.stack(images)


def probabilities(logits: Tensor, multilabel: bool) -> Tensor:
    """``(N, K)`` logits -> class probabilities: softmax over classes, or a sigmoid per label."""
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


def decisions(probs: Tensor, multilabel: bool, thresholds: Sequence[float] | None = None) -> list[list[int]]:
    """Predicted classes of each row of ``probs (N, K)``: the most probable class, or for
    multi-label models every label whose probability exceeds its threshold (0.5 by default)."""
    if not multilabel:
        return [[int(k)] for k in probs.argmax(1)]
    limit = torch.as_tensor(thresholds if thresholds is not None else [0.5] * probs.shape[1], dtype=probs.dtype)
    return [torch.nonzero(row > limit).flatten().tolist() for row in probs]


def run_network(network: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 8) -> Tensor:
    """Logits ``(N, K)`` of ``network`` on ``images (N, C, H, W)``, ``batch_size`` images at a time."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    with torch.no_grad():
        return torch.cat([network(batch).detach().float().cpu() for batch in images.split(batch_size)])


def heatmaps_of_classes(explainer: Callable[..., tuple[Tensor, Tensor]], images: Tensor, classes: Sequence[int],
                        batch_size: int = 8, per_class: bool = True) -> Tensor:
    """The heatmap of one class per image: ``(N, C, H, W)``, image ``i`` explained for ``classes[i]``.

    With ``per_class`` the explainer takes a ``classes`` argument (LRP) and is run once per
    class on that class's images alone; otherwise it explains every class and the wanted
    one is picked.
    """
    out: list[Tensor | None] = [None] * len(images)
    wanted = torch.as_tensor(list(classes))
    for k in wanted.unique().tolist():
        index = torch.nonzero(wanted == k).flatten()
        for chunk in index.split(batch_size):
            if per_class:
                maps = explainer(images[chunk], classes=[k])[1][:, 0]
            else:
                maps = explainer(images[chunk])[1][:, k]
            for i, m in zip(chunk.tolist(), maps.detach().cpu()):
                out[i] = m
    return torch.stack(out)  # type: ignore[arg-type]


def write_heatmap_pngs(folder: str | Path, paths: Sequence[Path], images: Tensor, heatmaps: Tensor,
                       classes: Sequence[int] | Sequence[Sequence[int]]) -> list[Path]:
    """Write ``<image>_class<k>.png`` (red positive, blue negative) and ``<image>_class<k>_overlay.png``.

    Args:
        paths: the N image files (their stems name the PNGs).
        images: ``(N, C, H, W)`` in [0, 1].
        heatmaps: ``(N, J, C', H, W)``: J heatmaps per image.
        classes: the J class indices of the heatmaps, shared by all images, or one list of J per image.
    """
    from .render import heatmap_to_rgb, overlay_rgb, save_png

    folder = Path(folder)
    written = []
    for i, path in enumerate(paths):
        row = classes[i] if classes and isinstance(classes[0], Sequence) else classes
        for j, k in enumerate(row):  # type: ignore[arg-type]
            written.append(save_png(folder / f"{path.stem}_class{k}.png", heatmap_to_rgb(heatmaps[i, j])))
            save_png(folder / f"{path.stem}_class{k}_overlay.png", overlay_rgb(images[i], heatmaps[i, j]))
    return written


def write_predictions(path: str | Path, paths: Sequence[Path], probs: Tensor, predicted: list[list[int]],
                      class_names: Sequence[str]) -> Path:
    """CSV with one row per image: ``image``, ``predicted_class`` (class name; multi-label:
    the predicted labels joined by ``|``, empty for none), then one probability column per class."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "predicted_class", *class_names])
        for file, p, ks in zip(paths, probs.tolist(), predicted):
            writer.writerow([str(file), "|".join(class_names[k] for k in ks), *(f"{v:.6g}" for v in p)])
    return path
