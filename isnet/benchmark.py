"""The built-in benchmark (the paper's Table 1 pattern on offline data).

On MNIST digits drawn over real textures, with a synthetic shape bias tying each
class to a white shape in a corner, it trains

* ``standard``: a standard classifier on the biased data,
* ``isnet``: an ISNet on the biased data (C1, C2 estimated from the standard
  classifier's heatmaps, Appendix F.3),
* ``reference``: a standard classifier on the same data without the bias,

and tests them on the biased, standard and deceiving test sets (the reference on
the standard one) with the statistics of :mod:`isnet.evaluation`.  It writes
``report.json`` (settings, timings and every statistic), ``metrics.json``,
``report.md``, ``report.html``, heatmap grids (``heatmaps.png`` for the deceiving
test, ``heatmaps_<variant>.png`` for the others) and ``training_curves.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L

from .data import MaskedImageDataModule
from .data.builtin import generate_digits_on_textures
from .evaluation import evaluate, example_heatmaps, lrp_explainer, pick_examples
from .render import model_heatmap_grid, training_curves
from .report import evaluation_report
from .training import ISNetModule, estimate_c1_c2, train


@dataclass(frozen=True)
class Profile:
    """Sizes and settings of a benchmark run."""

    name: str
    per_class: tuple[int, int, int] = (300, 50, 150)
    size: int = 64
    classes: int = 3
    backbone: str = "small_cnn"
    width: int = 16
    # Batch norm's batch statistics slowed ISNet convergence at this scale a lot (the background
    # of a 64x64 texture image is hard to silence through per-batch normalisation); without it the
    # small CNN learns within the quick budget.
    batch_norm: bool = False
    batch_size: int = 32
    standard_epochs: int = 20
    isnet_epochs: int = 80
    P: float = 0.85
    d: float = 0.95
    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.9
    lr_schedule: str = "cosine"


PROFILES = {
    "quick": Profile("quick"),
    "long": Profile("long", standard_epochs=60, isnet_epochs=150),
}


def _datamodule(root: Path, profile: Profile, bias: bool, seed: int) -> MaskedImageDataModule:
    dm = MaskedImageDataModule(root, size=profile.size, bias=bias, augment=False, batch_size=profile.batch_size,
                               cache=True, seed=seed, square_test=False)
    dm.setup()
    return dm


def _module(profile: Profile, P: float, classes: list[str], **kwargs: Any) -> ISNetModule:
    arch = {"width": profile.width, "batch_norm": profile.batch_norm} if profile.backbone == "small_cnn" else {}
    return ISNetModule(profile.backbone, len(classes), arch_kwargs=arch, P=P, d=profile.d,
                       optimizer=profile.optimizer, lr=profile.lr, momentum=profile.momentum,
                       lr_schedule=profile.lr_schedule, class_names=classes,
                       **kwargs)


def run_benchmark(out: str | Path, *, profile: str | Profile = "quick", seed: int = 0, progress: bool = True,
                  **overrides: Any) -> dict:
    """Run the benchmark and write its report to ``out``.

    Args:
        profile: ``quick`` (about 5 minutes on 2 CPU cores), ``long``, or a :class:`Profile`.
        overrides: fields of the profile to change (e.g. ``isnet_epochs=40``).

    Returns:
        The content of ``report.json``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    prof = replace(prof, **overrides)
    started = time.perf_counter()
    root = generate_digits_on_textures(out / "data", classes=prof.classes, per_class=prof.per_class, size=prof.size,
                                       seed=seed)
    biased, clean = _datamodule(root, prof, True, seed), _datamodule(root, prof, False, seed)
    classes = biased.classes
    timings: dict[str, float] = {}

    def fit(name: str, module: ISNetModule, dm: MaskedImageDataModule, epochs: int) -> ISNetModule:
        L.seed_everything(seed, verbose=False)
        if progress:
            print(f"[isnet benchmark] training {name} ({epochs} epochs)", flush=True)
        t = time.perf_counter()
        module, _ = train(module, dm, out / "runs" / name, max_epochs=epochs, progress=progress)
        timings[name] = time.perf_counter() - t
        return module.eval()

    L.seed_everything(seed, verbose=False)
    standard = fit("standard", _module(prof, 0.0, classes), biased, prof.standard_epochs)
    c1, c2 = estimate_c1_c2(standard.backbone, biased.val_dataloader())
    L.seed_everything(seed, verbose=False)
    isnet = fit("isnet", _module(prof, prof.P, classes, C1=c1, C2=c2), biased, prof.isnet_epochs)
    L.seed_everything(seed, verbose=False)
    reference = fit("reference", _module(prof, 0.0, classes), clean, prof.standard_epochs)

    models = {"standard": standard, "isnet": isnet, "reference": reference}
    explainers = {name: lrp_explainer(module.backbone.eval()) for name, module in models.items()}
    results: dict[str, dict] = {}
    for name, module in models.items():
        sets = {test_name.split("/")[-1]: dataset for test_name, dataset in biased.test_sets.items()}
        if name == "reference":
            sets = {"standard": sets["standard"]}
        results[name] = evaluate(module.backbone, sets, class_names=classes, explainer=explainers[name],
                                 seed=seed)

    figures = _figures(out, explainers, biased, classes, {name: out / "runs" / name / "logs" / "metrics.csv"
                                                          for name in models})
    drops = {
        name: {f"biased_to_{v}": results[name]["biased"]["macro_f1"] - results[name][v]["macro_f1"]
               for v in ("standard", "deceiving")}
        for name in ("standard", "isnet")
    }
    report = {
        "benchmark": "digits on textures with synthetic shape bias",
        "profile": asdict(prof),
        "seed": seed,
        "classes": classes,
        "C1": c1,
        "C2": c2,
        "train_seconds": timings,
        "total_seconds": time.perf_counter() - started,
        "models": results,
        "drops": drops,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "metrics.json").write_text(json.dumps(results, indent=2))
    intro = [
        f"Profile `{prof.name}`, seed {seed}, classes {', '.join(classes)}. The standard classifier and the ISNet "
        "are trained on data with the synthetic shape bias; the reference is a standard classifier trained on the "
        "same data without it. C1 = {:.4g}, C2 = {:.4g} (Appendix F.3, from the standard classifier's heatmaps); "
        "total time {:.0f} s.".format(c1, c2, report["total_seconds"]),
        "Test sets: `biased` (shapes as in training), `standard` (no shapes), `deceiving` (shapes permuted "
        "across classes).",
    ]
    named_drops = {m: {"biased → standard": d["biased_to_standard"], "biased → deceiving": d["biased_to_deceiving"]}
                   for m, d in drops.items()}
    evaluation_report(results, title="isnet benchmark: digits on textures with synthetic shape bias", intro=intro,
                      drops=named_drops, figures=figures).write(out)
    return report


def _figures(out: Path, explainers: dict, dm: MaskedImageDataModule, classes: list[str],
             logs: dict[str, Path]) -> list[tuple[str, str]]:
    """Figure 1 style heatmap grids (two images per class) for every test variant, and training curves."""
    figures = []
    for test_name, dataset in dm.test_sets.items():
        variant = test_name.split("/")[-1]
        picks = pick_examples(dataset, len(classes), per_class=2)
        images, maps, labels = example_heatmaps(explainers, dataset, picks)
        name = "heatmaps.png" if variant == "deceiving" else f"heatmaps_{variant}.png"
        model_heatmap_grid(out / name, images, maps, model_names=list(explainers),
                           column_labels=[classes[k] for k in labels],
                           title=f"LRP heatmaps for the true class ({variant} test)")
        figures.append((name, f"LRP heatmaps of the true class (above each column), {variant} test; "
                              "red positive, blue negative relevance"))
    training_curves(out / "training_curves.png", logs)
    figures.append(("training_curves.png", "Training (solid) and validation (dashed) losses per epoch"))
    return figures
