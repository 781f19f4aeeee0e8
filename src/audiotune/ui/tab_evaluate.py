"""Evaluate tab: open a run folder (or run an evaluation), then browse its samples worst first, with audio."""

from __future__ import annotations

import math
from pathlib import Path

import gradio as gr

from ..errors import ConfigError
from .common import Context, shown_errors
from .render import samples_html
from .runs import PREDICTIONS, REGRESSION, ClipAudio, RunView, filter_samples, load_regression, load_run, sort_samples

PAGE = 10


def find_runs(ctx: Context, depth: int = 3) -> list[str]:
    """Folders under the root holding predictions.jsonl or a regression view (as the Evaluate tab's picker lists
    them)."""
    found = []

    def walk(path: Path, level: int) -> None:
        if (path / PREDICTIONS).exists() or (path / REGRESSION).exists():
            found.append(ctx.root.relative(path))
        if level < depth:
            for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.is_symlink()
                                and not p.name.startswith(".")):  # a link may lead outside the root
                walk(child, level + 1)

    try:
        walk(ctx.root.folder, 0)
    except OSError:
        pass
    return found


def _rows(text: str | None) -> int | None:
    text = (text or "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"first N rows: {text!r} is not a positive whole number (leave it empty for all rows).")
    return int(text)


def build(ctx: Context) -> None:
    from .trainform import form_spec

    tasks = list(next(s for s in form_spec() if s.name == "task").choices)
    run_state = gr.State(None)
    with gr.Row():
        folder = gr.Dropdown(find_runs(ctx), label="run folder (under the root)", allow_custom_value=True,
                             scale=4, elem_id="ev-folder")
        refresh = gr.Button("↻", scale=0, min_width=40)
        open_button = gr.Button("open", variant="primary", scale=1, elem_id="ev-open")
    with gr.Accordion("run an evaluation", open=False, elem_id="ev-launch"):
        with gr.Row():
            model = gr.Textbox(label="base model", elem_id="ev-model")
            adapters = gr.Textbox(label="adapters or merged checkpoints (one a line)", lines=1, elem_id="ev-adapters")
            compare = gr.Checkbox(True, label="compare with the base")
        with gr.Row():
            dataset = gr.Textbox(label="dataset", elem_id="ev-dataset")
            split = gr.Textbox("test", label="split")
            task = gr.Dropdown(tasks, value="caption", label="task")
            take = gr.Textbox("", label="first N rows (empty: all)", elem_id="ev-take")
            out = gr.Textbox("runs/eval", label="out folder", elem_id="ev-out")
        evaluate = gr.Button("evaluate", elem_id="ev-run")
    summary = gr.Markdown(elem_id="ev-summary")
    metrics = gr.Dataframe(label="metrics", interactive=False, elem_id="ev-metrics")
    with gr.Row():
        query = gr.Textbox(label="filter (id, references, answers)", scale=3, elem_id="ev-filter")
        metric = gr.Dropdown([], label="sort by", scale=1, elem_id="ev-metric")
        scorer = gr.Dropdown([], label="scores of", scale=1, elem_id="ev-scorer")
        worst = gr.Checkbox(True, label="worst first", scale=1, elem_id="ev-worst")
        page = gr.Number(1, label="page", precision=0, minimum=1, scale=1, elem_id="ev-page")
    samples = gr.HTML(elem_id="ev-samples")

    def show(run: RunView | None, text: str, metric_name: str, model_name: str, worst_first: bool, number: float):
        if run is None:
            return ""
        chosen = filter_samples(run.samples, text or "")
        if metric_name and model_name:
            chosen = sort_samples(chosen, model_name, metric_name, worst_first)
        pages = max(1, math.ceil(len(chosen) / PAGE))
        number = min(max(1, int(number or 1)), pages)
        clips = ctx.clip_cache.setdefault(run.folder, ClipAudio(run, ctx.root))
        visible = chosen[(number - 1) * PAGE: number * PAGE]

        def audio(clip_id: str):
            clip = clips.get(clip_id)
            return clip if clip is not None else (clips.problem or "clip not found in the dataset")

        return samples_html(visible, run.models, metric_name, model_name, audio, clips.rate, len(chosen), number,
                            pages)

    @shown_errors
    def open_run(path: str | None):
        if not path:
            raise ConfigError("Pick or type a run folder (one with predictions.jsonl, written by `audiotune eval` "
                              "or the demo).")
        chosen = ctx.root.confine(path, "run folder")
        if (chosen / REGRESSION).exists() and not (chosen / PREDICTIONS).exists():  # eval --benchmarks
            import pandas as pd

            markdown, rows, models = load_regression(chosen)
            return (None, markdown + "\n\nOpen a benchmark's folder below it for its samples.",
                    pd.DataFrame(rows, columns=["benchmark", "metric", *models]), gr.update(choices=[], value=None),
                    gr.update(choices=[], value=None), 1, "")
        run = load_run(chosen)
        ctx.clip_cache.pop(run.folder, None)  # the folder may have been rewritten
        metric_names = run.sample_metrics()
        first_metric = metric_names[0] if metric_names else None
        last_model = run.models[-1] if run.models else None  # the tuned model comes last, as in the report
        config = run.config
        text = (f"**{ctx.root.relative(run.folder)}** — task {run.task}; {len(run.samples)} clip(s); models: "
                f"{', '.join(run.models)}" + (f"; dataset {config.get('dataset')} [{config.get('split')}]"
                                               if config.get("dataset") else ""))
        import pandas as pd

        table = pd.DataFrame(run.metrics_rows(), columns=["metric", *run.models])
        return (run, text, table, gr.update(choices=metric_names, value=first_metric),
                gr.update(choices=run.models, value=last_model), 1,
                show(run, "", first_metric, last_model, True, 1))

    outputs = [run_state, summary, metrics, metric, scorer, page, samples]
    open_button.click(open_run, folder, outputs)
    refresh.click(lambda: gr.update(choices=find_runs(ctx)), None, folder, queue=False)
    view_inputs = [run_state, query, metric, scorer, worst, page]
    for control in (query.submit, metric.input, scorer.input, worst.input, page.submit):
        control(show, view_inputs, samples)
    query.change(show, view_inputs, samples, trigger_mode="always_last")

    @shown_errors
    def run_evaluation(model_path: str, adapter_lines: str, with_base: bool, data: str, split_name: str,
                       task_name: str, first: str, out_dir: str, progress=gr.Progress()):
        from ..evaluate import EvalConfig, evaluate as evaluate_split

        if not model_path.strip() or not data.strip():
            raise ConfigError("Give a base model and a dataset to evaluate.")
        paths = [str(ctx.root.confine(line.strip(), "adapter")) for line in (adapter_lines or "").splitlines()
                 if line.strip()]
        target = ctx.root.confine(out_dir, "out folder", must_exist=False)
        cfg = EvalConfig.from_flat(model=ctx.root.local_or_hub(model_path, "model"),
                                   dataset=ctx.root.local_or_hub(data, "dataset"), out=str(target), adapters=paths,
                                   compare=with_base, split=split_name.strip() or "test", task=task_name,
                                   take=_rows(first))
        state = {"name": "", "total": 1, "done": 0}

        def on_model(name: str, total: int) -> None:
            state.update(name=name, total=max(total, 1), done=0)
            progress(0, desc=f"generating ({name})")

        def on_batch(n: int) -> None:
            state["done"] += n
            progress(state["done"] / state["total"], desc=f"generating ({state['name']})")

        evaluate_split(cfg, on_model=on_model, on_batch=on_batch)
        return gr.update(choices=find_runs(ctx), value=ctx.root.relative(target)), *open_run(str(target))

    evaluate.click(run_evaluation, [model, adapters, compare, dataset, split, task, take, out], [folder, *outputs],
                   concurrency_id="evaluate", concurrency_limit=1)
