"""Affine layers as LRP sees them: a convolution or linear layer with the batch
norm that follows it fused in (Appendix D.2), or a batch norm on its own.

LRP-epsilon and LRP-zB (see :mod:`isnet.lrp.rules`) only need four things from
such a layer: its effective weight and bias, the bias-free map ``x -> W x``, and
the transposed map ``s -> W^T s``.  :class:`AffineLayer` provides them for every
supported layer type, so each rule is written once for all of them.

Parameters are read from the backbone's modules at every call, so the
propagation shares the classifier's weights (gradients of a heatmap loss reach
them) and follows ``.to()``, ``.half()`` and optimiser updates.
"""

from __future__ import annotations

from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Layer = Union[nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear]
Norm = Union[nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d]

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LAYER_TYPES = CONV_TYPES + (nn.Linear,)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class UnsupportedLayerError(TypeError):
    """A layer, or a setting of a layer, that the LRP engine cannot propagate through."""


def _conv_padding(conv: nn.Module, where: str) -> tuple[int, ...]:
    if conv.padding_mode != "zeros":
        raise UnsupportedLayerError(
            f"{where} ({type(conv).__name__}): padding_mode={conv.padding_mode!r} is not supported; "
            "only zero padding has an exact transposed convolution"
        )
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0,) * len(conv.kernel_size)
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise UnsupportedLayerError(
                f"{where} ({type(conv).__name__}): padding='same' with an even kernel pads unevenly; "
                "give explicit integer padding instead"
            )
        return tuple(t // 2 for t in total)
    return tuple(conv.padding)


class _ChannelStats(torch.autograd.Function):
    """Per-channel mean and biased variance of ``y`` (batch first, channels on dim 1).

    The forward uses the batch-norm kernel's own statistics routine, several times
    faster on the CPU than reductions written out; the backward is the closed form
    ``dL/dy = (g_mean + 2 g_var (y - mean)) / N`` with ``N`` values per channel.
    """

    @staticmethod
    def forward(ctx: Any, y: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = torch.batch_norm_update_stats(y, None, None, 0.0)
        ctx.save_for_backward(y, mean)
        return mean, var

    @staticmethod
    def backward(ctx: Any, g_mean: Tensor | None, g_var: Tensor | None) -> Tensor:
        y, mean = ctx.saved_tensors
        n = y.numel() // y.shape[1]
        shape = (1, -1) + (1,) * (y.dim() - 2)
        grad = torch.zeros_like(y) if g_mean is None else (g_mean / n).view(shape).expand_as(y)
        if g_var is not None:
            grad = torch.addcmul(grad, y - mean.view(shape), (g_var * (2.0 / n)).view(shape))
        return grad


def _channel_mean_var(y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``y`` ``(B, C, ...)``, each of shape ``(C,)``,
    differentiable with respect to ``y``."""
    return _ChannelStats.apply(y)


def is_channels_last(x: Tensor) -> bool:
    """Whether a 4-D tensor is laid out channels-last (and not also plain contiguous)."""
    return x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1 and not x.is_contiguous()


def _pointwise_conv(x: Tensor, weight: Tensor, *, transposed: bool) -> Tensor:
    """The 1x1 convolution with ``weight`` ``(C_out, C_in, 1, 1)`` (or its transpose) of a
    channels-last ``x`` ``(N, C, H, W)`` as one matrix product over the channels; channels-last out."""
    matrix = weight.reshape(weight.shape[0], weight.shape[1])
    if not transposed:
        matrix = matrix.t()
    n, c, h, w = x.shape
    out = x.permute(0, 2, 3, 1).reshape(n * h * w, c).mm(matrix)
    return out.view(n, h, w, matrix.shape[1]).permute(0, 3, 1, 2)


class AffineLayer:
    """A linear map ``z = W x + b`` assembled from a backbone's modules.

    Args:
        layer: a ``Conv1d/2d/3d`` or ``Linear`` module, or ``None`` for a batch
            norm that has no layer before it.
        norm: the ``BatchNorm`` module that directly follows ``layer`` (fused into
            it, Eqs. 25 and 26), or ``None``.
        where: the layer's place in the model, for error messages.
    """

    def __init__(self, layer: Layer | None, norm: Norm | None, where: str = "") -> None:
        if layer is None and norm is None:
            raise ValueError("an affine layer needs a layer, a norm, or both")
        self.layer = layer
        self.norm = norm
        self.where = where
        self._padding = _conv_padding(layer, where) if isinstance(layer, CONV_TYPES) else None
        # A 1x1 convolution with stride 1 mixes channels only: on a channels-last tensor it is one
        # matrix product over the (N*H*W, C) view, which the CPU runs faster than a convolution at
        # the small maps of late layers, forward and backward (benchmarks/training_speed.py).
        self._pointwise = (
            isinstance(layer, nn.Conv2d)
            and layer.kernel_size == (1, 1)
            and layer.stride == (1, 1)
            and layer.groups == 1
            and self._padding == (0, 0)
        )

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Run the backbone's own modules on ``x`` (batch first).

        Returns:
            ``(z, y)``: the output ``z`` and the input of the norm ``y`` (the layer's
            output, or ``x`` for a lone norm), whose batch statistics the fused
            weights need in training mode.
        """
        y = self.layer(x) if self.layer is not None else x
        z = self.norm(y) if self.norm is not None else y
        return z, y

    # -- effective parameters --------------------------------------------------------------
    def _norm_scale_shift(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel ``scale, shift`` with ``norm(y) = scale * y + shift``."""
        norm = self.norm
        if norm.training or norm.running_mean is None:
            # Training mode uses the statistics of this very batch, as the forward did.
            mean, var = _channel_mean_var(y)
        else:
            mean, var = norm.running_mean, norm.running_var
        scale = torch.rsqrt(var + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight
        shift = -mean * scale
        if norm.bias is not None:
            shift = shift + norm.bias
        return scale, shift

    def fused(self, y: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """``(W, b, p)``: the effective weight and bias of the (fused) layer and the bias
        parameters' share ``p`` of ``b``, from one computation of the norm's statistics.

        ``p = beta + scale * b_layer`` (norm shift ``beta``, layer bias ``b_layer``) with the
        norm's ``scale`` as a constant, so that its gradient reaches the bias parameters only;
        ``None`` without bias parameters.  ``z - (p - p.detach())`` has ``z``'s value and
        gradient except towards the bias parameters: the paper's detached biases (Alg. 6,
        step 1), while a norm in training mode keeps the gradient through its batch mean and
        variance, which the forward pass depends on as well.

        Args:
            y: the norm's input as returned by :meth:`forward`.

        Returns:
            ``W`` with the layer's weight shape, or shape ``(C,)`` for a lone norm; ``b`` and ``p``
            of shape ``(C_out,)`` or ``None``.
        """
        layer, norm = self.layer, self.norm
        if norm is None:
            return layer.weight, layer.bias, layer.bias
        scale, shift = self._norm_scale_shift(y)
        if layer is None:
            return scale, shift, norm.bias
        weight = layer.weight * scale.view(-1, *([1] * (layer.weight.dim() - 1)))
        if layer.bias is None:
            return weight, shift, norm.bias
        own = scale.detach() * layer.bias
        return weight, shift + scale * layer.bias, own if norm.bias is None else own + norm.bias

    def channel_view(self, v: Tensor, ref: Tensor) -> Tensor:
        """Reshape a per-output-channel vector ``v`` to broadcast against ``ref`` (batch first)."""
        if isinstance(self.layer, nn.Linear):
            return v  # features are the last dimension
        return v.view(1, -1, *([1] * (ref.dim() - 2)))

    # -- the map and its transpose ---------------------------------------------------------
    def linear(self, x: Tensor, weight: Tensor) -> Tensor:
        """The bias-free map ``x -> W x`` with weight ``weight`` (same layout as the layer's)."""
        layer = self.layer
        if layer is None:
            return x * self.channel_view(weight, x)
        if isinstance(layer, nn.Linear):
            return F.linear(x, weight)
        if self._pointwise and is_channels_last(x):
            return _pointwise_conv(x, weight, transposed=False)
        conv = _CONV[x.dim() - 2]
        return conv(x, weight, None, layer.stride, self._padding, layer.dilation, layer.groups)

    def transpose(self, s: Tensor, weight: Tensor, input_shape: torch.Size) -> Tensor:
        """The transposed map ``s -> W^T s`` (Alg. 6, step 3).

        Args:
            s: tensor of shape ``(N, *output_shape[1:])`` for any ``N``.
            weight: weight in the layer's layout.
            input_shape: shape of the layer's input; only its non-batch part is used.

        Returns:
            Tensor of shape ``(N, *input_shape[1:])``.
        """
        layer = self.layer
        if layer is None:
            return s * self.channel_view(weight, s)
        if isinstance(layer, nn.Linear):
            return s.matmul(weight)
        if self._pointwise and is_channels_last(s):
            return _pointwise_conv(s, weight, transposed=True)
        dims = s.dim() - 2
        output_padding = []
        for i in range(dims):
            produced = (
                (s.shape[2 + i] - 1) * layer.stride[i]
                - 2 * self._padding[i]
                + layer.dilation[i] * (layer.kernel_size[i] - 1)
                + 1
            )
            output_padding.append(input_shape[2 + i] - produced)
        return _CONV_TRANSPOSE[dims](
            s, weight, None, layer.stride, self._padding, tuple(output_padding), layer.groups, layer.dilation
        )
