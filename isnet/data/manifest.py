"""The on-disk dataset format: a folder with ``manifest.csv``.

Columns: ``image``, ``mask``, ``label``, ``split``.  Paths are relative to the
folder; ``label`` is a class name, or ``|``-separated names for multi-label tasks;
``split`` is ``train``, ``val``, ``test`` or any other name (an external test set,
say); ``mask`` may be empty for rows that are only tested.  Masks are image files
whose nonzero pixels are the foreground.

An optional ``lesion`` column holds lesion masks (the class evidence, for methods
that use it), empty where a row has none.  Any other column is ignored.

:func:`read_manifest` parses the file and :func:`validate` checks every row that a
run will use before any training starts, naming the row of each problem.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

COLUMNS = ("image", "mask", "label", "split")
LESION = "lesion"


class ManifestError(ValueError):
    """A problem with a dataset folder or one of its rows."""


@dataclass(frozen=True)
class Row:
    """One manifest row; ``line`` is its line number in ``manifest.csv`` (header = 1).

    ``lesion`` is the row's lesion mask, ``None`` when the manifest has no ``lesion``
    column or the row's cell is empty.
    """

    line: int
    image: Path
    mask: Path | None
    labels: tuple[str, ...]
    split: str
    lesion: Path | None = None


def manifest_columns(root: str | Path) -> list[str]:
    """The column names in the header of ``root/manifest.csv``."""
    path = Path(root) / "manifest.csv"
    if not path.is_file():
        raise ManifestError(f"no manifest.csv in {root}")
    with path.open(newline="") as handle:
        return next(csv.reader(handle), [])


def read_manifest(root: str | Path) -> list[Row]:
    """Rows of ``root/manifest.csv``, with absolute paths; columns other than the known ones are ignored."""
    root = Path(root)
    path = root / "manifest.csv"
    if not path.is_file():
        raise ManifestError(f"no manifest.csv in {root}")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {missing}; need {list(COLUMNS)}")
        rows = []
        for line, record in enumerate(reader, start=2):
            image = (record["image"] or "").strip()
            if not image:
                raise ManifestError(f"{path} line {line}: empty image path")
            mask = (record["mask"] or "").strip()
            labels = tuple(name.strip() for name in (record["label"] or "").split("|") if name.strip())
            split = (record["split"] or "").strip()
            if not split:
                raise ManifestError(f"{path} line {line}: empty split")
            lesion = (record.get(LESION) or "").strip()
            rows.append(Row(line, root / image, root / mask if mask else None, labels, split,
                            root / lesion if lesion else None))
    if not rows:
        raise ManifestError(f"{path} has no rows")
    return rows


def class_names(rows: Iterable[Row]) -> list[str]:
    """Sorted class names found in the rows."""
    return sorted({name for row in rows for name in row.labels})


def _size(path: Path, what: str, row: Row) -> tuple[int, int]:
    if not path.is_file():
        raise ManifestError(f"manifest.csv line {row.line}: {what} {path} does not exist")
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError) as error:
        raise ManifestError(f"manifest.csv line {row.line}: cannot read {what} {path}: {error}") from error


def validate(
    rows: Sequence[Row],
    classes: Sequence[str],
    *,
    splits: Sequence[str],
    need_masks: Sequence[str],
    multilabel: bool,
) -> None:
    """Check the rows of the given splits before training.

    Raises:
        ManifestError: naming the line for an unreadable or missing image or mask, a
            missing mask in a split that needs masks, a mask whose size differs from its
            image's, an empty mask, an unknown label, a row with no or several labels in a
            single-label task, or a requested split with no rows; likewise for an unreadable
            or missing lesion mask, or one whose size differs from its image's (lesion masks
            may be empty).
    """
    known = set(classes)
    for split in splits:
        if not any(row.split == split for row in rows):
            present = sorted({row.split for row in rows})
            raise ManifestError(f"split {split!r} has no rows in manifest.csv (splits present: {present})")
    for row in rows:
        if row.split not in splits:
            continue
        unknown = [name for name in row.labels if name not in known]
        if unknown:
            raise ManifestError(f"manifest.csv line {row.line}: unknown label(s) {unknown}; classes are {list(classes)}")
        if not multilabel and len(row.labels) != 1:
            raise ManifestError(
                f"manifest.csv line {row.line}: a single-label task needs exactly one label, got {list(row.labels)}"
            )
        size = _size(row.image, "image", row)
        if row.lesion is not None:
            lesion_size = _size(row.lesion, "lesion mask", row)
            if lesion_size != size:
                raise ManifestError(
                    f"manifest.csv line {row.line}: lesion mask {row.lesion.name} is {lesion_size[0]}x{lesion_size[1]} "
                    f"but image {row.image.name} is {size[0]}x{size[1]}"
                )
        if row.mask is None:
            if row.split in need_masks:
                raise ManifestError(f"manifest.csv line {row.line}: the {row.split!r} split needs a mask, and the row has none")
            continue
        mask_size = _size(row.mask, "mask", row)
        if mask_size != size:
            raise ManifestError(
                f"manifest.csv line {row.line}: mask {row.mask.name} is {mask_size[0]}x{mask_size[1]} but image "
                f"{row.image.name} is {size[0]}x{size[1]}"
            )
        if row.split in need_masks:
            with Image.open(row.mask) as img:
                if not np.asarray(img.convert("L")).any():
                    raise ManifestError(f"manifest.csv line {row.line}: mask {row.mask} is empty (no foreground)")
