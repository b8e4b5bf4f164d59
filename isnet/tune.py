"""Hyper-parameter search (Appendix F.3).

Every setting is trained on the synthetically biased training set and scored on the
validation set without the bias, penalising the gap to its biased version:

``score = maF1(val, standard) - |maF1(val, biased) - maF1(val, standard)|``

ISNet (and its Grad*Input ablation) searches ``P in {0.2, 0.4, 0.6, 0.8} x
d in {0.9, 0.996, 1}`` and then refines P by +/-0.1 at the best d; the multi-task
U-Net searches its P from 0.1 to 0.9 then +/-0.05; RRR searches lambda1 over powers
of 10; GAIN the attention-mining and external-supervision weights over
{1, 10, 100, 1000}.  On near ties the paper prefers higher P and lower d; the table
lets the user apply that judgement.
"""

from __future__ import annotations

import csv
import itertools
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lightning as L

from .data import MaskedImageDataModule
from .evaluation import collect_outputs
from .jsonio import write_json
from .metrics import evaluate_scores
from .systems.registry import METHODS, build_system
from .training import train

GRIDS: dict[str, dict[str, list[float]]] = {
    name: {argument: list(values) for argument, values in spec.grid.items()}
    for name, spec in METHODS.items() if spec.grid
}
"""The first-stage grid of each method (:attr:`isnet.systems.registry.SystemSpec.grid`)."""

REFINE: dict[str, tuple[str, float]] = {name: spec.refine for name, spec in METHODS.items() if spec.refine}
"""Second stage: the parameter refined around the best first-stage setting, and its step
(:attr:`isnet.systems.registry.SystemSpec.refine`)."""


def tune_score(f1_standard: float, f1_biased: float) -> float:
    """``f1_standard - |f1_biased - f1_standard|`` (higher is better)."""
    return f1_standard - abs(f1_biased - f1_standard)


def _macro_f1(module: Any, dataset: Any, classes: Sequence[str], multilabel: bool) -> float:
    out = collect_outputs(module.deployed, dataset, multilabel=multilabel)
    return evaluate_scores(out.labels, out.scores, class_names=classes, multilabel=multilabel,
                           draws=10)["macro_f1"]


def refinement(method: str, best: Mapping[str, float]) -> list[dict[str, float]]:
    """Second-stage settings: the refined parameter +/- its step around ``best`` (kept in [0, 1))."""
    if method not in REFINE:
        return []
    name, step = REFINE[method]
    out = []
    for sign in (-1, 1):
        value = round(best[name] + sign * step, 6)
        if 0 < value < 1:
            out.append({**best, name: value})
    return out


def run_tune(method: str, datamodule: MaskedImageDataModule, out: str | Path, *, epochs: int,
             settings: Mapping[str, Any] | None = None, grid: Mapping[str, Sequence[float]] | None = None,
             refine: bool = True, seed: int = 0, progress: bool = True,
             train_options: Mapping[str, Any] | None = None,
             log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run the search and write ``grid.csv``, ``grid.md`` and ``best.json`` to ``out``.

    Args:
        method: a method with a grid in :data:`GRIDS` (or pass ``grid``).
        datamodule: a data module built with ``bias=True`` (the protocol needs the synthetic bias).
        epochs: training epochs of every setting.
        settings: fixed arguments of the method's module (backbone, lr, ...).
        grid: ``{parameter: values}`` replacing the default first stage.
        refine: run the second stage.

    Returns:
        One row per trained setting: its parameters, both validation macro-F1s, the score and stage.
    """
    if not datamodule.use_bias:
        raise ValueError("tuning follows Appendix F.3 and needs the synthetic bias: build the data with bias=True")
    grid = dict(grid or GRIDS.get(method) or {})
    if not grid:
        raise ValueError(f"no search grid for method {method!r}; pass one (known: {', '.join(GRIDS)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datamodule.setup()
    val_biased = datamodule.val_set
    val_standard = datamodule.variant_set("val", "standard")
    classes, multilabel = datamodule.classes, datamodule.multilabel
    fixed = dict(settings or {})
    rows: list[dict[str, Any]] = []

    def run(params: dict[str, float], stage: str) -> None:
        name = "_".join(f"{k}={v:g}" for k, v in params.items())
        L.seed_everything(seed, verbose=False)
        started = time.perf_counter()
        module = build_system(method, datamodule.num_classes, class_names=classes, multilabel=multilabel,
                              **{**fixed, **params})
        module, _ = train(module, datamodule, out / "runs" / name, max_epochs=epochs, progress=progress,
                          **dict(train_options or {}))
        module.eval()
        f1_std = _macro_f1(module, val_standard, classes, multilabel)
        f1_bias = _macro_f1(module, val_biased, classes, multilabel)
        row = {**params, "val_standard_macro_f1": f1_std, "val_biased_macro_f1": f1_bias,
               "score": tune_score(f1_std, f1_bias), "stage": stage, "seconds": time.perf_counter() - started}
        rows.append(row)
        log(f"[isnet tune] {method} {name}: standard {f1_std:.3f}, biased {f1_bias:.3f}, score {row['score']:.3f}")

    names = list(grid)
    for values in itertools.product(*(grid[n] for n in names)):
        run(dict(zip(names, (float(v) for v in values))), "grid")
    if refine:
        best = max(rows, key=lambda r: r["score"])
        done = [{n: r[n] for n in names} for r in rows]
        for params in refinement(method, {n: best[n] for n in names}):
            if params not in done:
                run(params, "refine")
    _write(out, method, names, rows)
    return rows


def _write(out: Path, method: str, names: list[str], rows: list[dict[str, Any]]) -> None:
    columns = names + ["val_standard_macro_f1", "val_biased_macro_f1", "score", "stage", "seconds"]
    with (out / "grid.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    best = max(rows, key=lambda r: r["score"])
    lines = [f"# isnet tune: {method}", "",
             "score = maF1(val, standard) - |maF1(val, biased) - maF1(val, standard)| (Appendix F.3)", "",
             "| " + " | ".join(columns[:-1]) + " |", "|" + " --- |" * (len(columns) - 1)]
    for r in sorted(rows, key=lambda r: -r["score"]):
        cells = [f"{r[n]:g}" for n in names] + [f"{r[c]:.3f}" for c in columns[len(names):-2]] + [r["stage"]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Best: " + ", ".join(f"{n} = {best[n]:g}" for n in names) + f" (score {best['score']:.3f})", ""]
    (out / "grid.md").write_text("\n".join(lines))
    write_json(out / "best.json", {"method": method, "best": {n: best[n] for n in names}, "score": best["score"]})

