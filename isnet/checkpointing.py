"""Checkpoints that survive a crash, and the random state that makes a resumed run exact.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file in the same
  folder, flushes it to disk and renames it over the target (``os.replace``), so a run
  killed while saving leaves the previous file whole.  It refuses to write weights
  that are not finite, so a diverged state never replaces a good checkpoint.
* :func:`epoch_checkpoints` gives the best checkpoint and ``last.ckpt`` (every epoch).
* :class:`RandomState` stores the global random generators (Python ``random``, NumPy,
  torch CPU and CUDA) in every checkpoint and puts them back when training resumes
  from one; Lightning saves none of them.  (The data loaders' shuffling generators are
  saved by the data module, :meth:`isnet.data.MaskedImageDataModule.state_dict`.)
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

LAST = "last.ckpt"
"""File name of the checkpoint written at the end of every epoch."""


def last_checkpoint(folder: str | Path) -> Path:
    """``folder/checkpoints/last.ckpt`` of a run folder; a FileNotFoundError naming it when absent."""
    path = Path(folder) / "checkpoints" / LAST
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no checkpoint {path} (was the run started with this output folder?)")
    return path


def non_finite_weights(state_dict: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``state_dict`` that hold NaN or infinity."""
    return [name for name, value in state_dict.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file next to the target, ``fsync``, then ``os.replace``.

    Lightning's own save writes through an fsspec transaction (also a temporary file
    and a rename for local paths, without ``fsync``); this plugin makes the guarantee
    explicit and local, and adds the finite-weights check.  Remote (``scheme://``)
    paths go through Lightning's save unchanged.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        bad = non_finite_weights(checkpoint.get("state_dict", {}))
        if bad:
            raise FloatingPointError(f"refusing to write checkpoint {path}: non-finite weights in {', '.join(bad[:5])}")
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


class _BestCheckpoint(ModelCheckpoint):
    """The best checkpoint; the file of the previous best is removed only after last.ckpt,
    which records the new best, is written (see :func:`epoch_checkpoints`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.superseded: list[str] = []

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        self.superseded.append(filepath)


class _LastCheckpoint(ModelCheckpoint):
    """last.ckpt at the end of every epoch, then the removal of superseded best files."""

    def __init__(self, best: _BestCheckpoint, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.best = best

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        for path in self.best.superseded:
            if path != self.best.best_model_path:
                trainer.strategy.remove_checkpoint(path)
        self.best.superseded.clear()


def epoch_checkpoints(folder: str | Path, monitor: str = "val/loss", mode: str = "min") -> list[ModelCheckpoint]:
    """The two checkpoint callbacks of a run, in the order the trainer must call them.

    ``best-epoch=N.ckpt``: the epoch with the best ``monitor``.  ``last.ckpt``: the end of
    every epoch (Lightning's ``save_last=True`` writes it only in epochs that improve the
    best), with the best callback's state of that epoch.  Whenever the process is killed,
    the best file that ``last.ckpt`` names is on disk: the previous best file is removed
    only after the new ``last.ckpt`` is in place.  File names are fixed (no ``-v1``
    versions), so a resumed run writes the same files.
    """
    best = _BestCheckpoint(dirpath=folder, filename="best-{epoch}", monitor=monitor, mode=mode, save_top_k=1,
                           enable_version_counter=False)
    last = _LastCheckpoint(best, dirpath=folder, filename=LAST.removesuffix(".ckpt"), monitor=None, save_top_k=1,
                           enable_version_counter=False)
    return [best, last]


class RandomState(L.Callback):
    """Save the global random state with every checkpoint and restore it on resume.

    Saved: Python ``random``, NumPy, torch CPU and CUDA generators (augmentation with
    ``num_workers=0``, dropout).  They are restored as soon as the checkpoint is loaded,
    before Lightning makes the resumed run's first training iterator (which already draws
    the first batch's augmentation).  Nothing draws random numbers between the save (end
    of an epoch's validation) and that point in an uninterrupted run, so the resumed
    epochs see the same augmentations and dropout masks.

    The data loaders' own generators (shuffling, worker seeds) belong to the data module:
    :class:`~isnet.data.MaskedImageDataModule` saves them through its ``state_dict``.
    Loaders with persistent worker processes keep their workers' generators, which
    cannot be saved: exact resumption needs ``num_workers=0`` or non-persistent workers.
    """

    def state_dict(self) -> dict[str, Any]:
        # Called only while a checkpoint is written: this is the state at save time.
        version, keys, position = random.getstate()[:3]
        np_state = np.random.get_state()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        return {
            "python": [version, list(keys), position],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if cuda else [],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        version, keys, position = state_dict["python"]
        random.setstate((version, tuple(keys), position))
        name, keys, *rest = state_dict["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        torch.set_rng_state(state_dict["torch"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def _plain(value: Any) -> Any:
    """NumPy scalars as Python numbers (checkpoints then load with ``weights_only=True``)."""
    return value.item() if isinstance(value, np.generic) else value
