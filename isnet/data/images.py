"""Images and masks from disk into tensors, and the augmentation of Appendix F.1.

Images become float tensors ``(C, S, S)`` with values in [0, 1]; masks become
``(1, S, S)`` float tensors in {0, 1} (nonzero pixels of the mask file are foreground).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision.transforms import InterpolationMode

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class Preprocessing:
    """How images are read (Appendix F.1).

    Args:
        size: side of the square model input, pixels.
        grayscale: read as grayscale and repeat to ``channels`` (the X-ray recipe).
        equalize: histogram equalisation (on the grayscale image, or per RGB channel).
        channels: model input channels (3 for torchvision backbones).
        square: pad to a square with black borders before resizing (the paper does it
            for test images only).
    """

    size: int = 224
    grayscale: bool = False
    equalize: bool = False
    channels: int = 3
    square: bool = False


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error


def equalize_histogram(img: Image.Image) -> Image.Image:
    """Histogram equalisation of an 8-bit image (per channel for RGB):
    ``v -> round(255 (cdf(v) - cdf_min) / (N - cdf_min))``."""
    array = np.asarray(img)
    planes = array[..., None] if array.ndim == 2 else array
    out = np.empty_like(planes)
    for c in range(planes.shape[-1]):
        plane = planes[..., c]
        cdf = np.bincount(plane.ravel(), minlength=256).cumsum()
        lowest = cdf[np.flatnonzero(cdf)[0]]
        span = max(int(cdf[-1] - lowest), 1)
        lut = np.clip(np.round((cdf - lowest) / span * 255), 0, 255).astype(np.uint8)
        out[..., c] = lut[plane]
    return Image.fromarray(out[..., 0] if array.ndim == 2 else out)


def _pad_square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    canvas = Image.new(img.mode, (side, side), 0)
    canvas.paste(img, ((side - w) // 2, (side - h) // 2))
    return canvas


def _to_tensor(img: Image.Image) -> Tensor:
    """An 8-bit PIL image as a ``(C, H, W)`` float tensor in [0, 1]."""
    array = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array[None] if array.ndim == 2 else array.transpose(2, 0, 1)))


def read_image(path: str | Path, prep: Preprocessing) -> Tensor:
    """An image file as ``(prep.channels, size, size)`` float tensor in [0, 1]."""
    img = _open(Path(path))
    img = img.convert("L" if prep.grayscale or prep.channels == 1 else "RGB")
    if prep.equalize:
        img = equalize_histogram(img)
    if prep.square:
        img = _pad_square(img)
    tensor = _to_tensor(img.resize((prep.size, prep.size), Image.BILINEAR))
    if tensor.shape[0] != prep.channels:
        tensor = tensor.expand(prep.channels, -1, -1).clone()
    return tensor


def read_mask(path: str | Path, prep: Preprocessing) -> Tensor:
    """A mask file as ``(1, size, size)`` float tensor in {0, 1} (nonzero = foreground)."""
    img = _open(Path(path)).convert("L")
    if prep.square:
        img = _pad_square(img)
    img = img.resize((prep.size, prep.size), Image.NEAREST)
    return torch.from_numpy((np.asarray(img) > 0).astype(np.float32))[None]


def load_image(path: str | Path, *, channels: int = 3, size: int | None = None) -> Tensor:
    """An image as ``(channels, H, W)`` in [0, 1], resized to ``size`` if given (for ``isnet explain``)."""
    img = _open(Path(path)).convert("L" if channels == 1 else "RGB")
    if size is not None:
        img = img.resize((size, size), Image.BILINEAR)
    return _to_tensor(img)


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of image files."""
    paths = list(paths)
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.exists():
            found.append(p)
        else:
            raise ValueError(f"no such image or folder: {p}")
    if not found:
        raise ValueError("no images found in " + ", ".join(map(str, paths)))
    return found


@dataclass(frozen=True)
class Augmentation:
    """Random translation, rotation and flip, applied identically to image and mask (Appendix F.1).

    Call it as ``augmentation(image, mask)`` for an image and its foreground mask, or use
    :meth:`apply` to move any number of masks (a lesion mask, say) along with the image.

    Args:
        translate: largest shift as a fraction of the size (the paper's 28 px of 224).
        rotate: largest rotation, degrees.
        flip: horizontal flip with probability 0.5.
    """

    translate: float = 0.125
    rotate: float = 40.0
    flip: bool = True

    def __call__(self, image: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Augment ``image (C, H, W)`` and ``mask (1, H, W)`` with the same random transform."""
        image, mask = self.apply(image, mask, generator=generator)
        return image, mask

    def apply(self, image: Tensor, *masks: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """Augment ``image (C, H, W)`` and each mask ``(1, H, W)`` with one random transform.

        Returns ``(image, *masks)``; masks are resampled with nearest-neighbour
        interpolation, so {0, 1} masks stay binary.
        """
        u = torch.rand(4, generator=generator).tolist()
        H, W = image.shape[-2:]
        dx = round((2 * u[0] - 1) * self.translate * W)
        dy = round((2 * u[1] - 1) * self.translate * H)
        angle = (2 * u[2] - 1) * self.rotate
        if self.flip and u[3] < 0.5:
            image, masks = TF.horizontal_flip(image), tuple(TF.horizontal_flip(m) for m in masks)
        if dx or dy or not math.isclose(angle, 0.0):
            image = TF.affine(image, angle=angle, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0],
                              interpolation=InterpolationMode.BILINEAR)
            masks = tuple(TF.affine(m, angle=angle, translate=[dx, dy], scale=1.0, shear=[0.0, 0.0],
                                    interpolation=InterpolationMode.NEAREST) for m in masks)
        return (image, *masks)
