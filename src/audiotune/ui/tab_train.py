"""Train tab: the form generated from TrainConfig, a launched run's live curves and log, stop, resume, past runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from ..config import flat_values
from ..errors import AudiotuneError, ConfigError
from .common import Context, shown_errors
from .jobs import curve_points, list_runs, log_error, log_tail, read_history, run_status, saved_config
from .render import status_markdown
from .trainform import FieldSpec, config_from_form, default_values, display_value, form_spec, groups

OPEN_GROUPS = ("run",)


def _widget(spec: FieldSpec, value: Any):
    label = f"{spec.name}  ({spec.flag})"
    common = dict(label=label, info=spec.help or None, elem_id=f"tr-{spec.name}")
    if spec.kind == "bool":
        return gr.Checkbox(bool(value), **common)
    if spec.kind in ("int", "float") and not spec.optional:  # an empty Number reads as 0: optional ones are text
        return gr.Number(value, precision=0 if spec.kind == "int" else None, **common)
    if spec.kind == "choice":
        return gr.Dropdown(list(spec.choices), value=value, **common)
    placeholder = "empty: default" if spec.optional else None
    return gr.Textbox("" if value is None else str(value), placeholder=placeholder, **common)


def _plot_frame(points: list[dict[str, Any]]):
    """The curves as a long-format frame; None before the first point (an empty frame breaks the plot)."""
    import pandas as pd

    if not points:
        return None
    frame = pd.DataFrame(points, columns=["step", "value", "series"])
    return frame.astype({"step": "int64", "value": "float64", "series": "str"})


def build(ctx: Context) -> None:
    specs = form_spec()

    def run_rows(folder: str):
        base = ctx.root.confine(folder or ".", "runs folder")
        return [[ctx.root.relative(r["run"]), r["status"], f"{r['step']}" + (f"/{r['max_steps']}" if r["max_steps"]
                                                                              else ""),
                 "" if r["last_loss"] is None else f"{r['last_loss']:.4f}"] for r in list_runs(base, ctx.jobs)]

    current = gr.State(None)  # the run folder being watched
    widgets: dict[str, Any] = {}
    defaults = default_values()
    with gr.Row():
        with gr.Column(scale=3):
            for group, fields in groups().items():
                with gr.Accordion(group, open=group in OPEN_GROUPS, elem_id=f"tr-group-{group.split()[0]}"):
                    with gr.Row():
                        for spec in fields:
                            with gr.Column(min_width=220):
                                widgets[spec.name] = _widget(spec, defaults[spec.name])
            with gr.Row():
                start = gr.Button("start training", variant="primary", elem_id="tr-start")
                stop = gr.Button("stop (saves a checkpoint)", variant="stop", elem_id="tr-stop")
                resume = gr.Button("resume", elem_id="tr-resume")
        with gr.Column(scale=2):
            status = gr.Markdown("No run selected: start one, or pick a previous run below.", elem_id="tr-status")
            curve = gr.LinePlot(None, x="step", y="value", color="series", label="loss and metrics",
                                height=260, elem_id="tr-curve")
            log = gr.Textbox(label="log", lines=12, max_lines=12, autoscroll=True, elem_id="tr-log")
            with gr.Row():
                runs_folder = gr.Textbox(ctx.settings.runs, label="runs under", scale=3, elem_id="tr-runs-folder")
                refresh = gr.Button("↻ runs", scale=1, elem_id="tr-refresh")
            try:
                initial = run_rows(ctx.settings.runs)
            except AudiotuneError:  # no runs folder yet
                initial = []
            runs = gr.Dataframe(initial, headers=["run", "status", "step", "last loss"],
                                interactive=False,
                                label="previous runs (select one to watch it, resume it or refill the form)",
                                elem_id="tr-runs")
    timer = gr.Timer(1.0)
    names = [s.name for s in specs]

    def watch(run: str | None):
        if not run:
            return gr.update(), gr.update(), gr.update()
        path = Path(run)
        history = read_history(path)
        points = curve_points(history.get("log_history", []))
        state = run_status(path, ctx.jobs.get(path))
        error = log_error(path) if state.startswith("failed") else None
        return (status_markdown(ctx.root.relative(path), state, history, len(points), error), _plot_frame(points),
                log_tail(path))

    @shown_errors
    def launch(*values):
        cfg = config_from_form(dict(zip(names, values)), ctx.root)
        job = ctx.jobs.launch(cfg)
        gr.Info(f"training started in {ctx.root.relative(job.out_dir)} (pid {job.process.pid})")
        return str(job.out_dir), *watch(str(job.out_dir))

    @shown_errors
    def stop_run(run: str | None):
        job = ctx.jobs.get(run) if run else None
        if job is None or not job.running:
            raise ConfigError("No run of this UI is training now; start one first.")
        job.stop()
        gr.Info("stop requested: the trainer saves a checkpoint after this step, then exits.")
        return watch(run)

    @shown_errors
    def resume_run(run: str | None):
        if not run:
            raise ConfigError("Pick a run to resume (start one, or select it in the run list).")
        saved = flat_values(saved_config(ctx.root.confine(run, "run folder")))
        cfg = config_from_form({s.name: display_value(s, saved[s.name]) for s in specs},
                               ctx.root)  # re-validated and re-confined like a fresh form
        job = ctx.jobs.launch(cfg, resume=True)
        gr.Info(f"resuming {ctx.root.relative(job.out_dir)} from its newest checkpoint")
        return watch(run)

    @shown_errors
    def pick_run(folder: str, event: gr.SelectData):
        row = event.row_value if event is not None else None
        if not row:
            return gr.update(), *watch(None), *[gr.update() for _ in names]
        path = ctx.root.confine(row[0], "run folder")
        try:
            saved = flat_values(saved_config(path))
            filled = [display_value(s, saved[s.name]) for s in specs]
        except ConfigError:
            filled = [gr.update() for _ in names]
        return str(path), *watch(str(path)), *filled

    watched = [status, curve, log]
    start.click(launch, [widgets[n] for n in names], [current, *watched])
    stop.click(stop_run, current, watched)
    resume.click(resume_run, current, watched)
    timer.tick(watch, current, watched, queue=False, show_progress="hidden")
    refresh.click(shown_errors(run_rows), runs_folder, runs)
    runs_folder.submit(shown_errors(run_rows), runs_folder, runs)
    runs.select(pick_run, runs_folder, [current, *watched, *[widgets[n] for n in names]])
