"""The regression view: every model on every benchmark in one table, each difference from the first model (the base
under ``--compare``) marked where it is outside the noise.

Why: after tuning on one's own captions the question is "did it cost general ability?", which no single benchmark
answers and no difference answers without its noise. A difference counts as real when the 95% paired bootstrap
interval of (model − base) over the same clips excludes zero (:func:`metrics.bootstrap_interval`: WER resampled as a
corpus ratio, accuracy and CIDEr-D as means over clips). Each benchmark keeps its own folder with its own report;
this writes ``regression.json``, ``regression.md`` and ``regression.html`` beside them.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .metrics import LOWER_IS_BETTER, bootstrap_interval
from .report import EvalReport
from .tasks import headline_metric

_CSS = ("body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}th:first-child,td:first-child"
        "{text-align:left}.better{background:#e3f4e3}.worse{background:#f8e1e1}.note{color:#555}")


@dataclass
class Cell:
    """One model on one benchmark: its headline value and, against the base, the difference and its interval."""

    value: float | None
    difference: float | None = None
    interval: tuple[float, float] | None = None
    verdict: str = ""  # "better" | "worse" | "within noise" | "" (the base itself, or no interval)


def compare(reports: dict[str, EvalReport], normalizer: str = "whisper") -> dict[str, dict[str, Cell]]:
    """{benchmark: {model: Cell}}; the first model of each report is the base the others are compared with."""
    table: dict[str, dict[str, Cell]] = {}
    for name, report in reports.items():
        metric = headline_metric(report.task)
        base = report.models[0]
        row: dict[str, Cell] = {}
        for model in report.models:
            value = model.metrics.get(metric)
            if model is base or value is None:
                row[model.name] = Cell(value)
                continue
            interval = bootstrap_interval(model.predictions, metric, base.predictions, normalizer)
            difference = value - base.metrics[metric] if base.metrics.get(metric) is not None else None
            verdict = ""
            if interval is not None:
                lower_better = metric in LOWER_IS_BETTER
                if interval[0] > 0 or interval[1] < 0:
                    verdict = "better" if (interval[0] > 0) != lower_better else "worse"
                else:
                    verdict = "within noise"
            row[model.name] = Cell(value, difference, interval, verdict)
        table[name] = row
    return table


def write_regression(out: str | Path, reports: dict[str, EvalReport], normalizer: str = "whisper"
                     ) -> tuple[Path, Path]:
    """``regression.json``, ``regression.md`` and ``regression.html`` in ``out``; returns the two reports' paths."""
    out = Path(out)
    table = compare(reports, normalizer)
    models = list(next(iter(table.values())))
    metrics = {name: headline_metric(report.task) for name, report in reports.items()}
    (out / "regression.json").write_text(json.dumps(
        {"base": models[0], "metrics": metrics,
         "table": {b: {m: asdict(c) for m, c in row.items()} for b, row in table.items()}}, indent=2))

    def text(cell: Cell) -> str:
        if cell.value is None:
            return "—"
        if cell.difference is None:
            return f"{cell.value:.4f}"
        interval = f" [{cell.interval[0]:+.4f}, {cell.interval[1]:+.4f}]" if cell.interval else ""
        return f"{cell.value:.4f} ({cell.difference:+.4f}{interval}, {cell.verdict or 'no interval'})"

    note = (f"Each difference is against {models[0]}, with its 95% paired bootstrap interval over the same clips; "
            "'better'/'worse': the interval excludes zero. Each benchmark's own report is in its folder.")
    md = ["# audiotune regression view", "", note, "",
          "| benchmark | metric | " + " | ".join(models) + " |", "|---|---|" + "---|" * len(models)]
    md += [f"| [{b}]({b}/report.md) | {metrics[b]} | " + " | ".join(text(row[m]) for m in models) + " |"
           for b, row in table.items()]
    md_path = out / "regression.md"
    md_path.write_text("\n".join(md) + "\n")

    cells = []
    for b, row in table.items():
        tds = "".join(f"<td class='{row[m].verdict if row[m].verdict in ('better', 'worse') else ''}'>"
                      f"{html.escape(text(row[m]))}</td>" for m in models)
        cells.append(f"<tr><td><a href='{html.escape(b)}/report.html'>{html.escape(b)}</a></td>"
                     f"<td>{html.escape(metrics[b])}</td>{tds}</tr>")
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>audiotune regression view</title>"
            f"<style>{_CSS}</style></head><body><h1>audiotune regression view</h1><p class='note'>"
            f"{html.escape(note)}</p><table><tr><th>benchmark</th><th>metric</th>{head}</tr>{''.join(cells)}"
            "</table></body></html>")
    html_path = out / "regression.html"
    html_path.write_text(page)
    return md_path, html_path
