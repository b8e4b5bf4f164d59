"""U-Net (Ronneberger, Fischer and Brox, 2015) and the paper's multi-task U-Net (Appendix B.1).

:class:`UNet` is the original segmentation network with one change: its 3x3
convolutions are zero-padded (padding 1), so the output has the input's size and
skip features need no cropping.  The original used unpadded convolutions, whose
output is smaller than the input.

:class:`MultiTaskUNet` adds a classification head on the bottleneck (a VGG-style
classifier) and uses batch norm after every 3x3 convolution.  Its
:attr:`~MultiTaskUNet.classifier` is the image-to-logits part alone (contracting
path, bottleneck and head) and can be explained with :func:`isnet.explain`.

Both networks are built from the same :class:`Encoder` (contracting path and
bottleneck) and :class:`Decoder` (expanding path).  Their weights start as in
the original: Gaussian with standard deviation ``sqrt(2 / N)``, ``N`` the number of
inputs of one unit (He initialisation); biases start at zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["Decoder", "DoubleConv", "Encoder", "MultiTaskUNet", "UNet", "UNetClassifier", "classification_head"]


def _he_init(layer: nn.Conv2d | nn.ConvTranspose2d, fan_in: int) -> None:
    nn.init.normal_(layer.weight, std=math.sqrt(2.0 / fan_in))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions (padding 1), each followed by ReLU, or by batch norm and ReLU.

    ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    """

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool = False) -> None:
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            # A bias right before batch norm is cancelled by its mean subtraction.
            layers.append(nn.Conv2d(channels, out_channels, 3, padding=1, bias=not batch_norm))
            _he_init(layers[-1], channels * 9)
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Encoder(nn.Module):
    """Contracting path and bottleneck of a U-Net.

    ``depth`` down steps, each a :class:`DoubleConv` with ``width * 2**i`` channels
    followed by 2x2 max pooling, then a bottleneck :class:`DoubleConv` with
    ``width * 2**depth`` channels.

    Args:
        in_channels: image channels C.
        width: channels of the first block.
        depth: number of down steps (poolings).
        batch_norm: batch norm between each convolution and its ReLU.
    """

    def __init__(self, in_channels: int, width: int, depth: int, batch_norm: bool = False) -> None:
        super().__init__()
        _check_positive(in_channels=in_channels, width=width, depth=depth)
        self.in_channels = in_channels
        self.depth = depth
        self.blocks = nn.ModuleList()
        channels = in_channels
        for i in range(depth):
            self.blocks.append(DoubleConv(channels, width * 2**i, batch_norm))
            channels = width * 2**i
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(channels, width * 2**depth, batch_norm)
        self.out_channels = width * 2**depth

    def check_input(self, x: Tensor) -> None:
        """Raise a ValueError unless ``x`` is ``(B, in_channels, H, W)`` with H, W divisible by ``2**depth``."""
        if not isinstance(x, Tensor):
            return  # a torch.fx proxy while tracing: shapes are unknown
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"images must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        factor = 2**self.depth
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"image height and width must be divisible by 2**depth = {factor} for a U-Net of depth "
                f"{self.depth}, got {x.shape[-2]}x{x.shape[-1]}"
            )

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``x (B, C, H, W)`` -> ``(bottleneck (B, width * 2**depth, H / 2**depth, W / 2**depth), skips)``
        where ``skips[i]`` is the output of block ``i``, ``(B, width * 2**i, H / 2**i, W / 2**i)``."""
        self.check_input(x)
        skips = []
        for block in self.blocks:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        return self.bottleneck(x), skips


class Decoder(nn.Module):
    """Expanding path of a U-Net.

    Each up step halves the channels with a 2x2 stride-2 transposed convolution,
    concatenates the skip feature of the same resolution and applies a
    :class:`DoubleConv` that halves the channels again.

    Args:
        width: channels of the encoder's first block (the decoder's output channels).
        depth: number of up steps.
        batch_norm: batch norm between each 3x3 convolution and its ReLU.
    """

    def __init__(self, width: int, depth: int, batch_norm: bool = False) -> None:
        super().__init__()
        _check_positive(width=width, depth=depth)
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for i in reversed(range(depth)):
            channels = width * 2 ** (i + 1)
            self.ups.append(nn.ConvTranspose2d(channels, channels // 2, 2, stride=2))
            # With stride = kernel = 2 each output pixel sees one kernel tap per input channel.
            _he_init(self.ups[-1], channels)
            self.blocks.append(DoubleConv(channels, channels // 2, batch_norm))
        self.out_channels = width

    def forward(self, x: Tensor, skips: list[Tensor]) -> Tensor:
        """``x`` the bottleneck and ``skips`` as returned by :class:`Encoder` -> ``(B, width, H, W)``."""
        for up, block, skip in zip(self.ups, self.blocks, reversed(skips)):
            x = block(torch.cat([skip, up(x)], dim=1))
        return x


class UNet(nn.Module):
    """The original U-Net with padded convolutions (the output keeps the input's size).

    Args:
        in_channels: image channels C.
        out_channels: segmentation logits per pixel.
        width: channels of the first block; block ``i`` has ``width * 2**i``.
        depth: number of down (and up) steps; H and W must be divisible by ``2**depth``.
        batch_norm: batch norm between each 3x3 convolution and its ReLU.
    """

    def __init__(
        self, in_channels: int = 3, out_channels: int = 1, width: int = 64, depth: int = 4, batch_norm: bool = False
    ) -> None:
        super().__init__()
        _check_positive(out_channels=out_channels)
        self.encoder = Encoder(in_channels, width, depth, batch_norm)
        self.decoder = Decoder(width, depth, batch_norm)
        self.head = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C, H, W)`` -> segmentation logits ``(B, out_channels, H, W)``.

        Raises:
            ValueError: wrong channel count, or H or W not divisible by ``2**depth``.
        """
        bottleneck, skips = self.encoder(x)
        return self.head(self.decoder(bottleneck, skips))


def classification_head(in_channels: int, num_classes: int, hidden: int = 4096, dropout: float = 0.5) -> nn.Sequential:
    """VGG-style head: ``(B, in_channels, h, w) -> (B, num_classes)`` through 7x7 adaptive average
    pooling and three linear layers (ReLU and dropout between them)."""
    _check_positive(in_channels=in_channels, num_classes=num_classes, hidden=hidden)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(7),
        nn.Flatten(1),
        nn.Linear(in_channels * 49, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class UNetClassifier(nn.Module):
    """Images to class logits through a U-Net's contracting path, bottleneck and head.

    Holds the given modules (no copies), so it shares their parameters and
    train / eval mode.  Traceable by ``torch.fx``: :class:`isnet.lrp.LRPGraph`
    explains it with its built-in rules.

    Args:
        encoder: the contracting path and bottleneck.
        head: maps the bottleneck ``(B, C', h, w)`` to logits ``(B, K)``.
    """

    def __init__(self, encoder: Encoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """``x (B, C, H, W)`` -> logits ``(B, K)``."""
        bottleneck, _ = self.encoder(x)
        return self.head(bottleneck)


class MultiTaskUNet(nn.Module):
    """The paper's multi-task U-Net (Appendix B.1): segmentation and classification.

    A :class:`UNet` with batch norm after every 3x3 convolution (before its ReLU)
    and one segmentation logit per pixel, plus a classification head on the
    bottleneck: 7x7 adaptive average pooling, flatten, and
    ``Linear(C' * 49, hidden) -> ReLU -> Dropout -> Linear(hidden, hidden) -> ReLU
    -> Dropout -> Linear(hidden, num_classes)``.

    Args:
        in_channels: image channels C.
        num_classes: number of class logits K.
        width: channels of the first block.
        depth: number of down (and up) steps; H and W must be divisible by ``2**depth``.
        hidden: width of the head's hidden layers.
        dropout: dropout probability in the head.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 64,
        depth: int = 4,
        hidden: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.encoder = Encoder(in_channels, width, depth, batch_norm=True)
        self.decoder = Decoder(width, depth, batch_norm=True)
        self.segmentation_head = nn.Conv2d(width, 1, 1)
        self.classification_head = classification_head(self.encoder.out_channels, num_classes, hidden, dropout)

    @property
    def classifier(self) -> UNetClassifier:
        """``images (B, C, H, W) -> logits (B, K)`` without the expanding path.

        A new wrapper on every access (so it is not registered twice in the state
        dict), sharing this model's parameters, buffers and train / eval mode.
        """
        return UNetClassifier(self.encoder, self.classification_head)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (B, C, H, W)`` -> ``(class logits (B, K), segmentation logits (B, 1, H, W))``.

        Raises:
            ValueError: wrong channel count, or H or W not divisible by ``2**depth``.
        """
        bottleneck, skips = self.encoder(x)
        logits = self.classification_head(bottleneck)
        return logits, self.segmentation_head(self.decoder(bottleneck, skips))
