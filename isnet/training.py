"""The training driver (Algorithm 1, Appendix F.2): :func:`train` fits any system
(:class:`~isnet.systems.base.SystemModule`: the ISNet of :mod:`isnet.systems.isnet`, a
standard classifier, the comparison systems) with the same trainer, logs, checkpoints
and choice of the best epoch.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch

from . import defaults
from .systems.base import SystemModule, TrainingDivergedError


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
    lowest validation loss (Alg. 1, step 4): the epoch with the lowest ``module.monitor``
    (:attr:`~isnet.systems.base.SystemModule.monitor`).

    Logs go to ``folder/logs``: ``metrics.csv`` and TensorBoard event files (the same loss
    parts, plus after every validation epoch the heatmaps of the first ``heatmap_images``
    validation images of each class, see :class:`isnet.callbacks.HeatmapImages`; 0: none).
    The best checkpoint (``best-epoch=N.ckpt``) and ``last.ckpt`` (written at the end of
    every epoch) go to ``folder/checkpoints``; both are written atomically
    (:class:`isnet.checkpointing.AtomicCheckpointIO`) and carry the random state
    (:class:`isnet.checkpointing.RandomState`).  Gradient norms are clipped to 1 (Appendix
    F.2).  Work a system needs before its own training (``module.before_fit``, e.g. a
    pipeline's segmenter) runs first; it trains through this function with the same options.

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
    from .checkpointing import (
        AtomicCheckpointIO,
        RandomState,
        epoch_checkpoints,
        last_checkpoint,
    )

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
        module.before_fit(datamodule, folder, partial(train, **options))
        checkpoint, last = epoch_checkpoints(folder / "checkpoints", monitor=module.monitor, mode="min")
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
