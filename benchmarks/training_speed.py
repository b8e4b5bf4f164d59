"""Training-step time of an ISNet relative to a standard classifier, measured side by side.

One step = forward (with the B x K heatmaps for the ISNet), loss, backward and SGD
update, as :class:`isnet.systems.isnet.ISNetModule` does it.  Prints the median step
time of both and their ratio for each K.

``--variant selective|stochastic|dual`` times a Faster ISNet variant (one heatmap per image,
or one per rule for ``dual``) instead, together with the full ISNet, and prints both ratios
to the standard step and the variant's to the full ISNet's (``--deep-supervision`` adds LRP
deep supervision to the variant).

Each model is timed in its own fresh process, as training runs it: in one shared
process the ISNet's large temporary tensors change the allocator's and the caches'
state and slow the standard step down by up to a third, which would flatter the
ratio.  The processes alternate (standard, ISNet, standard, ISNet, ...) for
``--rounds`` rounds, so that slow drifts of the machine hit both alike, and the
median is taken over all timed steps of a model.

Both processes first call :func:`isnet.allocator.keep_freed_memory`, as the ``isnet``
command does (``--default-allocator`` leaves glibc's malloc as it is).

``--breakdown`` also profiles a few steps of each and prints the time spent in
convolutions (forward, transposed and their backward passes) and matrix products per step.  The
ISNet's convolution time over the standard's *whole* step is the ratio that the
ISNet would reach if everything else (element-wise LRP arithmetic, batch-norm
statistics, autograd bookkeeping) were free; the convolution FLOPs alone are
(1 + K) times the standard step's (the forward, K transposed maps and twice as much
again in the backward pass).  With ``--variant`` it also prints the variant's
*floor*, ``1 + (variant conv - standard conv) / standard step``: the ratio the
variant would reach if its step cost no more than the standard's outside the
convolutions and matrix products, i.e. if the LRP pass's element-wise arithmetic and bookkeeping were
free.  No implementation that runs these convolution kernels can be faster.  Usage::

    python benchmarks/training_speed.py [--arch densenet121] [--size 64] [--batch 4] [--classes 3 10]
        [--variant selective|stochastic|dual [--deep-supervision]]
        [--memory-format channels_last|contiguous] [--device cpu|cuda] [--breakdown] [--default-allocator]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from isnet.systems.variants import VARIANTS


def make_step(module, batch: dict):
    optimiser = module.configure_optimizers()
    module.train()
    cuda = batch["image"].is_cuda

    def step() -> None:
        loss = module._step(batch, "train")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimiser.step()
        if cuda:
            torch.cuda.synchronize()  # wall time of the whole step, not of its launch

    return step


def convolution_seconds(step, repeats: int = 3) -> float:
    """Seconds per step spent in convolution operators and matrix products (the LRP pass runs
    1x1 convolutions as matrix products; self CPU time, so nothing counts twice; on the CPU only)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    total_us = sum(e.self_cpu_time_total for e in prof.key_averages()
                   if "convolution" in e.key or e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    return total_us / 1e6 / repeats


def worker(args: argparse.Namespace) -> None:
    """Time one model in this process and print ``{"times": [...], "conv": s}`` as JSON."""
    from isnet.allocator import keep_freed_memory
    from isnet.systems.isnet import ISNetModule

    if not args.default_allocator:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # both models start from the same weights
    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    k = args.worker_classes
    batch = {
        "image": torch.rand(args.batch, 3, args.size, args.size).contiguous(memory_format=fmt),
        "mask": (torch.rand(args.batch, 1, args.size, args.size) > 0.5).float(),
        "label": torch.randint(0, k, (args.batch,)),
    }
    batch = {key: value.to(args.device) for key, value in batch.items()}
    variant = {"standard": {"P": 0.0}, "isnet": {}}.get(args.worker, {"variant": args.worker})
    if args.worker not in ("standard", "isnet") and args.deep_supervision:
        variant["deep_supervision"] = True
    module = ISNetModule(args.arch, k, **{"P": 0.7, **variant},
                         channels_last=args.memory_format == "channels_last").to(args.device)
    module.log_dict = module.log = lambda *a, **kw: None  # no trainer attached
    step = make_step(module, batch)
    for _ in range(2):
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result = {"times": times}
    if args.breakdown:
        result["conv"] = convolution_seconds(step)
    print(json.dumps(result))


def run_worker(args: argparse.Namespace, model: str, k: int) -> dict:
    command = [sys.executable, __file__, "--worker", model, "--worker-classes", str(k)]
    for name in ("arch", "size", "batch", "repeats", "threads", "memory_format", "device"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    for flag in ("breakdown", "default_allocator", "deep_supervision"):
        if getattr(args, flag):
            command.append(f"--{flag.replace('_', '-')}")
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, nargs="+", help="K values (default: 3 10; 3 10 14 with --variant)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="alternating processes per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--breakdown", action="store_true", help="also profile the time spent in convolutions")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's malloc settings as they are (see isnet.allocator)")
    parser.add_argument("--variant", choices=[v for v in VARIANTS if v != "full"],
                        help="also time this Faster ISNet variant (isnet.systems.variants)")
    parser.add_argument("--deep-supervision", action="store_true", help="the variant with LRP deep supervision")
    parser.add_argument("--worker", choices=["standard", "isnet", *VARIANTS[1:]], help=argparse.SUPPRESS)
    parser.add_argument("--worker-classes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.classes is None:
        args.classes = [3, 10, 14] if args.variant else [3, 10]
    if args.worker:
        worker(args)
        return
    print(f"device={args.device} arch={args.arch} size={args.size} batch={args.batch} threads={args.threads} "
          f"steps={args.repeats}x{args.rounds} processes memory_format={args.memory_format} "
          f"allocator={'default' if args.default_allocator else 'keep_freed_memory'} torch={torch.__version__}")
    models = ["standard", "isnet"] + ([args.variant] if args.variant else [])
    header = f"{'K':>4}{'standard s':>12}{'isnet s':>10}{'ratio':>8}{'target 1+K':>12}"
    if args.variant:
        header += f"{args.variant + ' s':>14}{'ratio':>8}{'/ isnet':>9}"
    if args.breakdown:
        header += f"{'std conv s':>12}{'isnet conv s':>14}{'conv-only ratio':>17}"
        if args.variant:
            header += f"{args.variant + ' conv s':>20}{'floor':>8}"
    print(header, flush=True)
    for k in args.classes:
        runs: dict[str, list[dict]] = {model: [] for model in models}
        for _ in range(args.rounds):
            for model in runs:
                runs[model].append(run_worker(args, model, k))
        median = {m: statistics.median(t for r in runs[m] for t in r["times"]) for m in runs}
        t_std, t_isn = median["standard"], median["isnet"]
        line = f"{k:>4}{t_std:>12.3f}{t_isn:>10.3f}{t_isn / t_std:>8.2f}{1 + k:>12}"
        if args.variant:
            t_var = median[args.variant]
            line += f"{t_var:>14.3f}{t_var / t_std:>8.2f}{t_var / t_isn:>9.2f}"
        if args.breakdown:
            conv = {m: statistics.median(r["conv"] for r in runs[m]) for m in runs}
            c_std, c_isn = conv["standard"], conv["isnet"]
            line += f"{c_std:>12.3f}{c_isn:>14.3f}{c_isn / t_std:>17.2f}"
            if args.variant:
                c_var = conv[args.variant]
                line += f"{c_var:>20.3f}{1 + (c_var - c_std) / t_std:>8.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
