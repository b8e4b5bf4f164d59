"""Reading images from disk into model inputs: values in [0, 1], shape (C, H, W)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def load_image(path: str | Path, *, channels: int = 3, size: int | None = None) -> Tensor:
    """Load an image as a float tensor ``(channels, size, size)`` with values in [0, 1].

    Args:
        path: image file.
        channels: 3 for RGB (a grayscale image is repeated), 1 for grayscale.
        size: side of the square output (bilinear resize); ``None`` keeps the size.

    Raises:
        ValueError: the file is missing or not a readable image.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None:
                img = img.resize((size, size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.float32) / 255.0
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}") from error
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of image files."""
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
