"""Strict JSON: undefined numbers become null, arrays and paths plain values."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from isnet.jsonio import dumps, to_jsonable, write_json


def strict_loads(text):
    """json.loads that refuses the non-standard NaN / Infinity / -Infinity words."""

    def refuse(word):
        raise ValueError(f"not strict JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_the_strict_parser_refuses_what_plain_json_writes():
    with pytest.raises(ValueError, match="NaN"):
        strict_loads(json.dumps({"std": float("nan")}))


def test_non_finite_floats_become_none_everywhere():
    obj = {"a": float("nan"), "b": [1.5, float("inf"), -math.inf], "c": (np.float32("nan"), np.float64(2.0)),
           "d": {"e": np.array([0.5, np.nan, np.inf])}, "f": torch.tensor([1.0, float("nan")])}
    assert to_jsonable(obj) == {"a": None, "b": [1.5, None, None], "c": [None, 2.0], "d": {"e": [0.5, None, None]},
                                "f": [1.0, None]}


def test_arrays_scalars_and_paths_become_plain_values():
    out = to_jsonable({"ints": np.arange(3, dtype=np.int32), "matrix": torch.eye(2, dtype=torch.int64),
                       "flag": np.bool_(True), "count": np.int64(7), "half": np.float16(0.5),
                       "scalar": torch.tensor(2.5), "path": Path("/tmp/x.json"), np.int64(4): "numpy key",
                       "nested": [(1, 2), {"p": Path("a") / "b"}]})
    assert out == {"ints": [0, 1, 2], "matrix": [[1, 0], [0, 1]], "flag": True, "count": 7, "half": 0.5,
                   "scalar": 2.5, "path": "/tmp/x.json", 4: "numpy key", "nested": [[1, 2], {"p": "a/b"}]}
    assert type(out["count"]) is int and type(out["flag"]) is bool and type(out["half"]) is float
    assert type(out["ints"][0]) is int


def test_unknown_types_are_named():
    with pytest.raises(TypeError, match="type set"):
        to_jsonable({"s": {1, 2}})
    with pytest.raises(TypeError, match="dict key of type tuple"):
        to_jsonable({(1, 2): 3})


def test_dumps_and_write_json_are_strict_and_round_trip(tmp_path):
    obj = {"auc": 0.75, "std": float("nan"), "ci": [0.0, 1.0], "n": np.int64(3)}
    text = dumps(obj)
    assert "NaN" not in text and strict_loads(text) == {"auc": 0.75, "std": None, "ci": [0.0, 1.0], "n": 3}
    assert strict_loads(dumps(obj, indent=None)) == strict_loads(text) and "\n" not in dumps(obj, indent=None)
    path = write_json(tmp_path / "m.json", obj)
    assert path == tmp_path / "m.json" and strict_loads(path.read_text()) == strict_loads(text)
