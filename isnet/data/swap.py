"""Counterfactual test images: each image's foreground on another test image's background.

Following the background-swap tests of Xiao et al. ("Noise or Signal: The Role of Image
Backgrounds in Object Recognition", 2020), every test image with a foreground mask is
rebuilt twice, keeping its foreground pixels (mask = 1) exactly and taking every
background pixel from a *donor*, another image of the same test set:

- ``mixed_rand``: a random other image (seeded, deterministic);
- ``mixed_next``: a random image of the next class, ``(label + 1) mod K``, so that a
  background linked to a class points to the wrong one.

The donor's own foreground must not show through where the recipient's foreground does
not cover it, so it is first filled in from its surroundings (:func:`fill_foreground`).
This needs only masks, no deceiving test set.  A model that uses only the foreground
keeps every decision; one that uses the background changes its decisions.

Masks are binarised at 0.5 (``mask >= 0.5`` is foreground) and must have the image's
height and width.  Images whose mask is empty (rows without a mask) or covers the whole
image (nothing to swap) are not used, and counted.  Multi-label tasks get ``mixed_rand``
only: an image with several (or no) labels has no single "next class".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt, gaussian_filter
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset

SWAP_VARIANTS = ("mixed_rand", "mixed_next")

FILL_SIGMA = 1.0
"""Standard deviation, in pixels, of the Gaussian blur inside a filled-in foreground."""


def binary_mask(mask: Tensor | np.ndarray, height: int, width: int) -> np.ndarray:
    """A ``(1, H, W)`` or ``(H, W)`` mask as an ``(H, W)`` boolean array (``mask >= 0.5``).

    Raises:
        ValueError: if the mask's height and width are not ``(height, width)``.
    """
    m = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != (height, width):
        raise ValueError(f"mask of shape {tuple(np.shape(mask))} does not match its image's size {height}x{width}; "
                         "masks must be (1, H, W) or (H, W) at the image's resolution")
    return m >= 0.5


def fill_foreground(image: Tensor, mask: Tensor | np.ndarray, *, sigma: float = FILL_SIGMA) -> Tensor:
    """``image`` with its foreground replaced by values taken from its background.

    Each foreground pixel takes the value of its nearest background pixel (Euclidean
    distance, :func:`scipy.ndimage.distance_transform_edt` with ``return_indices``), which
    extends the surrounding background inwards in one vectorised step; the streaks this
    leaves are softened by a Gaussian blur of standard deviation ``sigma`` pixels applied
    inside the filled region only.  Every output value is a weighted mean of background
    values, so nothing of the foreground survives; background pixels are unchanged.

    Args:
        image: ``(C, H, W)``.
        mask: ``(1, H, W)`` or ``(H, W)``, foreground ``>= 0.5``.
        sigma: blur inside the filled region, pixels (0: none).

    Returns:
        ``(C, H, W)``, same dtype as ``image``.

    Raises:
        ValueError: if the mask covers the whole image (no background to fill from) or
            does not match the image's size.
    """
    if image.ndim != 3:
        raise ValueError(f"image must have shape (C, H, W), got {tuple(image.shape)}")
    fg = binary_mask(mask, *image.shape[-2:])
    if not fg.any():
        return image.clone()
    if fg.all():
        raise ValueError("the mask covers the whole image: there is no background to fill the foreground from")
    array = image.detach().cpu().numpy()
    # for every pixel, the coordinates of the nearest zero (background) pixel; background maps to itself
    _, (rows, cols) = distance_transform_edt(fg, return_indices=True)
    filled = array[:, rows, cols]
    if sigma > 0:
        blurred = gaussian_filter(filled, sigma=(0, sigma, sigma), mode="nearest")
        filled = np.where(fg[None], blurred, filled)
    return torch.from_numpy(np.ascontiguousarray(filled)).to(dtype=image.dtype, device=image.device)


def swap_background(image: Tensor, mask: Tensor | np.ndarray, donor: Tensor, donor_mask: Tensor | np.ndarray, *,
                    sigma: float = FILL_SIGMA) -> Tensor:
    """``image``'s foreground pixels, exactly, over ``donor``'s background (its foreground filled in).

    Args:
        image, donor: ``(C, H, W)`` of the same shape.
        mask, donor_mask: their masks, ``(1, H, W)`` or ``(H, W)``, foreground ``>= 0.5``.
        sigma: see :func:`fill_foreground`.

    Returns:
        ``(C, H, W)``.
    """
    if image.shape != donor.shape:
        raise ValueError(f"image {tuple(image.shape)} and donor {tuple(donor.shape)} differ in shape")
    fg = torch.from_numpy(binary_mask(mask, *image.shape[-2:])).to(image.device)
    return torch.where(fg, image, fill_foreground(donor, donor_mask, sigma=sigma))


@dataclass(frozen=True)
class SwapPlan:
    """Which donor gives its background to which image, per variant.

    Attributes:
        pairs: ``{variant: (recipients (n,), donors (n,))}``, dataset indices.
        usable: ``(N,)`` whether each image's mask has both foreground and background.
        no_donor: ``{variant: count}`` of usable images without a possible donor (e.g. no
            usable image of the next class).
    """

    pairs: dict[str, tuple[np.ndarray, np.ndarray]]
    usable: np.ndarray
    no_donor: dict[str, int] = field(default_factory=dict)

    def skipped(self, variant: str) -> int:
        """Images of the test set not used in ``variant`` (no mask, no background or no donor)."""
        return int(len(self.usable) - len(self.pairs[variant][0]))


def plan_swaps(labels: Sequence[Any] | np.ndarray, usable: Sequence[bool] | np.ndarray, *, num_classes: int,
               multilabel: bool = False, seed: int = 0) -> SwapPlan:
    """Draw the donors of every usable image (deterministic for a ``seed``).

    Args:
        labels: ``(N,)`` class indices (single-label) or ``(N, K)`` 0/1 targets.
        usable: ``(N,)`` images that can give and take a background.
        num_classes: K.
        multilabel: plan ``mixed_rand`` only.
        seed: seed of the donor draws.
    """
    usable = np.asarray(usable, dtype=bool)
    pool = np.flatnonzero(usable)
    rng = np.random.default_rng(seed)
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    no_donor: dict[str, int] = {}
    if len(pool) >= 2:
        # a uniform draw among the other len(pool) - 1 images: skip over the image itself
        j = rng.integers(0, len(pool) - 1, size=len(pool))
        j += j >= np.arange(len(pool))
        pairs["mixed_rand"] = (pool, pool[j])
    else:
        pairs["mixed_rand"] = (pool[:0], pool[:0])
    no_donor["mixed_rand"] = int(len(pool) - len(pairs["mixed_rand"][0]))
    if multilabel:
        return SwapPlan(pairs, usable, no_donor)

    if num_classes < 2:
        raise ValueError(f"mixed_next needs at least 2 classes, got {num_classes}")
    y = np.asarray(labels).astype(np.int64)
    if y.shape != usable.shape:
        raise ValueError(f"labels {y.shape} and usable {usable.shape} differ in shape")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
    by_class = [pool[y[pool] == k] for k in range(num_classes)]
    recipients, donors = [], []
    for r in pool:
        candidates = by_class[(y[r] + 1) % num_classes]
        if len(candidates):
            recipients.append(r)
            donors.append(candidates[rng.integers(len(candidates))])
    pairs["mixed_next"] = (np.array(recipients, dtype=np.int64), np.array(donors, dtype=np.int64))
    no_donor["mixed_next"] = int(len(pool) - len(recipients))
    return SwapPlan(pairs, usable, no_donor)


def scan_masks(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Labels and usability of every item of a dataset of ``{"image", "mask", "label"}`` dicts.

    An item is usable when its mask (``>= 0.5``) has both foreground and background
    pixels; an item without a ``mask`` entry is not.

    Returns:
        ``(labels (N,) or (N, K), usable (N,) bool)``.

    Raises:
        ValueError: naming the item whose mask does not match its image's size.
    """
    labels, usable = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        labels.append(torch.as_tensor(item["label"]).cpu().numpy())
        if item.get("mask") is None:
            usable.append(False)
            continue
        try:
            fg = binary_mask(item["mask"], *item["image"].shape[-2:])
        except ValueError as error:
            raise ValueError(f"test item {i}: {error}") from error
        usable.append(bool(fg.any() and not fg.all()))
    return np.stack(labels) if labels else np.zeros(0, np.int64), np.array(usable, dtype=bool)


def swap_plan(dataset: Dataset, *, num_classes: int, multilabel: bool = False, seed: int = 0) -> SwapPlan:
    """:func:`plan_swaps` for the items of ``dataset`` (read once, see :func:`scan_masks`)."""
    labels, usable = scan_masks(dataset)
    return plan_swaps(labels, usable, num_classes=num_classes, multilabel=multilabel, seed=seed)


class SwappedBackgrounds(Dataset):
    """The counterfactual images of one variant, built on the fly from a base dataset.

    Item ``i`` is base item ``recipients[i]``'s foreground over base item ``donors[i]``'s
    background (:func:`swap_background`): ``{"image" (C, H, W), "mask" (1, H, W) the
    recipient's binarised mask, "label" the recipient's label, "index" the recipient's
    index, "donor" the donor's index}``.

    Args:
        dataset: base dataset of ``{"image", "mask", "label"}`` items (no random
            augmentation: each item is read again).
        recipients, donors: ``(n,)`` base indices, e.g. from a :class:`SwapPlan`.
        sigma: see :func:`fill_foreground`.
    """

    def __init__(self, dataset: Dataset, recipients: Sequence[int] | np.ndarray, donors: Sequence[int] | np.ndarray,
                 *, sigma: float = FILL_SIGMA) -> None:
        self.dataset = dataset
        self.recipients = np.asarray(recipients, dtype=np.int64)
        self.donors = np.asarray(donors, dtype=np.int64)
        if self.recipients.shape != self.donors.shape or self.recipients.ndim != 1:
            raise ValueError(f"recipients {self.recipients.shape} and donors {self.donors.shape} must be equal-length "
                             "1-D index arrays")
        self.sigma = sigma

    def __len__(self) -> int:
        return len(self.recipients)

    def __getitem__(self, i: int) -> dict:
        r, d = int(self.recipients[i]), int(self.donors[i])
        item, donor = self.dataset[r], self.dataset[d]
        image = swap_background(item["image"], item["mask"], donor["image"], donor["mask"], sigma=self.sigma)
        mask = torch.from_numpy(binary_mask(item["mask"], *image.shape[-2:]).astype(np.float32))[None]
        return {"image": image, "mask": mask, "label": item["label"], "index": r, "donor": d}


# -- training-time swaps: whole batches, on the tensors' device ------------------------------


def fill_foreground_batch(images: Tensor, masks: Tensor) -> Tensor:
    """``images`` with each foreground replaced by the local mean of its background, batched.

    A push-pull fill, all on the images' device: the background (pixels with mask ``< 0.5``)
    and its weights are average-pooled down a pyramid of halvings to one pixel; going back up,
    every pixel without background at a level takes the bilinearly upsampled value of the
    coarser level, and every other pixel the mean of the background pixels in its cell.  At
    full resolution background pixels keep their value exactly, and a foreground pixel gets a
    mean of nearby background values, so nothing of the foreground survives.  A mask that covers
    the whole image leaves the image unchanged (nothing to fill from).

    Args:
        images: ``(B, C, H, W)``.
        masks: ``(B, 1, H, W)``, foreground ``>= 0.5``.

    Returns:
        ``(B, C, H, W)``, ``images``' dtype and device.
    """
    check_batch(images, masks)
    weight = (masks < 0.5).to(images.dtype)
    levels = [(images * weight, weight)]
    while min(levels[-1][1].shape[-2:]) > 1:
        value, w = levels[-1]
        levels.append((F.avg_pool2d(value, 2, ceil_mode=True), F.avg_pool2d(w, 2, ceil_mode=True)))
    estimate = None
    for value, w in reversed(levels):
        mean = value / w.clamp_min(torch.finfo(images.dtype).tiny)
        if estimate is None:
            estimate = torch.where(w > 0, mean, images.new_zeros(()))
            continue
        coarse = F.interpolate(estimate, size=w.shape[-2:], mode="bilinear", align_corners=False)
        estimate = torch.where(w > 0, mean, coarse)
    has_background = weight.flatten(1).any(1).view(-1, 1, 1, 1)
    return torch.where(has_background, estimate, images)


def check_batch(images: Tensor, masks: Tensor) -> None:
    """Raise ``ValueError`` unless ``images`` is ``(B, C, H, W)`` and ``masks`` ``(B, 1, H, W)`` of the same B, H, W."""
    if images.dim() != 4 or masks.dim() != 4 or masks.shape[1] != 1 or masks.shape[0] != images.shape[0] \
            or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"background swap needs images (B, C, H, W) and masks (B, 1, H, W) of the same batch and "
                         f"size, got {tuple(images.shape)} and {tuple(masks.shape)}")


JITTER_GAMMA = 0.5
"""At jitter strength 1, ``log(gamma)`` of a background's tone curve is uniform in ``[-0.5, 0.5]``."""
JITTER_CONTRAST = 0.4
"""At strength 1, a background's contrast about its mean is scaled by a factor uniform in ``1 -/+ 0.4``."""
JITTER_SHIFT = 0.15
"""At strength 1, a background's brightness shifts by up to ``0.15`` (images in ``[0, 1]``)."""
JITTER_NOISE = 0.05
"""At strength 1, a background gets Gaussian noise of a standard deviation uniform in ``[0, 0.05]``."""


def jitter_backgrounds(images: Tensor, masks: Tensor, which: Tensor, strength: float = 1.0, *,
                       generator: torch.Generator | None = None) -> Tensor:
    """Random tone, contrast, brightness and noise for the backgrounds of some images of a batch.

    Each chosen image's background pixels (mask ``< 0.5``), all channels alike, go through
    ``v -> m + a (v^gamma - m) + b + noise`` with its own random ``gamma``, contrast ``a``, shift
    ``b`` and noise level (ranges: the ``JITTER_*`` constants times ``strength``; ``m`` the mean of
    the background after the tone curve), clipped to the batch's value range.  Foreground pixels
    are kept exactly.  Values below 0 are treated as 0 by the tone curve (images in ``[0, 1]``).

    Args:
        images: ``(B, C, H, W)``.
        masks: ``(B, 1, H, W)``, foreground ``>= 0.5``.
        which: ``(B,)`` bool, the images to jitter.
        strength: in ``[0, 1]``; 0 returns ``images``.
        generator: CPU random generator of the draws (default: torch's global one).

    Returns:
        ``(B, C, H, W)``, ``images``' dtype and device.
    """
    check_batch(images, masks)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"the background jitter strength must lie in [0, 1], got {strength!r}")
    if strength == 0:
        return images
    batch = images.shape[0]

    def uniform(low: float, high: float) -> Tensor:
        draw = torch.rand(batch, generator=generator) * (high - low) + low
        return draw.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)

    gamma = torch.exp(uniform(-JITTER_GAMMA * strength, JITTER_GAMMA * strength))
    contrast = uniform(1 - JITTER_CONTRAST * strength, 1 + JITTER_CONTRAST * strength)
    shift = uniform(-JITTER_SHIFT * strength, JITTER_SHIFT * strength)
    sigma = uniform(0.0, JITTER_NOISE * strength)
    noise = torch.randn((batch, 1, *images.shape[-2:]), generator=generator).to(images.device, images.dtype)
    background = (masks < 0.5).to(images.dtype)
    toned = images.clamp_min(0) ** gamma
    count = (background.sum((1, 2, 3), keepdim=True) * images.shape[1]).clamp_min(1)
    mean = (toned * background).sum((1, 2, 3), keepdim=True) / count
    jittered = (mean + contrast * (toned - mean) + shift + sigma * noise).clamp(images.min(), images.max())
    chosen = which.to(images.device).view(-1, 1, 1, 1) & (masks < 0.5)
    return torch.where(chosen, jittered, images)


def swap_batch_backgrounds(images: Tensor, masks: Tensor, fraction: float = 1.0, *,
                           generator: torch.Generator | None = None, jitter: float = 0.0) -> tuple[Tensor, Tensor]:
    """Put a share of a batch's foregrounds on the backgrounds of other images of the batch.

    The donors are a random cyclic order of the batch (no image is its own donor when the batch
    has two or more); each donor's foreground is filled in first (:func:`fill_foreground_batch`).
    An image is swapped with probability ``fraction`` if its mask has foreground and background
    and its donor's mask leaves some background; otherwise it is kept.  The recipient's
    foreground pixels are kept exactly, so its mask stays valid.

    Args:
        images: ``(B, C, H, W)``.
        masks: ``(B, 1, H, W)``, foreground ``>= 0.5``.
        fraction: probability in ``[0, 1]`` that an image is swapped.
        generator: CPU random generator of the draws (default: torch's global one).
        jitter: strength in ``[0, 1]`` of a random tone, contrast, brightness and noise change
            of every swapped background (:func:`jitter_backgrounds`); 0: none.

    Returns:
        ``(swapped images (B, C, H, W), which were swapped (B,) bool)``.
    """
    check_batch(images, masks)
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"the background jitter strength must lie in [0, 1], got {jitter!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the background-swap fraction must lie in [0, 1], got {fraction!r}")
    batch = images.shape[0]
    order = torch.randperm(batch, generator=generator)
    donors = torch.empty_like(order)
    donors[order] = order.roll(-1)  # image order[i] takes the background of order[i + 1]
    chosen = torch.rand(batch, generator=generator) < fraction
    fg = masks >= 0.5
    area = fg.flatten(1).float().mean(1).cpu()
    usable = (area > 0) & (area < 1)  # foreground to keep and background to replace
    swapped = (chosen & usable & (area[donors] < 1) & (donors != torch.arange(batch))).to(images.device)
    if not bool(swapped.any()):
        return images, swapped
    donors = donors.to(images.device)
    backgrounds = fill_foreground_batch(images[donors], masks[donors])
    out = torch.where(fg | ~swapped.view(-1, 1, 1, 1), images, backgrounds)
    if jitter > 0:
        out = jitter_backgrounds(out, masks, swapped, jitter, generator=generator)
    return out, swapped
