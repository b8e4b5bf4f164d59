"""Reports a person can read: ``report.md`` and a self-contained ``report.html``.

A :class:`Report` is a list of blocks (headings, paragraphs, tables, figures) written
both as Markdown and as HTML with the figures embedded, so the HTML file opens
anywhere without network access or the figure files.  :func:`evaluation_report`
lays out the statistics of :func:`isnet.evaluation.evaluate` in tables shaped like the
paper's Tables 1 to 5.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .metrics.classification import RATES


@dataclass
class Report:
    """An ordered list of blocks; figure paths are relative to the folder the report is written to."""

    title: str
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", text, level))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: Sequence[str]) -> None:
        self.blocks.append(("bullets", list(items)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]], caption: str | None = None) -> None:
        for row in rows:
            if len(row) != len(header):
                raise ValueError(f"table row {list(row)} has {len(row)} cells for {len(header)} columns")
        self.blocks.append(("table", list(header), [list(map(str, r)) for r in rows], caption))

    def figure(self, path: str, caption: str) -> None:
        self.blocks.append(("figure", path, caption))

    def extend(self, other: "Report", prefix: str = "") -> None:
        """Append ``other`` as a section: its title as a level-2 heading, its headings one level deeper."""
        self.heading(prefix + other.title if prefix else other.title, 2)
        for block in other.blocks:
            self.blocks.append(("heading", block[1], min(block[2] + 1, 6)) if block[0] == "heading" else block)

    # -- output ------------------------------------------------------------------------------
    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                out += ["#" * block[2] + " " + block[1], ""]
            elif kind == "paragraph":
                out += [block[1], ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                _, header, rows, caption = block
                if caption:
                    out += [f"*{caption}*", ""]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + " --- |" * len(header))
                out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
                out.append("")
            elif kind == "figure":
                out += [f"![{block[2]}]({block[1]})", "", f"*{block[2]}*", ""]
        return "\n".join(out)

    def html(self, folder: str | Path) -> str:
        """HTML with every figure embedded as a data URI (read from ``folder``)."""
        folder = Path(folder)
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for block in self.blocks:
            kind = block[0]
            if kind == "heading":
                body.append(f"<h{block[2]}>{e(block[1])}</h{block[2]}>")
            elif kind == "paragraph":
                body.append(f"<p>{e(block[1])}</p>")
            elif kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                _, header, rows, caption = block
                cap = f"<caption>{e(caption)}</caption>" if caption else ""
                head = "".join(f"<th>{e(h)}</th>" for h in header)
                cells = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>")
            elif kind == "figure":
                data = base64.b64encode((folder / block[1]).read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{e(block[2])}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{e(block[2])}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
                 "th,td{border:1px solid #bbb;padding:3px 8px;text-align:right}"
                 "th{background:#eee}td:first-child,th:first-child{text-align:left}"
                 "caption{caption-side:top;font-style:italic;text-align:left;padding:4px 0}"
                 "img{max-width:100%}figcaption{font-style:italic;font-size:13px}")
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(self.title)}</title>'
                f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write ``report.md`` and ``report.html`` into ``folder`` (which holds the figures)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        md, page = folder / "report.md", folder / "report.html"
        md.write_text(self.markdown())
        page.write_text(self.html(folder))
        return {"markdown": md, "html": page}


# -- formatting ------------------------------------------------------------------------------
def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def posterior_cell(s: Mapping) -> str:
    """``mean +/- std [HDI]`` of a Bayesian summary."""
    return f"{s['mean']:.3f} ± {s['std']:.3f} [{s['hdi'][0]:.3f}, {s['hdi'][1]:.3f}]"


def interval_cell(value: float | None, ci: Sequence[float] | None) -> str:
    """``value [low, high]``."""
    if value is None:
        return "–"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _auc_cell(a: Mapping) -> str:
    if a.get("auc") is None:
        return "–"
    std = "" if a.get("std") is None else f" ± {a['std']:.3f}"  # None: one positive or negative case
    return f"{a['auc']:.3f}{std} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]"


def _macro_f1_cell(m: Mapping) -> str:
    """Table 1 cell: Bayesian mean +/- std (single-label) or value with Wilson interval (multi-label)."""
    if "bayesian" in m:
        b = m["bayesian"]["macro"]["f1"]
        return f"{b['mean']:.3f} ± {b['std']:.3f}"
    w = m["wilson"]["macro"]["f1"]
    return interval_cell(w["value"], w["ci"])


def _attention_cell(a: Mapping) -> str:
    if a.get("mean") is None:
        return "–"
    std = f" ± {a['std']:.3f}" if a.get("std") is not None else ""
    return f"{a['mean']:.3f}{std}"


# -- the evaluation report ---------------------------------------------------------------------
def evaluation_report(results: Mapping[str, Mapping[str, Mapping]], *, title: str,
                      intro: Sequence[str] = (), drops: Mapping[str, Mapping[str, float]] | None = None,
                      figures: Sequence[tuple[str, str]] = ()) -> Report:
    """Tables of every model on every test set.

    Args:
        results: ``{model: {test_set: metrics}}`` as returned by
            :func:`isnet.evaluation.evaluate` for each model.
        intro: paragraphs written under the title.
        drops: ``{model: {description: value}}`` listed as bullets (e.g. the drop in
            macro-F1 from the biased to the deceiving test).
        figures: ``(file name, caption)`` of PNGs in the report's folder.
    """
    report = Report(title)
    for p in intro:
        report.paragraph(p)
    tests = list(dict.fromkeys(t for per_test in results.values() for t in per_test))
    models = list(results)
    any_metrics = next(m for per_test in results.values() for m in per_test.values())
    classes = any_metrics["classes"]
    multilabel = any_metrics["task"] == "multi-label"

    report.heading("Macro-F1 per test set (Table 1)")
    report.paragraph("Bayesian posterior mean ± std (single-label) or value with 95% Wilson interval (multi-label).")
    report.table(["model"] + tests, [[m] + [_macro_f1_cell(results[m][t]) if t in results[m] else "–" for t in tests]
                                     for m in models])
    if drops:
        report.heading("Drop in macro-F1")
        report.paragraph("Point-estimate macro-F1 lost between test sets (positive: worse on the second).")
        report.bullets([f"{m}: " + ", ".join(f"{k} {v:.3f}" for k, v in d.items()) for m, d in drops.items()])

    for t in tests:
        present = [m for m in models if t in results[m]]
        report.heading(f"Test set `{t}`")
        if multilabel:
            _multilabel_tables(report, results, present, t, classes)
        else:
            _single_label_tables(report, results, present, t, classes)

    if any("attention" in results[m][t] for m in models for t in results[m]):
        report.heading("Background attention of the LRP heatmaps")
        report.paragraph(
            "For the heatmap of each image's true class against its foreground mask: the share of absolute "
            "relevance in the background (lower is better), relevance mass accuracy (positive relevance inside "
            "the mask / all positive relevance) and relevance rank accuracy (share of the |mask| most relevant "
            "pixels inside the mask); mean ± std over the n images that have a mask.")
        rows = []
        for m in models:
            for t in results[m]:
                a = results[m][t].get("attention")
                if a:
                    rows.append([m, t, _attention_cell(a["background_share"]), _attention_cell(a["mass_accuracy"]),
                                 _attention_cell(a["rank_accuracy"]), str(a["background_share"]["n"])])
        report.table(["model", "test set", "background share", "mass accuracy", "rank accuracy", "n"], rows)

    if any("background_swap" in results[m][t] for m in models for t in results[m]):
        _background_swap_table(report, results, models)

    for path, caption in figures:
        report.figure(path, caption)
    return report


def _background_swap_table(report: Report, results: Mapping, models: list[str]) -> None:
    """Macro-F1 on the original and background-swapped images and the flip rates (see
    :func:`isnet.evaluation.background_swap_test`)."""
    report.heading("Background swap")
    report.paragraph(
        "Each test image's foreground (its mask) is pasted, pixel for pixel, on the background of another test "
        "image whose own foreground was filled in from its surroundings: a random one (mixed_rand) or one of the "
        "next class (mixed_next, single-label only); a model that decides from the foreground keeps its decisions "
        "(flip rate 0, the same macro-F1), while high flip rates or a macro-F1 drop on mixed_next show that the "
        "background steers its decisions. Macro-F1 point estimates over the n images with a mask "
        "(original: the same images unswapped; a second n when mixed_next used fewer, for want of a donor of the "
        "next class).")
    rows = []
    for m in models:
        for t in results[m]:
            swap = results[m][t].get("background_swap")
            if not swap:
                continue
            rand, nxt = swap.get("mixed_rand", {}), swap.get("mixed_next", {})
            n = str(rand.get("n", 0)) + (f" / {nxt['n']}" if nxt and nxt.get("n") != rand.get("n") else "")
            rows.append([m, t, n, _num(rand.get("original_macro_f1")), _num(rand.get("macro_f1")),
                         _num(nxt.get("macro_f1")), _num(rand.get("flip_rate")), _num(nxt.get("flip_rate"))])
    report.table(["model", "test set", "n", "macro-F1 original", "mixed_rand", "mixed_next", "flip rate mixed_rand",
                  "flip rate mixed_next"], rows)


def _single_label_tables(report: Report, results: Mapping, models: list[str], t: str, classes: list[str]) -> None:
    rows = []
    for m in models:
        r = results[m][t]
        b = r["bayesian"]
        rows.append([m] + [posterior_cell(b["macro"][k]) for k in RATES] + [posterior_cell(b["accuracy"]),
                                                                           _num(r["auc"]["macro"])])
    report.table(["model", "macro precision", "macro recall", "macro F1", "macro specificity", "accuracy",
                  "AUC (Hand-Till)"], rows,
                 caption=f"{t}: average performance (Table 2 style), posterior mean ± std [95% HDI]; "
                         f"n = {results[models[0]][t]['n']}")
    rows = []
    for m in models:
        r = results[m][t]
        for j, c in enumerate(classes):
            rows.append([m, c] + [posterior_cell(r["bayesian"]["per_class"][k][j]) for k in RATES]
                        + [_auc_cell(r["auc"]["per_class"][j])])
    report.table(["model", "class", "precision", "recall", "F1", "specificity", "AUC ± std [95% CI]"], rows,
                 caption=f"{t}: per class (Table 3 style); AUC one-versus-rest with DeLong's interval")
    if all("wilson" in results[m][t] for m in models):  # binary task: the paper's Wilson intervals too
        rows = []
        for m in models:
            w = results[m][t]["wilson"]["per_class"]
            for j, c in enumerate(classes):
                rows.append([m, c] + [interval_cell(w[k][j]["value"], w[k][j]["ci"]) for k in RATES])
        report.table(["model", "positive class", "precision", "recall", "F1", "specificity"], rows,
                     caption=f"{t}: binary task, value [95% Wilson interval] with each class taken as positive")
    rows = []
    for m in models:
        cm = results[m][t]["confusion_matrix"]
        for j, c in enumerate(classes):
            rows.append([m if j == 0 else "", c] + [str(v) for v in cm[j]])
    report.table(["model", "true \\ predicted"] + list(classes), rows,
                 caption=f"{t}: confusion matrices (Table 4 style)")


def _multilabel_tables(report: Report, results: Mapping, models: list[str], t: str, classes: list[str]) -> None:
    rows = []
    for m in models:
        r = results[m][t]
        w = r["wilson"]["macro"]
        rows.append([m] + [interval_cell(w[k]["value"], w[k]["ci"]) for k in RATES]
                    + [_num(r["accuracy"]), _num(r["auc"]["macro"])])
    report.table(["model", "macro precision", "macro recall", "macro F1", "macro specificity",
                  "exact-match accuracy", "macro AUC"], rows,
                 caption=f"{t}: average performance (Tables 5-6 style), value [95% Wilson interval]; "
                         f"n = {results[models[0]][t]['n']}")
    rows = []
    for m in models:
        r = results[m][t]
        for j, c in enumerate(classes):
            w = r["wilson"]["per_class"]
            rows.append([m, c] + [interval_cell(w[k][j]["value"], w[k][j]["ci"]) for k in RATES]
                        + [_auc_cell(r["auc"]["per_class"][j]), f"{r['thresholds'][j]:.3f}"])
    report.table(["model", "label", "precision", "recall", "F1", "specificity", "AUC ± std [95% CI]", "threshold"],
                 rows, caption=f"{t}: per label; AUC with DeLong's interval")
