"""Synthetic background bias (Appendices E.1, E.4, E.5): white shapes in the image corners.

Each class is tied to a shape (square, triangle, circle) and a corner; the shape's
side is 10% of the image size.  Variants of a dataset:

* ``biased``: every image carries the shape(s) of its class(es), as in training;
* ``standard``: no shapes;
* ``deceiving``: single-label, each image carries the shape of another class (the
  assignment shifted by one class, each shape staying in its own corner);
  multi-label, a label's shape is present exactly when the label is absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

SHAPES = ("square", "triangle", "circle")
CORNERS = ("top_left", "bottom_right", "bottom_left", "top_right")
VARIANTS = ("biased", "standard", "deceiving")


def shape_stencil(shape: str, side: int) -> Tensor:
    """A ``(side, side)`` bool stencil of a filled square, upward triangle or circle."""
    if side < 1:
        raise ValueError(f"shape side must be >= 1 pixel, got {side}")
    centre = (side - 1) / 2
    yy, xx = torch.meshgrid(torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij")
    if shape == "square":
        return torch.ones(side, side, dtype=torch.bool)
    if shape == "circle":
        return (yy - centre) ** 2 + (xx - centre) ** 2 <= (side / 2) ** 2
    if shape == "triangle":
        # apex at the top centre, base on the bottom row
        half_width = (yy + 1) / side * (side / 2)
        return (xx - centre).abs() <= half_width
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


@dataclass(frozen=True)
class ShapeBias:
    """The class -> (shape, corner) assignment.

    Args:
        shapes, corners: one entry per class; default: class k gets ``SHAPES[k % 3]``
            in ``CORNERS[k % 4]``.
        fraction: side of a shape as a fraction of the image size (the paper's 10%).
    """

    shapes: tuple[str, ...]
    corners: tuple[str, ...]
    fraction: float = 0.1

    @classmethod
    def default(cls, num_classes: int, fraction: float = 0.1) -> "ShapeBias":
        if not 2 <= num_classes <= 4:
            raise ValueError(f"the default shape bias ties 2 to 4 classes to distinct corners, got {num_classes}")
        return cls(
            tuple(SHAPES[k % len(SHAPES)] for k in range(num_classes)),
            tuple(CORNERS[k % len(CORNERS)] for k in range(num_classes)),
            fraction,
        )

    def __post_init__(self) -> None:
        if len(self.shapes) != len(self.corners):
            raise ValueError("need one corner per shape")
        for s in self.shapes:
            if s not in SHAPES:
                raise ValueError(f"unknown shape {s!r}; choose from {SHAPES}")
        for c in self.corners:
            if c not in CORNERS:
                raise ValueError(f"unknown corner {c!r}; choose from {CORNERS}")
        if not 0 < self.fraction < 0.5:
            raise ValueError(f"shape fraction must lie in (0, 0.5), got {self.fraction}")

    @property
    def num_classes(self) -> int:
        return len(self.shapes)

    def draw(self, image: Tensor, k: int) -> Tensor:
        """Copy of ``image`` ``(C, H, W)`` in [0, 1] with class ``k``'s white shape in its corner."""
        rows, cols = self.region(k, *image.shape[1:])
        stencil = shape_stencil(self.shapes[k], rows.stop - rows.start)
        out = image.clone()
        out[:, rows, cols][:, stencil] = 1.0
        return out

    def region(self, k: int, height: int, width: int) -> tuple[slice, slice]:
        """Rows and columns covered by class ``k``'s shape box."""
        side = max(1, round(self.fraction * min(height, width)))
        margin = max(1, side // 2)
        top = margin if self.corners[k].startswith("top") else height - margin - side
        left = margin if self.corners[k].endswith("left") else width - margin - side
        return slice(top, top + side), slice(left, left + side)

    def apply(self, image: Tensor, label: int | Sequence[int] | Tensor, variant: str, multilabel: bool = False) -> Tensor:
        """The image in the given variant.

        Args:
            image: ``(C, H, W)`` in [0, 1].
            label: class index (single-label) or a 0/1 vector of length K (multi-label).
            variant: ``biased``, ``standard`` or ``deceiving``.
        """
        if variant not in VARIANTS:
            raise ValueError(f"unknown bias variant {variant!r}; choose from {VARIANTS}")
        if variant == "standard":
            return image
        if multilabel:
            present = [bool(v) for v in torch.as_tensor(label).flatten().tolist()]
            if len(present) != self.num_classes:
                raise ValueError(f"multi-label target has {len(present)} entries for {self.num_classes} shapes")
            drawn = [k for k, p in enumerate(present) if p == (variant == "biased")]
        else:
            k = int(label)
            if not 0 <= k < self.num_classes:
                raise ValueError(f"label {k} has no shape; the bias covers {self.num_classes} classes")
            drawn = [k if variant == "biased" else (k + 1) % self.num_classes]
        for j in drawn:
            image = self.draw(image, j)
        return image
