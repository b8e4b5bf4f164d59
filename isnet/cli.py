"""The ``isnet`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import defaults


def _explain(args: argparse.Namespace) -> int:
    from .backbones import load_model
    from .lrp import LRPGraph
    from .data.images import find_images, load_image
    from .render import heatmap_grid, heatmap_to_rgb, overlay_rgb, save_png

    model, info = load_model(args.model)
    prep = info.get("preprocessing", {})
    size = args.size or prep.get("size")
    channels = info.get("in_channels", 3)
    paths = find_images(args.images)
    images = torch.stack([load_image(p, channels=channels, size=size) for p in paths])
    graph = LRPGraph(model, epsilon=args.epsilon, zb=not args.no_zb, low=args.low, high=args.high)
    names = info.get("class_names") or [str(i) for i in range(info["num_classes"])]
    classes = args.classes if args.classes is not None else list(range(info["num_classes"]))
    out = Path(args.out)
    maps, logits = [], []
    from tqdm import tqdm

    with torch.no_grad():
        for batch in tqdm(images.split(args.batch_size), desc="explaining", disable=args.quiet):
            lg, hm = graph(batch, classes=classes)
            maps.append(hm)
            logits.append(lg)
    heatmaps, logits = torch.cat(maps), torch.cat(logits)
    predicted = logits.argmax(1).tolist()
    for i, path in enumerate(paths):
        for j, k in enumerate(classes):
            save_png(out / f"{path.stem}_class{k}.png", heatmap_to_rgb(heatmaps[i, j]))
            save_png(out / f"{path.stem}_class{k}_overlay.png", overlay_rgb(images[i], heatmaps[i, j]))
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


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    summary = run_demo(args.out, epochs=args.epochs, seed=args.seed, progress=not args.quiet)
    print(json.dumps(summary, indent=2))
    print(f"wrote {Path(args.out) / 'heatmaps.png'}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from .benchmark import run_benchmark

    overrides = {}
    if args.isnet_epochs is not None:
        overrides["isnet_epochs"] = args.isnet_epochs
    if args.standard_epochs is not None:
        overrides["standard_epochs"] = args.standard_epochs
    report = run_benchmark(args.out, profile=args.profile, seed=args.seed, progress=not args.quiet, **overrides)
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {Path(args.out) / 'report.json'} and {Path(args.out) / 'heatmaps.png'} "
          f"in {report['total_seconds']:.0f} s")
    return 0


def _fit(args: argparse.Namespace) -> int:
    import lightning as L
    import yaml

    from .config import load_config
    from .data import MaskedImageDataModule
    from .training import ISNetModule, train

    cfg = load_config(args.config, args.set)
    L.seed_everything(cfg["seed_everything"], verbose=False)
    data = MaskedImageDataModule(**cfg["data"])
    data.setup()
    model_args = dict(cfg["model"])
    if args.estimate_c_from:
        from .training import estimate_c1_c2

        standard = ISNetModule.load_from_checkpoint(args.estimate_c_from, map_location="cpu")
        model_args["C1"], model_args["C2"] = estimate_c1_c2(standard.backbone, data.val_dataloader())
        cfg["model"].update(C1=model_args["C1"], C2=model_args["C2"])
        print(f"C1 = {model_args['C1']:.4g}, C2 = {model_args['C2']:.4g} from {args.estimate_c_from}")
    module = ISNetModule(num_classes=data.num_classes, class_names=data.classes, **model_args)
    trainer = dict(cfg["trainer"])
    max_epochs = trainer.pop("max_epochs", 48)
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    module, best = train(module, data, out, max_epochs=max_epochs, progress=not args.quiet, **trainer)
    files = module.export(out / "export", preprocessing=_preprocessing(cfg["data"]))
    print(f"best checkpoint: {best}\nexported backbone: {files['model']} and {files['torchscript']}")
    return 0


def _preprocessing(data: dict) -> dict:
    keys = ("size", "grayscale", "equalize", "channels")
    return {k: data[k] for k in keys if k in data}


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
    from .evaluation import evaluate, example_heatmaps, lrp_explainer, pick_examples, validation_thresholds
    from .render import model_heatmap_grid, training_curves
    from .report import evaluation_report
    from .training import ISNetModule

    cfg = load_config(args.config, args.set)
    if args.splits:
        cfg["data"]["test_splits"] = args.splits
    data = MaskedImageDataModule(**cfg["data"])
    data.setup()
    checkpoints = _named_checkpoints(args.checkpoint)
    modules = {name: ISNetModule.load_from_checkpoint(path, map_location="cpu").eval()
               for name, path in checkpoints.items()}
    results, thresholds, explainers = {}, {}, {}
    for name, module in modules.items():
        hp = module.hparams
        if hp.multilabel:
            thresholds[name] = validation_thresholds(module.backbone, data.val_set, batch_size=data.batch_size)
        explainers[name] = None if args.no_heatmaps else lrp_explainer(
            module.backbone, epsilon=hp.epsilon, zb=hp.zb, low=hp.low, high=hp.high)
        if not args.quiet:
            print(f"testing {name}", flush=True)
        results[name] = evaluate(module.backbone, data.test_sets, class_names=data.classes, multilabel=data.multilabel,
                                 thresholds=thresholds.get(name), explainer=explainers[name],
                                 batch_size=data.batch_size, progress=not args.quiet, seed=cfg["seed_everything"])
    out = Path(args.out or Path(cfg["out"]) / "test")
    out.mkdir(parents=True, exist_ok=True)
    saved = {"checkpoints": {n: str(p) for n, p in checkpoints.items()}, "models": results}
    if thresholds:
        saved["thresholds"] = {n: t.tolist() for n, t in thresholds.items()}
    (out / "metrics.json").write_text(json.dumps(saved, indent=2))

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


def _export(args: argparse.Namespace) -> int:
    from .training import ISNetModule

    module = ISNetModule.load_from_checkpoint(args.checkpoint, map_location="cpu").eval()
    prep = {"size": args.size} if args.size else {}
    files = module.export(args.out, preprocessing=prep)
    print("\n".join(f"{k}: {v}" for k, v in files.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isnet", description="ISNet: classifiers trained to ignore background bias.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="train an ISNet (or, with model.P=0, a standard classifier) from a YAML config")
    p.add_argument("--config", help="YAML file with model / data / trainer sections (see configs/)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="override config values")
    p.add_argument("--estimate-c-from", metavar="CHECKPOINT",
                   help="set C1, C2 from the heatmaps of this standard classifier on the val split (Appendix F.3)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_fit)

    p = sub.add_parser("test", help="evaluate checkpoints on every test split (biased / standard / deceiving with bias) and write a report")
    p.add_argument("--config", help="the YAML config used for fit")
    p.add_argument("--checkpoint", required=True, nargs="+", metavar="[NAME=]PATH",
                   help="one or more checkpoints, compared side by side (named after their run folder by default)")
    p.add_argument("--splits", nargs="*", help="test splits (default: all but train and val)")
    p.add_argument("--no-heatmaps", action="store_true",
                   help="skip the LRP heatmaps (background-attention metrics and heatmap figures)")
    p.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--out", help="output folder (default: <out>/test)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_test)

    p = sub.add_parser("export", help="write the plain backbone of a checkpoint (state_dict model file and TorchScript)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, help="input size to record in the preprocessing")
    p.set_defaults(run=_export)

    p = sub.add_parser("explain", help="LRP heatmaps of a saved model for images on disk")
    p.add_argument("--model", required=True, help="isnet model file (.pt)")
    p.add_argument("--images", required=True, nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, help="output folder for PNG heatmaps")
    p.add_argument("--classes", type=int, nargs="+", help="logit indices to explain (default: all)")
    p.add_argument("--size", type=int, help="resize images to SIZE x SIZE (default: the model's)")
    p.add_argument("--epsilon", type=float, default=defaults.EPSILON)
    p.add_argument("--no-zb", action="store_true", help="use LRP-epsilon in the first layer too")
    p.add_argument("--low", type=float, default=defaults.ZB_LOW)
    p.add_argument("--high", type=float, default=defaults.ZB_HIGH)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(run=_explain)

    p = sub.add_parser("benchmark", help="train a standard classifier, an ISNet and a reference on the "
                       "built-in biased data and compare them on biased, standard and deceiving tests")
    p.add_argument("--out", default="runs/benchmark")
    p.add_argument("--profile", choices=["quick", "long"], default="quick")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--isnet-epochs", type=int)
    p.add_argument("--standard-epochs", type=int)
    p.add_argument("--quiet", action="store_true")
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
    try:
        return args.run(args)
    except (ValueError, TypeError) as error:
        print(f"isnet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
