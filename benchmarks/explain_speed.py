"""Speed of LRP heatmaps against one forward pass and against batched Gradient*Input.

For each model (random weights, eval mode, float32, CPU), prints the median
wall time of

* ``forward``: one plain forward pass of the batch;
* ``grad*input``: K Gradient*Input maps the fast way: the batch repeated K times,
  one forward and one backward to the input;
* ``explain``: all K LRP heatmaps with :func:`isnet.explain` (tracing included);
* ``engine``: the same with a prebuilt :class:`isnet.LRPGraph` (as ISNet training uses it);

and the ratios measured side by side in the same run.  Usage::

    python benchmarks/explain_speed.py [--size 224] [--batch 2] [--classes 3] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

import isnet


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gradient_times_input(model: torch.nn.Module, x: torch.Tensor, classes: int) -> torch.Tensor:
    xs = x.repeat_interleave(classes, dim=0).requires_grad_(True)
    logits = model(xs)
    picked = logits.view(x.shape[0], classes, -1).diagonal(dim1=1, dim2=2).sum()
    (grad,) = torch.autograd.grad(picked, xs)
    return (xs * grad).view(x.shape[0], classes, *x.shape[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg19", "resnet50", "densenet121"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(
        f"device={device} threads={torch.get_num_threads()} size={args.size} batch={args.batch} "
        f"K={args.classes} repeats={args.repeats} torch={torch.__version__}"
    )
    header = f"{'model':<12}{'forward s':>11}{'grad*in s':>11}{'explain s':>11}{'engine s':>10}" \
             f"{'explain/fwd':>13}{'explain/GxI':>13}{'engine/GxI':>12}"
    print(header)
    for name in args.models:
        model = getattr(torchvision.models, name)(num_classes=args.classes).eval().to(device)
        x = torch.rand(args.batch, 3, args.size, args.size, device=device)
        graph = isnet.LRPGraph(model)

        def run(fn):
            def timed():
                fn()
                sync()
            return timed

        t_fwd = median_time(run(lambda: model(x)), args.repeats)
        t_gxi = median_time(run(lambda: gradient_times_input(model, x, args.classes)), args.repeats)
        t_exp = median_time(run(lambda: isnet.explain(model, x)), args.repeats)
        t_eng = median_time(run(lambda: graph(x)), args.repeats)
        print(
            f"{name:<12}{t_fwd:>11.3f}{t_gxi:>11.3f}{t_exp:>11.3f}{t_eng:>10.3f}"
            f"{t_exp / t_fwd:>13.2f}{t_exp / t_gxi:>13.2f}{t_eng / t_gxi:>12.2f}"
        )


if __name__ == "__main__":
    main()
