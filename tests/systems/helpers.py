"""Small data and a short training loop shared by the systems' tests."""

from __future__ import annotations

from pathlib import Path

import torch

from isnet.data import MaskedImageDataModule
from isnet.data.builtin import generate_digits_on_textures


def tiny_batch(n: int = 8, size: int = 16, classes: int = 3, multilabel: bool = False, seed: int = 0) -> dict:
    """Images whose class is written as a bright square inside a centred foreground box."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 0.3
    masks = torch.zeros(n, 1, size, size)
    lo, hi = size // 4, 3 * size // 4
    masks[:, :, lo:hi, lo:hi] = 1
    if multilabel:
        labels = (torch.rand(n, classes, generator=g) < 0.5).float()
        labels[:, 0] = 1 - labels[:, 1]
    else:
        labels = torch.arange(n) % classes
    for i in range(n):
        ks = torch.nonzero(labels[i]).flatten().tolist() if multilabel else [int(labels[i])]
        for k in ks:
            images[i, k % 3, lo + 1:lo + 3, lo + 1 + 2 * k:lo + 3 + 2 * k] = 1.0
    return {"image": images, "mask": masks, "label": labels}


def biased_digits(folder: Path) -> MaskedImageDataModule:
    """Digits on textures with the synthetic shape bias in ``folder``: 32 x 32 images, 24 / 8 / 8
    per class (train / val / test), batches of 12, set up."""
    root = generate_digits_on_textures(folder, per_class=(24, 8, 8), size=32)
    data = MaskedImageDataModule(root, size=32, bias=True, augment=False, batch_size=12, cache=True)
    data.setup()
    return data


def loss_drops(module, batch: dict, steps: int = 15, lr: float = 0.01) -> tuple[float, float]:
    """Train ``module`` on one batch with Adam; return its training loss at the first and the last step."""
    module.log_dict = lambda *a, **k: None
    module.log = lambda *a, **k: None
    module.train()
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = module._step(batch, "train")
        losses.append(float(loss))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
    return losses[0], losses[-1]


def gradient_times_input(model, x):
    """Gradient*Input of every logit, one backward pass per logit: ``(B, K, C, H, W)``."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    maps = []
    for k in range(logits.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, k].sum(), x, retain_graph=True)
        maps.append(x * grad)
    return torch.stack(maps, dim=1).detach()


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()
