"""The label check shared by every metric that takes class labels."""

import re

import numpy as np
import pytest
import torch

from isnet.metrics.labels import check_labels


def test_valid_labels_come_back_as_int64():
    out = check_labels(np.array([0, 2, 1]), 3)
    assert out.dtype == np.int64 and out.tolist() == [0, 2, 1]
    assert check_labels(np.array([1.0, 0.0, 2.0]), 3).tolist() == [1, 0, 2]  # integer-valued floats are fine
    assert check_labels(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), 2, ndim=2).tolist() == [[1, 0], [0, 0]]
    assert check_labels(np.array([True, False]), 2).tolist() == [1, 0]
    assert check_labels(np.zeros(0), 4).shape == (0,) and check_labels(np.zeros((0, 3)), 2, ndim=2).shape == (0, 3)


@pytest.mark.parametrize("bad, position", [(1.5, 2), (-1, 1), (3, 0), (float("nan"), 3), (float("inf"), 2)])
def test_the_first_bad_value_and_its_position_are_named(bad, position):
    y = np.array([0.0, 1.0, 2.0, 1.0])
    y[position] = bad
    if position < 3:
        y[3] = 7  # a later bad value is not the one reported
    message = f"y_true must hold class indices in [0, 3), got {float(bad)!r} at position {position}"
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        check_labels(y, 3)


def test_binary_and_multilabel_messages():
    with pytest.raises(ValueError, match=r"targets must hold only 0 and 1, got 2 at position \(1, 0\)"):
        check_labels(np.array([[0, 1], [2, 0]]), 2, "targets", ndim=2)
    with pytest.raises(ValueError, match=r"must have 2 dimensions, got \(3,\)"):
        check_labels(np.zeros(3), 2, ndim=2)
    with pytest.raises(ValueError, match=r"y_pred must have shape \(N,\), got \(2, 2\)"):
        check_labels(np.zeros((2, 2)), 3, "y_pred")
    with pytest.raises(ValueError, match="must hold numbers"):
        check_labels(np.array(["cat", "dog"]), 2)
