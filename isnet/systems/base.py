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

import math
from functools import partial
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from .. import defaults
from ..lrp import LRPSettings

Explainer = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``images (B, C, H, W) -> (logits (B, K), heatmaps (B, K, C', H, W))``."""

Fit = Callable[..., tuple["SystemModule", Path | None]]
"""``fit(system, datamodule, folder, *, max_epochs) -> (system, best checkpoint or None)``:
:func:`isnet.training.train` with the options of the run that calls :meth:`SystemModule.before_fit`
(systems do not import the training driver, which imports them)."""

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
    monitor: ClassVar[str] = "val/loss"
    """The logged validation value whose lowest epoch :func:`isnet.training.train` keeps as the best."""

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

        return lrp_explainer(self.deployed, self.lrp_settings())

    def lrp_settings(self) -> LRPSettings:
        """The LRP settings among the hyper-parameters (``epsilon``, ``zb``, ``low``, ``high``;
        the paper's, :mod:`isnet.defaults`, for those a system does not have)."""
        return LRPSettings(**{name: self.hparams[name] for name in ("epsilon", "zb", "low", "high")
                              if name in self.hparams})

    # -- shared ------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.deployed(x)

    def _step(self, batch: dict, stage: str, batch_idx: int | None = None, weight: int | None = None) -> Tensor:
        """Loss of one batch, logged per epoch as the mean over processes weighted by ``weight``
        (default: the batch size); a non-finite part or dead relevance stops training."""
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
        batch_size = batch["image"].shape[0] if weight is None else weight
        values = dict(parts)
        if logits is not None and not self.hparams.get("multilabel", False):
            values["accuracy"] = (logits.argmax(1) == batch["label"]).float().mean()
        self.log_dict({f"{stage}/{k}": v.detach() if k != "loss" else v for k, v in values.items()},
                      batch_size=batch_size, on_step=False, on_epoch=True, sync_dist=True)
        # sync_dist: epoch values only, so one all-reduce per value and epoch; every rank then
        # sees the same val/loss and keeps the same best checkpoint
        self.log(f"{stage}_loss", total, batch_size=batch_size, on_step=False, on_epoch=True, prog_bar=True,
                 logger=False, sync_dist=True)
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
        batch, weight = self._without_sampler_padding(batch, batch_idx)
        if self.needs_input_gradients:  # the validation loss itself needs input gradients
            with torch.enable_grad():
                return self._step(batch, "val", batch_idx, weight)
        return self._step(batch, "val", batch_idx, weight)

    def _without_sampler_padding(self, batch: dict, batch_idx: int) -> tuple[dict, int | None]:
        """The batch without the images a ``DistributedSampler`` repeated to give every process
        as many (so that the validation means are those of the validation set), and its weight
        in the epoch means (``None``: its size, outside distributed runs).

        The sampler pads the dataset's order with its first images up to a multiple of the
        number of processes W; process ``r`` takes positions ``r, r + W, ...``, so only its last
        image can be padding.  A batch of padding alone is still computed (every process runs
        the same steps) but weighs 0.
        """
        from torch.utils.data import DataLoader, DistributedSampler

        loaders = self._trainer.val_dataloaders if self._trainer is not None else None
        sampler = getattr(loaders, "sampler", None) if isinstance(loaders, DataLoader) else None
        if not isinstance(sampler, DistributedSampler) or sampler.drop_last or not loaders.batch_size:
            return batch, None
        real = len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))  # this rank's unpadded images
        size = batch["image"].shape[0]
        keep = min(size, max(0, real - batch_idx * loaders.batch_size))
        # Lightning syncs a weighted mean as the mean over processes of the weighted sums over the mean
        # of the weight totals, an integer that it truncates: exact only when the weights' grand total
        # divides by W, hence every weight times W.
        weight = keep * sampler.num_replicas
        if keep in (0, size):
            return batch, weight
        per_image = lambda v: isinstance(v, list) and len(v) == size or isinstance(v, Tensor) and v.shape[:1] == (size,)  # noqa: E731
        return {k: v[:keep] if per_image(v) else v for k, v in batch.items()}, weight

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

    def before_fit(self, datamodule: L.LightningDataModule, folder: Path, fit: Fit) -> None:
        """Work done before this system's own training (e.g. training a segmenter); nothing by default.

        Args:
            datamodule, folder: the run's data and output folder.
            fit: trains another system with the run's options (see :data:`Fit`).
        """

    # -- deployment --------------------------------------------------------------------------
    export_stem: ClassVar[str] = "model"
    """File name (without suffix) of the exported files: ``model.pt``, ``model.onnx``, ``model.pt2``."""

    def write_model_file(self, path: Path, metadata: dict[str, Any]) -> Path:
        """Write the isnet model file of the deployed network (``isnet-system/1``: method,
        hyper-parameters, weights, preprocessing and thresholds; reload with
        :func:`isnet.export.load_deployed` or :func:`isnet.systems.registry.load_exported`)."""
        torch.save({"format": "isnet-system/1", "method": self.method, "hparams": dict(self.hparams),
                    "preprocessing": metadata["preprocessing"], "thresholds": metadata["thresholds"],
                    "state_dict": self.state_dict()}, path)
        return path

    def export(self, folder: str | Path, preprocessing: dict[str, Any] | None = None, *,
               formats: str | Sequence[str] = "all", thresholds: Sequence[float] | None = None,
               example_size: int = 64) -> dict[str, Path]:
        """Write the deployed network for deployment (see :mod:`isnet.export`).

        Args:
            folder: output folder.
            preprocessing: how images were read (``size``, ``grayscale``, ``equalize``,
                ``channels``, ``square``), stored with every format.
            formats: ``"all"`` or some of ``model`` (``<stem>.pt``), ``onnx``
                (``<stem>.onnx``), ``torch_export`` (``<stem>.pt2``); ``preprocessing.json``
                is always written.
            thresholds: per-label decision thresholds of a multi-label model (default 0.5).
            example_size: input side (pixels) fixed in the ONNX / torch.export graphs when
                ``preprocessing`` has no ``size`` (a ViT's ``image_size`` wins).

        Returns:
            ``{format: path, "preprocessing": path}``.

        Raises:
            isnet.export.ExportError: the network cannot be written in a requested format.
        """
        from ..export import deployment_metadata, export_network

        hp = self.hparams
        prep = dict(preprocessing or {})
        if "size" not in prep and hp.get("image_size"):
            prep["size"] = int(hp["image_size"])
        metadata = deployment_metadata(class_names=hp.get("class_names"), num_classes=hp["num_classes"],
                                       in_channels=hp.get("in_channels", 3), preprocessing=prep,
                                       multilabel=hp.get("multilabel", False), thresholds=thresholds,
                                       method=self.method)
        was_training = self.training
        self.eval()
        try:
            return export_network(self.deployed, folder, stem=self.export_stem, metadata=metadata, formats=formats,
                                  write_model=lambda path: self.write_model_file(path, metadata),
                                  example_size=example_size)
        finally:
            self.train(was_training)


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
