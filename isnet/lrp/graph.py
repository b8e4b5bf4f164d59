"""The graph that maps a backbone to its relevance propagation (the paper's LRP block, Appendix D).

:class:`LRPGraph` traces a classifier with ``torch.fx``, gives every operation on
the path from the image to the logits a rule from :mod:`isnet.lrp.rules`, fuses
each batch norm into the convolution or linear layer before it (Appendix D.2),
and uses LRP-zB for the first layer.  Calling it runs the classifier once on
batch ``B`` and then propagates the relevance of all ``K`` explained logits as
one ``B*K`` batch through the rules in reverse order, reusing the forward's
activations.  A tensor with several consumers receives the sum of their
relevance (Eq. 32), which covers DenseNet's concatenations and ResNet's skips.

Nothing is attached to the model: no hooks, no replaced modules, no global
state.  Operations that the classifier runs in place (``ReLU(inplace=True)``,
``+=``) run out of place here, so the activations that the relevance pass
needs stay intact.

Batch norm without a layer before it (DenseNet's norms after a concatenation,
or after max pooling) is its own per-channel affine layer under LRP-epsilon,
with its bias detached: this is the paper's Algorithm 9 for max pooling and,
for the norms that follow a concatenation, equals Algorithm 11 at epsilon = 0;
for epsilon > 0 the two differ only by the factor ``y / (y + eps*sign(y))`` at
the producing convolution's output ``y``.  With epsilon = 0 and no zB the
heatmaps therefore equal Gradient*Input in every supported network
(Appendix H).  When such a norm's output reaches a single layer (through gates
such as ReLU), that layer's rule applies the norm's batch-``B`` factor to its own
input and hands its relevance straight to the norm's input: the same products,
one ``B*K``-sized tensor fewer.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .. import defaults
from .layers import CONV_TYPES, LAYER_TYPES, NORM_TYPES, AffineLayer, UnsupportedLayerError
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
)

RuleFactory = Callable[[nn.Module, float], Rule]


class UnsupportedOperationError(UnsupportedLayerError):
    """An operation on the path from the input to the logits that has no LRP rule."""


# ---------------------------------------------------------------------------------------------
# Which rule each operation gets.  Adding a layer type means adding one entry here (or passing
# ``rules={MyModule: factory}`` to LRPGraph) with a Rule from isnet.lrp.rules.
# ---------------------------------------------------------------------------------------------
def _relu(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return torch.relu(x)


def _identity(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return x


def _contiguous(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    return x.contiguous()


def _functional_dropout(fn: Callable) -> Callable:
    def run(x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
        return fn(x, p, training)

    return run


def _method(name: str) -> Callable:
    def run(x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return getattr(x, name)(*args, **kwargs)

    return run


def _with_indices(pool: Callable) -> Callable:
    def run(x: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        return pool(x, *args, **{**kwargs, "return_indices": True})

    return run


_DROPOUT = {nn.Dropout: F.dropout, nn.Dropout1d: F.dropout1d, nn.Dropout2d: F.dropout2d, nn.Dropout3d: F.dropout3d}
_MAX_POOL = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}


def _module_rule(module: nn.Module, where: str, epsilon: float) -> Rule | None:
    kind = type(module)
    if kind in LAYER_TYPES:
        return Epsilon(AffineLayer(module, None, where), epsilon)
    if kind in NORM_TYPES:
        return Epsilon(AffineLayer(None, module, where), epsilon)
    if kind is nn.ReLU:
        return PassThrough(_relu)
    if kind in _DROPOUT:
        fn = _DROPOUT[kind]
        return PassThrough(lambda x: fn(x, module.p, module.training))
    if kind is nn.Identity:
        return PassThrough(_identity)
    if kind is nn.Flatten:
        return Reshape(lambda x: x.flatten(module.start_dim, module.end_dim), where)
    if kind in _MAX_POOL and not module.return_indices:
        fn = _MAX_POOL[kind]
        return WinnerTakesAll(
            lambda x: fn(x, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode, True)
        )
    if kind is nn.AdaptiveMaxPool2d and not module.return_indices:
        return WinnerTakesAll(lambda x: F.adaptive_max_pool2d(x, module.output_size, True))
    if kind is nn.AvgPool2d:
        params = {name: getattr(module, name) for name in AvgPool._NAMES}
        return AvgPool(epsilon, params)
    if kind is nn.AdaptiveAvgPool2d:
        return AdaptiveAvgPool(epsilon, module.output_size)
    return None


def _function_rule(fn: Any, where: str, epsilon: float, node: fx.Node) -> Rule | None:
    if fn in (F.relu, torch.relu, torch.relu_, F.relu_):
        return PassThrough(_relu)
    if fn in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d):
        return PassThrough(_functional_dropout(fn))
    if fn in (torch.flatten, torch.reshape):
        return Reshape(fn, where)
    if fn in (torch.cat, torch.concat, torch.concatenate):
        return Concat(where)
    if fn in (operator.add, operator.iadd, torch.add):
        return Add(epsilon, where)
    if fn is F.avg_pool2d:
        return AvgPool(epsilon)
    if fn is F.adaptive_avg_pool2d:
        return AdaptiveAvgPool(epsilon)
    if fn in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool2d):
        if node.kwargs.get("return_indices"):
            return None
        return WinnerTakesAll(_with_indices(fn))
    return None


def _method_rule(name: str, where: str, epsilon: float) -> Rule | None:
    if name in ("relu", "relu_"):
        return PassThrough(_relu)
    if name == "contiguous":
        return PassThrough(_contiguous)
    if name in ("view", "reshape", "flatten", "squeeze", "unsqueeze"):
        return Reshape(_method(name), where)
    if name in ("add", "add_", "__add__", "__iadd__"):
        return Add(epsilon, where)
    return None


def _function_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    if "boolean_dispatch" in name:
        name = getattr(fn, "__name__", name)
    return f"{module}.{name}" if module else name


# ---------------------------------------------------------------------------------------------
@dataclass
class _Step:
    rule: Rule
    call_node: fx.Node  # whose args the rule's forward receives
    inputs: list[Any] = field(default_factory=list)  # fx nodes (or constants) aligned with rule.relevance
    absorbed: fx.Node | None = None  # a lone norm whose relevance this step computes too
    scaled_by: fx.Node | None = None  # a max pool's: the layer whose denominator it applies
    divided: bool = False  # a layer's: its relevance arrives divided by its denominator


class _LeafTracer(fx.Tracer):
    def __init__(self, extra_leaves: Iterable[type]) -> None:
        super().__init__()
        self.extra_leaves = tuple(extra_leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.extra_leaves) or super().is_leaf_module(m, qualname)


def _as_bound(value: float | Sequence[float] | Tensor, name: str) -> Tensor:
    bound = torch.as_tensor(value, dtype=torch.float64).detach()
    if bound.dim() > 1 or bound.numel() == 0:
        raise ValueError(f"zB bound {name!r} must be a number or a 1-D per-channel sequence, got shape {tuple(bound.shape)}")
    if not torch.isfinite(bound).all():
        raise ValueError(f"zB bound {name!r} must be finite, got {value!r}")
    return bound


class LRPGraph:
    """Differentiable LRP heatmaps for a traceable classifier.

    Args:
        model: a classifier mapping images ``(B, C, H, W)`` to logits ``(B, K)``; its
            ``forward`` must be traceable by ``torch.fx`` (torchvision's VGG, ResNet and
            DenseNet are).  It is used as is: parameters are shared, nothing is modified.
        epsilon: LRP-epsilon stabiliser for every layer (0 gives LRP-0).
        zb: use LRP-zB for the layer(s) that take the image.
        low, high: lowest and highest admissible input values for zB; numbers or
            per-channel sequences of length C.
        rules: extra ``{module type: factory(module, epsilon) -> Rule}`` entries; modules
            of these types are treated as single operations.

    Raises:
        UnsupportedOperationError: a module on the path from the input to the logits
            has no rule (function calls are checked when the graph first runs).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        epsilon: float = defaults.EPSILON,
        zb: bool = defaults.ZB,
        low: float | Sequence[float] | Tensor = defaults.ZB_LOW,
        high: float | Sequence[float] | Tensor = defaults.ZB_HIGH,
        rules: Mapping[type, RuleFactory] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        epsilon = float(epsilon)
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon}")
        self.model = model
        self.epsilon = epsilon
        self.zb = bool(zb)
        self.low = _as_bound(low, "low")
        self.high = _as_bound(high, "high")
        if min(self.low.numel(), self.high.numel()) > 1 and self.low.numel() != self.high.numel():
            raise ValueError(f"zB bounds low and high have different lengths: {self.low.numel()} vs {self.high.numel()}")
        if (self.low > self.high).any():
            raise ValueError(f"zB bounds need low <= high, got low={low!r}, high={high!r}")
        self._custom = dict(rules or {})
        traced = model
        if _module_rule(model, "", epsilon) is not None or isinstance(model, tuple(self._custom)):
            traced = nn.Sequential(model)  # a single layer as the whole model: trace it as one operation
        try:
            self.graph = _LeafTracer(self._custom).trace(traced)
        except Exception as error:  # torch.fx raises many kinds of errors
            raise UnsupportedOperationError(
                f"could not trace {type(model).__name__} with torch.fx ({type(error).__name__}: {error}); "
                "the LRP engine needs a forward pass without data-dependent control flow"
            ) from error
        self._root = traced
        self._modules = dict(traced.named_modules())
        self._build()

    # -- construction --------------------------------------------------------------------------
    def _where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module '{node.target}' ({type(self._modules[node.target]).__name__})"
        stack = node.meta.get("nn_module_stack") or {}
        inside = f"inside module '{next(reversed(stack))}'" if stack else f"in {type(self.model).__name__}.forward"
        if node.op == "call_function":
            return f"function {_function_name(node.target)} {inside}"
        return f"method Tensor.{node.target} {inside}"

    def _rule_for(self, node: fx.Node) -> Rule | None:
        where = self._where(node)
        if node.op == "call_module":
            module = self._modules[node.target]
            for kind, factory in self._custom.items():
                if isinstance(module, kind):
                    return factory(module, self.epsilon)
            return _module_rule(module, where, self.epsilon)
        if node.op == "call_function":
            return _function_rule(node.target, where, self.epsilon, node)
        if node.op == "call_method":
            return _method_rule(node.target, where, self.epsilon)
        return None

    def _build(self) -> None:
        nodes = list(self.graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        if not placeholders:
            raise ValueError(f"{type(self.model).__name__}.forward takes no input")
        self.input_node = placeholders[0]
        for extra in placeholders[1:]:
            if not extra.args:
                raise ValueError(
                    f"{type(self.model).__name__}.forward has a second required argument {extra.target!r}; "
                    "the LRP engine explains models of one image tensor"
                )
        outputs = [n for n in nodes if n.op == "output"]
        self.output_node = outputs[0]
        if not isinstance(self.output_node.args[0], fx.Node):
            raise ValueError(f"{type(self.model).__name__} must return one logits tensor, not {self.output_node.args[0]!r}")

        # Nodes whose value depends on the input: the path that relevance travels.
        carrying = {self.input_node}
        for node in nodes:
            if node.op in ("call_module", "call_function", "call_method") and any(
                a in carrying for a in node.all_input_nodes
            ):
                carrying.add(node)
        self._carrying = carrying

        self._steps: dict[fx.Node, _Step] = {}
        self._fused: set[fx.Node] = set()
        self._unknown: set[fx.Node] = set()
        for node in nodes:
            if node not in carrying or node.op not in ("call_module", "call_function", "call_method"):
                continue
            fused = self._fuse_norm(node)
            if fused is not None:
                continue
            rule = self._rule_for(node)
            if rule is None:
                if node.op == "call_module" and isinstance(self._modules[node.target], nn.SyncBatchNorm):
                    raise UnsupportedOperationError(
                        f"{self._where(node)}: SyncBatchNorm (e.g. Lightning's sync_batchnorm=True) is not "
                        "supported; the LRP rules recompute the batch statistics of each process's own batch, "
                        "so train with per-process BatchNorm (sync_batchnorm=False)"
                    )
                if node.op == "call_module":
                    raise UnsupportedOperationError(
                        f"no LRP rule for {self._where(node)}; supported modules: Conv1d/2d/3d, Linear, "
                        "BatchNorm1d/2d/3d, ReLU, Dropout, Identity, Flatten, MaxPool, AvgPool2d, "
                        "AdaptiveAvgPool2d, AdaptiveMaxPool2d (add one with LRPGraph(..., rules=...))"
                    )
                self._unknown.add(node)  # may be a shape query; checked when it runs
                continue
            self._steps[node] = _Step(rule, node, rule.input_nodes(node))
        self._merge_concat_prefixes()
        self._apply_zb()
        self._absorb_lone_norms()
        self._divide_at_max_pools()

    def _merge_concat_prefixes(self) -> None:
        """Let a concatenation whose first inputs are exactly those of an earlier
        concatenation (along the same dimension) pass their relevance to that one.

        DenseNet's layer ``i`` concatenates ``[x0, f1, ..., f(i-1)]``, and layer ``i+1``
        the same list plus ``fi``.  Handing the prefix's relevance to the earlier
        concatenation, which splits it further, gives the same sums (Eq. 32) with one
        addition per layer instead of one per feature map.
        """
        earlier: dict[tuple, fx.Node] = {}
        for node, step in self._steps.items():
            if type(step.rule) is not Concat:  # subclasses may split differently
                continue
            call = step.call_node
            dim = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim", 0)
            inputs = step.inputs
            if not isinstance(dim, int) or not all(isinstance(n, fx.Node) for n in inputs):
                continue
            for m in range(len(inputs) - 1, 1, -1):
                source = earlier.get((dim, *inputs[:m]))
                if source is not None:
                    step.rule = Concat(step.rule.where, merged=m)
                    step.inputs = [source, *inputs[m:]]
                    break
            earlier[(dim, *inputs)] = node

    def _absorb_lone_norms(self) -> None:
        """Let the layer after a lone batch norm propagate through the norm as well.

        DenseNet's ``norm -> relu -> conv`` (and ``norm -> relu -> pool``): the norm's rule
        multiplies the relevance by the batch-``B`` ratio ``q = x w / (z + eps)``, and the
        layer's rule multiplies ``W^T s`` by its input ``a``.  With a single consumer all
        along, ``R_norm_in = q * a * W^T s``: the layer takes ``q * a`` as its input factor
        and hands its relevance straight to the norm's input.  The same sums, with one
        ``B*K``-sized product (and its backward) fewer per norm, at the widest tensors of
        a DenseNet.
        """
        by_call = {step.call_node: key for key, step in self._steps.items()}

        def only_consumer(node: fx.Node) -> _Step | None:
            """The step that alone uses ``node``, and uses it as its relevance input."""
            if len(node.users) != 1:
                return None
            key = by_call.get(next(iter(node.users)))
            step = self._steps.get(key) if key is not None else None
            return step if step is not None and step.inputs == [node] else None

        for key, step in list(self._steps.items()):
            if type(step.rule) is not Epsilon or step.rule.layer.layer is not None:
                continue
            consumer = only_consumer(key)
            # Gates and identities in between hand relevance on unchanged.
            while consumer is not None and type(consumer.rule) is PassThrough:
                consumer = only_consumer(by_call[consumer.call_node])
            if consumer is None or not consumer.rule.scales_input or consumer.absorbed is not None:
                continue
            consumer.absorbed = key
            consumer.inputs = list(step.inputs)

    def _divide_at_max_pools(self) -> None:
        """Let a max pool apply the denominator of the layer before it, at the pool's output size.

        ``conv -> relu -> max pool``: the pool hands each window's relevance to the window's
        maximum, and the layer divides the result by its batch-``B`` denominator ``z``.  With
        a single consumer all along, dividing each window's relevance by ``z`` at its maximum
        before handing it on gives the same values, with the ``B*K``-sized product (and its
        backward) at the pooled size: a quarter of the elements for 2x2 windows.
        """
        for step in self._steps.values():
            if not isinstance(step.rule, WinnerTakesAll) or len(step.inputs) != 1:
                continue
            node = step.inputs[0]
            # Gates and identities in between hand relevance on unchanged.
            while (isinstance(node, fx.Node) and len(node.users) == 1 and node in self._steps
                   and type(self._steps[node].rule) is PassThrough):
                node = self._steps[node].inputs[0]
            producer = self._steps.get(node) if isinstance(node, fx.Node) else None
            if producer is None or len(node.users) != 1 or not producer.rule.divides_output or producer.divided:
                continue
            step.scaled_by = node
            producer.divided = True

    def _fuse_norm(self, node: fx.Node) -> _Step | None:
        """Fuse a batch norm into the conv/linear that feeds only it (Appendix D.2)."""
        if node.op != "call_module" or type(self._modules[node.target]) not in NORM_TYPES:
            return None
        if len(node.args) != 1 or node.kwargs:
            return None
        producer = node.args[0]
        if not isinstance(producer, fx.Node) or producer.op != "call_module" or len(producer.users) != 1:
            return None
        layer = self._modules[producer.target]
        norm = self._modules[node.target]
        if type(layer) not in LAYER_TYPES or producer in self._fused or producer.kwargs or len(producer.args) != 1:
            return None
        channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        if channels != norm.num_features:
            return None
        self._steps.pop(producer, None)
        self._fused.add(producer)
        rule = Epsilon(AffineLayer(layer, norm, f"{self._where(producer)} + {self._where(node)}"), self.epsilon)
        step = _Step(rule, producer, rule.input_nodes(producer))
        self._steps[node] = step
        return step

    def _first_layers(self) -> list[tuple[fx.Node, bool]]:
        """Affine steps that take the image, directly or through reshapes / identities.

        Returns:
            ``(step key, reached through a reshape)`` pairs.
        """
        by_call = {step.call_node: key for key, step in self._steps.items()}
        found, frontier, seen = [], [(self.input_node, False)], set()
        while frontier:
            node, reshaped = frontier.pop()
            for user in node.users:
                key = by_call.get(user)
                if key is None or key in seen:
                    continue
                seen.add(key)
                rule = self._steps[key].rule
                if isinstance(rule, Epsilon) and rule.layer.layer is not None:
                    found.append((key, reshaped))
                elif isinstance(rule, (PassThrough, Reshape)):
                    frontier.append((key, reshaped or isinstance(rule, Reshape)))
        return found

    def _apply_zb(self) -> None:
        self.first_layers: list[fx.Node] = []
        if not self.zb:
            return
        first = self._first_layers()
        if not first:
            raise UnsupportedOperationError(
                f"zB needs a convolution or linear layer that takes the image, and {type(self.model).__name__} "
                "has none; pass zb=False"
            )
        for node, through_reshape in first:
            step = self._steps[node]
            if through_reshape and (self.low.numel() > 1 or self.high.numel() > 1):
                raise ValueError(
                    f"per-channel zB bounds need the first layer to take the image directly, but "
                    f"{self._where(step.call_node)} takes a reshaped image; give scalar bounds"
                )
            step.rule = ZBox(step.rule.layer, self.epsilon, self.low, self.high)
            self.first_layers.append(step.call_node)

    def is_current(self) -> bool:
        """Whether the model still holds the very modules the graph was built from (a module
        replaced after construction, e.g. by a training framework's layer conversion, is not
        seen by the graph; rebuild it then)."""
        current = dict(self._root.named_modules())
        return len(current) == len(self._modules) and all(current.get(n) is m for n, m in self._modules.items())

    # -- running -------------------------------------------------------------------------------
    def _check_images(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"images must be a floating-point tensor, got dtype {x.dtype}; convert e.g. with x.float() / 255"
            )
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"images must have a non-empty batch dimension first, got shape {tuple(x.shape)}")
        for node in self._first_layers_of_type(CONV_TYPES):
            conv = self._modules[node.target]
            dims = len(conv.kernel_size)
            if x.dim() != dims + 2 or x.shape[1] != conv.in_channels:
                spatial = ", ".join("HWD"[i] for i in range(dims))
                raise ValueError(
                    f"images must have shape (B, {conv.in_channels}, {spatial}) for {self._where(node)}, "
                    f"got {tuple(x.shape)}"
                )
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or infinite values")
        if self.zb:
            self._check_bounds(x)

    def _first_layers_of_type(self, types: tuple) -> list[fx.Node]:
        return [
            u for u in self.input_node.users if u.op == "call_module" and isinstance(self._modules[u.target], types)
        ]

    def _check_bounds(self, x: Tensor) -> None:
        low, high = self.low.to(x.device), self.high.to(x.device)
        channels = max(low.numel(), high.numel())
        if low.dim() == 1 or high.dim() == 1:
            if x.dim() < 2 or x.shape[1] != channels:
                raise ValueError(f"zB bounds are given for {channels} channels but the images have shape {tuple(x.shape)}")
            shape = (1, -1) + (1,) * (x.dim() - 2)
            low, high = low.reshape(-1).expand(channels).view(shape), high.reshape(-1).expand(channels).view(shape)
        tolerance = 1e-4 * float((self.high - self.low).abs().max().clamp(min=1.0))
        xd = x.detach().to(torch.float64)
        if (xd < low - tolerance).any() or (xd > high + tolerance).any():
            raise ValueError(
                f"images lie outside the zB bounds [low, high] = [{self.low.tolist()}, {self.high.tolist()}] "
                f"(min {float(xd.min()):.4g}, max {float(xd.max()):.4g}); pass the bounds of your "
                "preprocessing as low/high, or zb=False"
            )

    def _load(self, value: Any, env: dict) -> Any:
        return fx.node.map_arg(value, lambda n: env[n])

    def _run_plain(self, node: fx.Node, env: dict) -> Any:
        if node.op == "get_attr":
            obj: Any = self._root
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        args, kwargs = self._load(node.args, env), self._load(node.kwargs, env)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return self._modules[node.target](*args, **kwargs)

    def forward(self, x: Tensor) -> tuple[Tensor, dict]:
        """Run the classifier through the rules' forward passes.

        Returns:
            ``(logits, saved)`` with logits of shape ``(B, K_total)``.
        """
        env: dict[fx.Node, Any] = {}
        saved: dict[fx.Node, tuple] = {}
        for node in self.graph.nodes:
            if node.op == "placeholder":
                env[node] = x if node is self.input_node else node.args[0]
            elif node.op == "output":
                break
            elif node in self._fused:
                continue
            elif node in self._steps:
                step = self._steps[node]
                args, kwargs = self._load(step.call_node.args, env), self._load(step.call_node.kwargs, env)
                try:
                    env[node], saved[node] = step.rule.forward(args, kwargs)
                except RuntimeError as error:
                    raise RuntimeError(f"forward pass failed at {self._where(step.call_node)}: {error}") from error
            else:
                value = self._run_plain(node, env)
                if node in self._unknown and isinstance(value, Tensor) and value.is_floating_point():
                    raise UnsupportedOperationError(
                        f"no LRP rule for {self._where(node)}, which lies on the path from the input to the logits"
                    )
                env[node] = value
        logits = env[self.output_node.args[0]]
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"the model must return logits of shape (B, K) = ({x.shape[0]}, K), got {shape}")
        return logits, saved

    def relevance(self, logits: Tensor, saved: dict, classes: Tensor) -> Tensor | None:
        """Propagate the relevance of the chosen logits to the input.

        Args:
            logits: ``(B, K_total)`` from :meth:`forward`.
            saved: what :meth:`forward` returned beside the logits.
            classes: ``(K,)`` long tensor of logit indices to explain.

        Returns:
            Relevance at the input, ``(B, K, *input.shape[1:])``, or ``None`` if none reaches it.
        """
        onehot = F.one_hot(classes, logits.shape[1]).to(logits.dtype)  # (K, K_total)
        pending: dict[fx.Node, Tensor] = {self.output_node.args[0]: logits.unsqueeze(1) * onehot}
        for node in reversed(self.graph.nodes):
            R = pending.pop(node, None)
            if R is None or node not in self._steps:
                if node is self.input_node:
                    return R
                continue
            step = self._steps[node]
            own = saved[node]
            if step.absorbed is not None:
                ratio = self._steps[step.absorbed].rule.diagonal_ratio(saved[step.absorbed])
                own = (own[0] * ratio, *own[1:])
            if step.scaled_by is not None:
                factor = self._steps[step.scaled_by].rule.reciprocal(saved[step.scaled_by])
                relevances = step.rule.relevance(R, own, factor=factor)
            elif step.divided:
                relevances = step.rule.relevance(R, own, divided=True)
            else:
                relevances = step.rule.relevance(R, own)
            for source, r in zip(step.inputs, relevances):
                if r is None or not isinstance(source, fx.Node) or source not in self._carrying:
                    continue
                pending[source] = r if source not in pending else pending[source] + r
        return None

    def __call__(self, x: Tensor, classes: Sequence[int] | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Classify ``x`` and explain the chosen logits.

        Args:
            x: images ``(B, C, H, W)``, floating point, within ``[low, high]`` when zB is on.
            classes: logit indices to explain (default: all ``K_total``).

        Returns:
            ``(logits, heatmaps)``: logits ``(B, K_total)`` and heatmaps ``(B, K, C, H, W)``
            with the dtype and device of ``x``; ``heatmaps[:, k]`` explains logit ``classes[k]``.
        """
        self._check_images(x)
        logits, saved = self.forward(x)
        index = _class_index(classes, logits.shape[1], logits.device)
        heatmaps = self.relevance(logits, saved, index)
        if heatmaps is None:
            heatmaps = x.new_zeros(x.shape[0], index.numel(), *x.shape[1:])
        return logits, heatmaps


def _class_index(classes: Sequence[int] | Tensor | None, total: int, device: torch.device) -> Tensor:
    if classes is None:
        return torch.arange(total, device=device)
    index = torch.as_tensor(classes, device=device)
    if index.dim() == 0:
        index = index.view(1)
    if index.dim() != 1 or index.numel() == 0 or index.is_floating_point() or index.dtype == torch.bool:
        raise ValueError(f"classes must be a non-empty sequence of logit indices, got {classes!r}")
    if (index < 0).any() or (index >= total).any():
        raise ValueError(f"classes must lie in [0, {total - 1}] for a model with {total} logits, got {index.tolist()}")
    return index.long()
