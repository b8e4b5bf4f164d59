"""Which rule each operation gets, as data: :class:`Composite` (after the composites of zennit).

A composite is an ordered list of ``(key, factory)`` entries.  For every operation on the
path from the image to the logits the graph builds a :class:`RuleContext` and asks the
entries in order; the first entry whose key matches and whose factory returns a rule (not
``None``) wins.  Keys:

* a module type, or a tuple of them: modules that are instances of it (user entries);
* :class:`Exactly` ``(types)``: modules of exactly these types (the built-in entries, so
  that a subclass with its own ``forward`` is not silently treated as its parent);
* a function such as ``torch.cat`` or ``operator.add``: calls of that function;
* a string such as ``"add"``: calls of that tensor method;
* :data:`FIRST_LAYER`: the convolution / linear layer(s) that take the image, directly or
  through reshapes and identities.

A factory receives the context, whose ``layer`` is the :class:`~isnet.lrp.layers.AffineLayer`
of a convolution or linear layer *including the batch norm right after it* (``ctx.norm``)
when the graph offers to fuse one.  A rule that propagates through that norm says so with
``Rule.fuses(norm)``; otherwise the norm keeps a rule of its own.

Two presets: :func:`epsilon_composite` (the paper: LRP-epsilon everywhere, LRP-zB on the
first layer when ``settings.zb``) and :func:`zplus_composite` (LRP-z+ in every convolution
and linear layer but a zB first layer; the rest as in the epsilon composite).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import fx, nn

from .layers import LAYER_TYPES, NORM_TYPES, AffineLayer
from .rules import (
    AdaptiveAvgPool,
    Add,
    AvgPool,
    Concat,
    Epsilon,
    PassThrough,
    Reshape,
    Rule,
    WinnerTakesAll,
    ZBox,
    ZPlus,
)
from .settings import LRPSettings


class _FirstLayer:
    def __repr__(self) -> str:
        return "FIRST_LAYER"


#: Key of the entry for the layer(s) that take the image.
FIRST_LAYER = _FirstLayer()


class Exactly:
    """Key that matches modules of exactly the given types (not subclasses)."""

    def __init__(self, *types: type) -> None:
        self.types = types

    def __repr__(self) -> str:
        return f"Exactly({', '.join(t.__name__ for t in self.types)})"


Key = Union[type, tuple, Exactly, _FirstLayer, str, Callable[..., Any]]


@dataclass
class RuleContext:
    """Everything a rule factory may need about one operation.

    Attributes:
        node: the traced ``torch.fx`` node (its ``op`` is ``call_module``, ``call_function``
            or ``call_method``).
        where: the operation's place in the model, for error messages.
        settings: the graph's :class:`~isnet.lrp.settings.LRPSettings`.
        module: the module called (``call_module`` nodes), else ``None``.
        norm: a batch norm that directly follows ``module`` and may be fused into it.
        first: the operation is a layer that takes the image (possibly reshaped).
        through_reshape: the image reaches this first layer through a reshape.
    """

    node: fx.Node
    where: str
    settings: LRPSettings
    module: nn.Module | None = None
    norm: nn.Module | None = None
    first: bool = False
    through_reshape: bool = False

    @property
    def layer(self) -> AffineLayer:
        """The (fused) affine map of a convolution / linear module, or a lone batch norm's."""
        if isinstance(self.module, NORM_TYPES) and self.norm is None:
            return AffineLayer(None, self.module, self.where)
        return AffineLayer(self.module, self.norm, self.where)


RuleFactory = Callable[[RuleContext], Union[Rule, None]]


def _matches(key: Key, ctx: RuleContext) -> bool:
    node = ctx.node
    if key is FIRST_LAYER:
        return ctx.first
    if isinstance(key, Exactly):
        return ctx.module is not None and type(ctx.module) in key.types
    if isinstance(key, type):
        return ctx.module is not None and isinstance(ctx.module, key)
    if isinstance(key, tuple):
        return any(_matches(k, ctx) for k in key)
    if isinstance(key, str):
        return node.op == "call_method" and node.target == key
    return node.op == "call_function" and node.target is key


class Composite:
    """An ordered map from operations to rule factories; the first match wins.

    Args:
        entries: ``(key, factory)`` pairs, or a mapping ``{key: factory}`` (insertion order);
            keys as described in :mod:`isnet.lrp.composites`, ``factory(ctx) -> Rule | None``.
        name: a label for messages.

    Example:
        >>> mine = isnet.lrp.zplus_composite().with_rules({nn.Conv2d: lambda ctx: MyRule(ctx.layer)})
        >>> heatmaps = isnet.explain(model, images, rule=mine)
    """

    def __init__(self, entries: Iterable[tuple[Key, RuleFactory]] | Mapping[Key, RuleFactory], name: str = "custom") -> None:
        pairs = list(entries.items()) if isinstance(entries, Mapping) else list(entries)
        for pair in pairs:
            if not (isinstance(pair, tuple) and len(pair) == 2 and callable(pair[1])):
                raise TypeError(f"composite entries must be (key, factory) pairs with a callable factory, got {pair!r}")
        self.entries: list[tuple[Key, RuleFactory]] = pairs
        self.name = name

    def __repr__(self) -> str:
        return f"Composite({self.name!r}, {len(self.entries)} entries)"

    def rule_for(self, ctx: RuleContext) -> Rule | None:
        """The rule of the first matching entry whose factory gives one, else ``None``."""
        for key, factory in self.entries:
            if _matches(key, ctx):
                rule = factory(ctx)
                if rule is not None:
                    return rule
        return None

    def with_rules(self, entries: Iterable[tuple[Key, RuleFactory]] | Mapping[Key, RuleFactory],
                   name: str | None = None) -> Composite:
        """A new composite with ``entries`` asked before this one's."""
        extra = Composite(entries)
        return Composite(extra.entries + self.entries, name or self.name)

    def leaf_types(self) -> tuple[type, ...]:
        """Module types named by the keys: traced as single operations."""
        found: list[type] = []

        def collect(key: Key) -> None:
            if isinstance(key, type):
                found.append(key)
            elif isinstance(key, Exactly):
                found.extend(key.types)
            elif isinstance(key, tuple):
                for k in key:
                    collect(k)

        for key, _ in self.entries:
            collect(key)
        return tuple(dict.fromkeys(found))


# ---------------------------------------------------------------------------------------------
# Factories of the built-in rules
# ---------------------------------------------------------------------------------------------
def epsilon_rule(ctx: RuleContext) -> Rule:
    """LRP-epsilon for a convolution / linear layer (with its fused norm) or a lone batch norm."""
    return Epsilon(ctx.layer, ctx.settings.epsilon)


def zplus_rule(ctx: RuleContext) -> Rule:
    """LRP-z+ for a convolution / linear layer (with its fused norm)."""
    return ZPlus(ctx.layer, ctx.settings.epsilon)


def zb_rule(ctx: RuleContext) -> Rule | None:
    """LRP-zB for a first layer when ``settings.zb`` (else ``None``: the next entry decides)."""
    settings = ctx.settings
    if not settings.zb or not isinstance(ctx.module, LAYER_TYPES):
        return None
    if ctx.through_reshape and settings.per_channel:
        raise ValueError(
            f"per-channel zB bounds need the first layer to take the image directly, but "
            f"{ctx.where} takes a reshaped image; give scalar bounds"
        )
    return ZBox(ctx.layer, settings.epsilon, settings.low_tensor, settings.high_tensor)


def _relu(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return torch.relu(x)


def _identity(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return x


def _contiguous(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return x.contiguous()


def _functional_dropout(fn: Callable) -> Callable:
    def run(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
        return fn(x, p, training)  # out of place

    return run


def _method(name: str) -> Callable:
    def run(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return getattr(x, name)(*args, **kwargs)

    return run


def _with_indices(pool: Callable) -> Callable:
    def run(x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return pool(x, *args, **{**kwargs, "return_indices": True})

    return run


_DROPOUT = {nn.Dropout: F.dropout, nn.Dropout1d: F.dropout1d, nn.Dropout2d: F.dropout2d, nn.Dropout3d: F.dropout3d}
_MAX_POOL = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}


def _dropout_module(ctx: RuleContext) -> Rule:
    module, fn = ctx.module, _DROPOUT[type(ctx.module)]
    return PassThrough(lambda x: fn(x, module.p, module.training))


def _max_pool_module(ctx: RuleContext) -> Rule | None:
    m = ctx.module
    if m.return_indices:
        return None
    fn = _MAX_POOL[type(m)]
    return WinnerTakesAll(lambda x: fn(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True))


def _adaptive_max_pool_module(ctx: RuleContext) -> Rule | None:
    m = ctx.module
    if m.return_indices:
        return None
    return WinnerTakesAll(lambda x: F.adaptive_max_pool2d(x, m.output_size, True))


def _max_pool_function(ctx: RuleContext) -> Rule | None:
    if ctx.node.kwargs.get("return_indices"):
        return None
    return WinnerTakesAll(_with_indices(ctx.node.target))


def _passthrough(fn: Callable) -> RuleFactory:
    return lambda ctx: PassThrough(fn)


#: Rules for everything but affine layers, shared by the presets: gates, reshapes, pooling,
#: sums and concatenations.
STRUCTURAL: list[tuple[Key, RuleFactory]] = [
    (Exactly(nn.ReLU), _passthrough(_relu)),
    (Exactly(*_DROPOUT), _dropout_module),
    (Exactly(nn.Identity), _passthrough(_identity)),
    (Exactly(nn.Flatten), lambda ctx: Reshape(lambda x: x.flatten(ctx.module.start_dim, ctx.module.end_dim), ctx.where)),
    (Exactly(*_MAX_POOL), _max_pool_module),
    (Exactly(nn.AdaptiveMaxPool2d), _adaptive_max_pool_module),
    (Exactly(nn.AvgPool2d), lambda ctx: AvgPool(ctx.settings.epsilon,
                                                {n: getattr(ctx.module, n) for n in AvgPool._NAMES})),
    (Exactly(nn.AdaptiveAvgPool2d), lambda ctx: AdaptiveAvgPool(ctx.settings.epsilon, ctx.module.output_size)),
    ((F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_"), _passthrough(_relu)),
    *[(fn, _passthrough(_functional_dropout(fn))) for fn in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d)],
    ((torch.flatten, torch.reshape), lambda ctx: Reshape(ctx.node.target, ctx.where)),
    ("contiguous", _passthrough(_contiguous)),
    *[(name, lambda ctx: Reshape(_method(ctx.node.target), ctx.where))
      for name in ("view", "reshape", "flatten", "squeeze", "unsqueeze")],
    ((torch.cat, torch.concat, torch.concatenate), lambda ctx: Concat(ctx.where)),
    ((operator.add, operator.iadd, torch.add, "add", "add_", "__add__", "__iadd__"),
     lambda ctx: Add(ctx.settings.epsilon, ctx.where)),
    (F.avg_pool2d, lambda ctx: AvgPool(ctx.settings.epsilon)),
    (F.adaptive_avg_pool2d, lambda ctx: AdaptiveAvgPool(ctx.settings.epsilon)),
    ((F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool2d), _max_pool_function),
]


def epsilon_composite() -> Composite:
    """The paper's rules (Alg. 1, step 2c): LRP-epsilon in every layer, LRP-zB in the first
    when ``settings.zb``; with ``epsilon = 0`` and no zB, LRP-0 (= Gradient*Input)."""
    return Composite(
        [(FIRST_LAYER, zb_rule), (Exactly(*LAYER_TYPES, *NORM_TYPES), epsilon_rule), *STRUCTURAL], name="epsilon"
    )


def zplus_composite() -> Composite:
    """LRP-z+ in every convolution and linear layer (batch norm fused first) except a zB first
    layer; lone batch norms, pooling, sums and concatenations as in :func:`epsilon_composite`."""
    return Composite(
        [(FIRST_LAYER, zb_rule), (Exactly(*LAYER_TYPES), zplus_rule), (Exactly(*NORM_TYPES), epsilon_rule),
         *STRUCTURAL],
        name="zplus",
    )


#: The named presets, for ``rule="epsilon"`` / ``rule="zplus"``.
PRESETS: dict[str, Callable[[], Composite]] = {"epsilon": epsilon_composite, "zplus": zplus_composite}

RuleSpec = Union[str, Composite]


def resolve(rule: RuleSpec) -> Composite:
    """A composite from a preset name or a composite."""
    if isinstance(rule, Composite):
        return rule
    if isinstance(rule, str) and rule in PRESETS:
        return PRESETS[rule]()
    raise ValueError(f"rule must be one of {sorted(PRESETS)} or an isnet.lrp.Composite, got {rule!r}")


def legacy_rules(rules: Mapping[type, Callable[[nn.Module, float], Rule]]) -> list[tuple[Key, RuleFactory]]:
    """``LRPGraph(rules={type: factory(module, epsilon)})`` entries as composite entries."""
    entries: list[tuple[Key, RuleFactory]] = []
    for kind, factory in rules.items():
        if not isinstance(kind, type) or not callable(factory):
            raise TypeError(f"rules must map module types to factory(module, epsilon), got {kind!r}: {factory!r}")
        entries.append((kind, lambda ctx, factory=factory: factory(ctx.module, ctx.settings.epsilon)))
    return entries


def resolve_all(rule: RuleSpec | Sequence[RuleSpec]) -> tuple[list[Composite], bool]:
    """``(composites, several)``: one composite, or several for one forward pass."""
    if isinstance(rule, (str, Composite)):
        return [resolve(rule)], False
    specs = list(rule)
    if not specs:
        raise ValueError("rule must name at least one composite")
    return [resolve(r) for r in specs], True
