"""The built-in benchmarks: the paper's comparisons on offline data.

``digits`` (the main job; the paper's Table 1 pattern): MNIST digits drawn over real
textures, with a synthetic background bias: by default (``bias="shapes"``) a white shape
in a corner tied to each class; ``scene`` ties each class to its own group of background
textures, ``text`` to a word written in the background (:data:`isnet.data.bias.BIAS_KINDS`).
Systems are trained on the biased data and tested on the biased, standard and
deceiving test sets; ``reference`` is a standard classifier trained on the same data
without the bias (tested on the standard set).

``radiographs`` (the paper's Tables 2-5 pattern): chest-radiograph-like images mixed
from several sources, each class mostly from its own source with its own background
traits; systems are tested on an i.i.d. test split and on an external split from
sources unseen in training.

By default the benchmark trains ``standard``, ``isnet`` and ``reference`` on
``digits``; ``models="all"`` trains every system of :mod:`isnet.systems` (ISNet and
the comparison systems of Appendix B.1) on both benchmarks.  Each model is evaluated
with :mod:`isnet.evaluation` and all of them are written into one report.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import lightning as L

from . import defaults
from .data import MaskedImageDataModule
from .data.bias import VARIANTS, check_bias_kind
from .data.builtin import SCENE_OWN_SHARE, generate_digits_on_textures
from .data.radiographs import VARIANTS as RADIOGRAPH_VARIANTS
from .evaluation import evaluate, example_heatmaps, lrp_explainer, pick_examples
from .jsonio import write_json
from .render import model_heatmap_grid, training_curves
from .report import Report, evaluation_report
from .systems.base import SystemModule
from .systems.isnet import estimate_c1_c2
from .systems.registry import ISNETS, METHODS, build_system
from .training import train


def _benchmark_models() -> tuple[str, ...]:
    """Every method of the registry, in its order, and after ``isnet`` the benchmark's own
    ``reference``: a standard classifier trained on the data without the bias."""
    names = list(METHODS)
    names.insert(names.index("isnet") + 1, "reference")
    return tuple(names)


DEFAULT_MODELS = ("standard", "isnet", "reference")
WARM_STARTABLE = (*ISNETS, "isnet_gi", "rrr", "gain")  # systems whose deployed network is the plain backbone
ALL_MODELS = _benchmark_models()
"""The models ``models="all"`` trains: every system of :data:`isnet.systems.registry.METHODS` and the reference."""
DATASETS = ("digits", "radiographs")


@dataclass(frozen=True)
class Profile:
    """Sizes, epochs and loss settings of a benchmark run (every system on the small CNN backbone)."""

    name: str
    per_class: tuple[int, int, int] = (300, 50, 150)
    radiograph_per_class: tuple[int, int, int, int] = (240, 40, 100, 100)
    size: int = 64
    classes: int = 3
    backbone: str = "small_cnn"
    width: int = 16
    # Batch norm's batch statistics slowed ISNet convergence at this scale a lot (the background
    # of a 64x64 texture image is hard to silence through per-batch normalisation); without it the
    # small CNN learns within the quick budget.
    batch_norm: bool = False
    # Small batches: on the CPU a step of this small CNN costs about the same per image at batch 8
    # as at 32, so batch 8 gives four times the updates per epoch for the same time.  With batch 32
    # the ISNet of seed 1 had not yet silenced the background after 80 epochs (biased-to-deceiving
    # drop 0.127); with batch 8 it had (0.018).  Batch 4 costs 1.2 times as much per image and
    # brought the quick run too close to its 10 minutes, without clearly smaller drops (README).
    batch_size: int = 8
    standard_epochs: int = 20
    # With the background swap and jitter the ISNet's biased-to-deceiving drop is already 0 at 60
    # epochs; 80 epochs (the paper's ISNet here, without the swap) took 661 s in all on a slow hour,
    # over the quick budget's 10 minutes (README).
    isnet_epochs: int = 60
    # Systems that start from the trained standard classifier's weights instead of a random
    # initialisation (Algorithm 1, step 1).  From a random start (with batches of 32), the small
    # CNN's ISNet had clearly begun to classify after 8 epochs for only two of the seeds 0-5: in
    # the others the heatmap loss drove the logits to confident wrong values before the
    # classification loss could shape the network.  Started from the standard classifier, which
    # has learned the shortcut, the ISNet has to unlearn it.  () for the paper's random start.
    # The ISNet and its Faster ISNet variants.
    warm_start: tuple[str, ...] = ISNETS
    # Share of each ISNet training batch put on other images' backgrounds (None: the ISNet's default,
    # isnet.defaults.BACKGROUND_SWAP; 0: the paper's ISNet).  The standard classifier never swaps.
    isnet_background_swap: float | None = None
    # Strength of the random tone, contrast and noise change of every swapped background (None: the
    # ISNet's default, isnet.defaults.BACKGROUND_JITTER; 0: the swap alone).
    isnet_background_jitter: float | None = None
    # The ISNets start from the trained standard classifier, so the heatmap loss starts at once (no
    # gate, isnet.defaults.HEATMAP_GATE).
    heatmap_gate: float | None = None
    P: float = 0.85  # ISNet (and ISNet Grad*Input) on digits
    d: float = 0.95
    radiograph_P: float = 0.7  # on radiographs: the paper's COVID-19 / tuberculosis setting
    radiograph_d: float = 0.9
    # Radiographs: where the source traits lie (isnet.data.radiographs.VARIANTS), and the backbone
    # of every system that takes one (arch kwargs as for ``backbone``).  The digits' backbone (width
    # 16, no batch norm) learned only the sources here: its standard classifier scored 0.853 i.i.d.,
    # the 85% share of each class's own source.  Width 32 with batch norm learns the lesions too
    # (0.977-0.993 i.i.d. for seeds 0-3) and still loses 0.16-0.62 on the unseen sources (0.371-0.837
    # external); resnet18 took about nine times as long per epoch (README).
    radiograph_variant: str = "background"
    radiograph_backbone: str = "small_cnn"
    radiograph_width: int = 32
    radiograph_batch_norm: bool = True
    radiograph_standard_epochs: int = 20  # the standard classifier's, and the pipeline classifier's
    radiograph_isnet_epochs: int = 80  # the ISNet's and its variants' (measured with 80; no 10-minute budget here)
    optimizer: str = "adam"
    lr: float = 2e-3
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    # The ISNet starts warm from the standard classifier, with the full P from its first step (no
    # heatmap-loss warm-up, unlike ISNetModule's default) and C1, C2 from the standard classifier.
    heatmap_warmup_epochs: float = 0.0
    C1: float | None = None  # ISNet's foreground-relevance range; None: estimated (Appendix F.3)
    C2: float | None = None
    # The Faster ISNet variants (isnet_selective, isnet_stochastic, isnet_dual) take the ISNet's
    # settings; their foreground ranges come from their own maps on their starting weights (the
    # standard classifier's when warm-started), over this many training batches, before training
    # (their maps have other scales than the standard classifier's per-class maps, and without the
    # foreground loss from the first step the selective ISNet silenced its maps by saturating the
    # softmax); the Selective ISNet explains the quantity of this class (README "The Faster ISNet family").
    range_batches: int = 16
    selective_class: str = defaults.SELECTIVE_CLASS
    # the comparison systems (Appendix B.1), sized for the CPU
    system_epochs: int = 20
    gradient_epochs: int = 30  # systems trained by double backpropagation (GAIN, RRR, ISNet Grad*Input)
    segmenter_epochs: int = 20
    unet_width: int = 8
    unet_depth: int = 3
    multitask_P: float = 0.75
    multitask_hidden: int = 256
    sononet_width: int = 8
    vit_epochs: int = 40
    rrr_lambda1: float = 1000.0
    gain_alpha: float = 1.0
    gain_omega_e: float = 10.0
    ham_weight: float = 1.0


PROFILES = {
    "quick": Profile("quick"),
    "long": Profile("long", standard_epochs=60, isnet_epochs=150, system_epochs=60, gradient_epochs=90,
                    segmenter_epochs=60, vit_epochs=120, radiograph_standard_epochs=60, radiograph_isnet_epochs=150),
}


def _resolve_models(models: str | Sequence[str], warm_start: Sequence[str] = ()) -> list[str]:
    if isinstance(models, str):
        models = ALL_MODELS if models == "all" else [m.strip() for m in models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {', '.join(ALL_MODELS)} or 'all'")
    models = list(dict.fromkeys(models))
    needs_standard = any(m in ("isnet", "isnet_gi") or m in warm_start for m in models)
    if needs_standard and "standard" not in models:
        models.insert(0, "standard")  # C1 and C2 (and warm starts) come from the standard classifier
    return sorted(models, key=ALL_MODELS.index)


def _backbone(prof: Profile, dataset: str) -> dict[str, Any]:
    """``backbone`` and ``arch_kwargs`` of the systems that take a backbone, on ``dataset``."""
    if dataset == "radiographs":
        name, width, batch_norm = prof.radiograph_backbone, prof.radiograph_width, prof.radiograph_batch_norm
    else:
        name, width, batch_norm = prof.backbone, prof.width, prof.batch_norm
    return {"backbone": name, "arch_kwargs": {"width": width, "batch_norm": batch_norm} if name == "small_cnn" else {}}


def _settings(method: str, prof: Profile, classes: list[str], c: dict[str, tuple[float, float]],
              dataset: str = "digits") -> tuple[str, dict[str, Any], int]:
    """``(system method, its arguments, epochs)`` of a benchmark model."""
    P, d = (prof.radiograph_P, prof.radiograph_d) if dataset == "radiographs" else (prof.P, prof.d)
    common = dict(optimizer=prof.optimizer, lr=prof.lr, momentum=prof.momentum, lr_schedule=prof.lr_schedule,
                  warmup_epochs=prof.warmup_epochs, class_names=classes)
    backbone = dict(_backbone(prof, dataset), **common)
    standard_epochs = prof.radiograph_standard_epochs if dataset == "radiographs" else prof.standard_epochs
    isnet_epochs = prof.radiograph_isnet_epochs if dataset == "radiographs" else prof.isnet_epochs
    if method in ("standard", "reference"):
        return "standard", backbone, standard_epochs
    # every ISNet (full and Faster variants) trains with the same swap, jitter, gate and warm-up
    isnet_common = dict(backbone, P=P, d=d, background_swap=prof.isnet_background_swap,
                        background_jitter=prof.isnet_background_jitter, heatmap_gate=prof.heatmap_gate,
                        heatmap_warmup_epochs=prof.heatmap_warmup_epochs)
    if method == "isnet":
        return "isnet", dict(isnet_common, C1=c["lrp"][0], C2=c["lrp"][1]), isnet_epochs
    if method in ISNETS:  # a Faster ISNet variant
        settings = dict(isnet_common, C1=None, C2=None)
        if method == "isnet_selective":
            settings["selective_class"] = prof.selective_class
        return method, settings, isnet_epochs
    if method == "isnet_gi":
        return "isnet_gi", dict(backbone, P=P, d=d, C1=c["grad_input"][0], C2=c["grad_input"][1]), \
            prof.gradient_epochs
    if method == "rrr":
        return "rrr", dict(backbone, lambda1=prof.rrr_lambda1), prof.gradient_epochs
    if method == "gain":
        return "gain", dict(backbone, alpha=prof.gain_alpha, omega_e=prof.gain_omega_e), prof.gradient_epochs
    if method == "pipeline":
        return "pipeline", dict(backbone, unet_width=prof.unet_width, unet_depth=prof.unet_depth,
                                segmenter_epochs=prof.segmenter_epochs, segmenter_lr=prof.lr), standard_epochs
    if method == "multitask":
        return "multitask", dict(common, width=prof.unet_width, depth=prof.unet_depth, hidden=prof.multitask_hidden,
                                 P=prof.multitask_P), prof.system_epochs
    if method == "sononet":
        return "sononet", dict(common, width=prof.sononet_width), prof.system_epochs
    if method == "vit":
        return "vit", dict(common, image_size=prof.size, preset="tiny"), prof.vit_epochs
    if method == "ham":
        return "ham", dict(backbone, w_bound=prof.ham_weight, w_union=prof.ham_weight, w_amse=prof.ham_weight), \
            prof.gradient_epochs
    raise ValueError(f"unknown model {method!r}")


@dataclass
class _Benchmark:
    """One built-in benchmark's data: the training data module and the named test sets."""

    name: str
    title: str
    train: MaskedImageDataModule
    tests: dict[str, Any]
    clean: MaskedImageDataModule | None  # the unbiased training data of the reference, if any
    drop_from: str
    drop_to: tuple[str, ...]
    intro: str


_BIAS_TEXT = {  # (title, description of the test sets) of each bias kind
    "shapes": ("digits on textures with synthetic shape bias",
               "Test sets: `biased` (shapes as in training), `standard` (no shapes), `deceiving` (shapes permuted "
               "across classes)."),
    "scene": ("digits on textures with class-linked scenes",
              f"Each class's backgrounds come {SCENE_OWN_SHARE:.0%} from its own group of textures and photos "
              "(outside the digit's mask). Test sets: `biased` (as in training), `standard` (backgrounds drawn "
              "uniformly from all textures), `deceiving` (backgrounds from the next class's group)."),
    "text": ("digits on textures with class-linked words",
             "Each class has its own word, written in white at a random place outside the digit's mask. Test "
             "sets: `biased` (as in training), `standard` (no word), `deceiving` (the next class's word)."),
}


def _digits(out: Path, prof: Profile, seed: int, bias: str = "shapes") -> _Benchmark:
    folder = out / "data" if bias == "shapes" else out / f"data_{bias}"
    root = generate_digits_on_textures(folder, classes=prof.classes, per_class=prof.per_class, size=prof.size,
                                       seed=seed, bias=bias)

    def dm(folder: Path, **kwargs: Any) -> MaskedImageDataModule:
        m = MaskedImageDataModule(folder, size=prof.size, augment=False, batch_size=prof.batch_size, cache=True,
                                  seed=seed, square_test=False, **kwargs)
        m.setup()
        return m

    if bias == "shapes":  # drawn on the fly by the data module
        biased, clean = dm(root, bias=True), dm(root)
    else:  # written into the images: the biased dataset and its unbiased twin
        biased, clean = dm(root, test_splits=list(VARIANTS)), dm(root / "clean")
    tests = {name.split("/")[-1]: ds for name, ds in biased.test_sets.items()}
    title, tests_text = _BIAS_TEXT[bias]
    return _Benchmark("digits", title, biased, tests, clean, "biased", ("standard", "deceiving"),
                      f"The systems are trained on data with the synthetic `{bias}` bias; the reference is a "
                      f"standard classifier trained on the same data without it. {tests_text}")


def _radiographs(out: Path, prof: Profile, seed: int) -> _Benchmark:
    from .data.radiographs import generate_radiographs

    root = generate_radiographs(out / "radiographs", per_class=prof.radiograph_per_class, size=prof.size, seed=seed,
                                variant=prof.radiograph_variant)
    m = MaskedImageDataModule(root, size=prof.size, grayscale=True, augment=False, batch_size=prof.batch_size,
                              cache=True, seed=seed, square_test=False)
    m.setup()
    return _Benchmark("radiographs", "mixed-source radiographs with an external test source", m, dict(m.test_sets),
                      None, "test", ("external",),
                      "Training images come from three sources, each class mostly from its own source with its own "
                      "traits (markers, text, borders, contrast, noise); class evidence lies only inside the lungs. "
                      + ("Variant `in-lung`: the sources' contrast and noise change the lungs too, so part of the "
                         "source signal lies inside the foreground mask. " if prof.radiograph_variant == "in-lung"
                         else "The source traits lie only outside the lungs. ")
                      + "`test` is an i.i.d. split of the same sources; `external` comes from two sources unseen in "
                      "training.")


def run_benchmark(out: str | Path, *, profile: str | Profile = "quick", seed: int = 0, progress: bool = True,
                  models: str | Sequence[str] = DEFAULT_MODELS, datasets: str | Sequence[str] = ("digits",),
                  background_swap: bool = True, bias: str = "shapes", **overrides: Any) -> dict:
    """Train, evaluate and report the chosen models on the chosen benchmarks.

    Args:
        out: output folder.
        profile: ``quick`` (the default models on digits in under 10 minutes on 2 CPU cores;
            all models on both benchmarks took about 40 minutes with the previous radiograph
            backbone), ``long``, or a :class:`Profile`.
        models: names from :data:`ALL_MODELS`, a comma-separated string, or ``"all"``.
        datasets: names from :data:`DATASETS`, a comma-separated string, or ``"all"``.
        background_swap: test every model on background-swapped test images too
            (:func:`isnet.evaluation.background_swap_test`).
        bias: the digits benchmark's kind of background bias, one of
            :data:`isnet.data.bias.BIAS_KINDS`: ``shapes`` (corner shapes, the paper's
            Table 1 setting), ``scene`` (class-linked background textures) or ``text``
            (class-linked words); the radiographs benchmark has its own.
        overrides: fields of the profile to change (e.g. ``isnet_epochs=40``).

    Returns:
        The content of ``report.json``: ``{"bias": kind, "benchmarks": {dataset: {"models": {model:
        {test_set: metrics}}, "drops": ..., "C1": ..., "C2": ..., "train_seconds": ...}}, ...}``; the
        digits benchmark's ``models``, ``drops``, ``C1`` and ``C2`` are also at the top level.
    """
    check_bias_kind(bias)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prof = PROFILES[profile] if isinstance(profile, str) else profile
    prof = replace(prof, **overrides)
    names = _resolve_models(models, prof.warm_start)
    bad = [m for m in prof.warm_start if m not in WARM_STARTABLE]
    if bad:
        raise ValueError(f"warm_start: {bad} cannot start from the standard classifier; choose from "
                         f"{', '.join(WARM_STARTABLE)}")
    if isinstance(datasets, str):
        datasets = DATASETS if datasets == "all" else [d.strip() for d in datasets.split(",") if d.strip()]
    bad = [d for d in datasets if d not in DATASETS]
    if bad or not datasets:
        raise ValueError(f"unknown dataset(s) {bad}; choose from {', '.join(DATASETS)} or 'all'")
    if prof.radiograph_variant not in RADIOGRAPH_VARIANTS:
        raise ValueError(f"unknown radiograph variant {prof.radiograph_variant!r}; choose from "
                         f"{', '.join(RADIOGRAPH_VARIANTS)}")
    started = time.perf_counter()
    report = Report("isnet benchmark")
    report.paragraph(f"Profile `{prof.name}`, seed {seed}; models: {', '.join(names)}"
                     + (f"; digits bias `{bias}`." if "digits" in datasets else "."))
    saved: dict[str, Any] = {"profile": asdict(prof), "seed": seed, "bias": bias, "benchmarks": {}}
    for dataset in datasets:
        bench = _digits(out, prof, seed, bias) if dataset == "digits" else _radiographs(out, prof, seed)
        folder = out if len(datasets) == 1 and dataset == "digits" else out / dataset
        result, section = _run_one(bench, folder, out, names, prof, seed, progress, background_swap)
        saved["benchmarks"][dataset] = result
        report.extend(section)
    saved["total_seconds"] = time.perf_counter() - started
    if "digits" in saved["benchmarks"]:
        digits = saved["benchmarks"]["digits"]
        saved.update(models=digits["models"], drops=digits["drops"], C1=digits["C1"], C2=digits["C2"])
    report.paragraph(f"Total time {saved['total_seconds']:.0f} s.")
    write_json(out / "report.json", saved)
    write_json(out / "metrics.json", {d: r["models"] for d, r in saved["benchmarks"].items()})
    report.write(out)
    return saved


def _run_one(bench: _Benchmark, folder: Path, out: Path, names: list[str], prof: Profile, seed: int,
             progress: bool, background_swap: bool = True) -> tuple[dict, Report]:
    """Train and evaluate ``names`` on one benchmark; figures go to ``folder``, runs to ``out/runs``."""
    folder.mkdir(parents=True, exist_ok=True)
    classes = bench.train.classes
    runs = out / "runs" / bench.name if folder != out else out / "runs"
    timings: dict[str, float] = {}
    modules: dict[str, SystemModule] = {}
    c: dict[str, tuple[float, float]] = {}
    skipped: list[str] = []
    for name in names:
        if name == "reference" and bench.clean is None:
            continue
        if name == "ham" and (not bench.train.lesions or "normal" not in classes):
            skipped.append("ham (needs lesion masks and a normal class)")
            continue
        method, settings, epochs = _settings(name, prof, classes, c, bench.name)
        L.seed_everything(seed, verbose=False)
        module = build_system(method, len(classes), **settings)
        if name in prof.warm_start:
            module.deployed.load_state_dict(modules["standard"].deployed.state_dict())
        if name in ISNETS and name != "isnet":  # a variant: its own maps' ranges, from its starting weights
            module.estimate_natural_ranges(bench.train.train_dataloader(), batches=prof.range_batches)
        if progress:
            print(f"[isnet benchmark] {bench.name}: training {name} ({epochs} epochs)", flush=True)
        t = time.perf_counter()
        data = bench.clean if name == "reference" else bench.train
        module, _ = train(module, data, runs / name, max_epochs=epochs, progress=progress)
        timings[name] = time.perf_counter() - t
        modules[name] = module.eval()
        if name == "standard":
            val = bench.train.val_dataloader()
            c1, c2 = estimate_c1_c2(module.deployed, val)
            c["lrp"] = (prof.C1 if prof.C1 is not None else c1, prof.C2 if prof.C2 is not None else c2)
            if "isnet_gi" in names:
                c["grad_input"] = estimate_c1_c2(module.deployed, val, heatmaps="grad_input")

    results: dict[str, dict] = {}
    explainers = {}
    for name, module in modules.items():
        tests = {"standard": bench.tests["standard"]} if name == "reference" else bench.tests
        explainers[name] = module.explainer()
        if progress:
            print(f"[isnet benchmark] {bench.name}: evaluating {name}", flush=True)
        results[name] = evaluate(module.deployed, tests, class_names=classes, explainer=explainers[name], seed=seed,
                                 background_swap=background_swap)
        if name == "pipeline":
            alone = module.without_segmenter
            explainers["pipeline (no segmenter)"] = lrp_explainer(alone, module.lrp_settings())
            results["pipeline (no segmenter)"] = evaluate(alone, tests, class_names=classes,
                                                          explainer=explainers["pipeline (no segmenter)"], seed=seed,
                                                          background_swap=background_swap)

    drops = {
        name: {f"{bench.drop_from}_to_{t}": r[bench.drop_from]["macro_f1"] - r[t]["macro_f1"] for t in bench.drop_to}
        for name, r in results.items() if bench.drop_from in r
    }
    figures = _figures(folder, bench, explainers, classes,
                       {n: runs / n / "logs" / "metrics.csv" for n in modules})
    prefix = "" if folder == out else f"{folder.name}/"
    intro = [bench.intro]
    warm = [n for n in prof.warm_start if n in modules]
    if warm:
        intro.append(f"Started from the standard classifier's trained weights (not a random initialisation): "
                     f"{', '.join(warm)}.")
    if "lrp" in c:
        intro.append("C1 = {:.4g}, C2 = {:.4g} (Appendix F.3, from the standard classifier's LRP heatmaps).".format(
            *c["lrp"]))
    variants = [n for n in modules if n in ISNETS and n != "isnet"]
    if variants:
        intro.append(f"Faster ISNet variants ({', '.join(variants)}): the ISNet's settings, foreground ranges of "
                     f"their own maps on their starting weights ({prof.range_batches} training batches)"
                     + (f"; the selective heatmaps explain the "
                     f"{prof.selective_class} logit's softmax quantity" if "isnet_selective" in variants else "")
                     + ".")
    if "pipeline" in modules:
        intro.append(f"Pipeline: U-Net binarised at {float(modules['pipeline'].threshold):.2f} (best validation IoU "
                     f"{float(modules['pipeline'].segmenter_iou):.3f}); `pipeline (no segmenter)` is its classifier "
                     "applied to unsegmented images.")
    if skipped:
        intro.append("Not run on this benchmark: " + "; ".join(skipped) + ".")
    intro.append("Training time (s): " + ", ".join(f"{n} {t:.0f}" for n, t in timings.items()) + ".")
    named_drops = {m: {f"{bench.drop_from} → {k.split('_to_')[1]}": v for k, v in d.items()} for m, d in drops.items()}
    section = evaluation_report(results, title=bench.title, intro=intro, drops=named_drops,
                                figures=[(prefix + f, cap) for f, cap in figures])
    result = {"models": results, "drops": drops, "train_seconds": timings,
              "C1": c.get("lrp", (None, None))[0], "C2": c.get("lrp", (None, None))[1]}
    return result, section


def _figures(folder: Path, bench: _Benchmark, explainers: dict, classes: list[str],
             logs: dict[str, Path]) -> list[tuple[str, str]]:
    """Figure 1 style heatmap grids (two images per class) for every test set, and training curves."""
    figures = []
    for test, dataset in bench.tests.items():
        picks = pick_examples(dataset, len(classes), per_class=2)
        images, maps, labels = example_heatmaps(explainers, dataset, picks)
        name = "heatmaps.png" if test == "deceiving" else f"heatmaps_{test}.png"
        model_heatmap_grid(folder / name, images, maps, model_names=list(explainers),
                           column_labels=[classes[k] for k in labels],
                           title=f"LRP heatmaps for the true class ({test} test)")
        figures.append((name, f"Heatmaps of the true class (above each column), {test} test; red positive, blue "
                              "negative relevance (LRP; attention rollout for the ViT)"))
    logs = {n: p for n, p in logs.items() if p.is_file()}
    if logs:
        training_curves(folder / "training_curves.png", logs)
        figures.append(("training_curves.png", "Training (solid) and validation (dashed) losses per epoch"))
    return figures
