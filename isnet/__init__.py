"""isnet: classifiers that ignore background bias, trained with differentiable LRP heatmaps
(the ISNet of Bassi, Dertkigil and Cavalli, Nature Communications 2024)."""

from .loss import ISNetLoss
from .lrp import Composite, LRPGraph, LRPSettings, UnsupportedOperationError, explain
from .model import ISNet

__version__ = "0.1.0"

__all__ = [
    "ISNet", "ISNetLoss", "LRPGraph", "LRPSettings", "Composite", "UnsupportedOperationError", "explain", "__version__",
]
