"""Data: the manifest format, image reading and augmentation, synthetic bias, built-in data."""

from .bias import ShapeBias
from .datamodule import MaskedImageDataModule, MaskedImageDataset
from .images import Augmentation, Preprocessing, read_image, read_mask
from .manifest import ManifestError, Row, read_manifest, validate

__all__ = [
    "ShapeBias", "MaskedImageDataModule", "MaskedImageDataset", "Augmentation", "Preprocessing",
    "read_image", "read_mask", "ManifestError", "Row", "read_manifest", "validate",
]  # fmt: skip
