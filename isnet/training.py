"""The training module (Algorithm 1, Appendix F.2): one LightningModule for ISNets and
standard classifiers.

With ``P > 0`` every step computes the B x K heatmaps and the ISNet loss; with
``P = 0`` no heatmap is computed and the module trains a standard classifier with
the same data, optimiser and logging.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from . import defaults
from .backbones import build_backbone, save_model
from .loss import ISNetLoss
from .model import ISNet
from .systems.base import SystemModule, TrainingDivergedError, check_optimisation, require_relevance


class ISNetModule(SystemModule):
    """ISNet (``P > 0``) or standard classifier (``P = 0``) training.

    Args:
        backbone: architecture name (see :mod:`isnet.backbones`).
        num_classes: number of classes K.
        in_channels: image channels.
        arch_kwargs: extra arguments for the backbone constructor.
        P, d, E, w1, w2, C1, C2: heatmap loss settings (Section 4.3).
        epsilon, zb, low, high: LRP settings.
        multilabel: binary cross-entropy and independent labels.
        lr, momentum, weight_decay: optimiser settings (Appendix F.2: SGD, momentum 0.99, lr 1e-3).
        optimizer: ``sgd`` (the paper's) or ``adam`` (momentum then sets beta1).
        lr_schedule: ``constant`` (the paper's) or ``cosine`` (annealed to 0 over the trainer's max_epochs).
        warmup_epochs: linear learning-rate warm-up over this many epochs before the schedule
            (0, the paper's setting: none); steadies Adam's first steps under the heatmap loss.
        class_names: names of the K classes, kept with exported models.
        channels_last: keep the backbone's weights and the images channels-last (4-D
            images only).  The same numbers up to rounding, faster training on the CPU.
    """

    def __init__(
        self,
        backbone: str = "densenet121",
        num_classes: int = 3,
        *,
        in_channels: int = 3,
        arch_kwargs: dict[str, Any] | None = None,
        P: float = 0.7,
        d: float = 0.9,
        E: float = defaults.E,
        w1: float = defaults.W1,
        w2: float = defaults.W2,
        C1: float = defaults.C1,
        C2: float = defaults.C2,
        epsilon: float = defaults.EPSILON,
        zb: bool = defaults.ZB,
        low: float | Sequence[float] = defaults.ZB_LOW,
        high: float | Sequence[float] = defaults.ZB_HIGH,
        multilabel: bool = False,
        lr: float = defaults.LEARNING_RATE,
        momentum: float = defaults.MOMENTUM,
        weight_decay: float = defaults.WEIGHT_DECAY,
        optimizer: str = "sgd",
        lr_schedule: str = "constant",
        warmup_epochs: float = 0.0,
        class_names: Sequence[str] | None = None,
        channels_last: bool = defaults.CHANNELS_LAST,
    ) -> None:
        super().__init__()
        check_optimisation(optimizer, lr_schedule, warmup_epochs)
        self.save_hyperparameters()
        model = build_backbone(backbone, num_classes, in_channels, **(arch_kwargs or {}))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)  # converts the 4-D weights only
        self.net = ISNet(model, epsilon=epsilon, zb=zb, low=low, high=high)
        self.criterion = ISNetLoss(P, d, E=E, w1=w1, w2=w2, C1=C1, C2=C2, multilabel=multilabel)

    @property
    def method(self) -> str:  # type: ignore[override]
        return "isnet" if self.uses_heatmaps else "standard"

    @property
    def backbone(self) -> nn.Module:
        """The plain classifier to deploy."""
        return self.net.backbone

    @property
    def deployed(self) -> nn.Module:
        return self.net.backbone

    @property
    def uses_heatmaps(self) -> bool:
        return self.hparams.P > 0

    def _layout(self, images: Tensor) -> Tensor:
        if self.hparams.get("channels_last", False) and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self._layout(x))

    def losses(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        images, masks, labels = self._layout(batch["image"]), batch["mask"], batch["label"]
        if self.uses_heatmaps:
            logits, heatmaps = self.net(images, heatmaps=True)
            require_relevance(heatmaps)
        else:
            logits, heatmaps = self.net(images), None
        out = self.criterion(logits, labels, heatmaps, masks if heatmaps is not None else None)
        parts = {"loss": out.total, "L_C": out.classification}
        if self.uses_heatmaps:
            parts.update({"L_LRP": out.heatmap, "L1": out.background, "L2": out.foreground})
        return parts, logits

    # -- deployment --------------------------------------------------------------------------
    export_stem = "backbone"  # backbone.pt (isnet model file), backbone.onnx, backbone.pt2

    def write_model_file(self, path: Path, metadata: dict[str, Any]) -> Path:
        """The plain backbone as an isnet model file (:func:`isnet.backbones.save_model`):
        architecture, ``state_dict``, class names, preprocessing, thresholds."""
        hp = self.hparams
        return save_model(path, self.backbone, arch=hp.backbone, num_classes=hp.num_classes,
                          in_channels=hp.in_channels, class_names=metadata["class_names"],
                          preprocessing=metadata["preprocessing"], arch_kwargs=hp.arch_kwargs,
                          multilabel=hp.multilabel, thresholds=metadata["thresholds"])


def estimate_c1_c2(model: nn.Module, loader: Any, *, batches: int = 4, epsilon: float = defaults.EPSILON,
                   zb: bool = defaults.ZB, low: float = defaults.ZB_LOW, high: float = defaults.ZB_HIGH,
                   heatmaps: str = "lrp") -> tuple[float, float]:
    """C1 and C2 from a standard classifier's heatmaps (Appendix F.3).

    C1 is the smallest and C2 the largest total absolute relevance ``Sum(|H_bk|)``
    observed over the heatmaps of all classes of the first ``batches`` batches.
    ``heatmaps="grad_input"`` measures Gradient*Input maps instead of LRP (for the
    ISNet Grad*Input ablation, whose maps have another scale).

    Returns:
        ``(C1, C2)`` with ``0 < C1 < C2``.
    """
    if heatmaps not in ("lrp", "grad_input"):
        raise ValueError(f"heatmaps must be 'lrp' or 'grad_input', got {heatmaps!r}")
    graph = ISNet(model, epsilon=epsilon, zb=zb, low=low, high=high).lrp_graph
    was_training = model.training
    model.eval()
    totals = []
    device = next(model.parameters()).device
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        images = batch["image"].to(device)
        if heatmaps == "lrp":
            with torch.no_grad():
                maps = graph(images)[1]
        else:
            from .systems.gradients import gradient_times_input

            with torch.enable_grad():
                logits = model(images[:1])
                maps = gradient_times_input(model, images, logits.shape[1])[1].detach()
        totals.append(maps.abs().sum((2, 3, 4)).flatten())
    model.train(was_training)
    if not totals:
        raise ValueError("no batches to estimate C1 and C2 from")
    t = torch.cat(totals)
    c1, c2 = float(t.min()), float(t.max())
    if not 0 < c1 < c2:
        raise ValueError(f"cannot estimate C1 < C2 from heatmaps with total relevance in [{c1}, {c2}]")
    return c1, c2


@contextmanager
def _quiet_lightning(progress: bool) -> Iterator[None]:
    """Hide Lightning's advice that does not apply to these runs (few loader workers, short
    epochs) and, without a progress bar, its info lines, for the duration of one fit only."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    with warnings.catch_warnings():
        for message in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                        ".*isinstance.treespec, LeafSpec.*"):
            warnings.filterwarnings("ignore", message)
        if not progress:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            logger.setLevel(level)


def train(
    module: SystemModule,
    datamodule: L.LightningDataModule,
    folder: str | Path,
    *,
    max_epochs: int,
    progress: bool = True,
    deterministic: bool = False,
    precision: str | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    heatmap_images: int = 2,
    resume: bool = False,
    ckpt_path: str | Path | None = None,
    **trainer_kwargs: Any,
) -> tuple[SystemModule, Path | None]:
    """Fit ``module`` (an ISNet or any other system) and return it with the weights of its
    lowest validation loss (Alg. 1, step 4).

    Logs go to ``folder/logs``: ``metrics.csv`` and TensorBoard event files (the same loss
    parts, plus after every validation epoch the heatmaps of the first ``heatmap_images``
    validation images of each class, see :class:`isnet.callbacks.HeatmapImages`; 0: none).
    The best checkpoint (``best-epoch=N.ckpt``) and ``last.ckpt`` (written at the end of
    every epoch) go to ``folder/checkpoints``; both are written atomically
    (:class:`isnet.checkpointing.AtomicCheckpointIO`) and carry the random state
    (:class:`isnet.checkpointing.RandomState`).  Gradient norms are clipped to 1 (Appendix
    F.2).  Work a system needs before its own training (``module.before_fit``, e.g. a
    pipeline's segmenter) runs first, with the same options.

    A loss part that becomes non-finite, or heatmaps that are all zero, stop the run with
    a :class:`~isnet.systems.base.TrainingDivergedError` naming the epoch, step and
    parts; the checkpoints of the earlier epochs stay as they were.

    Args:
        heatmap_images: validation images per class whose heatmaps go to TensorBoard.
        resume: continue from ``folder/checkpoints/last.ckpt`` (FileNotFoundError when
            absent): weights, optimiser, learning-rate schedule, epoch and random state.
        ckpt_path: continue from this checkpoint instead.

    Returns:
        ``(module, best checkpoint path)``.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.plugins.io import CheckpointIO

    from .callbacks import HeatmapImages
    from .checkpointing import AtomicCheckpointIO, RandomState, epoch_checkpoints, last_checkpoint

    if not isinstance(heatmap_images, int) or heatmap_images < 0:
        raise ValueError(f"heatmap_images must be a whole number >= 0, got {heatmap_images!r}")
    folder = Path(folder)
    if resume and ckpt_path is not None:
        raise ValueError("give either resume=True or ckpt_path, not both")
    if resume:
        ckpt_path = last_checkpoint(folder)
    elif ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint {ckpt_path}")
    plugins = trainer_kwargs.pop("plugins", None)
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
        plugins.append(AtomicCheckpointIO())
    options = dict(progress=progress, deterministic=deterministic, precision=precision, accelerator=accelerator,
                   devices=devices, **trainer_kwargs)
    if ckpt_path is not None:
        # The weights first, so that work done before training (a pipeline's trained
        # segmenter and threshold) is taken from the checkpoint rather than redone.
        module.load_state_dict(torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"])
    with _quiet_lightning(progress):  # scoped: the caller's warning filters and log levels stay theirs
        module.before_fit(datamodule, folder, **options)
        checkpoint, last = epoch_checkpoints(folder / "checkpoints", monitor="val/loss", mode="min")
        trainer = L.Trainer(
            max_epochs=max_epochs,
            gradient_clip_val=defaults.GRADIENT_CLIP_NORM,
            gradient_clip_algorithm="norm",
            callbacks=[checkpoint, last, RandomState()] + ([HeatmapImages(heatmap_images)] if heatmap_images else []),
            plugins=plugins,
            # CSV first: it checks for an empty folder before the event file arrives
            logger=[CSVLogger(folder, name="logs", version=""),
                    TensorBoardLogger(folder, name="logs", version="", default_hp_metric=False)],
            enable_progress_bar=progress,
            enable_model_summary=False,
            deterministic=deterministic,
            accelerator=accelerator,
            devices=devices,
            num_sanity_val_steps=0,
            inference_mode=not module.needs_input_gradients,
            **({"precision": precision} if precision else {}),
            **trainer_kwargs,
        )
        try:
            resume_from: dict[str, Any] = {"ckpt_path": ckpt_path}
            if ckpt_path is not None and "weights_only" in inspect.signature(trainer.fit).parameters:
                resume_from["weights_only"] = False  # our own checkpoint: hyper-parameters and random state too
            trainer.fit(module, datamodule, **resume_from)
        except TrainingDivergedError as error:
            kept = sorted(p.name for p in (folder / "checkpoints").glob("*.ckpt"))
            raise error.with_note(f". Checkpoints of earlier epochs kept in {folder / 'checkpoints'}: "
                                  f"{', '.join(kept) or 'none (it diverged in the first epoch)'}") from error
    best = checkpoint.best_model_path
    if best:
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        module.load_state_dict(state)
    return module, Path(best) if best else None
