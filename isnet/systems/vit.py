"""The Vision Transformer comparison system (Appendix B.1): its network and its
attention-rollout heatmaps.

The network is torchvision's :class:`~torchvision.models.VisionTransformer`, randomly
initialised (nothing is downloaded).  Its heatmaps come from attention rollout
(Abnar & Zuidema, 2020): the head-averaged self-attention of every encoder layer, with
the residual connection modelled as an identity, multiplied through the layers; the
class token's row over the patch tokens is the map.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VisionTransformer
from torchvision.models.vision_transformer import EncoderBlock

from .base import ClassifierSystem

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's ViT-B/16.
    "b16": {"patch_size": 16, "num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072,
            "dropout": 0.0, "attention_dropout": 0.0},
    # Small enough to train on a CPU with 64x64 images (an 8x8 grid of patches).
    "tiny": {"patch_size": 8, "num_layers": 4, "num_heads": 4, "hidden_dim": 64, "mlp_dim": 128,
             "dropout": 0.0, "attention_dropout": 0.0},
}  # fmt: skip
"""Configurations of :func:`build_vit` by name."""


def build_vit(num_classes: int, image_size: int, *, preset: str = "tiny", in_channels: int = 3,
              **overrides: Any) -> VisionTransformer:
    """A randomly initialised Vision Transformer.

    Args:
        num_classes: number of logits K.
        image_size: side of the square input images, in pixels; a multiple of the patch size.
        preset: a name in :data:`PRESETS` (``"b16"``: ViT-B/16; ``"tiny"``: CPU-sized).
        in_channels: image channels C; for C != 3 the patch projection is replaced by one
            taking C channels.
        overrides: fields of the preset to change: ``patch_size``, ``num_layers``,
            ``num_heads``, ``hidden_dim``, ``mlp_dim``, ``dropout``, ``attention_dropout``.

    Returns:
        A :class:`~torchvision.models.VisionTransformer` mapping ``(B, C, image_size,
        image_size)`` images to ``(B, K)`` logits.  As in torchvision, the classification
        head starts at zero.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown ViT preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    unknown = sorted(set(overrides) - set(PRESETS[preset]))
    if unknown:
        raise TypeError(f"unknown ViT setting(s) {', '.join(unknown)}; "
                        f"choose from {', '.join(sorted(PRESETS[preset]))}")
    cfg = {**PRESETS[preset], **overrides}
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    for name in ("patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim"):
        if cfg[name] < 1:
            raise ValueError(f"{name} must be >= 1, got {cfg[name]}")
    for name in ("dropout", "attention_dropout"):
        if not 0.0 <= cfg[name] < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {cfg[name]}")
    if image_size < 1 or image_size % cfg["patch_size"]:
        raise ValueError(f"image_size {image_size} is not a positive multiple of the patch size {cfg['patch_size']}")
    if cfg["hidden_dim"] % cfg["num_heads"]:
        raise ValueError(f"hidden_dim {cfg['hidden_dim']} is not divisible by num_heads {cfg['num_heads']}")

    model = VisionTransformer(image_size=image_size, num_classes=num_classes, **cfg)
    if in_channels != 3:
        p = cfg["patch_size"]
        model.conv_proj = nn.Conv2d(in_channels, cfg["hidden_dim"], kernel_size=p, stride=p)
        # torchvision's initialisation of the patch projection.
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / (in_channels * p * p)))
        nn.init.zeros_(model.conv_proj.bias)
    return model


def _in_channels(model: VisionTransformer) -> int:
    conv = next(m for m in model.conv_proj.modules() if isinstance(m, nn.Conv2d))
    return conv.in_channels


def _check_images(model: VisionTransformer, images: Tensor) -> None:
    if not isinstance(model, VisionTransformer):
        raise TypeError(f"expected a torchvision VisionTransformer, got {type(model).__name__}")
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point, got {images.dtype}")
    channels = _in_channels(model)
    if images.shape[1] != channels:
        raise ValueError(f"the model takes {channels}-channel images, got {images.shape[1]} channels")
    size = model.image_size
    if tuple(images.shape[2:]) != (size, size):
        raise ValueError(f"the model takes {size}x{size} images, got {images.shape[2]}x{images.shape[3]}")


def _block_forward(block: EncoderBlock, x: Tensor) -> tuple[Tensor, Tensor]:
    """``EncoderBlock.forward`` that also returns the head-averaged attention ``(B, T, T)``."""
    h = block.ln_1(x)
    attn = block.self_attention
    if attn.training and attn.dropout > 0:
        # One call, so that the weights carry the same dropout mask as the output.
        a, weights = attn(h, h, h, need_weights=True, average_attn_weights=True)
    else:
        # The block's own call gives its output bit for bit (need_weights=True takes a
        # different, explicit softmax path); a second call gives the weights.
        a, _ = attn(h, h, h, need_weights=False)
        _, weights = attn(h, h, h, need_weights=True, average_attn_weights=True)
    x = block.dropout(a) + x
    return x + block.mlp(block.ln_2(x)), weights


def forward_with_attention(model: VisionTransformer, images: Tensor) -> tuple[Tensor, list[Tensor]]:
    """``model(images)`` and the self-attention of every encoder layer.

    The encoder is run block by block, repeating torchvision's ``Encoder`` and
    ``EncoderBlock`` forward passes, so the logits equal ``model(images)`` in the same
    mode and grad mode; the model is not modified.

    Args:
        model: a torchvision Vision Transformer, in the mode it is to be run in.
        images: ``(B, C, H, W)`` floating-point images of the model's size.

    Returns:
        ``(logits (B, K), attentions)``, one ``(B, T, T)`` matrix per layer, averaged over
        heads, with ``T = 1 + number of patches`` (the class token first, then the
        patches row by row); each row sums to 1.
    """
    _check_images(model, images)
    x = model._process_input(images)
    x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    encoder = model.encoder
    x = encoder.dropout(x + encoder.pos_embedding)
    attentions = []
    for block in encoder.layers:
        x, weights = _block_forward(block, x)
        attentions.append(weights)
    x = encoder.ln(x)
    return model.heads(x[:, 0]), attentions


def rollout(attentions: Sequence[Tensor], *, discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout of a stack of attention matrices.

    Each layer's matrix ``A`` becomes ``0.5 * A + 0.5 * I`` (the residual connection),
    with rows renormalised to sum to 1, and the layers' matrices are multiplied in
    order: ``R = A'_L ... A'_2 A'_1``.

    Args:
        attentions: per layer, first to last, a ``(B, T, T)`` or ``(T, T)`` non-negative
            matrix (query rows, key columns), token 0 being the class token.
        discard_ratio: in ``[0, 1)``; per image and layer, this fraction of the smallest
            weights among those to the patch tokens (columns ``1:``) is set to zero before
            the identity is added.  Weights to the class token are always kept.

    Returns:
        ``R``, ``(B, T, T)`` (or ``(T, T)``); every row sums to 1.
    """
    if len(attentions) == 0:
        raise ValueError("rollout needs at least one attention matrix")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    result = None
    for a in attentions:
        if a.dim() not in (2, 3) or a.shape[-1] != a.shape[-2]:
            raise ValueError(f"attention matrices must be (B, T, T) or (T, T), got {tuple(a.shape)}")
        if discard_ratio > 0:
            patches = a[..., 1:].flatten(-2)
            k = int(patches.shape[-1] * discard_ratio)
            if k > 0:
                lowest = patches.topk(k, dim=-1, largest=False).indices
                patches = patches.scatter(-1, lowest, 0.0)
                a = torch.cat([a[..., :1], patches.unflatten(-1, a[..., 1:].shape[-2:])], dim=-1)
        eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = 0.5 * a + 0.5 * eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def class_token_map(joint: Tensor, grid: tuple[int, int]) -> Tensor:
    """The class token's row of a rollout over the patch tokens, as a patch grid.

    Args:
        joint: ``(B, T, T)`` rollout (:func:`rollout`), ``T = 1 + grid[0] * grid[1]``.
        grid: patches per column and per row ``(n_h, n_w)``.

    Returns:
        ``(B, 1, n_h, n_w)`` non-negative map; each map sums to 1 (it is renormalised,
        since the class token's weight on itself is left out), or is all zero where the
        class token puts no weight on any patch.
    """
    n_h, n_w = grid
    if joint.dim() != 3 or joint.shape[1] != joint.shape[2] or joint.shape[1] != 1 + n_h * n_w:
        raise ValueError(f"joint must be (B, T, T) with T = 1 + {n_h}*{n_w}, got {tuple(joint.shape)}")
    row = joint[:, 0, 1:]
    row = row / row.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(row.dtype).tiny)
    return row.reshape(-1, 1, n_h, n_w)


def attention_rollout(model: VisionTransformer, images: Tensor, *,
                      discard_ratio: float = 0.0) -> tuple[Tensor, Tensor]:
    """Logits and attention-rollout heatmaps of a Vision Transformer.

    The class token's rollout (:func:`rollout`) over the patches, normalised to sum to 1
    (:func:`class_token_map`) and upsampled bilinearly to the image size.  The map does
    not depend on the class.  The model's mode (train / eval) is used as it is and the
    caller's grad mode applies.

    Args:
        model: a torchvision Vision Transformer (e.g. from :func:`build_vit`).
        images: ``(B, C, H, W)`` floating-point images of the model's size.
        discard_ratio: fraction of the lowest attention weights dropped per layer (see
            :func:`rollout`).

    Returns:
        ``(logits (B, K), maps (B, 1, H, W))``; the maps are non-negative, each averaging
        about ``1 / number of patches``.
    """
    logits, attentions = forward_with_attention(model, images)
    p = model.patch_size
    grid = (images.shape[2] // p, images.shape[3] // p)
    maps = class_token_map(rollout(attentions, discard_ratio=discard_ratio), grid)
    maps = F.interpolate(maps, size=tuple(images.shape[2:]), mode="bilinear", align_corners=False)
    return logits, maps


def rollout_explainer(model: VisionTransformer, *,
                      discard_ratio: float = 0.0) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """Attention-rollout heatmaps as an :data:`isnet.evaluation.Explainer`.

    Rollout is class-agnostic: the same map is repeated for every class.  Runs under
    ``torch.no_grad()`` with the model in its current mode.

    Returns:
        ``images (B, C, H, W) -> (logits (B, K), heatmaps (B, K, 1, H, W))``.
    """

    def explain(images: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            logits, maps = attention_rollout(model, images, discard_ratio=discard_ratio)
        return logits, maps.unsqueeze(1).repeat(1, logits.shape[1], 1, 1, 1)

    return explain


class ViTModule(ClassifierSystem):
    """The Vision Transformer system: trained with the classification loss, explained by
    attention rollout (class-agnostic maps).

    Args:
        num_classes: K.
        image_size: input height = width.
        preset: ``tiny`` (CPU-sized) or ``b16`` (the paper's ViT-B/16).
        in_channels: image channels.
        vit_kwargs: overrides of the preset (see :func:`build_vit`).
        other arguments: see :class:`~isnet.systems.base.ClassifierSystem`.
    """

    method = "vit"

    def __init__(self, num_classes: int = 3, image_size: int = 224, *, preset: str = "tiny", in_channels: int = 3,
                 vit_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(num_classes, **kwargs)
        self.network = build_vit(num_classes, image_size, preset=preset, in_channels=in_channels,
                                 **(vit_kwargs or {}))

    def explainer(self) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        return rollout_explainer(self.network)
