"""The ``audiotune`` command line: parse, call the API function of the same name, render with rich.

User errors (:class:`~audiotune.errors.AudiotuneError`) are printed as one red message and exit 1;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from .config import AdapterConfig, require_given
from .errors import AudiotuneError, ConfigError
from .models.families import FAMILIES

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fine-tune, evaluate, run and serve audio-text-to-text models.")
console = Console()
_state = {"debug": False}


@app.callback()
def _main(debug: Annotated[bool, typer.Option(help="Show tracebacks for errors.")] = False,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False) -> None:
    _state["debug"] = debug
    if not debug:
        # transformers' deprecation notices are about its own internals, not anything the user can change.
        warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)])
    logging.getLogger("audiotune").setLevel(logging.INFO)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # weight-loading bars; the Trainer keeps its own progress bar


@app.command()
def tiny(family: Annotated[str, typer.Option(help=f"Model family: {', '.join(FAMILIES)}.")] = "af3",
         out: Annotated[Path, typer.Option(help="Folder to write the checkpoint to.")] = Path("models/tiny-af3"),
         seed: int = 0,
         preset: Annotated[str, typer.Option(help="default (benchmark proportions) or micro (unit tests).")] = "default",
         ) -> None:
    """Build a tiny random checkpoint of a real architecture, offline."""
    from .models.tiny import build_tiny

    path = build_tiny(family, out, seed=seed, preset=preset)
    console.print(f"[green]tiny {family} checkpoint written to[/green] {path}")


@app.command()
def synth(out: Annotated[Path, typer.Option(help="Dataset folder.")] = Path("data/synth-audiocaps"),
          clips: Annotated[int, typer.Option(help="Number of clips over all splits.")] = 300,
          seed: int = 0) -> None:
    """Write a synthetic AudioCaps-like dataset (parquet, audio + caption, 5 references per clip)."""
    from .data.synthetic import write_synthetic_audiocaps

    counts = write_synthetic_audiocaps(out, n_clips=clips, seed=seed)
    console.print(f"[green]wrote[/green] {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), soft_wrap=True)


# Commands whose options are generated from a config dataclass: the arguments pass through typer untouched and are
# parsed (help included) by cli_args, inside the command, so `audiotune --help` imports neither torch nor transformers.
GENERATED = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=GENERATED, add_help_option=False)
def train(ctx: typer.Context) -> None:
    """Fine-tune a model (LoRA on the language model by default) and save the adapter. Every TrainingArguments
    option is a flag; `audiotune train --help` lists them all."""
    from .cli_args import parse
    from .distributed import is_main_process, launched, torchrun_command
    from .train import train as run_train
    from .train_config import TrainConfig

    def extra(parser) -> None:
        parser.add_argument("--nproc", type=int, default=1, help="Data-parallel processes on this machine (torchrun; "
                                                                  "gloo on CPU, nccl on GPUs).")

    cfg, options = parse(TrainConfig, ctx.args, "audiotune train", train.__doc__ or "", extra)
    if options.nproc > 1 and not launched():
        import subprocess

        command = torchrun_command(options.nproc, sys.argv[1:])
        console.print(f"launching {options.nproc} processes: {' '.join(command[1:])}", markup=False, soft_wrap=True)
        raise typer.Exit(subprocess.call(command))
    result = run_train(cfg)
    if not is_main_process():
        return  # rank 0 reports for all
    if result.interrupted:
        console.print(f"[yellow]stopped by a signal at step {result.steps}[/yellow]; checkpoint-{result.steps} is saved "
                      f"in {result.out_dir}. Rerun the same command with --resume to continue.")
        return
    console.print(f"trainable parameters: {result.trainable_parameters:,} of {result.total_parameters:,} "
                  f"({100 * result.trainable_parameters / result.total_parameters:.3f}%)")
    method = "" if cfg.rl.method == "sft" else f"{cfg.rl.method} "  # supervised runs keep the line scripts parse
    console.print(f"[green]done[/green] {method}{result.steps} steps; train loss {result.train_loss:.4f}"
                  + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
                  + f"; adapter in {result.out_dir}")
    if result.generation_metrics:
        console.print("eval slice (generated): " + ", ".join(
            f"{k} {v:.4f}" for k, v in result.generation_metrics.items() if k != "vocabulary"))
    if result.best_checkpoint:
        console.print(f"best checkpoint by {cfg.best_metric}: {result.best_checkpoint} (loaded and saved)")
    if result.skipped:
        console.print(f"[yellow]{len(result.skipped)} bad row(s) skipped[/yellow], listed in "
                      f"{result.out_dir / 'skipped.jsonl'}")


@app.command(context_settings=GENERATED, add_help_option=False)
def infer(ctx: typer.Context) -> None:
    """Answer the prompt for each audio file, batched; a bad file costs only itself (exit 1 if any failed).
    Usage: audiotune infer FILE... --model M [OPTIONS]."""
    from rich.markup import escape

    from .cli_args import parse
    from .config import InferConfig
    from .infer import infer as run_infer

    cfg, options = parse(InferConfig, ctx.args, "audiotune infer", infer.__doc__ or "",
                         lambda parser: parser.add_argument("files", nargs="*", metavar="FILE", help="Audio files."))
    if not options.files:
        raise AudiotuneError("No audio files given: audiotune infer FILE... --model M.")
    require_given(cfg.model)
    prompt, jsonl = cfg.prompt, Path(cfg.jsonl) if cfg.jsonl else None
    errors = Console(stderr=True, soft_wrap=True)
    with console.status("generating"):
        results = run_infer(options.files, cfg.model, adapter=cfg.adapter, prompt=cfg.prompt,
                            system_prompt=cfg.system_prompt, batch_size=cfg.batch_size, on_bad_file=cfg.on_bad_file,
                            backend=cfg.engine.backend, vllm_python=cfg.engine.vllm_python,
                            encoder_frames=cfg.engine.encoder_frames, generation=cfg.generation)
    for result in results:
        if result.ok:
            console.print(f"[bold]{escape(result.file)}[/bold]: {escape(result.answer or '')}", soft_wrap=True)
        else:
            errors.print(f"[red]skipped:[/red] {escape(result.error or '')}")
    if jsonl:
        with jsonl.open("w") as handle:
            for result in results:
                handle.write(json.dumps(result.record(prompt)) + "\n")
    failed = sum(not r.ok for r in results)
    if failed:
        errors.print(f"[yellow]{failed} of {len(results)} file(s) failed[/yellow]; the others were answered.")
        raise typer.Exit(1)


@app.command()
def merge(model: Annotated[str, typer.Option(help="Base model (Hub id or folder).")],
          adapter: Annotated[str, typer.Option(help="LoRA adapter folder.")],
          out: Annotated[Path, typer.Option(help="Folder for the merged checkpoint.")]) -> None:
    """Fold a LoRA adapter into its base: a checkpoint plain transformers loads."""
    from .merge import merge_adapter

    path = merge_adapter(model, adapter, out)
    console.print(f"[green]merged checkpoint written to[/green] {path}")


@app.command("eval", context_settings=GENERATED, add_help_option=False)
def eval_(ctx: typer.Context) -> None:
    """Generate over a split and score it the way the field does; --compare puts models side by side."""
    from .cli_args import parse
    from .config import EvalConfig
    from .evaluate import evaluate

    cfg, _ = parse(EvalConfig, ctx.args, "audiotune eval", eval_.__doc__ or "")
    out = Path(cfg.out)
    if cfg.benchmarks:
        _eval_benchmarks(cfg, out)
        return
    with _generation_progress() as (on_model, on_batch):
        report = evaluate(cfg, on_model=on_model, on_batch=on_batch)
    _print_scores(report, out)
    console.print(f"report: {report.report_html}")


@contextlib.contextmanager
def _generation_progress():
    """(on_model, on_batch) for eval: a progress bar per model, advanced per batch."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console) as progress:
        bars: dict[str, int] = {}

        def on_model(name: str, total: int) -> None:
            bars["current"] = progress.add_task(f"generating ({name})", total=total)

        yield on_model, lambda n: progress.advance(bars["current"], n)


def _eval_benchmarks(cfg, out: Path) -> None:
    """``eval --benchmarks``: each preset's scores, then the regression view's table."""
    from .evaluate import evaluate_benchmarks

    with _generation_progress() as (on_model, on_batch):
        reports, md, page = evaluate_benchmarks(cfg, on_model, on_batch)
    for name, report in reports.items():
        _print_scores(report, out / name)
    console.print(md.read_text(), markup=False)
    console.print(f"regression view: {page}")


def _print_scores(report, out: Path) -> None:
    """The metrics table, the notices and the skipped rows of an eval or a score run."""
    ran = report.config
    where = ran["benchmark"] or ran["dataset"]
    print_metrics(report.table(), report.metric_order(), title=f"{report.task} metrics on {where} [{ran['split']}]")
    for notice in report.notices:
        console.print(f"[yellow]note:[/yellow] {notice}")
    if report.skipped:
        console.print(f"[yellow]{len(report.skipped)} bad row(s) skipped[/yellow], listed in {out / 'skipped.jsonl'}")
    console.print(f"predictions: {out / 'predictions.jsonl'}; metrics: {out / 'metrics.json'}")


@app.command(context_settings=GENERATED, add_help_option=False)
def score(ctx: typer.Context) -> None:
    """Score predictions made elsewhere with eval's rules: --predictions FILE (JSON lines: id, prediction[, model])
    with --benchmark NAME or the dataset options; writes the same predictions.jsonl and metrics.json to --out."""
    from .cli_args import parse
    from .config import EvalConfig
    from .evaluate import score_predictions

    cfg, options = parse(EvalConfig, ctx.args, "audiotune score", score.__doc__ or "", lambda parser: parser.add_argument(
        "--predictions", metavar="JSONL", help="The answers to score: one JSON object a line with id and prediction "
                                               "(and model, for several models)."))
    if not options.predictions:
        raise ConfigError("audiotune score needs --predictions FILE (JSON lines with id and prediction).")
    if not cfg.benchmark and not cfg.data.dataset:
        raise ConfigError("audiotune score needs --benchmark NAME (`audiotune benchmarks`) or --dataset.")
    out = Path(cfg.out)
    _print_scores(score_predictions(cfg, options.predictions), out)


@app.command()
def benchmarks(as_json: Annotated[bool, typer.Option("--json", help="Print the presets as JSON.")] = False) -> None:
    """The benchmark presets `eval --benchmark` and `score --benchmark` take: the Hub copy, split, task and the
    breakdown each reports (docs/evaluation.md: prompts, parsing and scoring)."""
    from .presets import BENCHMARKS

    if as_json:
        print(json.dumps([b.describe() for b in BENCHMARKS.values()], indent=2))
        return
    table = Table(title="benchmark presets: audiotune eval --benchmark NAME [--dataset LOCAL_COPY]")
    table.add_column("name", no_wrap=True)
    for column in ("task", "Hub copy (split)", "what"):
        table.add_column(column, overflow="fold")
    for b in BENCHMARKS.values():
        copy = f"{b.hub_id}{'/' + b.dataset_config if b.dataset_config else ''} ({b.split})" if b.hub_id else \
            "--dataset (release files)"
        table.add_row(b.name, b.task, copy, b.summary)
    console.print(table)


def print_metrics(table_data: dict[str, dict[str, float]], metrics: list[str], title: str) -> None:
    """A rich table with one column per model, the best value of each row in bold."""
    from .metrics import best_value

    table = Table(title=title)
    table.add_column("metric")
    for name in table_data:
        table.add_column(name, justify="right")
    for metric in metrics:
        values = [table_data[n].get(metric) for n in table_data]
        best = best_value(metric, values)
        table.add_row(metric, *["—" if v is None else (f"[bold green]{v:.4f}[/bold green]" if v == best else f"{v:.4f}")
                                for v in values])
    console.print(table)


data_app = typer.Typer(no_args_is_help=True, help="Inspect datasets before training.")
app.add_typer(data_app, name="data")


@data_app.command("check", context_settings=GENERATED, add_help_option=False)
def data_check(ctx: typer.Context) -> None:
    """Rows, hours, duration histogram, rate/channel mix, token lengths and every row that fails or is altered.
    Usage: audiotune data check DATASET [OPTIONS]. Exit code: 0 usable as is, 1 some rows would be skipped, 2 the
    dataset cannot be used as given."""
    from .cli_args import parse
    from .config import DataCheckConfig
    from .data.check import check_dataset
    from .models.families import family_by_name

    def extra(parser) -> None:
        parser.add_argument("path", nargs="?", metavar="DATASET", help="The dataset (same as --dataset).")
        parser.add_argument("--json", dest="as_json", action="store_true", help="Print the full report as JSON.")

    spec, options = parse(DataCheckConfig, ctx.args, "audiotune data check", data_check.__doc__ or "", extra)
    if options.path:
        spec.data.dataset = options.path
    if not spec.data.dataset:
        raise AudiotuneError("No dataset given: audiotune data check DATASET (a Hub id, a folder or manifest files).")
    model, split, dataset, as_json = spec.model, spec.split, spec.data.dataset, options.as_json
    tokenizer = None
    if model:
        from .models.loading import load_processor, resolve_family

        fam = resolve_family(model)
        tokenizer = load_processor(model).tokenizer
    else:
        from .models.loading import offline_facts

        fam = offline_facts(family_by_name(spec.family))  # no checkpoint: the facts of the family's tiny one
    with console.status("checking rows", spinner="dots") as status:
        report = check_dataset(spec.data, split, fam, tokenizer,
                               on_row=lambda i: status.update(f"checking row {i + 1}") if i % 25 == 0 else None)
    summary = report.summary()
    if as_json:
        print(json.dumps(summary, indent=2))
        raise typer.Exit(report.exit_code)
    if report.fatal and not report.rows:
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(f"[red]fatal:[/red] {escape(report.fatal)}")
        raise typer.Exit(report.exit_code)
    overview = Table(title=f"{dataset} [{split}] — {summary['shape']} rows, task {summary['task']}", show_header=False)
    overview.add_row("rows (usable)", f"{summary['rows']} ({summary['usable_rows']})")
    overview.add_row("hours", f"{summary['hours']:.3f}")
    overview.add_row("sample rates", ", ".join(f"{k} Hz: {v}" for k, v in summary["sample_rates"].items()) or "—")
    overview.add_row("channels", ", ".join(f"{k}: {v}" for k, v in summary["channels"].items()) or "—")
    for key in ("text_chars", "text_tokens", "audio_tokens"):
        stats = summary[key]
        overview.add_row(key.replace("_", " "), "—" if not stats else
                         f"min {stats['min']}, mean {stats['mean']}, p95 {stats['p95']}, max {stats['max']}")
    console.print(overview)
    histogram = Table(title="durations")
    histogram.add_column("seconds")
    histogram.add_column("clips", justify="right")
    histogram.add_column("")
    peak = max(summary["duration_histogram"].values() or [1]) or 1
    for label, count in summary["duration_histogram"].items():
        histogram.add_row(label, str(count), "█" * round(30 * count / peak))
    console.print(histogram)
    if report.issues:
        from rich.markup import escape

        issues = Table(title=f"{len(report.issues)} row(s) that fail or are altered")
        for column in ("row", "id", "file", "severity", "problem"):
            issues.add_column(column, overflow="fold")
        colour = {"fails": "red", "altered": "yellow", "warning": "cyan"}
        for issue in report.issues[:50]:
            issues.add_row(str(issue.row), escape(issue.id), escape(str(issue.file or "—")),
                           f"[{colour[issue.severity]}]{issue.severity}[/]", escape(issue.problem))
        console.print(issues)
        if len(report.issues) > 50:
            console.print(f"… and {len(report.issues) - 50} more (--json lists all)")
    if report.fatal:
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(f"[red]fatal:[/red] {escape(report.fatal)}")
    raise typer.Exit(report.exit_code)


@app.command(context_settings=GENERATED, add_help_option=False)
def serve(ctx: typer.Context) -> None:
    """Serve an OpenAI-compatible chat-completions API that takes audio, with dynamic batching (or vLLM)."""
    from .cli_args import parse
    from .config import ServeConfig
    from .serve.server import resolve_api_key, serve as run_server

    cfg, options = parse(ServeConfig, ctx.args, "audiotune serve", serve.__doc__ or "", lambda parser: parser.add_argument(
        "--print-vllm-command", action="store_true", help="Print the vLLM server command and exit."))
    cfg.validate()
    adapters = cfg.adapter_paths
    if options.print_vllm_command:
        import shlex

        from .serve.vllm_server import vllm_command

        console.print(shlex.join(vllm_command(cfg, "python")), soft_wrap=True, markup=False)
        notes = ["the API key goes to vLLM as $VLLM_API_KEY, not on its command line"] if resolve_api_key(cfg) else []
        if adapters:
            notes.append("`audiotune serve --backend vllm` exports each adapter to vLLM's module names first; "
                         "this command with the original folders would serve the base")
        for note in notes:
            Console(stderr=True).print(f"({note})", markup=False)
        return
    run_server(cfg)


@app.command()
def ui(
    root: Annotated[Path, typer.Option(help="The only folder the UI reads and writes under.")] = Path("."),
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(help="Port (default: 7860 or the next free one).")] = None,
    share: Annotated[bool, typer.Option("--share", help="Also open a public Gradio share link.")] = False,
    model: Annotated[Optional[str], typer.Option(help="Load this model into the playground at start.")] = None,
    adapter: Annotated[Optional[list[str]], typer.Option(help="NAME=PATH (or PATH) of an adapter for the "
                                                              "playground; repeatable.")] = None,
    server_url: Annotated[Optional[str], typer.Option(help="Playground against this OpenAI-compatible server "
                                                           "(audiotune serve, vLLM) instead.")] = None,
    api_key: Optional[str] = None,
    runs: Annotated[str, typer.Option(help="Folder of training runs listed in the Train tab (under the root).")] = "runs",
) -> None:
    """Web UI (Gradio): playground, evaluation explorer, training with live curves, data check."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise AudiotuneError("audiotune ui needs Gradio: pip install 'audiotune[ui]' (or pip install 'gradio>=6.31').")
    from .ui import UiSettings, launch

    console.print(f"starting the UI on {host}" + (f":{port}" if port else "") + f" (root {root.resolve()}); "
                  "Ctrl-C stops it")
    launch(UiSettings(root=str(root), host=host, port=port, share=share, model=model, adapters=list(adapter or []),
                      server_url=server_url, api_key=api_key, runs=runs))


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print the families as JSON.")] = False) -> None:
    """The model families: model types, status, and which facts each overrides (the rest are inferred)."""
    from .models.catalog import families_json, render_table

    print(families_json() if as_json else render_table(min(console.width, 80)))


@app.command()
def plan(
    model: Annotated[str, typer.Option(help="Hub id (shipped architectures work offline) or checkpoint folder.")],
    lora: Annotated[bool, typer.Option("--lora", hidden=True, help="Accepted for old scripts; LoRA is the default "
                                                                    "mode.")] = True,
    qlora: Annotated[bool, typer.Option("--qlora", help="4-bit NF4 language model + LoRA.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Full fine-tuning of the language model.")] = False,
    batch: Annotated[int, typer.Option(help="Per-GPU batch size.")] = 4,
    audio_seconds: Annotated[float, typer.Option(help="Clip length to plan for.")] = 10.0,
    text_tokens: Annotated[int, typer.Option(help="Prompt + answer tokens per sample.")] = 64,
    lora_r: Annotated[int, typer.Option(help=AdapterConfig.__dataclass_fields__["lora_r"].metadata["help"])] = (
        AdapterConfig.lora_r),
    lora_targets: Annotated[Optional[str], typer.Option(
        help=AdapterConfig.__dataclass_fields__["lora_targets"].metadata["help"])] = None,
    source: Annotated[str, typer.Option(help="auto | hub | shipped: where the architecture comes from.")] = "auto",
    train_audio_encoder: Annotated[str, typer.Option(
        help=AdapterConfig.__dataclass_fields__["train_audio_encoder"].metadata["help"])] = "none",
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Parameter counts (exact, on the meta device) and a per-GPU memory estimate, before renting a GPU."""
    from .plan import make_plan

    adapter = AdapterConfig(full=full, qlora=qlora, lora_r=lora_r, lora_targets=lora_targets,
                            train_audio_encoder=train_audio_encoder)  # train's settings, checked as train checks them
    adapter.validate_adapter()
    result = make_plan(model, mode=adapter.adapter_mode, batch=batch, audio_seconds=audio_seconds,
                       text_tokens=text_tokens, lora_r=adapter.lora_r, lora_targets=adapter.lora_targets, source=source,
                       train_audio_encoder=adapter.train_audio_encoder)
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
        return
    parts = result.parameters
    console.print(f"[bold]{model}[/bold] ({result.family}; {result.source})")
    table = Table(title="parameters")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    for label, value in (("total", parts.total), ("language model", parts.language_model),
                         ("audio encoder", parts.audio_encoder), ("projector", parts.projector),
                         ("other towers (vision, ...)", parts.other_towers)):
        table.add_row(label, f"{value:,}")
    if result.lora_lm_only and result.lora_guide:
        table.add_row(f"trainable: LoRA r={lora_r} on the LM ({result.lora_lm_only.modules} modules, "
                      f"{result.lora_lm_only.encoder_modules} in the encoder)", f"{result.lora_lm_only.trainable:,}")
        table.add_row(f"trainable: the guide's targets ({result.lora_guide.modules} modules, "
                      f"{result.lora_guide.encoder_modules} in the encoder)", f"{result.lora_guide.trainable:,}")
    else:
        table.add_row("trainable (full fine-tuning of the LM)", f"{result.trainable:,}")
    console.print(table)
    memory = Table(title=f"memory per GPU, {result.mode}, batch {result.batch}, {result.audio_seconds:g} s clips "
                         f"({result.audio_tokens} audio + {result.text_tokens} text tokens), GB — an estimate")
    for column in ("grad. ckpt", "weights", "train state", "act./sample", f"total ×{result.batch}",
                   *(f"max batch {g}G" for g in (24, 48, 80))):
        memory.add_column(column, justify="right")
    for row in result.memory:
        memory.add_row("on" if row.gradient_checkpointing else "off", f"{row.weights_gb:.1f}",
                       f"{row.trainable_state_gb:.2f}", f"{row.activations_per_sample_gb:.2f}", f"{row.total_gb:.1f}",
                       *(str(row.max_batch[g]) for g in (24, 48, 80)))
    console.print(memory)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")


@app.command()
def demo(out: Annotated[Path, typer.Option(help="Run folder.")] = Path("runs/demo"),
         clips: Annotated[Optional[int], typer.Option(help="Synthetic clips (default: the demo's).")] = None,
         max_steps: Annotated[Optional[int], typer.Option(help="Training steps (default: the demo's).")] = None,
         seed: int = 0) -> None:
    """Synthetic data → tiny AF3 → LoRA → base vs tuned → grounding check → infer → merge → pipeline → report."""
    from .demo import DemoSettings, run_demo

    chosen = {k: v for k, v in {"clips": clips, "max_steps": max_steps}.items() if v is not None}
    result = run_demo(DemoSettings(out=str(out), seed=seed, **chosen),
                      on_stage=lambda name: console.rule(f"[bold]{name}"))
    print_metrics(result.evaluation.table(), result.evaluation.metric_order(),
                  title="held-out test split: base vs tuned (audiotune eval --compare)")
    g = result.grounding
    console.print(f"grounding check (tuned): {g.metric} {g.own:.3f} with each clip's own audio vs {g.other:.3f} "
                  f"with another clip's audio, same references ({100 * g.drop:.0f}% lost when the audio is swapped)")
    console.print(f"repetition: at most {result.max_repeats} occurrence(s) of one 3-gram in a tuned caption")
    for sample in result.samples:
        console.print(f"[bold]{sample['id']}[/bold]: {sample['prediction']}  [dim](ref: {sample['references'][0]})")
    console.print(f"pipeline(\"audio-text-to-text\") on the first test clip: \"{result.pipeline_output}\"")
    for notice in result.evaluation.notices:
        console.print(f"[yellow]note:[/yellow] {notice}")
    console.print(f"report: {result.evaluation.report_html} (and report.md); total {result.timings['total']:.0f} s")


def main() -> None:
    try:
        code = app(standalone_mode=False)  # returns a typer.Exit's code instead of raising it
        if isinstance(code, int) and code:
            sys.exit(code)
    except AudiotuneError as error:
        if _state["debug"]:
            raise
        from rich.markup import escape

        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(error))}")
        sys.exit(1)
    except (typer.Exit, SystemExit) as exit_:
        raise exit_
    except Exception as error:
        # Usage errors (unknown option, missing argument) come from typer's bundled click, whose
        # exception class is private: recognise them by their interface and show them as click would.
        if hasattr(error, "show") and hasattr(error, "exit_code"):
            error.show()
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
