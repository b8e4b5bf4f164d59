"""What every trainable system shares (Appendix F.2: one training procedure for all).

A system is a :class:`SystemModule`: a LightningModule that builds its network,
defines its training loss as named parts (:meth:`SystemModule.losses`), says which
plain network it deploys (:attr:`SystemModule.deployed`, ``images -> logits``) and
how that network's decisions are explained for reports
(:meth:`SystemModule.explainer`, LRP by default).  The base logs every loss part
for training and validation, the accuracy, and sets up the optimiser, so all
systems train, checkpoint and log the same way through :func:`isnet.training.train`.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any, Callable, ClassVar

import lightning as L
import torch
from torch import Tensor, nn

from .. import defaults

Explainer = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``images (B, C, H, W) -> (logits (B, K), heatmaps (B, K, C', H, W))``."""

OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine")


def check_optimisation(optimizer: str, lr_schedule: str, warmup_epochs: float = 0.0) -> None:
    """Raise a ValueError naming an unknown optimiser or schedule, or a negative warm-up."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if not math.isfinite(warmup_epochs) or warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be a number >= 0, got {warmup_epochs!r}")


def warmup_steps(warmup_epochs: float, total_steps: int, max_epochs: int | None) -> int:
    """Optimiser steps of a warm-up of ``warmup_epochs`` epochs in a run of ``total_steps`` steps."""
    per_epoch = total_steps / max(1, max_epochs or 1)
    return max(1, min(total_steps, round(warmup_epochs * per_epoch)))


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, cosine: bool) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): a linear ramp from
    ``1 / warmup_steps`` to 1 over the first ``warmup_steps`` steps, then constant or a
    cosine annealing to 0 at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class RelevanceDiedError(FloatingPointError):
    """Every heatmap of a batch is zero: no relevance reaches the input, and the heatmap
    loss, which normalises by it, no longer steers the training (the 0/0 case)."""


class TrainingDivergedError(FloatingPointError):
    """Training stopped on a non-finite loss part or on dead relevance.

    Attributes:
        system: the system's method name (``isnet``, ``standard``, ...).
        stage: ``train`` or ``val``.
        epoch: epoch (0-based) in which it happened.
        global_step: optimiser steps taken before the batch.
        batch_idx: batch index within the epoch.
        parts: names of the loss parts that went bad (``L_C``, ``L1``, ...; ``heatmaps``
            when the relevance died).
    """

    def __init__(self, problem: str, *, system: str, stage: str, epoch: int | None, global_step: int | None,
                 batch_idx: int | None, parts: list[str]) -> None:
        self.system = system
        self.stage, self.epoch, self.global_step, self.batch_idx = stage, epoch, global_step, batch_idx
        self.parts = list(parts)
        self.problem = problem
        super().__init__(self._message())

    def _message(self, note: str = "") -> str:
        where = f"epoch {self.epoch}, global step {self.global_step}, {self.stage} batch {self.batch_idx} of the epoch"
        return (f"training of {self.system} stopped at {where}: {self.problem}; "
                f"lower the learning rate or check the data{note}")

    def with_note(self, note: str) -> "TrainingDivergedError":
        """The same error with ``note`` appended to its message (e.g. which checkpoints were kept)."""
        error = TrainingDivergedError(self.problem, system=self.system, stage=self.stage, epoch=self.epoch,
                                      global_step=self.global_step, batch_idx=self.batch_idx, parts=self.parts)
        error.args = (error._message(note),)
        return error


def require_relevance(heatmaps: Tensor) -> None:
    """Raise :class:`RelevanceDiedError` when every heatmap of the batch is exactly zero.

    Args:
        heatmaps: ``(B, K, C, H, W)`` (any shape works).
    """
    if not torch.any(heatmaps.detach() != 0):
        raise RelevanceDiedError(f"relevance died: all {heatmaps.shape[0]} x {heatmaps.shape[1]} heatmaps "
                                 "of the batch are zero")


class SystemModule(L.LightningModule):
    """Base class of the trainable systems.

    Subclasses call ``self.save_hyperparameters()`` first in ``__init__`` with at least
    ``num_classes``, ``multilabel``, ``lr``, ``momentum``, ``weight_decay``,
    ``optimizer``, ``lr_schedule`` and ``class_names`` among their arguments, build
    their network, and implement :meth:`losses` and :attr:`deployed`.
    """

    method: ClassVar[str] = ""
    needs_input_gradients: ClassVar[bool] = False  # its loss differentiates through input gradients

    # -- what subclasses define --------------------------------------------------------------
    @property
    def deployed(self) -> nn.Module:
        """The network used after training: ``images (B, C, H, W) -> logits (B, K)``."""
        raise NotImplementedError

    def losses(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        """Training loss of one batch (``image``, ``mask``, ``label``).

        Returns:
            ``(parts, logits)``: named scalar loss parts, of which ``parts["loss"]`` is
            the total that is minimised, and the logits ``(B, K)`` of the batch (``None``
            for a module that does not classify, such as a segmenter).
        """
        raise NotImplementedError

    def explainer(self) -> Explainer:
        """Heatmaps of the deployed network's decisions (LRP with the paper's rules by default)."""
        from ..evaluation import lrp_explainer

        hp = self.hparams
        return lrp_explainer(self.deployed, epsilon=hp.get("epsilon", defaults.EPSILON), zb=hp.get("zb", defaults.ZB),
                             low=hp.get("low", defaults.ZB_LOW), high=hp.get("high", defaults.ZB_HIGH))

    # -- shared ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.deployed(x)

    def _step(self, batch: dict, stage: str, batch_idx: int | None = None) -> Tensor:
        try:
            parts, logits = self.losses(batch)
        except RelevanceDiedError as error:
            raise self._diverged(stage, batch_idx, str(error)) from error
        total = parts["loss"]
        if not torch.isfinite(total):
            bad = {name: value.detach().item() for name, value in parts.items()
                   if name != "loss" and not torch.isfinite(value)}
            what = ", ".join(f"{name} = {value}" for name, value in bad.items()) or f"the total = {total.detach().item()}"
            raise self._diverged(stage, batch_idx, f"loss part(s) not finite: {what}", parts=list(bad) or ["loss"])
        batch_size = batch["image"].shape[0]
        values = dict(parts)
        if logits is not None and not self.hparams.get("multilabel", False):
            values["accuracy"] = (logits.argmax(1) == batch["label"]).float().mean()
        self.log_dict({f"{stage}/{k}": v.detach() if k != "loss" else v for k, v in values.items()},
                      batch_size=batch_size, on_step=False, on_epoch=True)
        self.log(f"{stage}_loss", total, batch_size=batch_size, on_step=False, on_epoch=True, prog_bar=True,
                 logger=False)
        return total

    def _diverged(self, stage: str, batch_idx: int | None, problem: str,
                  parts: list[str] | None = None) -> "TrainingDivergedError":
        trainer = self._trainer
        epoch = trainer.current_epoch if trainer is not None else None
        step = trainer.global_step if trainer is not None else None
        return TrainingDivergedError(problem, system=self.method or type(self).__name__, stage=stage,
                                     epoch=epoch, global_step=step, batch_idx=batch_idx,
                                     parts=parts if parts is not None else ["heatmaps"])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train", batch_idx)

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        if self.needs_input_gradients:  # the validation loss itself needs input gradients
            with torch.enable_grad():
                return self._step(batch, "val", batch_idx)
        return self._step(batch, "val", batch_idx)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = self.trainable_parameters()
        if hp.optimizer == "adam":
            optimiser = torch.optim.Adam(params, lr=hp.lr, betas=(hp.momentum, 0.999), weight_decay=hp.weight_decay)
        else:
            optimiser = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        warmup = hp.get("warmup_epochs", 0)  # absent from checkpoints older than the option
        if self._trainer is None or (hp.lr_schedule == "constant" and warmup == 0):
            return optimiser
        if warmup == 0:
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, self.trainer.max_epochs))
            return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps = warmup_steps(warmup, total, self.trainer.max_epochs)
        factor = partial(lr_factor, warmup_steps=steps, total_steps=total, cosine=hp.lr_schedule == "cosine")
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["isnet_method"] = self.method

    def before_fit(self, datamodule: L.LightningDataModule, folder: Any, **train_options: Any) -> None:
        """Work done before this system's own training (e.g. training a segmenter); nothing by default."""

    def export(self, folder: str | Path, preprocessing: dict[str, Any] | None = None,
               example_size: int = 64) -> dict[str, Path]:
        """Write the deployed network: ``model.pt`` (method, hyper-parameters and weights; reload
        with :func:`isnet.systems.registry.load_exported`), ``model.torchscript.pt`` (traced,
        eval mode) and ``preprocessing.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        was_training = self.training
        self.eval()
        files = {"model": folder / "model.pt", "torchscript": folder / "model.torchscript.pt",
                 "preprocessing": folder / "preprocessing.json"}
        torch.save({"format": "isnet-system/1", "method": self.method, "hparams": dict(self.hparams),
                    "state_dict": self.state_dict()}, files["model"])
        channels = self.hparams.get("in_channels", 3)
        size = self.hparams.get("image_size", example_size)
        example = torch.rand(1, channels, size, size, device=next(self.parameters()).device)
        with torch.no_grad():
            torch.jit.trace(self.deployed, example, check_trace=False).save(str(files["torchscript"]))
        files["preprocessing"].write_text(json.dumps(
            {"preprocessing": preprocessing or {}, "class_names": list(self.hparams.get("class_names") or []),
             "multilabel": self.hparams.get("multilabel", False), "method": self.method,
             "input": "float32 (B, C, H, W), values in [0, 1]"}, indent=2))
        self.train(was_training)
        return files


class ConfiguredSystem(SystemModule):
    """A system with the settings every system shares, recorded as hyper-parameters.

    Subclasses take their own settings as arguments and pass the rest on as keyword
    arguments to ``super().__init__`` (first thing in their ``__init__``); Lightning
    collects the arguments of every ``__init__`` up the call chain, so the subclass's
    settings and these (with their defaults) all end up in ``hparams``.

    Args:
        multilabel: binary cross-entropy and independent labels.
        epsilon, zb, low, high: LRP settings of the heatmaps in reports.
        lr, momentum, weight_decay, optimizer, lr_schedule: optimisation (Appendix F.2 defaults).
        warmup_epochs: linear learning-rate warm-up before the schedule (0: none, the paper's).
        class_names: names of the K classes.
    """

    def __init__(self, *, multilabel: bool = False, epsilon: float = defaults.EPSILON, zb: bool = defaults.ZB,
                 low: float = defaults.ZB_LOW, high: float = defaults.ZB_HIGH, lr: float = defaults.LEARNING_RATE,
                 momentum: float = defaults.MOMENTUM, weight_decay: float = defaults.WEIGHT_DECAY,
                 optimizer: str = "sgd", lr_schedule: str = "constant", warmup_epochs: float = 0.0,
                 class_names: Any = None) -> None:
        super().__init__()
        check_optimisation(optimizer, lr_schedule, warmup_epochs)
        self.save_hyperparameters()


class BackboneSystem(ConfiguredSystem):
    """A system whose deployed network is one of :mod:`isnet.backbones` (RRR, GAIN, ISNet Grad*Input).

    Args:
        backbone, num_classes, in_channels, arch_kwargs: the classifier (see
            :func:`isnet.backbones.build_backbone`).
        kwargs: the shared settings of :class:`ConfiguredSystem`.
    """

    def __init__(self, backbone: str, num_classes: int, *, in_channels: int = 3,
                 arch_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from ..backbones import build_backbone

        self.backbone = build_backbone(backbone, num_classes, in_channels, **(arch_kwargs or {}))

    @property
    def deployed(self) -> nn.Module:
        return self.backbone


class ClassifierSystem(ConfiguredSystem):
    """A system trained with the classification loss alone (its mechanism is in its
    architecture: AG-Sononet's attention gates, the Vision Transformer's self-attention).

    Subclasses build ``self.network`` after calling ``super().__init__``.

    Args:
        num_classes: K.
        kwargs: the shared settings of :class:`ConfiguredSystem`.
    """

    def __init__(self, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    @property
    def deployed(self) -> nn.Module:
        return self.network

    def losses(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        from ..loss import classification_loss

        logits = self.network(batch["image"])
        l_c = classification_loss(logits, batch["label"], self.hparams.multilabel)
        return {"loss": l_c, "L_C": l_c}, logits
