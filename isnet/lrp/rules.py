"""LRP rules: relevance propagation through one operation each (Section 4.1, Appendix D).

A rule has two jobs:

* ``forward(args, kwargs)`` runs the operation on the classifier's activations
  (batch ``B``), never in place, and returns ``(output, saved)`` where ``saved``
  holds what the relevance pass needs (the skip connections of Appendix D).
* ``relevance(R, saved)`` maps the relevance at the operation's output to the
  relevance at each of its tensor inputs.  ``R`` has shape ``(B, K, *output.shape[1:])``:
  the K heatmaps of every image travel together as one batch (Alg. 1, step 2c),
  while ``saved`` still holds batch-``B`` activations that broadcast over ``K``.

``input_nodes(node)`` names, for a traced ``torch.fx`` node, the arguments whose
relevance ``relevance`` returns, in the same order.

All rules are written with differentiable PyTorch operations, so a loss on the
heatmaps backpropagates to the backbone's parameters.  Biases take part in the
denominators ``z`` but are detached there (Alg. 6, step 1).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import Node
from torch.nn.modules.utils import _pair

from .layers import AffineLayer, is_channels_last

Saved = tuple


def stabilized_reciprocal(z: Tensor, epsilon: float) -> Tensor:
    """``1 / (z + sign(z) * epsilon)`` with sign(0) = +1 (Eq. 3); for ``epsilon == 0``
    (LRP-0) a zero ``z`` gives 0 (0/0 := 0).  Same shape as ``z``."""
    if epsilon > 0:
        eps = z.new_tensor(epsilon)  # in z's dtype: a Python float would be rounded to float32
        # copysign(eps, z) is sign(z) * eps in one operation; adding +0.0 turns -0.0 into +0.0,
        # so that sign(0) = +1 for both zeros.  The sign is piecewise constant: no gradient.
        # torch.reciprocal, not 1.0 / (...): the division by a Python number adds a product by 1.0
        # (and its backward) over the whole tensor.
        return torch.reciprocal(z + torch.copysign(eps, z.detach() + 0.0))
    zero = z == 0
    return torch.reciprocal(torch.where(zero, torch.ones_like(z), z)).masked_fill(zero, 0.0)


def stabilized_divide(numerator: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """``numerator / (z + sign(z) * epsilon)`` with sign(0) = +1 (Eq. 3).

    ``numerator`` has shape ``(B, K, *S)`` and ``z`` shape ``(B, *S)``.  The reciprocal
    is taken once at batch size B and multiplied into the B*K relevances: a product
    is cheaper than a division there, forward and backward.  With ``epsilon == 0``
    (LRP-0) a zero denominator gives 0 (0/0 := 0).
    """
    return class_product(stabilized_reciprocal(z, epsilon), numerator)


def detach_bias(z: Tensor, bias: Tensor | None) -> Tensor:
    """``z`` with the same value but no gradient path into ``bias`` (Alg. 6, step 1).

    ``bias`` (e.g. the bias parameters' share from :meth:`AffineLayer.fused`) must already broadcast against ``z``.
    Skipped when no gradient is recorded.
    """
    if bias is not None and torch.is_grad_enabled() and bias.requires_grad:
        return z + (bias.detach() - bias)
    return z


def class_product(x: Tensor, r: Tensor) -> Tensor:
    """``x[:, None] * r``: a batch-``B`` tensor ``(B, *S)`` times the relevance of its
    K heatmaps ``(B, K, *S)``, broadcast over K.

    For a channels-last ``x`` the product is taken with the channels innermost, so
    that the backward pass's sum over K also returns a channels-last gradient
    (PyTorch's reductions return contiguous tensors, and mixed layouts make every
    later element-wise operation slow).
    """
    if is_channels_last(x):
        product = x.permute(0, 2, 3, 1).unsqueeze(1) * r.permute(0, 1, 3, 4, 2)
        return product.permute(0, 1, 4, 2, 3)
    return x.unsqueeze(1) * r


def _merge(r: Tensor) -> Tensor:
    """``(B, K, *S) -> (B*K, *S)`` for operations that take one batch dimension."""
    return r.flatten(0, 1)


def _shape_only(r: Tensor, shape: Sequence[int]) -> Tensor:
    """A tensor of the given shape that allocates a single element (for ATen ops that only read shapes)."""
    return r.new_zeros(()).expand(*shape)


def _scaled(x: Tensor, scale: Tensor | None) -> Tensor:
    """``x * scale`` (batch ``B``), or ``x`` without a scale."""
    return x if scale is None else x * scale


class Rule:
    """Base class: relevance propagation through one operation.

    ``scales_input``: the rule's relevance at its (single) input is a sum of products
    ``class_product(a, C)`` of batch-``B`` factors ``a`` of the input's shape with the K maps'
    ``C``, and ``relevance(R, saved, input_scale=f)`` multiplies every ``a`` by a batch-``B``
    tensor ``f`` of the input's shape, which multiplies the relevance it returns by ``f`` at
    batch size B; so a diagonal rule before it can be absorbed (see
    :class:`isnet.lrp.graph.LRPGraph`).

    ``divides_output``: the rule's first step is ``s = R / (z + sign(z) eps)`` with a
    batch-``B`` denominator of the output's shape; :meth:`reciprocal` gives that factor
    and ``relevance(s, saved, divided=True)`` takes ``s`` instead of ``R``, so that a max
    pool after the layer can apply the factor at its smaller output size.
    """

    scales_input = False
    divides_output = False
    #: Hands the relevance at its output unchanged to its single input (ReLU, dropout, identity).
    passes_relevance = False
    #: Only reshapes its single input (the search for the first layer looks through it).
    reshapes = False
    #: Its relevance is ``diagonal_ratio(saved) * R`` with a batch-``B`` ratio of the input's
    #: shape, so the layer after it may apply the ratio instead (a lone batch norm).
    diagonal = False
    #: ``relevance(R, saved, factor=f)`` multiplies the relevance it returns by a batch-``B``
    #: factor ``f`` of its input's shape, applied at its output (max pooling).
    accepts_factor = False

    def fuses(self, norm: nn.Module) -> bool:
        """Whether this rule propagates through ``norm`` too (a batch norm fused into its layer)."""
        return False

    def same_forward(self, other: Rule) -> bool:
        """Whether ``other`` runs the same forward pass, so that both can share its activations
        (several composites explained from one forward)."""
        return type(self).forward is type(other).forward

    def merge_prefix(self, merged: int) -> Rule | None:
        """A rule that hands the relevance of its first ``merged`` inputs on as one piece, or
        ``None`` if it cannot (see :class:`Concat`)."""
        return None

    def diagonal_ratio(self, saved: Saved) -> Tensor:
        """The batch-``B`` ratio of a ``diagonal`` rule."""
        raise NotImplementedError(f"{type(self).__name__} is not diagonal")

    def reciprocal(self, saved: Saved) -> Tensor:
        """``1 / (z + sign(z) eps)``, batch-``B``, shaped like the output (``divides_output`` rules)."""
        raise NotImplementedError(f"{type(self).__name__} does not divide its relevance by a denominator")

    def input_nodes(self, node: Node) -> list[Any]:
        return [node.args[0]]

    def forward(self, args: tuple, kwargs: dict) -> tuple[Tensor, Saved]:
        raise NotImplementedError

    def relevance(self, R: Tensor, saved: Saved) -> Sequence[Tensor | None]:
        raise NotImplementedError


class PassThrough(Rule):
    """Element-wise gates and identities that hand relevance on unchanged.

    ReLU (its relevance is that of its output, Appendix D), dropout (dropped units
    carry zero activation, so the next layer gives them zero relevance, D.4),
    identity and ``contiguous``.

    Args:
        fn: the operation, called out of place as ``fn(*args, **kwargs)``.
    """

    passes_relevance = True

    def __init__(self, fn: Callable[..., Tensor]) -> None:
        self.fn = fn

    def forward(self, args: tuple, kwargs: dict) -> tuple[Tensor, Saved]:
        return self.fn(*args, **kwargs), ()

    def relevance(self, R: Tensor, saved: Saved) -> Sequence[Tensor | None]:
        return (R,)


class Reshape(Rule):
    """Flatten / view / reshape: relevance takes the input's shape back."""

    reshapes = True

    def __init__(self, fn: Callable[..., Tensor], where: str = "") -> None:
        self.fn = fn
        self.where = where

    def forward(self, args: tuple, kwargs: dict) -> tuple[Tensor, Saved]:
        x = args[0]
        out = self.fn(*args, **kwargs)
        if out.dim() == 0 or out.shape[0] != x.shape[0]:
            raise ValueError(
                f"{self.where}: a reshape from {tuple(x.shape)} to {tuple(out.shape)} mixes the batch "
                "dimension with others; LRP needs every sample to stay in its own row"
            )
        return out, (x.shape,)

    def relevance(self, R: Tensor, saved: Saved) -> Sequence[Tensor | None]:
        (shape,) = saved
        return (R.reshape(R.shape[0], R.shape[1], *shape[1:]),)


class Epsilon(Rule):
    """LRP-epsilon for a convolution or linear layer, with or without fused batch norm (Alg. 6).

    ``R_in = x * W^T [R / (z + sign(z) eps)]`` with ``z = W x + b.detach()``.
    ``epsilon = 0`` gives LRP-0.
    """

    def __init__(self, layer: AffineLayer, epsilon: float) -> None:
        self.layer = layer
        self.epsilon = float(epsilon)

    @property
    def scales_input(self) -> bool:  # type: ignore[override]
        return self.layer.layer is not None  # a lone norm's relevance is its ratio times R

    @property
    def divides_output(self) -> bool:  # type: ignore[override]
        return self.layer.layer is not None

    @property
    def diagonal(self) -> bool:  # type: ignore[override]
        return self.layer.layer is None

    def fuses(self, norm: nn.Module) -> bool:
        return self.layer.layer is not None and self.layer.norm is norm

    def same_forward(self, other: Rule) -> bool:
        return (
            super().same_forward(other)
            and isinstance(other, Epsilon)
            and other.layer.layer is self.layer.layer
            and other.layer.norm is self.layer.norm
        )

    def reciprocal(self, saved: Saved) -> Tensor:
        return stabilized_reciprocal(self._denominator(saved)[2], self.epsilon)

    def forward(self, args: tuple, kwargs: dict) -> tuple[Tensor, Saved]:
        x = args[0]
        z, y = self.layer.forward(x)
        # The last entry memoises batch-B quantities of this forward (see _fused): the rules of
        # several composites at this layer share ``saved`` and so compute them once.
        return z, (x, y, z, {})

    @staticmethod
    def _once(saved: Saved, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time this forward pass's ``saved`` is asked for ``key``, the
        stored value after that."""
        memo = saved[3]
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    def _fused(self, saved: Saved) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``self.layer.fused(y)`` of this forward pass, computed once: every rule that shares the
        forward (:meth:`same_forward`) wraps the same modules, so the value is the same for all."""
        return self._once(saved, "fused", lambda: self.layer.fused(saved[1]))

    def _denominator(self, saved: Saved) -> tuple[Tensor, Tensor, Tensor]:
        """``(x, W, z)`` where ``z`` equals the output in value with the bias detached."""
        x, _, z = saved[:3]
        weight, _, bias = self._fused(saved)
        if bias is not None:
            z = detach_bias(z, self.layer.channel_view(bias, z))
        return x, weight, z

    def diagonal_ratio(self, saved: Saved) -> Tensor:
        """For a lone batch norm (no layer): ``x w / (z + sign(z) eps)``, the batch-``B`` factor
        with ``R_in = ratio * R``.  Same shape as the norm's input.  Computed once per forward pass
        and rule type (several composites keep LRP-epsilon on lone norms)."""
        def compute() -> Tensor:
            x, weight, z = self._denominator(saved)
            return x * self.layer.channel_view(weight, x) * stabilized_reciprocal(z, self.epsilon)

        return self._once(saved, (type(self), "diagonal_ratio", self.epsilon), compute)

    def relevance(
        self, R: Tensor, saved: Saved, *, divided: bool = False, input_scale: Tensor | None = None
    ) -> Sequence[Tensor | None]:
        if self.layer.layer is None:
            # A lone batch norm is diagonal: R_in = [x w / (z + eps)] R, the bracket at batch size B.
            return (class_product(self.diagonal_ratio(saved), R),)
        if divided:
            x, weight, s = saved[0], self._fused(saved)[0], R
        else:
            x, weight, z = self._denominator(saved)
            s = stabilized_divide(R, z, self.epsilon)
        c = self.layer.transpose(_merge(s), weight, x.shape)
        return (class_product(_scaled(x, input_scale), c.unflatten(0, R.shape[:2])),)


class ZBox(Epsilon):
    """LRP-zB for the first layer (Alg. 10), with input bounds ``low <= x <= high``.

    ``z = W x - W+ l - W- h`` (the standard zB denominator: the layer's bias and the
    biases ``B+``, ``B-`` of the paper's layers ``L+``, ``L-`` cancel, since
    ``B = B+ + B-``), stabilised with ``epsilon`` as in Alg. 10, step 2, and
    ``R_in = x * W^T s - l * (W+)^T s - h * (W-)^T s``.

    Args:
        low, high: scalars or per-channel tensors of shape ``(C,)`` (per feature for
            a linear first layer).
    """

    scales_input = False  # its relevance also has the bound terms

    def __init__(self, layer: AffineLayer, epsilon: float, low: Tensor, high: Tensor) -> None:
        super().__init__(layer, epsilon)
        self.low = low
        self.high = high

    def _bound_image(self, bound: Tensor, x: Tensor) -> Tensor:
        """The bound as an input of batch 1 shaped like ``x`` (per channel along dim 1)."""
        b = bound.to(dtype=x.dtype, device=x.device)
        if b.dim() == 1 and x.dim() > 2:
            b = b.view(-1, *([1] * (x.dim() - 2)))
        return b.expand(x.shape[1:]).unsqueeze(0)

    def _parts(self, saved: Saved) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """``(x, W+, W-, b, l, h)``: the input, the weight's parts, the bias and the bounds as
        batch-1 inputs; computed once per forward pass (a first layer before a max pool asks in
        :meth:`reciprocal` too)."""
        return self._once(saved, (self, "parts"), lambda: self._compute_parts(saved))

    def _compute_parts(self, saved: Saved) -> tuple:
        x = saved[0]
        weight, bias = self._fused(saved)[:2]
        low, high = self._bound_image(self.low, x), self._bound_image(self.high, x)
        return x, weight.clamp(min=0), weight.clamp(max=0), bias, low, high

    def _denominator_zb(self, saved: Saved, parts: tuple) -> Tensor:
        """The zB denominator ``z = W x - W+ l - W- h``, batch ``B``, shaped like the output."""
        _, w_pos, w_neg, bias, low, high = parts
        z_out = saved[2]
        z = z_out if bias is None else z_out - self.layer.channel_view(bias, z_out)
        if bool((self.low != 0).any()):
            z = z - self.layer.linear(low, w_pos)
        if bool((self.high != 0).any()):
            z = z - self.layer.linear(high, w_neg)
        return z

    def reciprocal(self, saved: Saved) -> Tensor:
        return stabilized_reciprocal(self._denominator_zb(saved, self._parts(saved)), self.epsilon)

    def relevance(self, R: Tensor, saved: Saved, *, divided: bool = False) -> Sequence[Tensor | None]:
        parts = self._parts(saved)
        x, w_pos, w_neg, _, low, high = parts
        # Divided already (by a max pool after the layer): the denominator is not needed again.
        s = _merge(R if divided else stabilized_divide(R, self._denominator_zb(saved, parts), self.epsilon))
        # W = W+ + W-, so x W^T s - l W+^T s - h W-^T s = (x - l) W+^T s + (x - h) W-^T s.
        c_pos, c_neg = _transpose_pair(self.layer, s, w_pos, w_neg, x.shape)
        split = R.shape[:2]
        return (
            class_product(x - low, c_pos.unflatten(0, split)) + class_product(x - high, c_neg.unflatten(0, split)),
        )



def _transpose_pair(
    affine: AffineLayer, s: Tensor, w_pos: Tensor, w_neg: Tensor, shape: torch.Size
) -> tuple[Tensor, Tensor]:
    """``(W+^T s, W-^T s)`` for ``s`` ``(N, *output_shape[1:])``, each ``(N, *shape[1:])``, in
    one transposed operation where the layer allows it."""
    layer = affine.layer
    if layer is None or getattr(layer, "groups", 1) != 1:
        return affine.transpose(s, w_pos, shape), affine.transpose(s, w_neg, shape)
    doubled = (shape[0], 2 * shape[1], *shape[2:])
    both = affine.transpose(s, torch.cat([w_pos, w_neg], dim=1), doubled)
    return both.chunk(2, dim=-1 if isinstance(layer, nn.Linear) else 1)


def _linear_pair(affine: AffineLayer, a: Tensor, b: Tensor, w_a: Tensor, w_b: Tensor) -> Tensor:
    """``W_a a + W_b b`` (bias-free), in one operation where the layer allows it."""
    layer = affine.layer
    if layer is None or getattr(layer, "groups", 1) != 1:
        return affine.linear(a, w_a) + affine.linear(b, w_b)
    dim = -1 if isinstance(layer, nn.Linear) else 1
    return affine.linear(torch.cat([a, b], dim=dim), torch.cat([w_a, w_b], dim=1))


class ZPlus(Epsilon):
    """LRP-z+ for a convolution or linear layer, with or without fused batch norm.

    ``z_j = sum_i (x_i+ w_ij+ + x_i- w_ij-) + b_j+`` and
    ``R_i = x_i+ sum_j w_ij+ s_j + x_i- sum_j w_ij- s_j`` with ``s = R / (z + sign(z) eps)``:
    only the contributions that push ``z`` up (positive input times positive weight, negative
    times negative) receive relevance.  Weights and biases are the fused ones when a batch
    norm follows the layer; the bias is detached in ``z`` as in :class:`Epsilon`.
    """

    def _parts(self, saved: Saved) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor | None, Tensor | None]:
        """``(x, x+, x-, W+, W-, b)``; ``x-`` and ``W-`` are ``None`` when no input is negative
        (after a ReLU, i.e. everywhere but the first layer): then ``x- = 0`` and the terms with
        ``W-`` vanish, so the rule costs one convolution instead of two of twice the channels.
        Computed once per forward pass (a layer before a max pool asks in :meth:`reciprocal` too)."""
        return self._once(saved, (self, "parts"), lambda: self._compute_parts(saved))

    def _compute_parts(self, saved: Saved) -> tuple:
        x = saved[0]
        weight, bias, own = self._fused(saved)
        if bias is not None:
            bias = detach_bias(bias, own)  # the bias parameters' share detached
        # relu for the positive parts: the same values as clamp(min=0), with a cheaper backward pass
        # The smallest value, not (x < 0).any(): one reduction, without a boolean copy of x.
        if x.numel() == 0 or not bool(x.detach().amin() < 0):
            return x, x, None, torch.relu(weight), None, bias
        return x, torch.relu(x), x.clamp(max=0), torch.relu(weight), weight.clamp(max=0), bias

    def _denominator_zplus(self, parts: tuple) -> Tensor:
        """``z = W+ x+ + W- x- + b+`` (bias detached), batch ``B``, shaped like the output."""
        _, x_pos, x_neg, w_pos, w_neg, bias = parts
        if x_neg is None:
            z = self.layer.linear(x_pos, w_pos)
        else:
            z = _linear_pair(self.layer, x_pos, x_neg, w_pos, w_neg)
        if bias is not None:
            z = z + self.layer.channel_view(torch.relu(bias), z)
        return z

    def reciprocal(self, saved: Saved) -> Tensor:
        return stabilized_reciprocal(self._denominator_zplus(self._parts(saved)), self.epsilon)

    def diagonal_ratio(self, saved: Saved) -> Tensor:
        raise NotImplementedError("the z+ rule is not applied to lone batch norms")

    @property
    def diagonal(self) -> bool:  # type: ignore[override]
        return False

    def relevance(
        self, R: Tensor, saved: Saved, *, divided: bool = False, input_scale: Tensor | None = None
    ) -> Sequence[Tensor | None]:
        parts = self._parts(saved)
        x, x_pos, x_neg, w_pos, w_neg, _ = parts
        s = _merge(R if divided else stabilized_divide(R, self._denominator_zplus(parts), self.epsilon))
        split = R.shape[:2]
        if x_neg is None:
            c = self.layer.transpose(s, w_pos, x.shape)
            return (class_product(_scaled(x, input_scale), c.unflatten(0, split)),)
        c_pos, c_neg = _transpose_pair(self.layer, s, w_pos, w_neg, x.shape)
        return (
            class_product(_scaled(x_pos, input_scale), c_pos.unflatten(0, split))
            + class_product(_scaled(x_neg, input_scale), c_neg.unflatten(0, split)),
        )


class _LinearPool(Rule):
    """Average pooling as a convolution with constant weights, LRP-epsilon (Alg. 7)."""

    scales_input = True
    divides_output = True

    def __init__(self, epsilon: float) -> None:
        self.epsilon = float(epsilon)

    def reciprocal(self, saved: Saved) -> Tensor:
        return stabilized_reciprocal(saved[1], self.epsilon)

    def pool(self, x: Tensor, args: tuple, kwargs: dict) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def transpose(self, s: Tensor, input_shape: Sequence[int], params: Any) -> Tensor:
        raise NotImplementedError

    def forward(self, args: tuple, kwargs: dict) -> tuple[Tensor, Saved]:
        x = args[0]
        z, params = self.pool(x, args, kwargs)
        return z, (x, z, params)

    def relevance(
        self, R: Tensor, saved: Saved, *, divided: bool = False, input_scale: Tensor | None = None
    ) -> Sequence[Tensor | None]:
        x, z, params = saved
        s = _merge(R if divided else stabilized_divide(R, z, self.epsilon))
        shape = (s.shape[0], *x.shape[1:])
        c = self.transpose(s, shape, params).unflatten(0, R.shape[:2])
        return (class_product(_scaled(x, input_scale), c),)


class AvgPool(_LinearPool):
    """``AvgPool2d`` / ``F.avg_pool2d``, any kernel, stride, padding, ``ceil_mode``, divisor.

    Args:
        params: the module's settings, or ``None`` to read them from the call's arguments.
    """

    _NAMES = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
    _DEFAULTS = (None, None, 0, False, True, None)

    def __init__(self, epsilon: float, params: dict | None = None) -> None:
        super().__init__(epsilon)
        self.params = params

    def pool(self, x: Tensor, args: tuple, kwargs: dict) -> tuple[Tensor, Any]:
        p = self.params
        if p is None:
            p = dict(zip(self._NAMES, self._DEFAULTS))
            p.update(zip(self._NAMES, args[1:]))
            p.update(kwargs)
        kernel = _pair(p["kernel_size"])
        stride = _pair(p["stride"]) if p["stride"] not in (None, (), []) else kernel
        params = (kernel, stride, _pair(p["padding"]), p["ceil_mode"], p["count_include_pad"], p["divisor_override"])
        return F.avg_pool2d(x, *params), params

    def transpose(self, s: Tensor, input_shape: Sequence[int], params: Any) -> Tensor:
        kernel, stride, padding, ceil_mode, count_include_pad, divisor = params
        return torch.ops.aten.avg_pool2d_backward(
            s, _shape_only(s, input_shape), list(kernel), list(stride), list(padding), ceil_mode, count_include_pad, divisor
        )


class AdaptiveAvgPool(_LinearPool):
    """``AdaptiveAvgPool2d`` / ``F.adaptive_avg_pool2d``, exact for every input and output size,
    including overlapping windows (e.g. 7x7 from a 2x2 map)."""

    def __init__(self, epsilon: float, output_size: Any = None) -> None:
        super().__init__(epsilon)
        self.output_size = output_size

    def pool(self, x: Tensor, args: tuple, kwargs: dict) -> tuple[Tensor, Any]:
        size = self.output_size
        if size is None:
            size = args[1] if len(args) > 1 else kwargs["output_size"]
        return F.adaptive_avg_pool2d(x, size), None

    def transpose(self, s: Tensor, input_shape: Sequence[int], params: Any) -> Tensor:
        if s.shape[-2:] == (1, 1):  # global pooling: every input shares its window's 1 / (H W)
            height, width = input_shape[-2:]
            return (s / (height * width)).expand(*s.shape[:-2], height, width)
        return torch.ops.aten._adaptive_avg_pool2d_backward(s, _shape_only(s, input_shape))


class WinnerTakesAll(Rule):
    """Max pooling: all relevance of a window goes to its maximum (Alg. 8).

    Where windows overlap, an input that wins several windows receives the sum of
    their relevance, so none is lost.

    Args:
        pool: called as ``pool(x, *args, **kwargs)`` and returning ``(values, indices)``
            with indices flat over the spatial dimensions (PyTorch's max pooling
            with ``return_indices=True``).
    """

    accepts_factor = True

    def __init__(self, pool: Callable[..., tuple[Tensor, Tensor]]) -> None:
        self.pool = pool

    def forward(self, args: tuple, kwargs: dict) -> tuple[Tensor, Saved]:
        x = args[0]
        out, indices = self.pool(*args, **kwargs)
        return out, (x.shape, indices)

    def relevance(self, R: Tensor, saved: Saved, *, factor: Tensor | None = None) -> Sequence[Tensor | None]:
        """``factor``: an optional batch-``B`` tensor of the input's shape ``(B, C, H, W)`` that
        multiplies the returned relevance; it is applied at the (smaller) output size, to
        the relevance of each window before it goes to the window's maximum."""
        shape, indices = saved
        B, K, C = R.shape[:3]
        if is_channels_last(indices):
            # Scatter with the channels innermost, so that the relevance stays channels-last: the
            # layer before multiplies it by its channels-last input, which is slow in mixed layouts.
            src = R.permute(0, 1, 3, 4, 2).reshape(B, K, -1, C)
            flat = indices.permute(0, 2, 3, 1).reshape(B, 1, -1, C)
            if factor is not None:
                src = factor.permute(0, 2, 3, 1).reshape(B, 1, -1, C).gather(2, flat) * src
            out = src.new_zeros(B, K, math.prod(shape[2:]), C).scatter_add_(2, flat.expand_as(src), src)
            return (out.view(B, K, *shape[2:], C).permute(0, 1, 4, 2, 3),)
        src = R.flatten(3)
        flat = indices.flatten(2).unsqueeze(1)
        if factor is not None:
            src = factor.flatten(2).unsqueeze(1).gather(3, flat) * src
        # A fresh buffer filled in place: no copy of it for an out-of-place scatter.
        out = src.new_zeros(B, K, C, math.prod(shape[2:])).scatter_add_(3, flat.expand_as(src), src)
        return (out.view(B, K, *shape[1:]),)


class Add(Rule):
    """Residual addition: ``R_i = a_i * R / (z + sign(z) eps)`` with ``z = a_1 + a_2``.

    Operands that are constants (numbers or tensors that do not depend on the
    input) act like a bias: their share of the relevance is absorbed.
    """

    def __init__(self, epsilon: float, where: str = "") -> None:
        self.epsilon = float(epsilon)
        self.where = where

    def input_nodes(self, node: Node) -> list[Any]:
        return [node.args[0], node.args[1] if len(node.args) > 1 else node.kwargs.get("other")]

    def forward(self, args: tuple, kwargs: dict) -> tuple[Tensor, Saved]:
        a = args[0]
        b = args[1] if len(args) > 1 else kwargs["other"]
        if kwargs.get("alpha", 1) != 1:
            raise ValueError(f"{self.where}: addition with alpha != 1 is not supported")
        out = torch.add(a, b)
        return out, (a, b, out)

    def relevance(self, R: Tensor, saved: Saved) -> Sequence[Tensor | None]:
        a, b, out = saved
        s = stabilized_divide(R, out, self.epsilon)
        result = []
        for operand in (a, b):
            if not isinstance(operand, Tensor) or operand.dim() != out.dim():
                result.append(None)
                continue
            share = class_product(operand, s)
            result.append(share.sum_to_size(*R.shape[:2], *operand.shape[1:]))
        return result


class Concat(Rule):
    """Concatenation (DenseNet): each input takes its slice of the relevance.  A tensor
    used by several consumers sums their relevance (Eq. 32), which the graph does.

    Args:
        merged: hand the slice of the first ``merged`` inputs on as one piece (the graph
            sends it to an earlier concatenation of exactly those inputs, which splits it
            further).  DenseNet concatenates every layer's features again in every later
            layer; merging makes that one addition per layer instead of one per feature map.
    """

    def __init__(self, where: str = "", merged: int = 1) -> None:
        self.where = where
        self.merged = merged

    def input_nodes(self, node: Node) -> list[Any]:
        tensors = node.args[0] if node.args else node.kwargs["tensors"]
        return list(tensors)

    def merge_prefix(self, merged: int) -> Rule | None:
        # A subclass may split its relevance differently: only this class merges.
        return Concat(self.where, merged=merged) if type(self) is Concat else None

    def forward(self, args: tuple, kwargs: dict) -> tuple[Tensor, Saved]:
        tensors = args[0] if args else kwargs["tensors"]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        out = torch.cat(tensors, dim)
        dim = dim % out.dim()
        if dim == 0:
            raise ValueError(f"{self.where}: concatenation along the batch dimension is not supported")
        sizes = [t.shape[dim] for t in tensors]
        if self.merged > 1:
            sizes = [sum(sizes[: self.merged]), *sizes[self.merged :]]
        return out, (sizes, dim)

    def relevance(self, R: Tensor, saved: Saved) -> Sequence[Tensor | None]:
        sizes, dim = saved
        # Split a (B*K, ...) view: the backward pass then concatenates batch-first tensors,
        # which keeps a channels-last layout (5-D concatenations fall back to contiguous).
        return [r.unflatten(0, R.shape[:2]) for r in _merge(R).split(sizes, dim=dim)]
