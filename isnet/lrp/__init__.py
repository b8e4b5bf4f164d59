"""The LRP engine: rules, the graph that maps a backbone to its relevance propagation,
and :func:`explain`."""

from .graph import LRPGraph, UnsupportedOperationError
from .layers import AffineLayer, UnsupportedLayerError
from .rules import (
    Add,
    AdaptiveAvgPool,
    AvgPool,
    Concat,
    Epsilon,
    PassThrough,
    Reshape,
    Rule,
    WinnerTakesAll,
    ZBox,
    stabilized_divide,
)
from .explain import explain

__all__ = [
    "LRPGraph",
    "UnsupportedOperationError",
    "UnsupportedLayerError",
    "AffineLayer",
    "Rule",
    "Epsilon",
    "ZBox",
    "AvgPool",
    "AdaptiveAvgPool",
    "WinnerTakesAll",
    "Add",
    "Concat",
    "PassThrough",
    "Reshape",
    "stabilized_divide",
    "explain",
]
