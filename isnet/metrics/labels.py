"""The one check every metric applies to class labels before counting them.

A label must be an integer class index in ``0..K-1`` (for binary and multi-label
targets, 0 or 1).  Integer-valued floats such as ``1.0`` (targets stored as float
tensors) are accepted; fractional, negative, too large, NaN or infinite values are an
error that names the first offending value and where it is, rather than being truncated
or silently counted as negatives.
"""

from __future__ import annotations

import numpy as np


def check_labels(y: np.ndarray, num_classes: int, name: str = "y_true", ndim: int = 1) -> np.ndarray:
    """``y`` as an int64 array after checking it holds class indices in ``[0, num_classes)``.

    Args:
        y: ``(N,)`` class indices (``ndim=1``) or ``(N, K)`` 0/1 targets (``ndim=2``,
            ``num_classes=2``); any numeric or boolean array-like, including tensors on the CPU.
        num_classes: K, the number of classes (2 for 0/1 labels).
        name: the argument's name in error messages.
        ndim: the number of dimensions ``y`` must have.

    Returns:
        int64 array of ``y``'s shape.

    Raises:
        ValueError: wrong number of dimensions, a non-numeric type, or a value that is not an
            integer in ``[0, num_classes)``; the message names the first bad value and its position.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    a = np.asarray(y)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {'shape (N,)' if ndim == 1 else f'{ndim} dimensions'}, got {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.int64)
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{name} must hold numbers, got an array of type {a.dtype}")
    with np.errstate(invalid="ignore"):
        bad = ~((a >= 0) & (a < num_classes) & (a == np.round(a) if np.issubdtype(a.dtype, np.floating) else True))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "only 0 and 1" if num_classes == 2 else f"class indices in [0, {num_classes})"
        position = where[0] if len(where) == 1 else where
        raise ValueError(f"{name} must hold {what}, got {a[where].item()!r} at position {position}")
    return a.astype(np.int64)
