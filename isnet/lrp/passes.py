"""From a traced model and a composite to a propagation plan: rule choice, batch-norm fusion,
the first layer, and the optimisation passes (the paper's LRP block, Appendix D).

:func:`build_plan` asks the composite for every operation on the path from the image to
the logits, fuses each batch norm into the convolution / linear layer before it when that
layer's rule says it propagates through the norm (Appendix D.2), asks again with
``first=True`` for the layer(s) that take the image, and then runs three passes that
regroup the same arithmetic so that it costs less.  Every pass asks the rules what they
can do (``merge_prefix``, ``diagonal``, ``scales_input``, ``passes_relevance``,
``accepts_factor``, ``divides_output``), so a user's rule takes part on the same terms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import fx, nn

from .composites import Composite, RuleContext
from .layers import LAYER_TYPES, NORM_TYPES, UnsupportedLayerError
from .rules import Rule
from .settings import LRPSettings


class UnsupportedOperationError(UnsupportedLayerError):
    """An operation on the path from the input to the logits that has no LRP rule."""


@dataclass
class Step:
    """One rule in the plan, keyed in :attr:`Plan.steps` by the node whose output it gives
    (for a fused layer + norm, the norm's node)."""

    rule: Rule
    call_node: fx.Node  # whose args the rule's forward receives
    inputs: list[Any] = field(default_factory=list)  # fx nodes (or constants) aligned with rule.relevance
    absorbed: fx.Node | None = None  # a lone norm whose relevance this step computes too
    scaled_by: fx.Node | None = None  # a max pool's: the layer whose denominator it applies
    divided: bool = False  # a layer's: its relevance arrives divided by its denominator


@dataclass
class Plan:
    """The rules of one composite for one traced model."""

    composite: Composite
    steps: dict[fx.Node, Step]
    fused: set[fx.Node]  # layers whose step is keyed by the norm after them
    unknown: set[fx.Node]  # function / method calls without a rule (may be shape queries)
    first_layers: list[fx.Node]  # call nodes of the layers that take the image


@dataclass
class TracedModel:
    """What the passes need to know about the traced model."""

    nodes: list[fx.Node]
    input_node: fx.Node
    carrying: set[fx.Node]  # nodes whose value depends on the input
    modules: dict[str, nn.Module]
    where: Callable[[fx.Node], str]
    model_name: str


_CALLS = ("call_module", "call_function", "call_method")


def build_plan(traced: TracedModel, composite: Composite, settings: LRPSettings) -> Plan:
    """Rules for every operation on the path from the input to the logits, fused and optimised.

    Raises:
        UnsupportedOperationError: a module without a rule, SyncBatchNorm, or zB without a
            layer that takes the image.
    """
    plan = Plan(composite, {}, set(), set(), [])
    contexts: dict[fx.Node, RuleContext] = {}
    for node in traced.nodes:
        if node not in traced.carrying or node.op not in _CALLS or node in plan.steps:
            continue  # (a norm already in the plan is fused into the layer before it)
        ctx = _context(traced, node, settings)
        norm_node = _fusable_norm(traced, node)
        if norm_node is not None:
            ctx.norm = traced.modules[norm_node.target]
            ctx.where = f"{traced.where(node)} + {traced.where(norm_node)}"
        rule = composite.rule_for(ctx)
        if rule is not None and norm_node is not None:
            if rule.fuses(ctx.norm):
                plan.fused.add(node)
                plan.steps[norm_node] = Step(rule, node, rule.input_nodes(node))
                contexts[norm_node] = ctx
                continue
            # Ask again for the layer alone (ctx.layer without the norm), so that a rule that built
            # on ctx.layer but does not say it fuses cannot apply the norm twice.
            ctx.norm, ctx.where = None, traced.where(node)
            rule = composite.rule_for(ctx)
        if rule is None:
            _no_rule(traced, node)
            plan.unknown.add(node)  # may be a shape query; checked when it runs
            continue
        plan.steps[node] = Step(rule, node, rule.input_nodes(node))
        contexts[node] = ctx
    _first_layers(traced, plan, contexts, settings)
    _merge_concat_prefixes(plan)
    _absorb_lone_norms(plan)
    _divide_at_max_pools(plan)
    return plan


def _context(traced: TracedModel, node: fx.Node, settings: LRPSettings) -> RuleContext:
    module = traced.modules[node.target] if node.op == "call_module" else None
    return RuleContext(node, traced.where(node), settings, module)


def _no_rule(traced: TracedModel, node: fx.Node) -> None:
    if node.op != "call_module":
        return
    if isinstance(traced.modules[node.target], nn.SyncBatchNorm):
        raise UnsupportedOperationError(
            f"{traced.where(node)}: SyncBatchNorm (e.g. Lightning's sync_batchnorm=True) is not "
            "supported; the LRP rules recompute the batch statistics of each process's own batch, "
            "so train with per-process BatchNorm (sync_batchnorm=False)"
        )
    raise UnsupportedOperationError(
        f"no LRP rule for {traced.where(node)}; supported modules: Conv1d/2d/3d, Linear, "
        "BatchNorm1d/2d/3d, ReLU, Dropout, Identity, Flatten, MaxPool, AvgPool2d, "
        "AdaptiveAvgPool2d, AdaptiveMaxPool2d (add one with LRPGraph(..., rules=...) or a Composite)"
    )


def _fusable_norm(traced: TracedModel, node: fx.Node) -> fx.Node | None:
    """The batch norm that alone consumes this convolution / linear layer's output (Appendix D.2)."""
    if node.op != "call_module" or node.kwargs or len(node.args) != 1 or len(node.users) != 1:
        return None
    layer = traced.modules[node.target]
    if type(layer) not in LAYER_TYPES:
        return None
    user = next(iter(node.users))
    if user.op != "call_module" or type(traced.modules[user.target]) not in NORM_TYPES:
        return None
    if len(user.args) != 1 or user.kwargs:
        return None
    channels = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    return user if channels == traced.modules[user.target].num_features else None


def _first_layers(traced: TracedModel, plan: Plan, contexts: dict[fx.Node, RuleContext], settings: LRPSettings) -> None:
    """Ask the composite again, with ``first=True``, for the layers that take the image
    (directly or through reshapes and rules that pass relevance on unchanged)."""
    by_call = {step.call_node: key for key, step in plan.steps.items()}
    found, frontier, seen = [], [(traced.input_node, False)], set()
    while frontier:
        node, reshaped = frontier.pop()
        for user in node.users:
            key = by_call.get(user)
            if key is None or key in seen:
                continue
            seen.add(key)
            step = plan.steps[key]
            if isinstance(contexts[key].module, LAYER_TYPES):
                found.append((key, reshaped))
            elif step.rule.passes_relevance or step.rule.reshapes:
                frontier.append((key, reshaped or step.rule.reshapes))
    if settings.zb and not found:
        raise UnsupportedOperationError(
            f"zB needs a convolution or linear layer that takes the image, and {traced.model_name} "
            "has none; pass zb=False"
        )
    for key, reshaped in found:
        ctx = contexts[key]
        ctx.first, ctx.through_reshape = True, reshaped
        step = plan.steps[key]
        rule = plan.composite.rule_for(ctx)
        if ctx.norm is not None and not rule.fuses(ctx.norm):
            raise UnsupportedOperationError(
                f"{ctx.where}: the first-layer rule {type(rule).__name__} does not propagate through the batch "
                "norm that the layer's other rule fused into it; give both rules the same treatment of ctx.norm"
            )
        step.rule = rule
        step.inputs = rule.input_nodes(step.call_node)
        plan.first_layers.append(step.call_node)


def _merge_concat_prefixes(plan: Plan) -> None:
    """Let a concatenation whose first inputs are exactly those of an earlier concatenation
    (along the same dimension) pass their relevance to that one.

    DenseNet's layer ``i`` concatenates ``[x0, f1, ..., f(i-1)]``, and layer ``i+1`` the same
    list plus ``fi``.  Handing the prefix's relevance to the earlier concatenation, which
    splits it further, gives the same sums (Eq. 32) with one addition per layer instead of
    one per feature map.  Only rules whose ``merge_prefix`` gives a rule take part.
    """
    earlier: dict[tuple, fx.Node] = {}
    for node, step in plan.steps.items():
        if step.rule.merge_prefix(2) is None:
            continue
        call = step.call_node
        dim = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim", 0)
        inputs = step.inputs
        if not isinstance(dim, int) or not all(isinstance(n, fx.Node) for n in inputs):
            continue
        for m in range(len(inputs) - 1, 1, -1):
            source = earlier.get((dim, *inputs[:m]))
            if source is not None:
                step.rule = step.rule.merge_prefix(m)
                step.inputs = [source, *inputs[m:]]
                break
        earlier[(dim, *inputs)] = node


def _by_call(plan: Plan) -> dict[fx.Node, fx.Node]:
    return {step.call_node: key for key, step in plan.steps.items()}


def _absorb_lone_norms(plan: Plan) -> None:
    """Let the layer after a lone batch norm propagate through the norm as well.

    DenseNet's ``norm -> relu -> conv`` (and ``norm -> relu -> pool``): the norm's rule
    multiplies the relevance by the batch-``B`` ratio ``q = x w / (z + eps)``, and the
    layer's rule multiplies ``W^T s`` by its input ``a``.  With a single consumer all
    along, ``R_norm_in = q * a * W^T s``: the layer takes ``q * a`` as its input factor
    and hands its relevance straight to the norm's input.  The same sums, with one
    ``B*K``-sized product (and its backward) fewer per norm, at the widest tensors of
    a DenseNet.  Applies to ``diagonal`` rules followed by ``scales_input`` rules.
    """
    by_call = _by_call(plan)

    def only_consumer(node: fx.Node) -> Step | None:
        """The step that alone uses ``node``, and uses it as its relevance input."""
        if len(node.users) != 1:
            return None
        key = by_call.get(next(iter(node.users)))
        step = plan.steps.get(key) if key is not None else None
        return step if step is not None and step.inputs == [node] else None

    for key, step in list(plan.steps.items()):
        if not step.rule.diagonal:
            continue
        consumer = only_consumer(key)
        # Gates and identities in between hand relevance on unchanged.
        while consumer is not None and consumer.rule.passes_relevance:
            consumer = only_consumer(by_call[consumer.call_node])
        if consumer is None or not consumer.rule.scales_input or consumer.absorbed is not None:
            continue
        consumer.absorbed = key
        consumer.inputs = list(step.inputs)


def _divide_at_max_pools(plan: Plan) -> None:
    """Let a max pool apply the denominator of the layer before it, at the pool's output size.

    ``conv -> relu -> max pool``: the pool hands each window's relevance to the window's
    maximum, and the layer divides the result by its batch-``B`` denominator ``z``.  With
    a single consumer all along, dividing each window's relevance by ``z`` at its maximum
    before handing it on gives the same values, with the ``B*K``-sized product (and its
    backward) at the pooled size: a quarter of the elements for 2x2 windows.  Applies to
    ``accepts_factor`` rules after ``divides_output`` rules.
    """
    steps = plan.steps
    for step in steps.values():
        if not step.rule.accepts_factor or len(step.inputs) != 1:
            continue
        node = step.inputs[0]
        # Gates and identities in between hand relevance on unchanged.
        while (isinstance(node, fx.Node) and len(node.users) == 1 and node in steps
               and steps[node].rule.passes_relevance):
            node = steps[node].inputs[0]
        producer = steps.get(node) if isinstance(node, fx.Node) else None
        if producer is None or len(node.users) != 1 or not producer.rule.divides_output or producer.divided:
            continue
        step.scaled_by = node
        producer.divided = True
