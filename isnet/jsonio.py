"""Strict JSON for every file the package writes.

Python's :mod:`json` writes NaN and infinities as the bare words ``NaN`` and
``Infinity``, which are not JSON: strict parsers (browsers, ``jq``, most languages)
reject the whole file.  Here an undefined number becomes ``null`` instead, and the
array types the statistics come in (numpy arrays and scalars, torch tensors) and paths
are turned into plain JSON values first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` made only of dicts, lists, strings, finite numbers, booleans and ``None``.

    * floats (Python, numpy, or 0-d tensors) that are NaN or infinite become ``None``;
    * numpy arrays and torch tensors become (nested) lists, numpy scalars plain numbers;
    * tuples become lists, paths strings;
    * dict keys that are numpy scalars or paths become their plain value or string (as
      :func:`json.dumps` would write them).

    Raises:
        TypeError: for a value of any other type, or a dict key JSON cannot hold.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)  # plain int, not a subclass such as IntEnum
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {_key(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, PurePath):
        return str(obj)
    raise TypeError(f"cannot write a value of type {type(obj).__name__} as JSON: {obj!r}")


def _key(key: Any) -> str | int | float | bool | None:
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, PurePath):
        return str(key)
    if key is None or isinstance(key, (str, int, float, bool)):
        return key
    raise TypeError(f"cannot write a dict key of type {type(key).__name__} as JSON: {key!r}")


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (see :func:`to_jsonable`); never contains ``NaN`` or ``Infinity``."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """Write :func:`dumps` of ``obj`` to ``path`` (UTF-8); returns the path."""
    path = Path(path)
    path.write_text(dumps(obj, indent=indent) + "\n", encoding="utf-8")
    return path
