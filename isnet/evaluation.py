"""Run trained models on test sets and compute their statistics (Appendix J) and
background attention.

The statistics themselves are pure functions in :mod:`isnet.metrics`; this module
feeds them: it runs a model over a dataset (items as produced by
:class:`~isnet.data.MaskedImageDataset`: ``image``, ``mask``, ``label``), keeps its
outputs, and explains each decision with LRP to measure how much relevance falls in
the background, and swaps backgrounds between test images to see whether decisions
follow them (:func:`background_swap_test`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from scipy.special import expit, softmax
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .lrp import LRPSettings
from .metrics import attention_metrics, attention_summary, best_thresholds, evaluate_scores
from .metrics.classification import multilabel_metrics, single_label_metrics

Explainer = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``images (B, C, H, W) -> (logits (B, K), heatmaps (B, K, C, H, W))``."""


def lrp_explainer(model: nn.Module, settings: LRPSettings | None = None) -> Explainer:
    """LRP heatmaps (the engine's rules, Alg. 1 step 2c) as an :data:`Explainer`.

    Args:
        model: the classifier to explain, ``images (B, C, H, W) -> logits (B, K)``.
        settings: epsilon and the zB bounds (default: the paper's, :mod:`isnet.defaults`).

    Returns:
        ``explain(images, classes=None) -> (logits (B, K), heatmaps (B, K', C, H, W))``, without
        gradients: every class's heatmap, or those of ``classes`` (see :class:`isnet.LRPGraph`).
    """
    from .lrp import LRPGraph

    graph = LRPGraph(model, settings=settings)

    def explain(images: Tensor, classes: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            return graph(images, classes=classes)

    return explain


@dataclass
class Outputs:
    """A model's outputs on one test set.

    Attributes:
        scores: ``(N, K)`` logits.
        labels: ``(N,)`` class indices or ``(N, K)`` 0/1 targets.
        attention: per-image background-attention metrics ``{name: (N,)}`` (NaN where the
            image has no mask), or ``None`` when no heatmaps were computed.
    """

    scores: np.ndarray
    labels: np.ndarray
    attention: dict[str, np.ndarray] | None = None


def explained_maps(heatmaps: Tensor, labels: Tensor, multilabel: bool) -> tuple[Tensor, Tensor]:
    """The heatmaps of the true classes and the index of the image each belongs to.

    Single-label: one map per image, of its class.  Multi-label: one map per positive
    label of each image.

    Args:
        heatmaps: ``(B, K, C, H, W)``.
        labels: ``(B,)`` indices or ``(B, K)`` 0/1 targets.

    Returns:
        ``(maps (M, C, H, W), image (M,))``.
    """
    if multilabel:
        image, k = torch.nonzero(labels > 0.5, as_tuple=True)
    else:
        image = torch.arange(len(labels), device=heatmaps.device)
        k = labels.long()
    return heatmaps[image, k], image


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU if it has none)."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def collect_outputs(model: nn.Module, dataset: Dataset, *, multilabel: bool = False, batch_size: int = 64,
                    explainer: Explainer | None = None) -> Outputs:
    """Run ``model`` (in eval mode) over ``dataset``.

    The images go to the device of the model's parameters (the CPU for a model without
    any); the outputs come back to the CPU.  With an ``explainer``, each true class's
    heatmap is compared with the image's mask (:func:`isnet.metrics.attention_metrics`);
    for multi-label tasks the values of an image are averaged over its positive labels.
    """
    model.eval()
    device = model_device(model)
    scores, labels, attention = [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images, y = batch["image"].to(device), batch["label"]
        if explainer is None:
            with torch.no_grad():
                logits = model(images)
        else:
            logits, heatmaps = explainer(images)
            maps, owner = explained_maps(heatmaps, y.to(heatmaps.device), multilabel)
            owner = owner.cpu()
            per_map = attention_metrics(maps.cpu().numpy(), batch["mask"][owner].numpy())
            attention.append({name: _mean_per_image(v, owner.numpy(), len(y)) for name, v in per_map.items()})
        scores.append(logits.detach().float().cpu())
        labels.append(y)
    att = ({name: np.concatenate([a[name] for a in attention]) for name in attention[0]} if attention else None)
    return Outputs(torch.cat(scores).numpy(), torch.cat(labels).numpy(), att)


def _mean_per_image(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """Mean of the finite ``values`` of each image ``0..n-1`` (``owner`` gives each value's image); NaN if none."""
    finite = np.isfinite(values)
    total = np.bincount(owner[finite], weights=values[finite], minlength=n)
    count = np.bincount(owner[finite], minlength=n)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def validation_thresholds(model: nn.Module, dataset: Dataset, *, batch_size: int = 64) -> np.ndarray:
    """Multi-label decision thresholds that maximise macro-F1 on ``dataset`` (Appendix F.2); ``(K,)``."""
    out = collect_outputs(model, dataset, multilabel=True, batch_size=batch_size)
    return best_thresholds(out.labels, 1 / (1 + np.exp(-out.scores)))


def evaluate(model: nn.Module, test_sets: Mapping[str, Dataset], *, class_names: Sequence[str],
             multilabel: bool = False, thresholds: np.ndarray | None = None, explainer: Explainer | None = None,
             batch_size: int = 64, progress: bool = False, background_swap: bool = True,
             **stats: Any) -> dict[str, dict]:
    """All statistics of ``model`` on every test set.

    Args:
        test_sets: ``{name: dataset}``.
        thresholds: multi-label decision thresholds (see :func:`validation_thresholds`).
        explainer: heatmaps for the background-attention metrics (e.g. :func:`lrp_explainer`);
            ``None`` skips them.
        background_swap: add the background-swap test (:func:`background_swap_test`, donors
            drawn with ``stats["seed"]``, default 0).
        stats: passed to :func:`isnet.metrics.evaluate_scores` (``prior``, ``draws``, ``seed``,
            ``confidence``).

    Returns:
        ``{test_set: metrics}`` with the keys of :func:`isnet.metrics.evaluate_scores`, plus
        ``attention`` when an explainer is given and ``background_swap`` unless switched off.
    """
    from tqdm import tqdm

    results = {}
    for name, dataset in tqdm(list(test_sets.items()), desc="testing", disable=not progress, leave=False):
        out = collect_outputs(model, dataset, multilabel=multilabel, batch_size=batch_size, explainer=explainer)
        metrics = evaluate_scores(out.labels, out.scores, class_names=class_names, multilabel=multilabel,
                                  thresholds=thresholds, **stats)
        if out.attention is not None:
            metrics["attention"] = attention_summary(out.attention)
        if background_swap:
            metrics["background_swap"] = background_swap_test(
                model, dataset, out.scores, num_classes=len(class_names), multilabel=multilabel,
                thresholds=thresholds, seed=stats.get("seed", 0), batch_size=batch_size)
        results[name] = metrics
    return results


def _decisions(scores: np.ndarray, multilabel: bool, thresholds: np.ndarray | None) -> np.ndarray:
    """Decisions as :func:`isnet.metrics.evaluate_scores` takes them: ``(N,)`` highest-scoring
    class, or ``(N, K)`` 0/1 with ``sigmoid(score) >= threshold`` (default 0.5)."""
    s = np.asarray(scores, dtype=np.float64)
    if not multilabel:
        return softmax(s, axis=1).argmax(1)
    t = np.full(s.shape[1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    return (expit(s) >= t).astype(int)


def _macro_f1(y: np.ndarray, decisions: np.ndarray, num_classes: int, multilabel: bool) -> float:
    if multilabel:
        return multilabel_metrics(y, decisions)["macro_f1"]
    return single_label_metrics(y, decisions, num_classes)["macro_f1"]


def background_swap_test(model: nn.Module, dataset: Dataset, scores: np.ndarray, *, num_classes: int,
                         multilabel: bool = False, thresholds: np.ndarray | None = None, seed: int = 0,
                         batch_size: int = 64, sigma: float | None = None) -> dict[str, dict]:
    """Macro-F1 and flip rate of ``model`` on test images whose background is another image's.

    Each usable image of ``dataset`` (a mask with foreground and background) keeps its
    foreground over the background of a donor from the same dataset (see
    :mod:`isnet.data.swap`): ``mixed_rand`` a random other image, ``mixed_next`` one of the
    next class (single-label tasks only).

    Args:
        dataset: items ``{"image", "mask", "label"}``, read twice more (no random augmentation).
        scores: ``(N, K)`` the model's logits on the original images of ``dataset``, in order
            (:attr:`Outputs.scores`).
        thresholds: multi-label decision thresholds (default 0.5 on probabilities).
        seed: seed of the donor draws.
        sigma: blur inside a donor's filled-in foreground, pixels (default
            :data:`isnet.data.swap.FILL_SIGMA`).

    Returns:
        ``{variant: {"macro_f1", "original_macro_f1", "flip_rate", "n", "skipped"}}``:
        macro-F1 on the swapped images and on the same images unswapped, the share of
        those images whose decision changed (multi-label: any label's decision), the number
        of images used and of those left out (no mask, a mask without background, or no
        donor).  With ``n = 0`` the three rates are ``None``.
    """
    from .data.swap import FILL_SIGMA, SwappedBackgrounds, swap_plan  # the data package loads Lightning

    scores = np.asarray(scores)
    if scores.shape[0] != len(dataset):
        raise ValueError(f"scores have {scores.shape[0]} rows for a dataset of {len(dataset)} items")
    plan = swap_plan(dataset, num_classes=num_classes, multilabel=multilabel, seed=seed)
    result = {}
    for variant, (recipients, donors) in plan.pairs.items():
        entry: dict[str, Any] = {"macro_f1": None, "original_macro_f1": None, "flip_rate": None,
                                 "n": int(len(recipients)), "skipped": plan.skipped(variant)}
        if len(recipients):
            swapped = SwappedBackgrounds(dataset, recipients, donors, sigma=FILL_SIGMA if sigma is None else sigma)
            out = collect_outputs(model, swapped, multilabel=multilabel, batch_size=batch_size)
            before = _decisions(scores[recipients], multilabel, thresholds)
            after = _decisions(out.scores, multilabel, thresholds)
            y = out.labels.astype(int)
            changed = (before != after).any(axis=1) if multilabel else before != after
            entry.update(macro_f1=_macro_f1(y, after, num_classes, multilabel),
                         original_macro_f1=_macro_f1(y, before, num_classes, multilabel),
                         flip_rate=float(changed.mean()))
        result[variant] = entry
    return result


def _first_class(y: Tensor, multilabel: bool) -> int | None:
    """The class index of a single-label target, or the first positive label (``None`` if none)."""
    if not multilabel:
        return int(y)
    positive = torch.nonzero(y > 0.5)
    return int(positive[0, 0]) if len(positive) else None


def example_heatmaps(explainers: Mapping[str, Explainer], dataset: Dataset, indices: Sequence[int], *,
                     multilabel: bool = False) -> tuple[Tensor, Tensor, list]:
    """Images and every model's heatmap of each image's (first) true class, for Figure 1 style grids.

    Every image must have a true class (multi-label: at least one positive label).

    Returns:
        ``(images (N, C, H, W), heatmaps (M, N, 1, H, W), classes)`` for M models (relevance
        summed over channels), with the explained class index of each image.
    """
    items = [dataset[i] for i in indices]
    images = torch.stack([it["image"] for it in items])
    classes = [_first_class(it["label"], multilabel) for it in items]
    if None in classes:
        raise ValueError("every example image needs a positive label to explain")
    index = torch.arange(len(items))
    maps = []
    for explain in explainers.values():
        _, h = explain(images)
        # channels summed (as the pictures show them), so maps of 1-channel explainers stack with the rest
        maps.append(h[index, torch.tensor(classes)].detach().float().cpu().sum(1, keepdim=True))
    return images, torch.stack(maps), classes


def pick_examples(dataset: Dataset, num_classes: int, per_class: int = 1, multilabel: bool = False) -> list[int]:
    """Indices of the first ``per_class`` images of each class (single-label), or the first
    images that have some positive label (multi-label), in dataset order."""
    picks: dict[int, list[int]] = {k: [] for k in range(num_classes)}
    for i in range(len(dataset)):
        k = _first_class(dataset[i]["label"], multilabel)
        if k is not None and len(picks[k]) < per_class:
            picks[k].append(i)
        if all(len(v) == per_class for v in picks.values()):
            break
    return [i for k in range(num_classes) for i in picks[k]]
