"""The four LRP settings, validated once and carried as one object: :class:`LRPSettings`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import Tensor

from .. import defaults

Bound = Union[float, Sequence[float], Tensor]


def _as_bound(value: Bound, name: str) -> float | tuple[float, ...]:
    """A zB bound as a float or a tuple of per-channel floats (hashable, picklable)."""
    bound = torch.as_tensor(value, dtype=torch.float64).detach()
    if bound.dim() > 1 or bound.numel() == 0:
        raise ValueError(f"zB bound {name!r} must be a number or a 1-D per-channel sequence, got shape {tuple(bound.shape)}")
    if not torch.isfinite(bound).all():
        raise ValueError(f"zB bound {name!r} must be finite, got {value!r}")
    return float(bound) if bound.dim() == 0 else tuple(float(v) for v in bound)


def _tensor(bound: float | tuple[float, ...]) -> Tensor:
    return torch.tensor(bound, dtype=torch.float64)


@dataclass(frozen=True)
class LRPSettings:
    """LRP hyper-parameters shared by every rule (defaults: the paper's, :mod:`isnet.defaults`).

    Args:
        epsilon: LRP-epsilon stabiliser, ``>= 0`` (0 gives LRP-0).
        zb: use LRP-zB for the layer(s) that take the image.
        low, high: lowest and highest admissible input values for zB (in the units of the
            images the model receives); numbers or per-channel sequences of length C.
            Stored as a float or a tuple of floats.

    Raises:
        ValueError: negative or non-finite epsilon, malformed bounds, or ``low > high``.
    """

    epsilon: float = defaults.EPSILON
    zb: bool = defaults.ZB
    low: float | tuple[float, ...] = defaults.ZB_LOW
    high: float | tuple[float, ...] = defaults.ZB_HIGH

    def __post_init__(self) -> None:
        epsilon = float(self.epsilon)
        if not epsilon >= 0 or epsilon == float("inf"):
            raise ValueError(f"epsilon must be a finite number >= 0, got {self.epsilon}")
        low, high = _as_bound(self.low, "low"), _as_bound(self.high, "high")
        if isinstance(low, tuple) and isinstance(high, tuple) and len(low) != len(high):
            raise ValueError(f"zB bounds low and high have different lengths: {len(low)} vs {len(high)}")
        if bool((_tensor(low) > _tensor(high)).any()):
            raise ValueError(f"zB bounds need low <= high, got low={self.low!r}, high={self.high!r}")
        object.__setattr__(self, "epsilon", epsilon)
        object.__setattr__(self, "zb", bool(self.zb))
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @property
    def low_tensor(self) -> Tensor:
        """``low`` as a float64 tensor of shape ``()`` or ``(C,)``."""
        return _tensor(self.low)

    @property
    def high_tensor(self) -> Tensor:
        """``high`` as a float64 tensor of shape ``()`` or ``(C,)``."""
        return _tensor(self.high)

    @property
    def per_channel(self) -> bool:
        """Whether either bound is given per channel."""
        return isinstance(self.low, tuple) or isinstance(self.high, tuple)


def settings_from(
    settings: LRPSettings | None,
    epsilon: float | None,
    zb: bool | None,
    low: Bound | None,
    high: Bound | None,
) -> LRPSettings:
    """One :class:`LRPSettings` from either a settings object or the loose keyword arguments
    (the public ``epsilon=, zb=, low=, high=`` of :func:`isnet.explain`, ``ISNet`` and ``LRPGraph``)."""
    loose = {"epsilon": epsilon, "zb": zb, "low": low, "high": high}
    given = {k: v for k, v in loose.items() if v is not None}
    if settings is None:
        return LRPSettings(**given)
    if not isinstance(settings, LRPSettings):
        raise TypeError(f"settings must be an isnet.lrp.LRPSettings, got {type(settings).__name__}")
    if given:
        raise ValueError(f"give the LRP settings either as settings=... or as keywords, not both (got {sorted(given)})")
    return settings
