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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="isnet", description="ISNet: classifiers trained to ignore background bias.")
    sub = parser.add_subparsers(dest="command", required=True)

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
