"""Data tab: `data check` on a dataset — statistics, the duration histogram, problem rows with players."""

from __future__ import annotations

import gradio as gr

from ..audio import LongAudioPolicy
from ..data.check import CheckReport
from ..models.families import FAMILIES
from .common import Context, shown_errors
from .datacheck import CheckRequest, check, rows_audio
from .render import issues_html

SHOWN_ISSUES = 30


def _summary_markdown(summary: dict) -> str:
    lines = [f"**{summary['dataset']} [{summary['split']}]** — task {summary['task']}", "",
             "| statistic | value |", "|---|---|",
             f"| rows (usable) | {summary['rows']} ({summary['usable_rows']}) |",
             f"| hours | {summary['hours']:.3f} |",
             "| sample rates | " + (", ".join(f"{k} Hz: {v}" for k, v in summary["sample_rates"].items()) or "—") + " |",
             "| channels | " + (", ".join(f"{k}: {v}" for k, v in summary["channels"].items()) or "—") + " |"]
    for key in ("text_chars", "text_tokens", "audio_tokens"):
        stats = summary[key]
        lines.append(f"| {key.replace('_', ' ')} | " + ("—" if not stats else
                     f"min {stats['min']}, mean {stats['mean']}, p95 {stats['p95']}, max {stats['max']}") + " |")
    lines.append(f"| exit code (as `audiotune data check`) | {summary['exit_code']} |")
    return "\n".join(lines)


BIN_ORDER = list(CheckReport("", "", "").histogram())  # the check's own bins, in order


def _histogram_frame(counts: dict[str, int]):
    import pandas as pd

    frame = pd.DataFrame({"seconds": BIN_ORDER, "clips": [counts.get(label, 0) for label in BIN_ORDER]})
    return frame.astype({"seconds": "str", "clips": "int64"})


def build(ctx: Context) -> None:
    from .trainform import form_spec

    tasks = list(next(s for s in form_spec() if s.name == "task").choices)
    with gr.Row():
        dataset = gr.Textbox(label="dataset (folder, parquet/jsonl/csv manifest under the root, or a Hub id)",
                             scale=3, elem_id="dt-dataset")
        split = gr.Textbox("train", label="split", scale=1, elem_id="dt-split")
        task = gr.Dropdown(tasks, value="caption", label="task", scale=1)
    with gr.Row():
        model = gr.Textbox(label="model (optional: counts text tokens with its tokenizer)", scale=2)
        family = gr.Dropdown(list(FAMILIES), value="af3", label="family (audio token arithmetic without a model)",
                             scale=1)
        audio_column = gr.Textbox(label="audio column (empty: auto)", scale=1)
        text_column = gr.Textbox(label="text column (empty: auto)", scale=1)
        long_audio = gr.Dropdown([p.value for p in LongAudioPolicy], value="window", label="long audio", scale=1)
    run = gr.Button("check", variant="primary", elem_id="dt-check")
    fatal = gr.Markdown(elem_id="dt-fatal")
    with gr.Row():
        summary = gr.Markdown(elem_id="dt-summary")
        histogram = gr.BarPlot(_histogram_frame({}), x="seconds", y="clips", label="durations (clips per bin)",
                               height=240, sort=BIN_ORDER, elem_id="dt-histogram")
    issues = gr.HTML(elem_id="dt-issues")

    @shown_errors
    def run_check(data, split_name, task_name, model_name, family_name, audio_col, text_col, policy,
                  progress=gr.Progress()):
        request = CheckRequest(dataset=data or "", split=(split_name or "train").strip(), task=task_name,
                               model=model_name or "", family=family_name, audio_column=audio_col or "",
                               text_column=text_col or "", long_audio=policy)
        progress(0, desc="opening the dataset")
        report = check(request, ctx.root, on_row=lambda i: progress((i + 1, None), desc="checking rows",
                                                                    unit="rows") if i % 10 == 0 else None)
        summary_dict = {**report.summary(), "dataset": request.dataset.strip()}  # as typed, root-relative
        message = f"**fatal:** {report.fatal}" if report.fatal else ""
        if report.fatal and not report.rows:
            return message, "", _histogram_frame({}), ""
        histogram_frame = _histogram_frame(summary_dict["duration_histogram"])
        shown = report.issues[:SHOWN_ISSUES]
        progress(0.9, desc="decoding the problem rows' clips")
        audio, rate = rows_audio(request, ctx.root, sorted({i.row for i in shown})) if shown else ({}, 16000)
        return (message, _summary_markdown(summary_dict), histogram_frame,
                issues_html(report.issues, audio, rate, SHOWN_ISSUES))

    run.click(run_check, [dataset, split, task, model, family, audio_column, text_column, long_audio],
              [fatal, summary, histogram, issues], concurrency_id="data", concurrency_limit=2)
