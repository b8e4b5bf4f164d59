"""The LRP engine: rules, composites (which rule each operation gets), the graph that maps a
backbone to its relevance propagation, and :func:`explain`."""

from .composites import (
    FIRST_LAYER,
    Composite,
    Exactly,
    RuleContext,
    epsilon_composite,
    zplus_composite,
)
from .graph import Explanation, LRPGraph, UnsupportedOperationError
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
    ZPlus,
    stabilized_divide,
)
from .settings import LRPSettings
from .explain import explain

__all__ = [
    "LRPGraph",
    "Explanation",
    "LRPSettings",
    "Composite",
    "Exactly",
    "FIRST_LAYER",
    "RuleContext",
    "epsilon_composite",
    "zplus_composite",
    "UnsupportedOperationError",
    "UnsupportedLayerError",
    "AffineLayer",
    "Rule",
    "Epsilon",
    "ZBox",
    "ZPlus",
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
