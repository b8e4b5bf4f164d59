"""The graph that maps a backbone to its relevance propagation (the paper's LRP block, Appendix D).

:class:`LRPGraph` traces a classifier with ``torch.fx``, asks one or several
:class:`~isnet.lrp.composites.Composite` s for the rule of every operation on the path
from the image to the logits (:mod:`isnet.lrp.passes` builds the plan: rule choice,
batch-norm fusion, the first layer, optimisation passes), and interprets the plan.
Calling it runs the classifier once on batch ``B`` and then propagates the relevance of
the ``K`` explained logits (shared or per image) as one ``B*K`` batch through the rules
in reverse order, reusing the forward's activations, once per composite.  A tensor with
several consumers receives the sum of their relevance (Eq. 32), which covers DenseNet's
concatenations and ResNet's skips.

Nothing is attached to the model: no hooks, no replaced modules, no global state.
Operations that the classifier runs in place (``ReLU(inplace=True)``, ``+=``) run out of
place here, so the activations that the relevance pass needs stay intact.

Batch norm without a layer before it (DenseNet's norms after a concatenation, or after
max pooling) is its own per-channel affine layer under LRP-epsilon, with its bias
detached: this is the paper's Algorithm 9 for max pooling and, for the norms that follow
a concatenation, equals Algorithm 11 at epsilon = 0; for epsilon > 0 the two differ only
by the factor ``y / (y + eps*sign(y))`` at the producing convolution's output ``y``.
With epsilon = 0 and no zB the heatmaps therefore equal Gradient*Input in every
supported network (Appendix H).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, fx, nn

from .capture import materialised, module_output_node
from .composites import RuleSpec, legacy_rules, resolve_all
from .layers import CONV_TYPES
from .outputs import ClassesSpec, WeightsSpec, class_index, start_relevance
from .passes import Plan, TracedModel, UnsupportedOperationError, build_plan
from .rules import Rule
from .settings import Bound, LRPSettings, settings_from

LegacyRuleFactory = Callable[[nn.Module, float], Rule]

__all__ = ["Explanation", "LRPGraph", "UnsupportedOperationError", "class_index"]


@dataclass
class Explanation:
    """What one run of an :class:`LRPGraph` gives.

    Attributes:
        logits: ``(B, K_total)``.
        heatmaps: one ``(B, K', C, H, W)`` tensor per composite, in order.
        layers: one ``{layer name: (B, K', *layer output shape[1:])}`` dictionary per
            composite: the relevance at the requested intermediate layers.
    """

    logits: Tensor
    heatmaps: tuple[Tensor, ...]
    layers: tuple[dict[str, Tensor], ...]


def _function_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    if "boolean_dispatch" in name:
        name = getattr(fn, "__name__", name)
    return f"{module}.{name}" if module else name


class _LeafTracer(fx.Tracer):
    def __init__(self, extra_leaves: Iterable[type]) -> None:
        super().__init__()
        self.extra_leaves = tuple(extra_leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.extra_leaves) or super().is_leaf_module(m, qualname)


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
        rules: extra ``{module type: factory(module, epsilon) -> Rule}`` entries, asked
            before the composites'; modules of these types are treated as single operations.
        rule: ``"epsilon"`` (the paper's rules), ``"zplus"``, a
            :class:`~isnet.lrp.composites.Composite`, or a sequence of these: then one
            forward pass gives the heatmaps of each (see :meth:`__call__`).
        settings: an :class:`~isnet.lrp.settings.LRPSettings` instead of
            ``epsilon, zb, low, high`` (defaults: :mod:`isnet.defaults`).

    Raises:
        UnsupportedOperationError: a module on the path from the input to the logits
            has no rule (function calls are checked when the graph first runs).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        epsilon: float | None = None,
        zb: bool | None = None,
        low: Bound | None = None,
        high: Bound | None = None,
        rules: Mapping[type, LegacyRuleFactory] | None = None,
        rule: RuleSpec | Sequence[RuleSpec] = "epsilon",
        settings: LRPSettings | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.settings = settings_from(settings, epsilon, zb, low, high)
        composites, self.several = resolve_all(rule)
        if rules:
            extra = legacy_rules(rules)
            composites = [c.with_rules(extra) for c in composites]
        self.composites = composites
        self.model = model
        leaves = tuple(dict.fromkeys(t for c in composites for t in c.leaf_types()))
        traced = model
        if isinstance(model, leaves):
            traced = nn.Sequential(model)  # a single layer as the whole model: trace it as one operation
        try:
            self.graph = _LeafTracer(leaves).trace(traced)
        except Exception as error:  # torch.fx raises many kinds of errors
            raise UnsupportedOperationError(
                f"could not trace {type(model).__name__} with torch.fx ({type(error).__name__}: {error}); "
                "the LRP engine needs a forward pass without data-dependent control flow"
            ) from error
        self._root = traced
        self._modules = dict(traced.named_modules())
        self._materialised: list[set[fx.Node]] | None = None  # per plan, computed when layers are asked for
        self._build()

    # -- the settings, as before LRPSettings --------------------------------------------------
    @property
    def epsilon(self) -> float:
        return self.settings.epsilon

    @property
    def zb(self) -> bool:
        return self.settings.zb

    @property
    def low(self) -> Tensor:
        """Float64, shape ``()`` or ``(C,)``."""
        return self.settings.low_tensor

    @property
    def high(self) -> Tensor:
        """Float64, shape ``()`` or ``(C,)``."""
        return self.settings.high_tensor

    # -- construction --------------------------------------------------------------------------
    def _where(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return f"module '{node.target}' ({type(self._modules[node.target]).__name__})"
        stack = node.meta.get("nn_module_stack") or {}
        inside = f"inside module '{next(reversed(stack))}'" if stack else f"in {type(self.model).__name__}.forward"
        if node.op == "call_function":
            return f"function {_function_name(node.target)} {inside}"
        return f"method Tensor.{node.target} {inside}"

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
        traced = TracedModel(nodes, self.input_node, carrying, self._modules, self._where, type(self.model).__name__)
        self.plans: list[Plan] = [build_plan(traced, c, self.settings) for c in self.composites]
        self._check_shared_forward()
        first = self.plans[0]
        self._steps, self._fused, self.first_layers = first.steps, first.fused, first.first_layers
        self._unknown = set().union(*(p.unknown for p in self.plans))

    def _check_shared_forward(self) -> None:
        """Several composites share one forward pass: their plans must run the same operations."""
        first = self.plans[0]
        for plan in self.plans[1:]:
            if plan.steps.keys() != first.steps.keys() or plan.fused != first.fused:
                raise ValueError(
                    f"composites {first.composite.name!r} and {plan.composite.name!r} split the model into "
                    "different operations (e.g. one fuses a batch norm that the other does not); "
                    "explain them in separate calls"
                )
            for key, step in plan.steps.items():
                ours = first.steps[key]
                if step.call_node is not ours.call_node or not ours.rule.same_forward(step.rule):
                    raise ValueError(
                        f"composites {first.composite.name!r} and {plan.composite.name!r} run different forward "
                        f"passes at {self._where(step.call_node)} ({type(ours.rule).__name__} vs "
                        f"{type(step.rule).__name__}); explain them in separate calls"
                    )

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
        if self.settings.zb and self.first_layers:
            self._check_bounds(x)

    def _first_layers_of_type(self, types: tuple) -> list[fx.Node]:
        return [
            u for u in self.input_node.users if u.op == "call_module" and isinstance(self._modules[u.target], types)
        ]

    def _check_bounds(self, x: Tensor) -> None:
        low, high = self.low.to(x.device), self.high.to(x.device)  # float64, shape () or (C,)
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
        """Run the classifier through the rules' forward passes (the first composite's; all
        composites' rules share them).

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

    def relevance(
        self,
        logits: Tensor,
        saved: dict,
        classes: Tensor | None = None,
        plan: Plan | None = None,
        *,
        start: Tensor | None = None,
    ) -> Tensor | None:
        """Propagate the relevance of the chosen logits to the input.

        Args:
            logits: ``(B, K_total)`` from :meth:`forward`.
            saved: what :meth:`forward` returned beside the logits.
            classes: logit indices to explain, long: ``(K,)`` shared by the batch, or
                ``(B, K)`` per image.
            plan: whose rules to use (default: the first composite's).
            start: instead of ``classes``, the relevance at the logits, ``(B, K, K_total)``
                (see :func:`isnet.lrp.outputs.start_relevance`).

        Returns:
            Relevance at the input, ``(B, K, *input.shape[1:])``, or ``None`` if none reaches it.
        """
        if start is None:
            start = start_relevance(logits, classes)
        return self._propagate(start, saved, plan or self.plans[0], {})[0]

    def _propagate(
        self, start: Tensor, saved: dict, plan: Plan, keep: dict[fx.Node, list[str]]
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        """Run ``plan``'s rules backwards from the start relevance ``(B, K, K_total)``.

        Returns:
            ``(relevance at the input or None, {name: relevance at the layer})`` for the
            layers in ``keep`` (node -> names).
        """
        steps = plan.steps
        kept: dict[str, Tensor] = {}
        pending: dict[fx.Node, Tensor] = {self.output_node.args[0]: start}
        relevance_at_input = None
        for node in reversed(self.graph.nodes):
            R = pending.pop(node, None)
            if node in keep and R is not None:  # (validated layers always receive relevance)
                kept.update((name, R) for name in keep[node])
            if R is None or node not in steps:
                if node is self.input_node:
                    relevance_at_input = R
                    break
                continue
            step = steps[node]
            options: dict[str, Any] = {}
            if step.absorbed is not None:
                options["input_scale"] = steps[step.absorbed].rule.diagonal_ratio(saved[step.absorbed])
            if step.scaled_by is not None:
                options["factor"] = steps[step.scaled_by].rule.reciprocal(saved[step.scaled_by])
            elif step.divided:
                options["divided"] = True
            relevances = step.rule.relevance(R, saved[node], **options)
            for source, r in zip(step.inputs, relevances):
                if r is None or not isinstance(source, fx.Node) or source not in self._carrying:
                    continue
                pending[source] = r if source not in pending else pending[source] + r
        return relevance_at_input, kept

    # -- intermediate layers -----------------------------------------------------------------------
    def layer_nodes(self, layers: Sequence[str]) -> dict[fx.Node, list[str]]:
        """The traced nodes whose relevance gives each named layer's (see :mod:`isnet.lrp.capture`).

        Raises:
            ValueError: an unknown layer, a layer off the path from the image to the logits, or
                one whose relevance the optimised propagation never holds.
        """
        prefix = "" if self._root is self.model else "0."
        nodes = list(self.graph.nodes)
        found: dict[fx.Node, list[str]] = {}
        for name in layers:
            if prefix + name not in self._modules:
                raise ValueError(f"no layer {name!r} in {type(self.model).__name__} (names as in named_modules())")
            node = module_output_node(nodes, prefix + name)
            if node is None or node not in self._carrying:
                raise ValueError(f"layer {name!r} is not on the path from the image to the logits")
            if self._materialised is None:
                output = self.output_node.args[0]
                self._materialised = [materialised(p, nodes, output, self._carrying) for p in self.plans]
            if any(node not in m for m in self._materialised):
                raise ValueError(
                    f"the relevance at layer {name!r} ({self._where(node)}) is not held by the optimised propagation "
                    "(a batch norm fused into the layer before it, a norm absorbed by the layer after it, or a "
                    "tensor between a layer and the max pool that divides its relevance); choose a block's output "
                    "(a ResNet stage, a DenseNet block, a max pool)"
                )
            found.setdefault(node, []).append(name)
        return found

    def run(
        self,
        x: Tensor,
        classes: ClassesSpec = None,
        *,
        logit_weights: WeightsSpec = None,
        layers: Sequence[str] = (),
    ) -> Explanation:
        """Classify ``x`` and explain what ``classes`` or ``logit_weights`` choose, with every
        composite, from one forward pass.

        Args:
            x: images ``(B, C, H, W)``, floating point, within ``[low, high]`` when zB is on.
            classes: logit indices (see :meth:`__call__`), or a function of the logits
                ``(B, K_total)`` that returns them.
            logit_weights: instead of ``classes``, weights over the logits ``(K', K_total)``
                or ``(B, K', K_total)``, or a function of the logits returning them: map ``k``
                explains ``sum_j w[k, j] * logit_j`` in LRP's sense (:mod:`isnet.lrp.outputs`).
            layers: names of intermediate layers (as in ``named_modules()``) whose relevance to
                return as well (:mod:`isnet.lrp.capture`).

        Returns:
            An :class:`Explanation`.
        """
        keep = self.layer_nodes(layers) if layers else {}
        self._check_images(x)
        logits, saved = self.forward(x)
        start = start_relevance(logits, classes, logit_weights)
        maps, kept = [], []
        for plan in self.plans:
            heatmaps, at_layers = self._propagate(start, saved, plan, keep)
            if heatmaps is None:
                heatmaps = x.new_zeros(x.shape[0], start.shape[1], *x.shape[1:])
            maps.append(heatmaps)
            kept.append({name: at_layers[name] for name in layers})  # in the order asked for
        return Explanation(logits, tuple(maps), tuple(kept))

    def __call__(
        self, x: Tensor, classes: ClassesSpec = None, *, logit_weights: WeightsSpec = None
    ) -> tuple[Tensor, Tensor | tuple[Tensor, ...]]:
        """Classify ``x`` and explain the chosen logits.

        Args:
            x: images ``(B, C, H, W)``, floating point, within ``[low, high]`` when zB is on.
            classes: logit indices to explain: ``None`` (all ``K_total``), a sequence or
                ``(K,)`` tensor shared by the batch, or a ``(B, K)`` integer tensor with a
                class list per image (or a function of the logits returning one).  The
                relevance pass runs on ``B*K`` maps either way.
            logit_weights: instead of ``classes``, weights over the logits (see :meth:`run`).

        Returns:
            ``(logits, heatmaps)``: logits ``(B, K_total)`` and heatmaps ``(B, K, C, H, W)``
            with the dtype and device of ``x``; ``heatmaps[b, k]`` explains logit
            ``classes[k]`` (or ``classes[b, k]``) of image ``b``.  With several composites
            (``rule=[...]``), a tuple of such heatmaps, one per composite, in order, all
            from one forward pass.
        """
        out = self.run(x, classes, logit_weights=logit_weights)
        return out.logits, (out.heatmaps if self.several else out.heatmaps[0])
