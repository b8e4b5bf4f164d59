"""isnet: classifiers that ignore background bias, trained with differentiable LRP heatmaps
(the ISNet of Bassi, Dertkigil and Cavalli, Nature Communications 2024)."""

from .lrp import LRPGraph, UnsupportedOperationError, explain
from .model import ISNet

__version__ = "0.1.0"

__all__ = ["ISNet", "LRPGraph", "UnsupportedOperationError", "explain", "__version__"]
