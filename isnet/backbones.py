"""Backbone classifiers by name, and the model file that ``isnet`` saves and loads.

Every backbone starts from random weights (as in the paper, Appendix F.4);
nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torchvision
from torch import nn

TORCHVISION = (
    "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "resnet18", "resnet34", "resnet50", "resnet101",
    "densenet121", "densenet161", "densenet169", "densenet201",
)  # fmt: skip


class SmallCNN(nn.Module):
    """A small VGG-style CNN for quick experiments on the CPU.

    Blocks (three by default) of convolution, batch norm, ReLU and 2x2 max pooling, then global
    average pooling and a linear classifier.

    Args:
        num_classes: number of logits K.
        in_channels: image channels C.
        width: channels of the first block (doubled in each following block).
        batch_norm: batch norm after each convolution.
        blocks: number of blocks, each halving the spatial size; a feature of the last
            block sees ``3 * 2**blocks - 2`` pixels per side (22 for 3 blocks, 46 for 4).
    """

    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 16, batch_norm: bool = True,
                 blocks: int = 3) -> None:
        super().__init__()
        if not (isinstance(blocks, int) and blocks >= 1):
            raise ValueError(f"small_cnn needs blocks >= 1, got {blocks!r}")
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(blocks):
            out = width * 2**i
            layers.append(nn.Conv2d(channels, out, 3, padding=1))
            layers += [nn.BatchNorm2d(out)] if batch_norm else []
            layers.append(nn.ReLU(inplace=True))
            layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


SMALL_CNN_MIN_BLOCKS = 3


def small_cnn_blocks(size: int) -> int:
    """``small_cnn``'s depth for ``size`` x ``size`` inputs, as ``isnet fit`` sets it when not given.

    The fewest blocks, at least :data:`SMALL_CNN_MIN_BLOCKS`, whose last features see half the
    image side (``3 * 2**blocks - 2 >= size / 2``: 3 blocks up to 44 px, 4 up to 92, 5 up to 188),
    and no more than the halvings that leave at least one pixel.  With 3 blocks on 64 px images
    a standard classifier trained on background-swapped digits reached a macro-F1 of 0.755; with 4,
    0.899 (README "Your data").
    """
    if not (isinstance(size, int) and size >= 1):
        raise ValueError(f"image size must be a positive integer, got {size!r}")
    blocks = SMALL_CNN_MIN_BLOCKS
    while 3 * 2**blocks - 2 < size / 2:
        blocks += 1
    return max(1, min(blocks, size.bit_length() - 1))


def _torchvision(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        if in_channels != 3:
            raise ValueError(f"{name} takes 3-channel images; repeat grayscale images to 3 channels")
        return getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kwargs)

    return build


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {name: _torchvision(name) for name in TORCHVISION}
ARCHITECTURES["small_cnn"] = SmallCNN


def build_backbone(arch: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """A randomly initialised backbone.

    Args:
        arch: one of :data:`ARCHITECTURES` (torchvision's VGG, ResNet, DenseNet names, or ``small_cnn``).
        num_classes: number of logits K.
        in_channels: image channels (torchvision backbones take 3).
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return ARCHITECTURES[arch](num_classes=num_classes, in_channels=in_channels, **kwargs)


def save_model(
    path: str | Path,
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    class_names: list[str] | None = None,
    preprocessing: dict[str, Any] | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    multilabel: bool = False,
    thresholds: list[float] | None = None,
) -> Path:
    """Save a backbone as an isnet model file: architecture, weights and preprocessing.

    ``multilabel`` says whether the logits are independent labels (sigmoid) rather than
    classes (softmax); ``thresholds`` are per-label decision thresholds (default 0.5).

    The file is a ``torch.save`` dictionary that :func:`load_model` reads back
    with ``weights_only=True`` (no pickled code).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": "isnet-model/1",
            "arch": arch,
            "arch_kwargs": dict(arch_kwargs or {}),
            "num_classes": int(num_classes),
            "in_channels": int(in_channels),
            "class_names": list(class_names) if class_names else [str(i) for i in range(num_classes)],
            "preprocessing": dict(preprocessing or {}),
            "multilabel": bool(multilabel),
            "thresholds": [float(t) for t in thresholds] if thresholds is not None else None,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        },
        path,
    )
    return path


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Load an isnet model file written by :func:`save_model`.

    Returns:
        ``(model, info)``: the backbone in eval mode and the file's other fields
        (``arch``, ``num_classes``, ``in_channels``, ``class_names``, ``preprocessing``, and
        ``multilabel``, ``thresholds`` in files written since they were added).
    """
    path = Path(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as error:
        raise ValueError(f"no model file at {path}") from error
    except Exception as error:  # noqa: BLE001 - any unreadable file
        raise ValueError(f"{path} is not an isnet model file: {error}") from error
    if not isinstance(data, dict) or data.get("format") != "isnet-model/1":
        raise ValueError(f"{path} is not an isnet model file (missing format 'isnet-model/1')")
    model = build_backbone(data["arch"], data["num_classes"], data["in_channels"], **data.get("arch_kwargs", {}))
    model.load_state_dict(data["state_dict"])
    model.eval()
    info = {k: v for k, v in data.items() if k != "state_dict"}
    return model, info
