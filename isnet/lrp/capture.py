"""Relevance at intermediate layers (for LRP deep supervision).

The relevance pass visits the traced graph's nodes in reverse order; when it reaches a
node, the relevance pending there is complete (every consumer has handed its share, Eq.
32), so the relevance at a layer's output is that pending tensor, of shape
``(B, K', *output.shape[1:])``.  Layers are named as in ``model.named_modules()``; a
container (ResNet's ``layer2``, DenseNet's ``features.denseblock1``) stands for its last
operation, the one that gives its output.

The optimisation passes (:mod:`isnet.lrp.passes`) regroup the arithmetic so that some
tensors never hold the true relevance: a batch norm fused into the layer before it, a
lone norm absorbed by the layer after it (DenseNet's ``norm -> relu -> conv``) and the
tensors between a layer and the max pool that applies its denominator.  Asking for the
relevance there is an error that names the layer; block outputs (ResNet stages, DenseNet
blocks, VGG max pools) are always materialised.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import fx

from .passes import Plan


def module_output_node(nodes: Iterable[fx.Node], name: str) -> fx.Node | None:
    """The node that gives module ``name``'s output: the last call of a leaf module, or the
    last operation run inside a container; ``None`` if the module runs no operation."""
    found = None
    for node in nodes:
        leaf = node.op == "call_module" and node.target == name
        inside = node.op in ("call_module", "call_function", "call_method") and name in (
            node.meta.get("nn_module_stack") or {})
        if leaf or inside:
            found = node
    return found


def materialised(plan: Plan, nodes: list[fx.Node], output: fx.Node, carrying: set[fx.Node]) -> set[fx.Node]:
    """Nodes at which ``plan``'s relevance pass holds the true relevance of the node's output.

    Args:
        plan: a composite's propagation plan.
        nodes: the traced graph's nodes, in order.
        output: the node of the logits (where the pass starts).
        carrying: nodes whose value depends on the input.
    """
    reached = {output}  # what the relevance pass hands relevance to, as it runs
    for node in reversed(nodes):
        if node in reached and node in plan.steps:
            reached.update(n for n in plan.steps[node].inputs if isinstance(n, fx.Node) and n in carrying)
    for step in plan.steps.values():
        if step.scaled_by is None:
            continue
        node = step.inputs[0]  # from the pool's input back to the layer: relevance divided by z
        while isinstance(node, fx.Node) and node is not step.scaled_by and node in plan.steps:
            reached.discard(node)
            node = plan.steps[node].inputs[0]
        reached.discard(step.scaled_by)
    return reached
