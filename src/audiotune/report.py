"""The run report: ``report.md`` and a self-contained ``report.html`` a person reads in a minute.

What it answers, top to bottom: did the run work (metric table, base vs tuned side by side), did
training behave (loss curves, metrics over steps), where does the model fail (per-sample table, worst
first), and what do the clips sound like (audio players for the first few). Plots are PNGs made with
matplotlib (Agg); the HTML embeds them and the audio as data URIs so it opens anywhere.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from .audio import encode_audio
from .metrics import LOWER_IS_BETTER, best_value
from .tasks import headline_metric, metric_names

if TYPE_CHECKING:
    from .conversation import Example

MAX_SAMPLE_ROWS = 50


@dataclass
class ModelScores:
    """One model's corpus metrics and per-clip prediction rows."""

    name: str
    metrics: dict[str, float]
    predictions: list[dict[str, Any]]


@dataclass
class EvalReport:
    """What an evaluation produced (every model on the same rows), the input of the report written here; it lives
    beside its renderer so that ``evaluate`` (which makes one) and the report import in one direction only."""

    out_dir: Path
    task: str
    models: list[ModelScores]
    notices: list[str]
    skipped: list[dict[str, str]]
    report_md: Path | None = None
    report_html: Path | None = None
    audio_examples: list[Example] = field(default_factory=list, repr=False)  # the clips the report can play
    sampling_rate: int = 16000
    config: dict[str, Any] = field(default_factory=dict)

    def table(self) -> dict[str, dict[str, float]]:
        return {m.name: m.metrics for m in self.models}

    def metric_order(self) -> list[str]:
        return metric_names(self.task, list(self.models[0].metrics)) if self.models else []


def metrics_table(columns: dict[str, dict[str, float]], metrics: list[str] | tuple[str, ...]) -> str:
    """Markdown table: one row per metric, one column per model."""
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric in metrics:
        values = [columns[n].get(metric) for n in names]
        lines.append(f"| {metric} | " + " | ".join("—" if v is None else f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)


def _training_history(run: Path | None) -> list[dict[str, Any]]:
    if run is None or not (Path(run) / "train_metrics.json").exists():
        return []
    return json.loads((Path(run) / "train_metrics.json").read_text()).get("log_history", [])


def plot_training(history: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """loss.png (train and eval loss by step) and, when logged, metrics.png (eval metrics by step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: list[Path] = []
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return plots
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="#d62728")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png")
    plt.close(fig)
    plots.append(out_dir / "loss.png")

    generated = sorted({k for h in history for k in h if k.startswith("eval_gen_") and not k.endswith("vocabulary")})
    if generated:
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        for key in generated:
            points = [(h["step"], h[key]) for h in history if key in h]
            ax.plot(*zip(*points), "o-", label=key.removeprefix("eval_gen_"))
        ax.set_xlabel("step")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "metrics.png")
        plt.close(fig)
        plots.append(out_dir / "metrics.png")
    return plots


def _sample_rows(report: "EvalReport") -> tuple[str, list[dict[str, Any]]]:
    """Per-clip rows, worst first by the headline metric of the last model (the tuned one)."""
    metric = headline_metric(report.task)
    rows = _all_rows(report)
    for row, scored in zip(rows, report.models[-1].predictions):
        row["score"] = scored["scores"].get(metric)
    worst_first = metric not in LOWER_IS_BETTER
    rows.sort(key=lambda r: (r["score"] is None, (r["score"] or 0.0) if worst_first else -(r["score"] or 0.0)))
    return metric, rows[:MAX_SAMPLE_ROWS]


def _wav_data_uri(audio: np.ndarray, rate: int) -> str:
    return "data:audio/wav;base64," + base64.b64encode(encode_audio(audio, rate)).decode()


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .6em;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.best{font-weight:bold;background:#e8f5e9}.notice{background:#fff8e1;padding:.4em .8em;border-left:4px solid #f9a825}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}img{max-width:100%;border:1px solid #eee}
.refs{color:#555;font-size:.9em}
"""


def write_report(report: "EvalReport", audio_examples: list["Example"], rate: int,
                 training_run: str | Path | None = None, summary: dict[str, Any] | None = None,
                 config: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``report.out_dir``; return both paths."""
    out = Path(report.out_dir)
    run = Path(training_run) if training_run else None
    history = _training_history(run)
    plots = plot_training(history, out / "plots")
    metrics = report.metric_order()
    table = report.table()
    metric, samples = _sample_rows(report)
    run_config = (run / "run_config.yaml").read_text() if run and (run / "run_config.yaml").exists() else None
    title = "audiotune report"

    md = [f"# {title}", ""]
    md += [f"- {k}: {v}" for k, v in (summary or {}).items()]
    md += [f"- task: {report.task}; models: {', '.join(table)}; clips: {len(report.models[0].predictions)}; "
           f"bad rows skipped: {len(report.skipped)}"]
    md += [f"- note: {n}" for n in report.notices]
    md += ["", "## Metrics", "", metrics_table(table, metrics), ""]
    if plots:
        md += ["## Training", ""] + [f"![{p.stem}](plots/{p.name})" for p in plots] + [""]
    md += [f"## Samples, worst first by {metric} ({report.models[-1].name})", "",
           "| clip | " + " | ".join(table) + f" | {metric} | references |", "|---" * (len(table) + 3) + "|"]
    for s in samples:
        preds = " | ".join(_md_cell(s["predictions"][n]) for n in table)
        score = "—" if s["score"] is None else f"{s['score']:.3f}"
        md.append(f"| {s['id']} | {preds} | {score} | {_md_cell(' / '.join(s['references']))} |")
    if run_config or config:
        md += ["", "## Configuration", "", "```yaml", (run_config or yaml.safe_dump(config, sort_keys=False)).rstrip(),
               "```"]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n")

    h = [f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head>",
         f"<body><h1>{title}</h1><ul>"]
    h += [f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in (summary or {}).items()]
    h += [f"<li><b>task</b>: {report.task}; <b>clips</b>: {len(report.models[0].predictions)}; "
          f"<b>bad rows skipped</b>: {len(report.skipped)}</li></ul>"]
    h += [f"<p class='notice'>{html.escape(n)}</p>" for n in report.notices]
    h += ["<h2>Metrics</h2>", _html_metric_table(table, metrics)]
    if plots:
        h += ["<h2>Training</h2>"] + [f"<p><img alt='{p.stem}' src='{_png_data_uri(p)}'></p>" for p in plots]
    if audio_examples:
        h += ["<h2>Listen</h2><table><tr><th>clip</th><th>audio</th>"
              + "".join(f"<th>{html.escape(n)}</th>" for n in table) + "<th>references</th></tr>"]
        by_id = {s["id"]: s for s in _all_rows(report)}
        for example in audio_examples:
            row = by_id.get(example.id)
            if row is None or not example.audios():
                continue
            h.append(f"<tr><td>{html.escape(example.id)}</td><td><audio controls preload='none' "
                     f"src='{_wav_data_uri(example.audios()[0], rate)}'></audio></td>"
                     + "".join(f"<td>{html.escape(row['predictions'][n])}</td>" for n in table)
                     + f"<td class='refs'>{html.escape(' / '.join(row['references']))}</td></tr>")
        h.append("</table>")
    h += [f"<h2>Samples, worst first by {metric} ({html.escape(report.models[-1].name)})</h2><table><tr><th>clip</th>"
          + "".join(f"<th>{html.escape(n)}</th>" for n in table) + f"<th>{metric}</th><th>references</th></tr>"]
    for s in samples:
        score = "—" if s["score"] is None else f"{s['score']:.3f}"
        h.append(f"<tr><td>{html.escape(s['id'])}</td>"
                 + "".join(f"<td>{html.escape(s['predictions'][n])}</td>" for n in table)
                 + f"<td class='num'>{score}</td><td class='refs'>{html.escape(' / '.join(s['references']))}</td></tr>")
    h.append("</table>")
    if run_config or config:
        h += ["<h2>Configuration</h2><pre>",
              html.escape(run_config or yaml.safe_dump(config, sort_keys=False)), "</pre>"]
    # Marks each image as loaded or not, so a broken plot is visible in the DOM (and checked by the tests).
    h.append("<script>window.addEventListener('load',()=>{for(const i of document.images)"
             "{i.dataset.loaded=(i.complete&&i.naturalWidth>0)?'yes':'no'}})</script>")
    h.append("</body></html>")
    html_path = out / "report.html"
    html_path.write_text("\n".join(h))
    return md_path, html_path


def _all_rows(report: "EvalReport") -> list[dict[str, Any]]:
    by_model = {m.name: {row["id"]: row for row in m.predictions} for m in report.models}
    return [{"id": row["id"], "references": row["references"],
             "predictions": {n: by_model[n][row["id"]]["prediction"] for n in by_model}}
            for row in report.models[-1].predictions]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _html_metric_table(table: dict[str, dict[str, float]], metrics: list[str]) -> str:
    names = list(table)
    rows = ["<table><tr><th>metric</th>" + "".join(f"<th>{html.escape(n)}</th>" for n in names) + "</tr>"]
    for metric in metrics:
        values = [table[n].get(metric) for n in names]
        best = best_value(metric, values)
        cells = "".join(
            "<td class='num'>—</td>" if v is None else
            f"<td class='num{' best' if best is not None and v == best else ''}'>{v:.4f}</td>" for v in values)
        rows.append(f"<tr><td>{metric}</td>{cells}</tr>")
    rows.append("</table>")
    return "".join(rows)
