"""Training-step time of an ISNet relative to a standard classifier, measured side by side.

One step = forward (with the B x K heatmaps for the ISNet), loss, backward and SGD
update, as :class:`isnet.training.ISNetModule` does it.  Prints the median step
time of both and their ratio for each K.  Usage::

    python benchmarks/training_speed.py [--arch densenet121] [--size 64] [--batch 4] [--classes 3 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from explain_speed import median_time  # noqa: E402

from isnet.training import ISNetModule  # noqa: E402


def step_time(module: ISNetModule, batch: dict, repeats: int) -> float:
    optimiser = module.configure_optimizers()
    module.train()

    def step() -> None:
        loss = module._step(batch, "train")
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimiser.step()

    return median_time(step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="densenet121")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--classes", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"arch={args.arch} size={args.size} batch={args.batch} threads={torch.get_num_threads()} "
          f"repeats={args.repeats} torch={torch.__version__}")
    print(f"{'K':>4}{'standard s':>12}{'isnet s':>10}{'ratio':>8}{'target 1+K':>12}")
    for k in args.classes:
        batch = {
            "image": torch.rand(args.batch, 3, args.size, args.size),
            "mask": (torch.rand(args.batch, 1, args.size, args.size) > 0.5).float(),
            "label": torch.randint(0, k, (args.batch,)),
        }
        standard = ISNetModule(args.arch, k, P=0.0)
        isnet = ISNetModule(args.arch, k, P=0.7)
        isnet.load_state_dict(standard.state_dict())
        isnet.log_dict = standard.log_dict = lambda *a, **kw: None  # no trainer attached
        isnet.log = standard.log = lambda *a, **kw: None
        t_std = step_time(standard, batch, args.repeats)
        t_isn = step_time(isnet, batch, args.repeats)
        print(f"{k:>4}{t_std:>12.3f}{t_isn:>10.3f}{t_isn / t_std:>8.2f}{1 + k:>12}")


if __name__ == "__main__":
    main()
