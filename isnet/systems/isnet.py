"""The ISNet training module (Algorithm 1, Appendix F.2): one system for ISNets and
standard classifiers.

With ``P > 0`` every step computes heatmaps and the ISNet loss: the B x K heatmaps of the
original ISNet, or one per image for the Faster ISNet variants (``variant``, see
:mod:`isnet.systems.variants`), optionally also at intermediate layers (``deep_supervision``,
see :mod:`isnet.systems.deep_supervision`); with ``P = 0`` no heatmap is computed and the
module trains a standard classifier with the same data, optimiser and logging.  Both train through :func:`isnet.training.train`
like every other system; :func:`estimate_c1_c2` sets the loss's natural range from a
standard classifier (Appendix F.3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import defaults
from ..backbones import build_backbone, save_model
from ..data.swap import swap_batch_backgrounds
from ..loss import ISNetLoss, foreground_moments, natural_range_from_moments
from ..lrp.quantities import check_selective_class
from ..model import ISNet
from .base import SystemModule, check_optimisation, require_relevance
from .deep_supervision import INPUT, pool_masks, supervised_layers
from .gradients import gradient_times_input
from .variants import RANDOM, RULES, check_variant, explained


def warmup_weight(step: int, P: float, warmup_steps: int) -> float:
    """``P`` of the heatmap-loss warm-up at optimiser step ``step`` (0-based): ``P * step /
    warmup_steps`` for ``step < warmup_steps`` (0 at the first step), ``P`` from then on."""
    if warmup_steps < 0 or step < 0:
        raise ValueError(f"step and warmup_steps must be >= 0, got {step} and {warmup_steps}")
    return P if step >= warmup_steps else P * step / warmup_steps


def _range_of(moments: Sequence[float]) -> tuple[float, float]:
    """The automatic ``(C1, C2)`` of values with moments ``(n, sum, sum of squares)``."""
    n, total, total_sq = moments
    mean = total / n
    std = max(0.0, (total_sq - n * mean**2) / max(1.0, n - 1)) ** 0.5
    return natural_range_from_moments(mean, std, n)


SELECTION_METRIC = "selection_loss"
"""Validation loss of the epochs that may be chosen as the best (inf during a heatmap-loss warm-up)."""


class ISNetModule(SystemModule):
    """ISNet (``P > 0``, any variant of the Faster ISNet family) or standard classifier (``P = 0``) training.

    Args:
        backbone: architecture name (see :mod:`isnet.backbones`).
        num_classes: number of classes K.
        in_channels: image channels.
        arch_kwargs: extra arguments for the backbone constructor.
        P, d, E, w1, w2: heatmap loss settings (Section 4.3).
        C1, C2: natural range of total absolute foreground relevance (Eq. 20).  ``None`` (the
            default): set automatically from the current model's foreground relevance over the
            last epoch of the heatmap-loss warm-up, or the first epoch when there is none
            (:func:`isnet.loss.natural_range`; outside a trainer from the first batch); until then
            ``L2`` is left out of the loss.  Numbers
            fix them, e.g. from a standard classifier (:func:`estimate_c1_c2`, Appendix F.3).
            With several sets of heatmaps (``dual``'s two rules, deep supervision's layers) every
            set has its own range (:attr:`natural_ranges`): numbers fix the first set's (LRP-epsilon
            at the image), the others are always set automatically.
        heatmap_warmup_epochs: ``P`` rises linearly from 0 at the first step to its value at
            the end of this many epochs (0: the paper's constant ``P``).  Validation losses and
            the choice of the best checkpoint use the full ``P``; epochs of the warm-up are not
            chosen as the best unless the run is all warm-up.
        epsilon, zb, low, high: LRP settings.
        multilabel: binary cross-entropy and independent labels.
        lr, momentum, weight_decay: optimiser settings (default Adam, beta1 0.9, lr 1e-3; the paper's,
            Appendix F.2, are SGD, momentum 0.99, lr 1e-3, constant: see :mod:`isnet.defaults`).
        optimizer: ``adam`` (momentum then sets beta1) or ``sgd`` (the paper's).
        lr_schedule: ``cosine`` (annealed to 0 over the trainer's max_epochs) or ``constant`` (the paper's).
        warmup_epochs: linear learning-rate warm-up over this many epochs before the schedule
            (0, the paper's setting: none); steadies Adam's first steps under the heatmap loss.
        class_names: names of the K classes, kept with exported models.
        channels_last: keep the backbone's weights and the images channels-last (4-D
            images only).  The same numbers up to rounding, faster training on the CPU.
        variant: ``full`` (the original ISNet: the heatmaps of all K classes), ``selective``,
            ``stochastic`` or ``dual`` (one heatmap per image, or one per rule; see
            :mod:`isnet.systems.variants`).
        selective_class: the class whose softmax quantity a ``selective`` heatmap explains:
            ``lowest`` (the default, :data:`isnet.defaults.SELECTIVE_CLASS`) or ``highest`` logit.
        deep_supervision: the heatmap loss also on the relevance at the backbone's stage outputs
            (:mod:`isnet.systems.deep_supervision`).
        background_swap: share of each training batch's images whose background is replaced by
            that of another image of the batch, foreground kept (counterfactual backgrounds, not
            part of the paper; :func:`isnet.data.swap.swap_batch_backgrounds`).  ``None``
            (automatic): :data:`isnet.defaults.BACKGROUND_SWAP` for an ISNet, 0 for a standard
            classifier (``P = 0``), so that the standard classifier stays the plain baseline.
            Validation and tests see the original images.
        background_jitter: strength in ``[0, 1]`` of a random tone curve, contrast, brightness and
            noise given to every swapped background (:func:`isnet.data.swap.jitter_backgrounds`);
            ``None`` (automatic): :data:`isnet.defaults.BACKGROUND_JITTER`.
        range_follows: an automatic range (``C1`` / ``C2`` not given, and every set of heatmaps
            after the first) is measured again over every later training epoch and widened
            upwards at the epoch's end: ``C1`` and ``C2`` each become the larger of their value and
            the new measurement's.  ``False``: fixed once measured.
        heatmap_gate: the heatmap loss, and its warm-up, start after the first training epoch whose
            mean classification loss is below ``heatmap_gate`` times that of chance (``ln K``;
            multi-label: ``ln 2``), or at the latest after :data:`isnet.defaults.HEATMAP_GATE_LIMIT`
            of the trainer's epochs; until then the step computes no heatmaps.  ``None``: from the
            first step (the paper).
    """

    monitor = SELECTION_METRIC  # warm-up epochs are never chosen as the best

    def __init__(
        self,
        backbone: str = "densenet121",
        num_classes: int = 3,
        *,
        in_channels: int = 3,
        arch_kwargs: dict[str, Any] | None = None,
        P: float = defaults.P,
        d: float = defaults.D,
        E: float = defaults.E,
        w1: float = defaults.W1,
        w2: float = defaults.W2,
        C1: float | None = None,
        C2: float | None = None,
        heatmap_warmup_epochs: float = defaults.HEATMAP_WARMUP_EPOCHS,
        epsilon: float = defaults.EPSILON,
        zb: bool = defaults.ZB,
        low: float | Sequence[float] = defaults.ZB_LOW,
        high: float | Sequence[float] = defaults.ZB_HIGH,
        multilabel: bool = False,
        lr: float = defaults.ISNET_LEARNING_RATE,
        momentum: float = defaults.ISNET_MOMENTUM,
        weight_decay: float = defaults.WEIGHT_DECAY,
        optimizer: str = defaults.ISNET_OPTIMIZER,
        lr_schedule: str = defaults.ISNET_LR_SCHEDULE,
        warmup_epochs: float = 0.0,
        class_names: Sequence[str] | None = None,
        channels_last: bool = defaults.CHANNELS_LAST,
        variant: str = "full",
        selective_class: str = defaults.SELECTIVE_CLASS,
        deep_supervision: bool = False,
        background_swap: float | None = None,
        background_jitter: float | None = None,
        range_follows: bool = defaults.RANGE_FOLLOWS,
        heatmap_gate: float | None = defaults.HEATMAP_GATE,
    ) -> None:
        super().__init__()
        check_optimisation(optimizer, lr_schedule, warmup_epochs)
        check_variant(variant, multilabel)
        check_selective_class(selective_class)
        if heatmap_gate is not None and not (isinstance(heatmap_gate, (int, float)) and 0 < heatmap_gate <= 1):
            raise ValueError(f"heatmap_gate must be in (0, 1] or None (no gate), got {heatmap_gate!r}")
        if not (isinstance(heatmap_warmup_epochs, (int, float)) and heatmap_warmup_epochs >= 0):
            raise ValueError(f"heatmap_warmup_epochs must be a number >= 0, got {heatmap_warmup_epochs!r}")
        if background_swap is not None and not (isinstance(background_swap, (int, float))
                                                and 0.0 <= background_swap <= 1.0):
            raise ValueError(f"background_swap must be a share in [0, 1] or None (automatic), got {background_swap!r}")
        if background_jitter is not None and not (isinstance(background_jitter, (int, float))
                                                  and 0.0 <= background_jitter <= 1.0):
            raise ValueError(f"background_jitter must be a strength in [0, 1] or None (automatic), "
                             f"got {background_jitter!r}")
        for name, value in (("C1", C1), ("C2", C2)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive or None (automatic), got {value!r}")
        self.save_hyperparameters()
        model = build_backbone(backbone, num_classes, in_channels, **(arch_kwargs or {}))
        if channels_last:
            model = model.to(memory_format=torch.channels_last)  # converts the 4-D weights only
        rules = RULES[variant]
        self.net = ISNet(model, epsilon=epsilon, zb=zb, low=low, high=high,
                         rule=list(rules) if len(rules) > 1 else rules[0])
        self.layers: list[str] = supervised_layers(model) if deep_supervision else []
        if self.layers:
            self.net.graph().layer_nodes(self.layers)  # the propagation holds their relevance (else ValueError)
        levels = [INPUT, *self.layers]
        self.map_names: list[str] = [level if len(rules) == 1 else f"{rule}/{level}" for rule in rules for level in levels]
        """One name per set of heatmaps the loss penalises: the rule and the level (``input`` or a layer)."""
        known = C1 is not None and C2 is not None and len(self.map_names) == 1
        self.criterion = ISNetLoss(P, d, E=E, w1=w1, w2=w2, C1=C1 if known else 1.0, C2=C2 if known else 2.0,
                                   multilabel=multilabel)
        self.range_known = known  # whether the natural ranges in use are known
        self._extra_ranges: dict[str, tuple[float, float]] = {}  # the ranges of the map sets after the first
        self._relevance_stats: list[Tensor] = []  # (sets, 3): n, sum, sum of squares of g over the warm-up's last epoch
        self._epoch_stats: Tensor | None = None  # (sets, 3), the same over the current epoch once the range is known
        # optimiser step at which the heatmap loss's warm-up starts (None: the gate is still closed)
        self._heatmap_start: int | None = None if self.uses_heatmaps and heatmap_gate is not None else 0
        self._gate_stats: Tensor | None = None  # (2,): sum of L_C * images, images, this epoch (on the device)
        self._logit_seed: int | None = None
        self._logit_generator: torch.Generator | None = None
        if variant in RANDOM:  # drawn after the weights: the same initialisation as the full ISNet's
            self._logit_seed = int(torch.randint(0, 2**62, (1,)).item())
            self._logit_generator = torch.Generator().manual_seed(self._logit_seed)
        self._validation_batch = 0

    @property
    def method(self) -> str:  # type: ignore[override]
        if not self.uses_heatmaps:
            return "standard"
        variant = self.hparams.get("variant", "full")
        return "isnet" if variant == "full" else f"isnet_{variant}"

    @property
    def natural_ranges(self) -> dict[str, tuple[float, float]]:
        """``{map set name: (C1, C2)}`` of the foreground loss (empty until known)."""
        if not self.range_known:
            return {}
        return {self.map_names[0]: (self.criterion.C1, self.criterion.C2), **self._extra_ranges}

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

    @property
    def background_swap(self) -> float:
        """Share of training images put on another image's background (the resolved ``background_swap``)."""
        value = self.hparams.get("background_swap")
        if value is None:
            return defaults.BACKGROUND_SWAP if self.uses_heatmaps else 0.0
        return float(value)

    @property
    def background_jitter(self) -> float:
        """Strength of the random change of every swapped background (the resolved ``background_jitter``)."""
        value = self.hparams.get("background_jitter")
        return defaults.BACKGROUND_JITTER if value is None else float(value)

    def _layout(self, images: Tensor) -> Tensor:
        if self.hparams.get("channels_last", False) and images.dim() == 4:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self._layout(x))

    # -- heatmap-loss warm-up and automatic C1, C2 -------------------------------------------
    def _steps_per_epoch(self) -> float:
        trainer = self._trainer
        key = (id(trainer), trainer.max_epochs)
        if getattr(self, "_steps_cache", (None,))[0] != key:  # the trainer's estimate is costly: once per fit
            per_epoch = max(1.0, float(trainer.estimated_stepping_batches) / max(1, trainer.max_epochs or 1))
            self._steps_cache = (key, per_epoch)
        return self._steps_cache[1]

    def warmup_steps(self) -> int:
        """Optimiser steps of the heatmap-loss warm-up (0 without one, or outside a trainer)."""
        epochs = self.hparams.get("heatmap_warmup_epochs", 0.0)
        if epochs == 0 or self._trainer is None:
            return 0
        return max(1, round(epochs * self._steps_per_epoch()))

    @property
    def heatmap_start(self) -> int | None:
        """Optimiser step at which the heatmap loss's warm-up starts (0 without a gate or outside a
        trainer; ``None`` while the gate is closed)."""
        return 0 if self._trainer is None else self._heatmap_start

    def heatmap_weight(self, step: int | None = None) -> float:
        """``P`` at optimiser step ``step`` (default: the current one): 0 while the gate is closed, then
        ``P * (step - start) / warm-up steps`` during the heatmap-loss warm-up, ``P`` after it."""
        step = self.global_step if step is None else step
        start = self.heatmap_start
        if start is None or step < start:
            return 0.0
        return warmup_weight(step - start, float(self.hparams.P), self.warmup_steps())

    def _gate_open(self) -> bool:
        return self.heatmap_start is not None and self.global_step >= self.heatmap_start

    def set_natural_range(self, C1: float, C2: float) -> None:
        """Fix the foreground loss's range ``[C1, C2]`` (kept in checkpoints); with several sets of
        heatmaps, the first set's (see :meth:`set_natural_ranges`)."""
        if len(self.map_names) > 1:
            self.set_natural_ranges({**self._extra_ranges, self.map_names[0]: (C1, C2)})
            return
        self._set_range(self.map_names[0], C1, C2)
        self.range_known = True
        self._relevance_stats = []

    def set_natural_ranges(self, ranges: dict[str, tuple[float, float]]) -> None:
        """Fix the range ``(C1, C2)`` of every set of heatmaps, ``{name: range}`` for every name of
        :attr:`map_names` (kept in checkpoints)."""
        missing = [name for name in self.map_names if name not in ranges]
        if missing:
            raise ValueError(f"natural ranges missing for {missing}; the heatmap sets are {self.map_names}")
        for name in self.map_names:
            self._set_range(name, *ranges[name])
        self.range_known = True
        self._relevance_stats = []

    def _set_range(self, name: str, C1: float, C2: float) -> None:
        if not 0 < C1 < C2:
            raise ValueError(f"need 0 < C1 < C2, got C1={C1}, C2={C2} for {name}")
        if name == self.map_names[0]:
            self.criterion.C1, self.criterion.C2 = float(C1), float(C2)
        else:
            self._extra_ranges[name] = (float(C1), float(C2))

    def _update_natural_range(self, maps: list[Tensor], masks: list[Tensor]) -> None:
        """Collect foreground relevances over the warm-up's last epoch; set the ranges when it ends.

        Args:
            maps: one ``(B, K', C, H, W)`` tensor per set of heatmaps (:attr:`map_names`).
            masks: their masks, ``(B, 1, H, W)`` at each set's size.
        """
        current = torch.stack([foreground_moments(h, m) for h, m in zip(maps, masks)])  # (sets, 3)
        if self._trainer is not None:
            # observe one epoch: the warm-up's last, or the first when there is no warm-up
            step, per_epoch = self.global_step - (self.heatmap_start or 0), self._steps_per_epoch()
            end = max(self.warmup_steps(), round(per_epoch))
            if step < end:
                if step >= end - per_epoch:
                    self._relevance_stats.append(current)
                if step < end - 1:
                    return
        stats = torch.stack(self._relevance_stats).sum(0) if self._relevance_stats else current
        if self._trainer is not None and self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")  # every process gets the same range
        self._set_ranges_from(stats)

    def on_train_epoch_end(self) -> None:
        if self.uses_heatmaps and self._heatmap_start is None:
            self._check_gate()
        stats, self._epoch_stats = self._epoch_stats, None
        if stats is None or not self.range_known:
            return
        if self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        self.widen_natural_ranges(stats)

    @property
    def _range_follows(self) -> bool:
        """Whether some range is automatic and follows the model (none does when C1 and C2 fix the only set)."""
        hp = self.hparams
        given = hp.C1 is not None and hp.C2 is not None and len(self.map_names) == 1
        return bool(hp.get("range_follows", False)) and not given

    def _check_gate(self) -> None:
        """Open the gate after this epoch if the classifier has learned enough, or time is up."""
        stats, self._gate_stats = self._gate_stats, None
        if stats is None:
            stats = torch.zeros(2, device=self.device)
        if self.trainer.world_size > 1:  # every process takes the same decision
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        stats = stats.double().cpu()
        chance = math.log(2.0) if self.hparams.multilabel else math.log(self.hparams.num_classes)
        learned = stats[1] > 0 and float(stats[0] / stats[1]) < self.hparams.heatmap_gate * chance
        limit = math.ceil(defaults.HEATMAP_GATE_LIMIT * (self.trainer.max_epochs or 1))
        if learned or self.current_epoch + 1 >= limit:
            self._heatmap_start = self.global_step

    def widen_natural_ranges(self, stats: Tensor) -> None:
        """Raise every automatic range to the one measured from moments ``(sets, 3)`` where that is
        higher: ``C1`` and ``C2`` each the larger of old and new; given ``C1``, ``C2`` stay."""
        old = self.natural_ranges
        ranges = {}
        for name, moments in zip(self.map_names, stats.tolist()):
            try:
                new = _range_of(moments)
            except ValueError:  # e.g. silenced heatmaps: keep the range, whose C1 pushes back
                new = old[name]
            ranges[name] = (max(old[name][0], new[0]), max(old[name][1], new[1]))
        ranges = self._with_given(ranges)
        first = self.map_names[0]
        if not ranges[first][0] < ranges[first][1]:
            ranges[first] = old[first]
        self.set_natural_ranges(ranges)

    def _with_given(self, ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        """``ranges`` with the given ``C1``, ``C2`` in place of the first set's measured ones."""
        hp, first = self.hparams, self.map_names[0]
        c1, c2 = ranges[first]
        return {**ranges, first: (hp.C1 if hp.C1 is not None else c1, hp.C2 if hp.C2 is not None else c2)}

    def _set_ranges_from(self, stats: Tensor) -> None:
        """Set every map set's range from its moments ``(sets, 3)`` (:func:`isnet.loss.natural_range`'s
        rule); given ``C1``, ``C2`` win for the first set."""
        measured = {name: _range_of(moments) for name, moments in zip(self.map_names, stats.tolist())}
        self.set_natural_ranges(self._with_given(measured))

    @torch.no_grad()
    def estimate_natural_ranges(self, loader: Any, batches: int | None = None) -> dict[str, tuple[float, float]]:
        """Set every map set's range ``[C1, C2]`` from the current model's heatmaps (in eval mode) over the
        first ``batches`` batches of ``loader`` (all: ``None``), before training: the Faster ISNet variants'
        counterpart of :func:`estimate_c1_c2` (Appendix F.3), e.g. on a trained standard classifier's
        weights, so that the foreground loss counts from the first step.  Random variants draw as in
        validation; the training draws are untouched.

        Returns:
            :attr:`natural_ranges`.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        total = None
        try:
            for i, batch in enumerate(loader):
                if batches is not None and i >= batches:
                    break
                self._validation_batch = i
                images = self._layout(batch["image"].to(device))
                _, maps, levels = self._heatmaps(images)
                masks = batch["mask"].to(device)
                masks_of = [masks if level == INPUT else pool_masks(masks, m.shape[-2:]) for m, level in zip(maps, levels)]
                current = torch.stack([foreground_moments(h, m) for h, m in zip(maps, masks_of)])
                total = current if total is None else total + current
        finally:
            self.train(was_training)
        if total is None:
            raise ValueError("no batches to estimate the natural ranges from")
        self._set_ranges_from(total)
        return self.natural_ranges

    def losses(self, batch: dict) -> tuple[dict[str, Tensor], Tensor]:
        images, masks, labels = self._layout(batch["image"]), batch["mask"], batch["label"]
        if self.training and self.background_swap > 0:
            images = self._layout(swap_batch_backgrounds(images, masks, self.background_swap,
                                                         jitter=self.background_jitter)[0])
        if not self.uses_heatmaps or (self.training and not self._gate_open()):
            logits = self.net(images)
            out = self.criterion(logits, labels, None, None, P=0.0)
            if self.training and self.uses_heatmaps:  # the gate is closed: classification alone
                n = images.shape[0]
                current = torch.stack([out.classification.detach() * n, out.classification.new_tensor(float(n))])
                self._gate_stats = current if self._gate_stats is None else self._gate_stats + current
                return {"loss": out.classification, "L_C": out.classification,
                        "P": out.total.new_tensor(0.0)}, logits
            return {"loss": out.total, "L_C": out.classification}, logits
        logits, maps, levels = self._heatmaps(images)
        require_relevance(maps[0])
        masks_of = [masks if level == INPUT else pool_masks(masks, m.shape[-2:]) for m, level in zip(maps, levels)]
        if self.training and not self.range_known:
            self._update_natural_range(maps, masks_of)
        elif self.training and self._range_follows and self._trainer is not None:
            current = torch.stack([foreground_moments(h.detach(), m) for h, m in zip(maps, masks_of)])
            self._epoch_stats = current if self._epoch_stats is None else self._epoch_stats + current
        P = self.heatmap_weight() if self.training else float(self.hparams.P)
        if len(maps) == 1:
            out = self.criterion(logits, labels, maps[0], masks, P=P, foreground=self.range_known)
        else:
            ranges = [self.natural_ranges[n] for n in self.map_names] if self.range_known else None
            out = self.criterion(logits, labels, maps, masks_of, P=P, foreground=self.range_known, ranges=ranges)
        parts = {"loss": out.total, "L_C": out.classification, "L_LRP": out.heatmap, "L1": out.background,
                 "L2": out.foreground}
        if self.training:
            parts["P"] = out.total.new_tensor(P)
            if self.range_known:
                parts.update(C1=out.total.new_tensor(self.criterion.C1), C2=out.total.new_tensor(self.criterion.C2))
        return parts, logits

    def _heatmaps(self, images: Tensor) -> tuple[Tensor, list[Tensor], list[str]]:
        """Logits ``(B, K)`` and every set of heatmaps the loss penalises, in the order of
        :attr:`map_names`, with each set's level (``input`` or a layer name)."""
        hp = self.hparams
        variant = hp.get("variant", "full")
        generator = self._logit_generator
        if variant in RANDOM and not self.training:
            # Validation draws its own logits, the same for a batch in every epoch, and leaves the
            # training draws (saved in checkpoints) untouched.
            generator = torch.Generator().manual_seed(self._logit_seed + 1_000_003 * (1 + self._validation_batch))
        # A checkpoint from before the choice existed explained the highest logit.
        what = explained(variant, generator=generator, selective_class=hp.get("selective_class", "highest"))
        out = self.net.explain(images, **what, layers=self.layers)
        maps, levels = [], []
        for heatmaps, at_layers in zip(out.heatmaps, out.layers):
            maps += [heatmaps, *at_layers.values()]
            levels += [INPUT, *at_layers]
        return out.logits, maps, levels

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        self._validation_batch = batch_idx
        loss = super().validation_step(batch, batch_idx)
        # The best checkpoint is chosen among epochs trained with the full loss: a warm-up epoch's
        # model has not been trained against its background relevance yet.
        start = self.heatmap_start
        settled = not self.uses_heatmaps or (self.range_known and start is not None
                                             and self.global_step >= start + self.warmup_steps())
        self.log(SELECTION_METRIC, loss if settled else torch.full_like(loss, float("inf")),
                 batch_size=batch["image"].shape[0], on_step=False, on_epoch=True, logger=False, sync_dist=True)
        return loss

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.range_known:
            checkpoint["isnet_natural_range"] = [self.criterion.C1, self.criterion.C2]
            if len(self.map_names) > 1:
                checkpoint["isnet_natural_ranges"] = {name: list(r) for name, r in self.natural_ranges.items()}
        checkpoint["isnet_heatmap_start"] = self._heatmap_start
        if self._logit_generator is not None:
            checkpoint["isnet_logit_draws"] = {"seed": self._logit_seed, "state": self._logit_generator.get_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "isnet_natural_ranges" in checkpoint:
            self.set_natural_ranges({name: tuple(r) for name, r in checkpoint["isnet_natural_ranges"].items()})
        elif "isnet_natural_range" in checkpoint:
            self.set_natural_range(*checkpoint["isnet_natural_range"])
        if self.uses_heatmaps:  # checkpoints from before the gate had the heatmap loss from the first step
            self._heatmap_start = checkpoint.get("isnet_heatmap_start", 0)
        draws = checkpoint.get("isnet_logit_draws")
        if draws is not None and self._logit_generator is not None:
            self._logit_seed = int(draws["seed"])
            self._logit_generator.set_state(draws["state"])

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
