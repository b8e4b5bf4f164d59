"""The built-in radiograph benchmark: stylised chest X-rays from several sources, generated offline.

Each image is a ``size x size`` 8-bit grayscale frontal chest radiograph drawn from
simple shapes: the body silhouette, mediastinum and heart shadow, spine, clavicles,
ribs crossing two dark lung fields, and a faint vascular texture, with random but
plausible anatomy (lung size, shape and position, a slight rotation, exposure).
The foreground mask is the union of both lungs.

Classes (the evidence lies only inside the lungs; pixels outside the lungs are
identical for every class, given the anatomy and the source):

* ``normal``: no lesion;
* ``opacity``: diffuse bilateral opacities, hazy and brighter in the lower and
  central lung zones;
* ``ground_glass``: several small, patchy, soft blobs near the lateral lung borders.

The lesion mask (for methods that use lesion annotations) is the lesion intensity
thresholded inside the lungs; it is empty for ``normal`` images.

Sources play the role of hospitals: each leaves traits (a laterality marker,
collimation borders, a burned-in text line, tone curve and noise level) that lie,
in the default ``background`` variant, outside the lungs only.  Sources A, B and C
make the training data, where class ``k`` comes mostly from source ``k`` so that a
classifier can recognise the class from the background; sources D and E, whose
traits are never seen in training, make the ``external`` test split with balanced
classes.

:data:`VARIANTS` says where the source traits lie:

* ``background`` (default): only outside the lung masks, so a model that uses only
  the lungs cannot tell the sources apart; this is the background bias that
  mask-based methods (ISNet, the segmentation pipeline, ...) are meant to remove;
* ``in-lung``: the source's tone curve and noise level change the lungs too (as a
  scanner's global contrast and noise do).  Part of the source signal then lies
  inside the foreground mask, out of reach of any mask-based method.

The dataset is written as a normal dataset folder (PNG files and ``manifest.csv``
with the extra columns ``lesion`` and ``source``), so it goes through exactly the
same code as a user's data.
"""

from __future__ import annotations

import csv
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ..jsonio import write_json

CLASSES = ("normal", "opacity", "ground_glass")
TRAINING_SOURCES = ("A", "B", "C")
EXTERNAL_SOURCES = ("D", "E")
SPLITS = ("train", "val", "test", "external")
VARIANTS = ("background", "in-lung")  # where the source traits lie; see the module docstring
_VERSION = 1


@dataclass(frozen=True)
class Source:
    """The traits one source (a hospital, a scanner) leaves outside the lungs (and, in the
    ``in-lung`` variant, its tone curve and noise inside them too).

    Lengths are fractions of the image side; grey levels lie in [0, 1].

    Args:
        gamma, gain, offset: tone curve ``offset + gain * x ** gamma``.
        noise: standard deviation of the additive Gaussian noise.
        border: widths of the black collimation borders (top, right, bottom, left).
        marker, boxed: laterality marker text, drawn white, or black on a white box.
        marker_at: (x, y) of the marker's top-left corner (jittered per image).
        text, text_level: a burned-in text line and its grey level.
        text_at: (x, y) of the text's top-left corner.
    """

    gamma: float
    gain: float
    offset: float
    noise: float
    border: tuple[float, float, float, float]
    marker: str
    marker_at: tuple[float, float]
    boxed: bool
    text: str
    text_at: tuple[float, float]
    text_level: float = 0.9


SOURCES: dict[str, Source] = {
    "A": Source(0.85, 1.0, 0.05, 0.012, (0.035, 0, 0.035, 0), "R", (0.06, 0.08), False, "ST.ANNE", (0.05, 0.86)),
    "B": Source(1.3, 1.05, -0.02, 0.035, (0, 0.07, 0, 0.07), "L", (0.82, 0.07), False, "PORTABLE", (0.28, 0.05)),
    "C": Source(1.0, 0.8, 0.1, 0.025, (0, 0, 0, 0), "L", (0.84, 0.83), True, "AP SUP", (0.04, 0.06), 0.75),
    # External sources: marker positions, border layouts and text placements unseen in training.
    "D": Source(0.95, 1.15, -0.04, 0.03, (0.05, 0.05, 0.05, 0.05), "R", (0.09, 0.81), True, "CR-2 0417", (0.5, 0.08)),
    "E": Source(1.15, 0.95, 0.0, 0.018, (0, 0, 0.11, 0), "LT", (0.44, 0.06), False, "E.MED 3", (0.3, 0.905), 1.0),
}  # fmt: skip

# Grey levels of the anatomy before exposure and tone (air outside the body ~0).
_AIR, _SOFT_TISSUE, _LUNG_DARKENING = 0.04, 0.5, 0.3
_NEUTRAL_NOISE = 0.02  # noise level inside the lungs, the same for every source


class Radiograph(NamedTuple):
    """One rendered sample: ``image (size, size)`` uint8, ``lungs`` and ``lesion`` ``(size, size)`` bool."""

    image: np.ndarray
    lungs: np.ndarray
    lesion: np.ndarray


@dataclass(frozen=True)
class Anatomy:
    """Random patient anatomy; lengths are fractions of the image side, angles degrees."""

    shift: tuple[float, float]  # (x, y) of the chest centre relative to the image centre
    angle: float
    body: tuple[float, float]  # semi-axes of the thorax silhouette
    lung_gap: float  # distance of each lung's centre from the midline
    lung_size: tuple[float, float, float, float]  # semi-axes (x, y) of the right, then the left lung
    lung_top: float  # y of the lungs' centres
    domes: tuple[float, float]  # height of each hemidiaphragm's top, as a fraction of the lung's semi-axis
    heart: tuple[float, float, float]  # x offset and semi-axes
    rib_spacing: float
    rib_phase: float
    exposure: tuple[float, float]  # gain, offset
    texture_seed: int

    @classmethod
    def random(cls, rng: np.random.Generator) -> Anatomy:
        u = rng.uniform
        return cls(
            shift=(u(-0.025, 0.025), u(-0.02, 0.03)),
            angle=u(-5.0, 5.0),
            body=(u(0.43, 0.48), u(0.62, 0.7)),
            lung_gap=u(0.19, 0.215),
            lung_size=(u(0.165, 0.195), u(0.29, 0.34), u(0.155, 0.185), u(0.28, 0.33)),
            lung_top=u(-0.06, -0.01),
            domes=(u(0.55, 0.68), u(0.62, 0.75)),
            heart=(u(0.03, 0.07), u(0.15, 0.19), u(0.11, 0.14)),
            rib_spacing=u(0.07, 0.085),
            rib_phase=u(0.0, 1.0),
            exposure=(u(0.9, 1.1), u(-0.04, 0.04)),
            texture_seed=int(rng.integers(2**31)),
        )  # fmt: skip


def _grid(anatomy: Anatomy, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres ``(size, size)`` in patient coordinates: fractions of the side, chest centre at 0, y down."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    y, x = np.meshgrid(t - anatomy.shift[1], t - anatomy.shift[0], indexing="ij")
    a = np.deg2rad(anatomy.angle)
    return np.cos(a) * x + np.sin(a) * y, -np.sin(a) * x + np.cos(a) * y


def _soft(signed: np.ndarray, size: int, width: float = 0.7) -> np.ndarray:
    """Anti-aliased membership of ``signed < 0``; ``signed`` in fractions of the side, ``width`` in pixels."""
    return 1.0 / (1.0 + np.exp(np.clip(signed * size / width, -30, 30)))


def _ellipse(x: np.ndarray, y: np.ndarray, ax: float, ay: float, power: float = 2.0) -> np.ndarray:
    """Approximate signed distance (fractions of the side) to a superellipse centred at the origin."""
    r = (np.abs(x / ax) ** power + np.abs(y / ay) ** power) ** (1.0 / power)
    return (r - 1.0) * min(ax, ay)


def _lung(anatomy: Anatomy, x: np.ndarray, y: np.ndarray, side: int) -> np.ndarray:
    """Signed distance to one lung; ``side`` -1 for the patient's right (image left), +1 for the left."""
    ax, ay = anatomy.lung_size[:2] if side < 0 else anatomy.lung_size[2:]
    u = side * x - anatomy.lung_gap  # lateral positive
    v = y - anatomy.lung_top
    # Narrow apex, wide base; the medial border is flatter than the lateral one.
    taper = 0.72 + 0.28 * np.clip((v / ay + 1) / 2, 0, 1)
    width = ax * taper * np.where(u < 0, 0.72, 1.0)
    r = np.sqrt((u / width) ** 2 + (v / ay) ** 2)
    outline = (r - 1.0) * ax
    dome_top = anatomy.lung_top + ay * anatomy.domes[0 if side < 0 else 1]
    diaphragm = y - (dome_top + 0.4 * ay * (u / ax) ** 2)
    return np.maximum(outline, diaphragm)


def _anatomy_image(anatomy: Anatomy, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grey levels of the anatomy, lung mask (bool), and the patient coordinates x, y; all ``(size, size)``."""
    x, y = _grid(anatomy, size)
    rng = np.random.default_rng(anatomy.texture_seed)
    heart_x, heart_ax, heart_ay = anatomy.heart
    heart_y = anatomy.lung_top + 0.55 * anatomy.lung_size[3]
    heart = _ellipse(x - heart_x, y - heart_y, heart_ax, heart_ay)
    lungs_signed = np.maximum(np.minimum(_lung(anatomy, x, y, -1), _lung(anatomy, x, y, 1)), -heart)
    mask = _two_largest(lungs_signed < 0)
    # Slivers the heart and the domes cut off the lungs are dropped from the image too.
    lungs = _soft(lungs_signed, size) * ndimage.binary_dilation(mask)
    body = _soft(_ellipse(x, y - 0.12, anatomy.body[0], anatomy.body[1], power=4.0), size)

    image = _AIR + (_SOFT_TISSUE - _AIR) * body
    abdomen = _soft(anatomy.lung_top + 0.8 * anatomy.lung_size[1] - y, size, width=2.0)
    image += 0.07 * abdomen * body
    image += 0.12 * _soft(heart, size, width=1.2)
    image += 0.1 * _soft(np.abs(x) - 0.065, size) * _soft(y - heart_y, size, width=3.0) * body
    vertebrae = 0.8 + 0.2 * np.cos(2 * np.pi * y / 0.055)
    image += 0.08 * _soft(np.abs(x) - 0.03, size) * vertebrae * body
    image -= 0.1 * _soft(np.abs(x) - 0.012, size) * _soft(y - (anatomy.lung_top - 0.12), size, width=1.5)  # trachea
    for side in (-1, 1):  # clavicles, rising laterally
        line = y - (anatomy.lung_top - 0.3 - 0.15 * (side * x - 0.05))
        span = _soft(np.abs(x) - 0.34, size) * _soft(0.05 - np.abs(x), size)
        image += 0.12 * np.exp(-0.5 * (line / 0.011) ** 2) * span

    # Posterior ribs: bands that rise slightly from the spine and curve down laterally.
    d = np.abs(x) / anatomy.body[0]
    phase = (y - anatomy.lung_top + 0.12 * d - 0.32 * d**2) / anatomy.rib_spacing + anatomy.rib_phase
    ribs = np.clip(np.cos(2 * np.pi * phase), 0, 1) ** 3
    cage = _soft(d - 0.9, size, width=2.0) * _soft(0.04 - np.abs(x), size) * body
    cage *= _soft(y - (anatomy.lung_top + anatomy.lung_size[1]), size, width=3.0)
    image += 0.1 * ribs * cage * (0.4 + 0.6 * lungs)  # ribs stand out most against the dark lungs

    # Lungs: darker, least so near the hila and at the bases; a faint vessel texture, strongest at the hila.
    hila = np.exp(-(((np.abs(x) - anatomy.lung_gap * 0.55) / 0.09) ** 2 + ((y - anatomy.lung_top) / 0.12) ** 2))
    basal = np.clip((y - anatomy.lung_top) / anatomy.lung_size[1], 0, 1)
    image -= _LUNG_DARKENING * lungs * (1 - 0.35 * hila - 0.2 * basal)
    vessels = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), size / 96)
    image += 0.05 * lungs * (0.4 + hila) * vessels / (vessels.std() + 1e-6)
    return image, mask, x, y


def _two_largest(mask: np.ndarray) -> np.ndarray:
    """The two largest 4-connected regions of a bool mask (the lungs, without slivers)."""
    labels, count = ndimage.label(mask)
    if count <= 2:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes)[-2:] + 1
    return np.isin(labels, keep)


def _smooth_noise(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Smooth random field ``(size, size)`` in [0, 1]; ``scale``: correlation length, fraction of the side."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), scale * size)
    return 0.5 + 0.5 * np.tanh(field / (field.std() + 1e-9))


def _gaussian(x: np.ndarray, y: np.ndarray, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _lesions(label: str, anatomy: Anatomy, lungs: np.ndarray, x: np.ndarray, y: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Lesion grey-level increase ``(size, size)``, zero outside the lungs."""
    size = lungs.shape[0]
    lesion = np.zeros((size, size))
    if label == "opacity":
        for side in (-1, 1):
            ax, ay = anatomy.lung_size[:2] if side < 0 else anatomy.lung_size[2:]
            for _ in range(int(rng.integers(2, 4))):
                cx = side * (anatomy.lung_gap + rng.uniform(-0.35, 0.35) * ax)
                cy = anatomy.lung_top + rng.uniform(0.0, 0.55) * ay
                lesion += rng.uniform(0.14, 0.22) * _gaussian(x, y, cx, cy, rng.uniform(0.45, 0.7) * ax,
                                                              rng.uniform(0.25, 0.4) * ay)
        lesion *= 0.6 + 0.4 * _smooth_noise(rng, size, 0.04)
    elif label == "ground_glass":
        inside = ndimage.distance_transform_edt(lungs)
        peripheral = lungs & (inside >= 1.5) & (inside <= max(2.5, 0.08 * size)) & (np.abs(x) > anatomy.lung_gap)
        for side in (-1, 1):
            candidates = np.flatnonzero(peripheral & (np.sign(x) == side))
            if not len(candidates):
                continue
            for k in rng.choice(candidates, size=int(rng.integers(2, 4))):
                r, c = np.unravel_index(k, lungs.shape)
                sigma = rng.uniform(0.035, 0.055)
                blob = _gaussian(x, y, x[r, c], y[r, c], sigma, sigma * rng.uniform(0.8, 1.3))
                lesion += rng.uniform(0.2, 0.28) * blob
        lesion *= 0.45 + 0.55 * _smooth_noise(rng, size, 0.02)
    elif label != "normal":
        raise ValueError(f"unknown class {label!r}; choose from {CLASSES}")
    # Fade to zero at the lung border, so the lesion never reaches a pixel outside the lungs.
    return lesion * np.clip(ndimage.distance_transform_edt(lungs) / 1.5, 0.0, 1.0)


@functools.lru_cache(maxsize=64)
def _stamp(text: str, height: int) -> np.ndarray:
    """Coverage ``(h, w)`` in [0, 1] of ``text`` in PIL's default bitmap font, scaled to ``height`` pixels of ink."""
    font = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, fill=255, font=font)
    canvas = canvas.crop(canvas.getbbox())
    width = max(1, round(canvas.width * height / canvas.height))
    coverage = np.asarray(canvas.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0
    coverage.setflags(write=False)  # shared by the cache
    return coverage


def _paste(image: np.ndarray, alpha: np.ndarray, level: float, top: int, left: int) -> None:
    """Blend ``level`` into ``image`` in place with coverage ``alpha`` at (top, left), clipped to the image."""
    H, W = image.shape
    t0, l0 = max(top, 0), max(left, 0)
    t1, l1 = min(top + alpha.shape[0], H), min(left + alpha.shape[1], W)
    if t1 <= t0 or l1 <= l0:
        return
    a = alpha[t0 - top : t1 - top, l0 - left : l1 - left]
    image[t0:t1, l0:l1] = image[t0:t1, l0:l1] * (1 - a) + level * a


def _overlay(image: np.ndarray, source: Source, rng: np.random.Generator) -> None:
    """Draw the source's collimation borders, marker and text line into ``image (size, size)`` in place."""
    size = image.shape[0]
    top, right, bottom, left = (round(w * size) for w in source.border)
    if top:
        image[:top] = 0.0
    if bottom:
        image[size - bottom :] = 0.0
    if left:
        image[:, :left] = 0.0
    if right:
        image[:, size - right :] = 0.0
    jitter = max(1, round(0.02 * size))
    marker = _stamp(source.marker, max(5, round(0.1 * size)))
    mt = round(source.marker_at[1] * size) + int(rng.integers(-jitter, jitter + 1))
    ml = round(source.marker_at[0] * size) + int(rng.integers(-jitter, jitter + 1))
    if source.boxed:
        pad = max(1, round(0.02 * size))
        _paste(image, np.ones((marker.shape[0] + 2 * pad, marker.shape[1] + 2 * pad)), 0.95, mt - pad, ml - pad)
        _paste(image, marker, 0.05, mt, ml)
    else:
        _paste(image, marker, 0.97, mt, ml)
    text = _stamp(source.text, max(3, round(0.055 * size)))
    _paste(image, text, source.text_level, round(source.text_at[1] * size),
           round(source.text_at[0] * size) + int(rng.integers(-1, 2)))  # fmt: skip


def render_radiograph(label: str, source: str, *, size: int = 64, seed: int = 0,
                      variant: str = "background") -> Radiograph:
    """Render one radiograph of class ``label`` from ``source`` (a key of :data:`SOURCES`).

    The seed fixes three independent random streams: the anatomy, the acquisition
    (noise, marker position) and the lesions.  Hence, for one seed and source, images
    of different classes differ only inside the lungs, and, in the ``background``
    variant, for one seed and class, images from different sources are identical
    inside the lungs.

    Args:
        variant: one of :data:`VARIANTS`; ``in-lung`` applies the source's tone curve and
            noise level inside the lungs too (markers, text and borders stay outside).

    Returns:
        ``image (size, size)`` uint8, ``lungs (size, size)`` bool (the foreground mask),
        ``lesion (size, size)`` bool (empty for ``normal``).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose from {list(SOURCES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown radiograph variant {variant!r}; choose from {list(VARIANTS)}")
    anatomy_seq, acquisition_seq, lesion_seq = np.random.SeedSequence(seed).spawn(3)
    anatomy = Anatomy.random(np.random.default_rng(anatomy_seq))
    acquisition, lesion_rng = np.random.default_rng(acquisition_seq), np.random.default_rng(lesion_seq)
    noise = acquisition.standard_normal((size, size))  # drawn first: the same for every source

    image, lungs, x, y = _anatomy_image(anatomy, size)
    lesion = _lesions(label, anatomy, lungs, x, y, lesion_rng)
    gain, offset = anatomy.exposure
    image = np.clip((image + lesion) * gain + offset, 0.0, 1.0)

    # Source traits ramp in over two pixels outside the lungs and never touch a lung pixel, except
    # for the tone curve and noise level in the in-lung variant.
    spec = SOURCES[source]
    outside = np.clip(ndimage.distance_transform_edt(~lungs) / 2.0, 0.0, 1.0)
    toned = np.clip(spec.offset + spec.gain * image**spec.gamma + spec.noise * noise, 0.0, 1.0)
    styled = toned.copy()
    _overlay(styled, spec, acquisition)
    inner = toned if variant == "in-lung" else np.clip(image + _NEUTRAL_NOISE * noise, 0.0, 1.0)
    image = inner * (1 - outside) + styled * outside
    threshold = min(0.07, 0.5 * lesion.max()) if lesion.any() else np.inf
    return Radiograph((image * 255).round().astype(np.uint8), lungs, lesion >= threshold)


def _sources(split: str, k: int, count: int, association: float) -> list[str]:
    """Source of each of the ``count`` images of class ``k`` in a split."""
    if split == "external":
        return [EXTERNAL_SOURCES[i % len(EXTERNAL_SOURCES)] for i in range(count)]
    own = TRAINING_SOURCES[k]
    others = [s for s in TRAINING_SOURCES if s != own]
    main = round(association * count)
    return [own] * main + [others[i % len(others)] for i in range(count - main)]


def generate_radiographs(
    root: str | Path,
    *,
    per_class: tuple[int, int, int, int] = (240, 40, 100, 100),
    size: int = 64,
    seed: int = 0,
    association: float = 0.85,
    variant: str = "background",
) -> Path:
    """Write the dataset folder (train / val / test / external splits) and return it.

    Deterministic for a given seed; a folder already generated with the same settings
    is reused.  Writes ``images/``, ``masks/`` (lungs), ``lesions/`` (lesion masks of
    the non-normal images) and ``manifest.csv`` with the columns ``image, mask, label,
    split, lesion, source``.

    Args:
        per_class: images per class in train, val, test and external.
        size: image side, pixels.
        association: fraction of class ``k``'s train / val / test images that come from
            training source ``k``; the rest are spread over the other training sources.
        variant: where the source traits lie, one of :data:`VARIANTS`.
    """
    if len(per_class) != len(SPLITS):
        raise ValueError(f"per_class needs one count per split {SPLITS}, got {per_class}")
    if not 0.0 <= association <= 1.0:
        raise ValueError(f"association must lie in [0, 1], got {association}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown radiograph variant {variant!r}; choose from {list(VARIANTS)}")
    root = Path(root)
    settings = {"dataset": "radiographs", "per_class": list(per_class), "size": size, "seed": seed,
                "association": association, "variant": variant, "version": _VERSION}  # fmt: skip
    stamp = root / "settings.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings and (root / "manifest.csv").is_file():
        return root
    rng = np.random.default_rng(seed)
    for folder in ("images", "masks", "lesions"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for split, count in zip(SPLITS, per_class):
        for k, label in enumerate(CLASSES):
            for i, source in enumerate(_sources(split, k, count, association)):
                sample = render_radiograph(label, source, size=size, seed=int(rng.integers(2**63)), variant=variant)
                name = f"{split}_{label}_{i:04d}.png"
                Image.fromarray(sample.image).save(root / "images" / name)
                Image.fromarray(sample.lungs.astype(np.uint8) * 255).save(root / "masks" / name)
                lesion = ""
                if label != "normal":
                    Image.fromarray(sample.lesion.astype(np.uint8) * 255).save(root / "lesions" / name)
                    lesion = f"lesions/{name}"
                rows.append((f"images/{name}", f"masks/{name}", label, split, lesion, source))
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "label", "split", "lesion", "source"])
        writer.writerows(rows)
    write_json(stamp, settings, indent=None)
    return root
