"""The ``isnet`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import defaults
from .allocator import keep_freed_memory
from .jsonio import dumps, write_json
from .export import ExportError
from .lrp import LRPSettings
from .lrp.quantities import SELECTIVE_CLASSES
from .systems.registry import METHODS, TUNABLE
from .systems.variants import VARIANTS


def _explain(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .backbones import load_model
    from .data.images import find_images
    from .evaluation import lrp_explainer
    from .predict import model_preprocessing, read_images, write_heatmap_pngs
    from .render import heatmap_grid

    model, info = load_model(args.model)
    paths = find_images(args.images)
    images = read_images(paths, model_preprocessing(info, args.size), channels=info.get("in_channels", 3))
    explain = lrp_explainer(model, _lrp_settings(args))
    names = info.get("class_names") or [str(i) for i in range(info["num_classes"])]
    classes = args.classes if args.classes is not None else list(range(info["num_classes"]))
    out = Path(args.out)
    maps, logits = [], []
    for batch in tqdm(images.split(args.batch_size), desc="explaining", disable=args.quiet):
        lg, hm = explain(batch, classes=classes)
        maps.append(hm)
        logits.append(lg)
    heatmaps, logits = torch.cat(maps), torch.cat(logits)
    predicted = logits.argmax(1).tolist()
    write_heatmap_pngs(out, paths, images, heatmaps, classes)
    heatmap_grid(
        out / "heatmaps.png",
        images,
        heatmaps,
        row_labels=[f"{p.stem}\npred: {names[c]}" for p, c in zip(paths, predicted)],
        column_labels=[names[k] for k in classes],
    )
    np.savez_compressed(out / "heatmaps.npz", heatmaps=heatmaps.numpy(), logits=logits.numpy(),
                        classes=np.array(classes), images=np.array([str(p) for p in paths]))
    if not args.quiet:
        print(f"wrote heatmaps of {len(paths)} image(s) x {len(classes)} class(es) to {out}")
    return 0


def _lrp_settings(args: argparse.Namespace) -> LRPSettings:
    """The LRP settings of ``--epsilon``, ``--no-zb``, ``--low`` and ``--high``."""
    return LRPSettings(epsilon=args.epsilon, zb=not args.no_zb, low=args.low, high=args.high)


def _predict(args: argparse.Namespace) -> int:
    from .data.images import find_images
    from .export import load_deployed
    from .evaluation import lrp_explainer
    from .predict import (decisions, heatmaps_of_classes, model_preprocessing, probabilities, read_images,
                          run_network, write_heatmap_pngs, write_predictions)

    network, info = load_deployed(args.model)
    if args.heatmaps and info["format"] != "model":
        raise ValueError(f"--heatmaps needs an isnet model file (.pt); {args.model} is {info['format']}, "
                         "which keeps no layers to explain")
    stored = info["preprocessing"].get("size")
    if info["format"] != "model" and args.size and stored and args.size != stored:
        raise ValueError(f"{args.model} takes {stored} x {stored} images ({info['format']} graphs fix the size); "
                         f"drop --size {args.size}")
    paths = find_images(args.images)
    images = read_images(paths, model_preprocessing(info, args.size), channels=info["in_channels"])
    logits = run_network(network, images, args.batch_size)
    if logits.ndim != 2 or logits.shape[1] != info["num_classes"]:
        raise ValueError(f"the model gave logits of shape {tuple(logits.shape)}, expected (N, {info['num_classes']})")
    probs = probabilities(logits, info["multilabel"])
    predicted = decisions(probs, info["multilabel"], info.get("thresholds"))
    out = write_predictions(args.out, paths, probs, predicted, info["class_names"])
    if args.heatmaps:
        top = probs.argmax(1).tolist()  # multi-label: the most probable label
        if info["explainer"] is not None:  # a system's own explainer (all classes at once)
            maps = heatmaps_of_classes(info["explainer"], images, top, args.batch_size, per_class=False)
        else:
            maps = heatmaps_of_classes(lrp_explainer(network, _lrp_settings(args)), images, top, args.batch_size)
        write_heatmap_pngs(args.heatmaps, paths, images, maps[:, None], [[k] for k in top])
    if not args.quiet:
        print(f"wrote predictions for {len(paths)} image(s) to {out}"
              + (f" and heatmaps of the predicted classes to {args.heatmaps}" if args.heatmaps else ""))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    print(dumps(summary))
    print(f"wrote {Path(args.out) / 'heatmaps.png'}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from .benchmark import run_benchmark

    overrides = {}
    if args.isnet_epochs is not None:  # on both benchmarks
        overrides["isnet_epochs"] = overrides["radiograph_isnet_epochs"] = args.isnet_epochs
    if args.standard_epochs is not None:  # on both benchmarks
        overrides["standard_epochs"] = overrides["radiograph_standard_epochs"] = args.standard_epochs
    if args.radiograph_variant is not None:
        overrides["radiograph_variant"] = args.radiograph_variant
    if args.warm_start is not None:
        names = [] if args.warm_start.strip() == "none" else args.warm_start.split(",")
        overrides["warm_start"] = tuple(n.strip() for n in names if n.strip())
    if args.selective_class is not None:
        overrides["selective_class"] = args.selective_class
    datasets = args.datasets or ("all" if args.models == "all" else "digits")
    report = run_benchmark(args.out, profile=args.profile, seed=args.seed, progress=not args.quiet,
                           models=args.models, datasets=datasets, background_swap=not args.no_background_swap,
                           bias=args.bias, **overrides)
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {Path(args.out) / 'report.md'}, report.html, report.json and figures "
          f"in {report['total_seconds']:.0f} s")
    return 0


def _fit(args: argparse.Namespace) -> int:
    import lightning as L
    import yaml

    from .config import load_config
    from .data import MaskedImageDataModule
    from .systems.registry import build_system, load_system, system_parameters
    from .training import train

    overrides = list(args.set) + ([f"model.method={args.method}"] if args.method else [])
    cfg = load_config(args.config, overrides)
    if args.init_from:
        cfg["model"]["init_from"] = args.init_from
    L.seed_everything(cfg["seed_everything"], verbose=False)
    data = MaskedImageDataModule(**cfg["data"])
    data.setup()
    model_args = dict(cfg["model"])
    if args.estimate_c_from:
        from .systems.isnet import estimate_c1_c2

        standard = load_system(args.estimate_c_from)
        model_args["C1"], model_args["C2"] = estimate_c1_c2(standard.deployed, data.val_dataloader())
        cfg["model"].update(C1=model_args["C1"], C2=model_args["C2"])
        print(f"C1 = {model_args['C1']:.4g}, C2 = {model_args['C2']:.4g} from {args.estimate_c_from}")
    method = model_args.pop("method")
    init = model_args.pop("init_from", None)
    if "image_size" in system_parameters(method) and "image_size" not in model_args:
        model_args["image_size"] = data.prep.size  # e.g. the ViT's patch grid follows the data
    if ("arch_kwargs" in system_parameters(method) and model_args.get("backbone") == "small_cnn"
            and "blocks" not in (model_args.get("arch_kwargs") or {})):
        from .backbones import small_cnn_blocks

        # the depth follows the image size, and is written to config.yaml for resume and reports
        model_args["arch_kwargs"] = {**(model_args.get("arch_kwargs") or {}), "blocks": small_cnn_blocks(data.prep.size)}
        cfg["model"]["arch_kwargs"] = model_args["arch_kwargs"]
    module = build_system(method, data.num_classes, class_names=data.classes, **model_args)
    if init:
        from .warm_start import init_from

        loaded = init_from(module, init)
        print(f"initialised the {method} model's {loaded['tensors']} weight tensors from {init} ({loaded['kind']})")
    trainer = dict(cfg["trainer"])
    max_epochs = trainer.pop("max_epochs", 48)
    out = Path(cfg["out"])
    if args.resume:
        from .checkpointing import last_checkpoint

        last_checkpoint(out)  # a clear error before anything is written
        _check_resumed_config(out / "config.yaml", cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    module, best = train(module, data, out, max_epochs=max_epochs, progress=not args.quiet, resume=args.resume,
                         **trainer)
    from .export import FORMATS
    from .predict import data_preprocessing

    written = []
    for fmt in FORMATS:  # the training result is kept even if a format cannot hold this network
        try:
            written.append(str(module.export(out / "export", preprocessing=data_preprocessing(cfg["data"]),
                                             formats=fmt)[fmt]))
        except ExportError as error:
            print(f"isnet fit: warning: {error}", file=sys.stderr)
    print(f"best checkpoint: {best}\nexported {method} model: {', '.join(written)}")
    return 0


RESUMABLE_CHANGES = (("trainer", "max_epochs"),)
"""Config keys that may differ when a run is resumed: more (or fewer) epochs."""


def _config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs (missing keys count as differing)."""
    differences = []
    for key in sorted(set(saved) | set(current), key=str):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            differences += _config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            differences.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return differences


def _check_resumed_config(path: Path, cfg: dict) -> None:
    """Refuse to resume a run with another configuration than the one it started with.

    Every key must match the saved ``config.yaml`` except ``trainer.max_epochs``.  Paths
    are compared as written, so give the same ``--config`` and ``--set`` values again.
    """
    import yaml

    if not path.is_file():
        raise ValueError(f"cannot resume: {path} is missing, so the run's configuration is unknown")
    saved = yaml.safe_load(path.read_text()) or {}
    current = yaml.safe_load(yaml.safe_dump(cfg, sort_keys=False))  # the form it is saved in
    for section, key in RESUMABLE_CHANGES:
        saved.get(section, {}).pop(key, None)
        current.get(section, {}).pop(key, None)
    differences = _config_differences(saved, current)
    if differences:
        raise ValueError(f"cannot resume {path.parent}: the configuration differs from the saved {path} in "
                         f"{'; '.join(differences)} (only trainer.max_epochs may change)")


def _named_checkpoints(specs: Sequence[str]) -> dict[str, Path]:
    """``PATH`` or ``NAME=PATH`` -> ``{name: path}``; a bare path is named after its run folder."""
    named: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or Path(spec).is_file():  # checkpoint file names often hold '=' (best-epoch=3.ckpt)
            path = spec
            p = Path(spec)
            name = p.parent.parent.name if p.parent.name == "checkpoints" else p.stem
        if name in named:
            raise ValueError(f"two checkpoints are named {name!r}; name them with NAME=PATH")
        if not Path(path).is_file():
            raise ValueError(f"checkpoint {path} does not exist")
        named[name] = Path(path)
    return named


def _test(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data import MaskedImageDataModule
    from .evaluation import evaluate, example_heatmaps, pick_examples, validation_thresholds
    from .render import model_heatmap_grid, training_curves
    from .report import evaluation_report
    from .systems.registry import load_system

    cfg = load_config(args.config, args.set)
    if args.splits:
        cfg["data"]["test_splits"] = args.splits
    data = MaskedImageDataModule(**cfg["data"])
    data.setup()
    checkpoints = _named_checkpoints(args.checkpoint)
    modules = {name: load_system(path).eval() for name, path in checkpoints.items()}
    results, thresholds, explainers = {}, {}, {}
    for name, module in modules.items():
        hp = module.hparams
        if hp.multilabel:
            thresholds[name] = validation_thresholds(module.deployed, data.val_set, batch_size=data.batch_size)
        explainers[name] = None if args.no_heatmaps else module.explainer()
        if not args.quiet:
            print(f"testing {name}", flush=True)
        results[name] = evaluate(module.deployed, data.test_sets, class_names=data.classes, multilabel=data.multilabel,
                                 thresholds=thresholds.get(name), explainer=explainers[name],
                                 batch_size=data.batch_size, progress=not args.quiet, seed=cfg["seed_everything"],
                                 background_swap=not args.no_background_swap)
    out = Path(args.out or Path(cfg["out"]) / "test")
    out.mkdir(parents=True, exist_ok=True)
    saved = {"checkpoints": {n: str(p) for n, p in checkpoints.items()}, "models": results}
    if thresholds:
        saved["thresholds"] = {n: t.tolist() for n, t in thresholds.items()}
    write_json(out / "metrics.json", saved)

    figures = []
    if not args.no_heatmaps:
        for test_name, dataset in data.test_sets.items():
            picks = pick_examples(dataset, data.num_classes, per_class=2, multilabel=data.multilabel)
            if not picks:
                continue
            images, maps, labels = example_heatmaps(explainers, dataset, picks, multilabel=data.multilabel)
            file = "heatmaps_" + test_name.replace("/", "_") + ".png"
            model_heatmap_grid(out / file, images, maps, model_names=list(explainers),
                               column_labels=[data.classes[k] for k in labels],
                               title=f"LRP heatmaps for the true class ({test_name})")
            figures.append((file, f"LRP heatmaps of the true class (above each column), {test_name}; "
                                  "red positive, blue negative relevance"))
    logs = {n: p.parent.parent / "logs" / "metrics.csv" for n, p in checkpoints.items()}
    logs = {n: p for n, p in logs.items() if p.is_file()}
    if logs:
        training_curves(out / "training_curves.png", logs)
        figures.append(("training_curves.png", "Training (solid) and validation (dashed) losses per epoch"))
    intro = [f"Checkpoints: {', '.join(f'{n} = {p}' for n, p in checkpoints.items())}. "
             f"Data: {cfg['data']['root']}; test sets: {', '.join(data.test_sets)}."]
    if thresholds:
        intro.append("Multi-label decision thresholds maximise macro-F1 on the val split (Appendix F.2).")
    files = evaluation_report(results, title="isnet test report", intro=intro, figures=figures).write(out)
    if not args.quiet:
        print(files["markdown"].read_text())
    print(f"wrote {out / 'metrics.json'}, {files['markdown']} and {files['html']}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data import MaskedImageDataModule
    from .tune import run_tune

    cfg = load_config(args.config, list(args.set) + [f"model.method={args.method}", "data.bias=true"])
    data = MaskedImageDataModule(**cfg["data"])
    settings = {k: v for k, v in cfg["model"].items() if k != "method"}
    trainer = dict(cfg["trainer"])
    epochs = args.epochs or trainer.pop("max_epochs", 48)
    trainer.pop("max_epochs", None)
    grid = {}
    for item in args.grid or []:
        name, _, values = item.partition("=")
        try:
            grid[name] = [float(v) for v in values.split(",") if v]
        except ValueError as error:
            raise ValueError(f"--grid {item!r}: values must be numbers separated by commas") from error
        if not grid[name]:
            raise ValueError(f"--grid {item!r} has no values")
    out = Path(args.out or Path(cfg["out"]) / f"tune_{args.method}")
    rows = run_tune(args.method, data, out, epochs=epochs, settings=settings, grid=grid or None,
                    refine=not args.no_refine, seed=cfg["seed_everything"], progress=not args.quiet,
                    train_options=trainer)
    print((out / "grid.md").read_text())
    print(f"wrote {out / 'grid.csv'} ({len(rows)} settings)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .systems.registry import load_system

    module = load_system(args.checkpoint).eval()
    prep = {}
    config = Path(args.checkpoint).resolve().parent.parent / "config.yaml"  # written by `isnet fit` to the run folder
    if config.is_file():
        import yaml

        from .predict import data_preprocessing

        prep = data_preprocessing((yaml.safe_load(config.read_text()) or {}).get("data") or {})
    if args.size:
        prep["size"] = args.size
    files = module.export(args.out, preprocessing=prep, formats=args.format)
    print("\n".join(f"{k}: {v}" for k, v in files.items()))
    return 0


def _add_lrp_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epsilon", type=float, default=defaults.EPSILON)
    p.add_argument("--no-zb", action="store_true", help="use LRP-epsilon in the first layer too")
    p.add_argument("--low", type=float, default=defaults.ZB_LOW)
    p.add_argument("--high", type=float, default=defaults.ZB_HIGH)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isnet", description="ISNet: classifiers trained to ignore background bias.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="train an ISNet (or, with model.P=0, a standard classifier) from a YAML config")
    p.add_argument("--config", help="YAML file with model / data / trainer sections (see configs/)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override config values")
    p.add_argument("--method", help=f"system to train (overrides model.method): {', '.join(METHODS)}; "
                   f"an ISNet's variant is also model.variant: {', '.join(VARIANTS)} (isnet_<variant> fixes it), "
                   "with model.deep_supervision=true for LRP deep supervision")
    p.add_argument("--estimate-c-from", metavar="CHECKPOINT",
                   help="set C1, C2 from the heatmaps of this standard classifier on the val split (Appendix F.3)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/checkpoints/last.ckpt (weights, optimiser, schedule, epoch, random state); "
                        "the config must match <out>/config.yaml except trainer.max_epochs")
    p.add_argument("--init-from", metavar="PATH",
                   help="start from the deployed backbone's weights in this checkpoint or model file (same "
                        "architecture; weights only, no optimiser state); overrides model.init_from")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_fit)

    p = sub.add_parser("test", help="evaluate checkpoints on every test split (biased / standard / deceiving with bias) and write a report")
    p.add_argument("--config", help="the YAML config used for fit")
    p.add_argument("--checkpoint", required=True, nargs="+", metavar="[NAME=]PATH",
                   help="one or more checkpoints, compared side by side (named after their run folder by default)")
    p.add_argument("--splits", nargs="*", help="test splits (default: all but train and val)")
    p.add_argument("--no-heatmaps", action="store_true",
                   help="skip the LRP heatmaps (background-attention metrics and heatmap figures)")
    p.add_argument("--no-background-swap", action="store_true",
                   help="skip the background-swap test (each test image's foreground on other test images' "
                   "backgrounds: macro-F1 and flip rates)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", help="output folder (default: <out>/test)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_test)

    p = sub.add_parser("tune", help="search a method's loss hyper-parameters on synthetically biased data "
                       "(Appendix F.3) and write the grid")
    p.add_argument("--method", required=True, help=f"a method with a default grid: {', '.join(TUNABLE)} "
                   "(any other method with --grid)")
    p.add_argument("--config", help="YAML config of the data and fixed settings (data.bias is forced on)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--epochs", type=int, help="epochs per setting (default: trainer.max_epochs)")
    p.add_argument("--grid", nargs="*", metavar="NAME=V1,V2,...", help="replace the first-stage grid")
    p.add_argument("--no-refine", action="store_true", help="skip the second, finer stage")
    p.add_argument("--out", help="output folder (default: <out>/tune_<method>)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_tune)

    p = sub.add_parser("export", help="write the deployed network of a checkpoint (isnet model file, ONNX, "
                       "torch.export program)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["onnx", "torch_export", "model", "all"], default="all",
                   help="model: isnet model file (.pt); onnx: .onnx (opset 18, dynamic batch); "
                        "torch_export: torch.export program (.pt2); all (default): the three")
    p.add_argument("--size", type=int, help="input size to record in the preprocessing and fix in the ONNX / "
                   "torch.export graphs (default: the run's config.yaml next to checkpoints/, else 64)")
    p.set_defaults(run=_export)

    p = sub.add_parser("predict", help="classify images on disk with an exported model and write a CSV")
    p.add_argument("--model", required=True, help="exported model: isnet model file (.pt), .onnx or .pt2")
    p.add_argument("--images", required=True, nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="CSV file: image, predicted_class, one probability per class")
    p.add_argument("--heatmaps", metavar="DIR", help="also write LRP heatmaps of the predicted class here "
                                                     "(isnet model files only)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--size", type=int, help="resize images to SIZE x SIZE (default: the model's)")
    _add_lrp_arguments(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_predict)

    p = sub.add_parser("explain", help="LRP heatmaps of a saved model for images on disk")
    p.add_argument("--model", required=True, help="isnet model file (.pt)")
    p.add_argument("--images", required=True, nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder for PNG heatmaps")
    p.add_argument("--classes", type=int, nargs="+", help="logit indices to explain (default: all)")
    p.add_argument("--size", type=int, help="resize images to SIZE x SIZE (default: the model's)")
    _add_lrp_arguments(p)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_explain)

    p = sub.add_parser("benchmark", help="train a standard classifier, an ISNet and a reference on the "
                       "built-in biased data and compare them on biased, standard and deceiving tests")
    p.add_argument("--out", default="runs/benchmark")
    p.add_argument("--profile", choices=["quick", "long"], default="quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--isnet-epochs", type=int, help="epochs of the ISNet and its variants on every benchmark")
    p.add_argument("--standard-epochs", type=int, help="epochs of the standard classifier on every benchmark")
    p.add_argument("--warm-start", help="comma-separated systems that start from the trained standard classifier's "
                                        "weights (default: isnet and its variants), or 'none' for the paper's "
                                        "random start")
    p.add_argument("--selective-class", choices=SELECTIVE_CLASSES,
                   help=f"the logit whose softmax quantity isnet_selective explains (default: {defaults.SELECTIVE_CLASS})")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--models", default="standard,isnet,reference",
                   help=f"comma-separated systems ({', '.join(METHODS)}, and reference: a standard classifier "
                        "trained without the bias) or 'all' (then on both benchmarks unless --datasets says otherwise)")
    p.add_argument("--datasets", help="comma-separated built-in benchmarks: digits, radiographs, or 'all' "
                                      "(default: digits; all with --models all)")
    p.add_argument("--no-background-swap", action="store_true",
                   help="skip the background-swap test of every model and test set")
    # Checked by run_benchmark against isnet.data.radiographs.VARIANTS (not imported here: it loads Lightning).
    p.add_argument("--radiograph-variant",
                   help="where the radiograph sources' traits lie: 'background' (default: outside the lungs only) "
                        "or 'in-lung' (their contrast and noise change the lungs too, out of reach of any "
                        "mask-based method)")
    # checked by run_benchmark against isnet.data.bias.BIAS_KINDS (importing it here would load lightning
    # for every command)
    p.add_argument("--bias", default="shapes",
                   help="the digits benchmark's background bias: shapes (a white shape in a class's corner, the "
                        "paper's Table 1), scene (each class's backgrounds mostly from its own textures) or text "
                        "(a class's word in the background); default: shapes")
    p.set_defaults(run=_benchmark)

    p = sub.add_parser("demo", help="train a small CNN on MNIST digits and render its heatmaps")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # the command owns its process: reuse freed blocks across training steps
    try:
        return args.run(args)
    except (ValueError, TypeError, ExportError, FileNotFoundError) as error:
        print(f"isnet {args.command}: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:  # training diverged (non-finite loss, dead relevance)
        print(f"isnet {args.command}: error: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
