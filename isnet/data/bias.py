"""Synthetic background bias (Appendices E.1, E.4, E.5): white shapes in the image corners,
and the other kinds of background bias of the built-in digits benchmark.

:data:`BIAS_KINDS` lists the kinds: ``shapes`` (this module's :class:`ShapeBias`, drawn
on the fly by the data module; the paper's Table 1 setting), ``scene`` (each class's
backgrounds mostly from its own group of textures) and ``text`` (a class-linked word
somewhere in the background).  ``scene`` and ``text`` are written into the images when
the built-in data are generated (:func:`isnet.data.builtin.generate_digits_on_textures`);
this module holds their class links (:func:`scene_groups`, :data:`WORDS`) and the
drawing helpers (:func:`word_stencil`, :func:`free_positions`).

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

import numpy as np
import torch
from torch import Tensor

SHAPES = ("square", "triangle", "circle")
CORNERS = ("top_left", "bottom_right", "bottom_left", "top_right")
VARIANTS = ("biased", "standard", "deceiving")
BIAS_KINDS = ("shapes", "scene", "text")
# One short word per class (text bias); fixed-width bitmap glyphs, no two words sharing a letter
# in the same place for the first classes.
WORDS = ("sun", "box", "key", "map", "owl", "jet", "cup", "fig", "zoo", "dry")


def check_bias_kind(kind: str) -> str:
    """``kind`` if it is one of :data:`BIAS_KINDS`, else a ``ValueError`` naming the choices."""
    if kind not in BIAS_KINDS:
        raise ValueError(f"unknown bias kind {kind!r}; choose from {', '.join(BIAS_KINDS)}")
    return kind


def deceiving_class(k: int, num_classes: int) -> int:
    """The class whose cue a deceiving image of class ``k`` carries: the next one, ``(k + 1) mod K``."""
    return (k + 1) % num_classes


def scene_groups(num_backgrounds: int, num_classes: int) -> list[list[int]]:
    """Background indices of each class's group (scene bias), dealt round robin.

    Class ``k`` gets backgrounds ``k, k + K, k + 2K, ...``; every background belongs to
    exactly one group.
    """
    if not 2 <= num_classes <= num_backgrounds:
        raise ValueError(f"the scene bias needs 2 to {num_backgrounds} classes (one background group each), "
                         f"got {num_classes}")
    return [list(range(k, num_backgrounds, num_classes)) for k in range(num_classes)]


def word_stencil(word: str, scale: float = 1.0) -> np.ndarray:
    """A ``(h, w)`` bool stencil of ``word`` in PIL's bitmap default font.

    The font's glyphs are 6 x 11 pixels; ``scale`` resizes the stencil (nearest
    neighbour) to ``round(11 * scale)`` rows, at least 1.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not word:
        raise ValueError("the word of a text bias must not be empty")
    if scale <= 0:
        raise ValueError(f"word scale must be positive, got {scale}")
    # the bitmap font (PIL's load_default() became a vector font in Pillow 10.1)
    font = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()
    left, top, right, bottom = font.getbbox(word)
    canvas = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(canvas).text((-left, -top), word, fill=255, font=font)
    if scale != 1.0:
        size = (max(1, round(canvas.width * scale)), max(1, round(canvas.height * scale)))
        canvas = canvas.resize(size, Image.NEAREST)
    return np.asarray(canvas) > 127


def free_positions(mask: np.ndarray, box: tuple[int, int], margin: int = 1) -> np.ndarray:
    """Top-left corners ``(N, 2)`` (row, column) where a ``box`` of ``(h, w)`` pixels lies
    inside the image and, with ``margin`` pixels around it, touches no pixel of ``mask`` ``(H, W)``."""
    h, w = box
    H, W = mask.shape
    if h > H or w > W:
        return np.zeros((0, 2), dtype=int)
    # integral image of the mask: the mask pixels in any rectangle by four look-ups
    padded = np.pad(np.asarray(mask, dtype=bool), margin)
    table = np.pad(padded.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    hh, ww = h + 2 * margin, w + 2 * margin
    counts = table[hh:, ww:] - table[:-hh, ww:] - table[hh:, :-ww] + table[:-hh, :-ww]
    counts = counts[: H - h + 1, : W - w + 1]
    return np.argwhere(counts == 0)


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
            drawn = [k if variant == "biased" else deceiving_class(k, self.num_classes)]
        for j in drawn:
            image = self.draw(image, j)
        return image
