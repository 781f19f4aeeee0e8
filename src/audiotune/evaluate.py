"""``audiotune eval``: generate over a split with one or more models and score them on the same rows.

Examples are decoded once and shared, so ``--compare`` (base plus adapters or merged checkpoints)
scores every model on exactly the same clips. Writes ``predictions.jsonl`` (one row per model and
clip: id, prompt, references, prediction, per-clip scores, generation settings), ``metrics.json``
and the report (``report.md``, ``report.html``) into ``out``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .answer_log import AnswerLog
from .audio_cache import AudioEmbeddingCache
from .data.examples import BadSampleLog, ExampleDataset, ExampleStream
from .data.prepare import prepare_split
from .config import EvalConfig, flat_values, plain, replace_flat
from .conversation import Example
from .errors import CheckpointError, ConfigError, DatasetSchemaError
from .generate import GenerationSettings, audio_length
from .metrics import HARNESS_ACCURACY, bootstrap_interval, breakdown, standard_errors
from .presets import apply_benchmark, benchmark
from .models.family import Family
from .report import EvalReport, ModelScores
from .tasks import ScoreOptions, headline_metric, task_class

logger = logging.getLogger(__name__)


def load_examples(cfg: EvalConfig, family: Family, bad_log: BadSampleLog) -> tuple[list[Example], str]:
    """Decode the split once; bad rows are skipped (and listed) or raise, as ``on_bad_sample`` says.

    Rows that share a clip id (``--id-column``, e.g. AudioCaps' one row per reference caption)
    become one example holding all their references. Returns the examples and the resolved task
    (a ShareGPT manifest asked for as caption is evaluated as chat).
    """
    rows, build = prepare_split(cfg.data, cfg.split, family)
    if cfg.benchmark and benchmark(cfg.benchmark).breakdown:
        build = dataclasses.replace(build, keep_fields=True)  # the breakdown reads the rows' columns
    if cfg.take is not None:
        rows = rows.select(range(min(cfg.take, len(rows)))) if hasattr(rows, "select") else rows.take(cfg.take)
    if cfg.data.streaming:
        examples = list(ExampleStream(rows, build, bad_log, cfg.data.on_bad_sample))
    else:
        examples = ExampleDataset(rows, build, bad_log, cfg.data.on_bad_sample).usable()
    return (group_references(examples) if cfg.data.id_column else examples), build.task.name


def group_references(examples: list[Example]) -> list[Example]:
    """Merge examples with the same id: the first keeps its audio and gains the others' references."""
    merged: dict[str, Example] = {}
    for example in examples:
        if example.id in merged:
            merged[example.id].references.extend(r for r in example.references
                                                 if r not in merged[example.id].references)
        else:
            merged[example.id] = example
    return list(merged.values())


def _variants(cfg: EvalConfig) -> list[tuple[str, str, str | None]]:
    """(display name, model path, adapter path) for each model to score."""
    variants: list[tuple[str, str, str | None]] = []
    if cfg.compare or not cfg.adapters:
        variants.append(("base", cfg.model, None))
    for path in cfg.adapters:
        p = Path(path)
        if (p / "adapter_config.json").exists():
            variants.append((p.name or path, cfg.model, path))
        elif (p / "config.json").exists():
            variants.append((p.name or path, path, None))  # a merged (or any full) checkpoint
        else:
            raise CheckpointError(f"{path}: neither an adapter (adapter_config.json) nor a checkpoint (config.json).")
    names = [v[0] for v in variants]
    return [(f"{n} ({i})" if names.count(n) > 1 else n, m, a) for i, (n, m, a) in enumerate(variants)]


def score_answers(examples: Sequence[Example], answers: Sequence[str], task: str, settings: GenerationSettings,
                  cfg: EvalConfig, notices: list[str] | None = None
                  ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score answers already generated (by any backend, or elsewhere): (corpus metrics, per-clip prediction rows).

    A row holds the exact prompt text sent, the prediction, the answer read from it (``parsed``: mcq's letter,
    classify's normalised label), ``correct`` (strict) where the task has a right answer, and ``harness_correct``,
    the mirrored harness's verdict (``null`` where it would guess at random)."""
    predictions = {e.id: a for e, a in zip(examples, answers)}
    cls = task_class(task)
    metrics, per_clip = cls.score(predictions, {e.id: e.references for e in examples},
                                  _score_options(cfg, notices, {e.id: e.meta.get("choices") for e in examples}))
    rows = []
    for e, a in zip(examples, answers):
        scores = per_clip.get(e.id, {})
        row = {"id": e.id, "prompt": _prompt_text(e), "references": e.references, "prediction": a,
               "parsed": cls.parse(a, e), "scores": scores, "generation": settings.as_kwargs()}
        if cls.has_right_answer:
            row["correct"] = bool(scores.get("accuracy"))
            row["harness_correct"] = bool(scores[HARNESS_ACCURACY]) if HARNESS_ACCURACY in scores else None
        rows.append(row)
    return metrics, rows


def _score_options(cfg: EvalConfig, notices: list[str] | None = None,
                   choices: dict[str, list[str]] | None = None) -> ScoreOptions:
    """The scoring settings of ``cfg`` (its preset's harness keywords included)."""
    keywords = benchmark(cfg.benchmark).harness_keywords if cfg.benchmark else ()
    return ScoreOptions(cfg.with_meteor, cfg.spice_models, notices, choices, cfg.asr_normalizer, keywords)


def _prompt_text(example: Example) -> str:
    user = [m for m in example.messages if m["role"] == "user"][-1]
    return " ".join(p["text"] for p in user["content"] if p.get("type") == "text")


def evaluate(cfg: EvalConfig, on_model: Callable[[str, int], None] | None = None,
             on_batch: Callable[[int], None] | None = None, training_run: str | Path | None = None,
             summary: dict[str, Any] | None = None) -> EvalReport:
    """``audiotune eval``: :func:`run_evaluation`, then the report (``report.md``, ``report.html``), written once,
    with the training curves of ``training_run`` (default: ``cfg.training_run``, else the first adapter that is a
    training run folder)."""
    from .report import write_report

    cfg = with_benchmark(cfg).validate()
    run = training_run or cfg.training_run or next(
        (a for a in cfg.adapters if (Path(a) / "train_metrics.json").exists()), None)
    report = run_evaluation(cfg, on_model=on_model, on_batch=on_batch)
    report.report_md, report.report_html = write_report(report, report.audio_examples, report.sampling_rate,
                                                        training_run=run, summary=summary, config=report.config)
    return report


def evaluate_benchmarks(cfg: EvalConfig, on_model: Callable[[str, int], None] | None = None,
                        on_batch: Callable[[int], None] | None = None) -> tuple[dict[str, EvalReport], Path, Path]:
    """``eval --benchmarks a,b,c``: each preset evaluated into ``out/<name>`` (its own report), then the regression
    view in ``out`` (``regression.md``/``.html``/``.json``). Returns the reports and the view's two paths.
    ``--dataset``: a folder with a local copy of each preset in a subfolder named after it (else the Hub copies)."""
    from .regression import write_regression

    root = Path(cfg.data.dataset) if cfg.data.dataset else None
    if root is not None and not root.is_dir():
        raise ConfigError(f"--benchmarks with --dataset {root}: give a folder holding a copy of each preset in a "
                          "subfolder named after it (mmau-test-mini/, librispeech-test-clean/…), or drop --dataset "
                          "to read the Hub copies.")
    reports = {}
    for name in cfg.benchmarks or []:
        benchmark(name)  # every name checked before the first model loads
        if root is not None and not (root / name).is_dir():
            raise ConfigError(f"--benchmarks: {root} has no copy of {name} ({root / name}).")
    for name in cfg.benchmarks or []:
        sub = replace_flat(cfg, benchmark=name, benchmarks=None, out=str(Path(cfg.out) / name),
                           dataset=str(root / name) if root is not None else "")
        reports[name] = evaluate(sub, on_model=lambda model, n, b=name: on_model and on_model(f"{b}: {model}", n),
                                 on_batch=on_batch)
    md, page = write_regression(cfg.out, reports, cfg.asr_normalizer)
    return reports, md, page


def run_evaluation(cfg: EvalConfig, on_model: Callable[[str, int], None] | None = None,
                   on_batch: Callable[[int], None] | None = None) -> EvalReport:
    """Score every model variant on the same decoded rows; write ``predictions.jsonl`` and ``metrics.json`` and
    return the results. The report is the caller's step (:func:`evaluate` writes it; the demo adds its summary).

    ``on_model(name, n_examples)`` is called before each model, ``on_batch(n)`` after each batch
    (the CLI's progress bar).
    """
    from .engines import ONE_ADAPTER, engine_class
    from .models.loading import resolve_family

    opener = engine_class(cfg.engine.backend)  # an unknown backend: before any work
    cfg = with_benchmark(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    family = resolve_family(cfg.model)
    variants = _variants(cfg)
    bad_log = BadSampleLog(out / "skipped.jsonl")
    examples, task = load_examples(cfg, family, bad_log)
    if not examples:
        raise DatasetSchemaError(f"{cfg.data.dataset} [{cfg.split}]: no usable rows to evaluate (see "
                                 f"{out / 'skipped.jsonl'}).")
    settings = cfg.generation
    notices = task_class(task).score_notices(_score_options(cfg))
    log = AnswerLog(out, _run_key(cfg, variants, examples, settings), cfg.resume)
    scored: list[ModelScores] = []
    audio_cache = AudioEmbeddingCache()  # models with the same frozen encoder share the clips' embeddings
    prompts = {e.id: _prompt_text(e) for e in examples}
    for name, model_path, adapter in variants:
        if on_model:
            on_model(name, len(examples))
        todo = [e for e in examples if log.answer(name, e.id, prompts[e.id]) is None]
        if on_batch and len(todo) < len(examples):
            on_batch(len(examples) - len(todo))  # answered before the interruption
        if todo:
            # A merged checkpoint is another checkpoint (its own family facts); the base and its adapters share one.
            engine = opener(model_path, {ONE_ADAPTER: adapter} if adapter else None,
                            family=family if model_path == cfg.model else None, batch_size=cfg.batch_size,
                            vllm_python=cfg.engine.vllm_python, encoder_frames=cfg.engine.encoder_frames,
                            audio_cache=audio_cache)
            try:
                # Longest first in slices of whole batches: the batches an uninterrupted run makes, each saved.
                todo.sort(key=audio_length, reverse=True)
                for start in range(0, len(todo), engine.rows_per_call):
                    chunk = todo[start: start + engine.rows_per_call]
                    answers = engine.generate(chunk, settings, model=ONE_ADAPTER if adapter else None,
                                              on_batch=on_batch)
                    log.append(name, [(e.id, prompts[e.id], a) for e, a in zip(chunk, answers)])
            finally:
                engine.close()
        answers = [log.answer(name, e.id, prompts[e.id]) for e in examples]
        scored.append(ModelScores(name, *score_answers(examples, answers, task, settings, cfg, notices)))
    report = write_scores(cfg, task, examples, scored, notices, bad_log, family.sampling_rate)
    log.finish()
    return report


def write_scores(cfg: EvalConfig, task: str, examples: Sequence[Example], scored: list[ModelScores],
                 notices: list[str], bad_log: BadSampleLog, sampling_rate: int) -> EvalReport:
    """``predictions.jsonl`` and ``metrics.json`` of scored models (eval's, or ``score``'s for answers made
    elsewhere: one format), and the report's input."""
    out = Path(cfg.out)
    config = {name: plain(value) for name, value in flat_values(cfg).items()}  # flat, as the flags and YAML keys
    with (out / "predictions.jsonl").open("w") as handle:
        for model_scores in scored:
            for row in model_scores.predictions:
                handle.write(json.dumps({"model": model_scores.name, **row}) + "\n")
    report = EvalReport(out, task, scored, notices, bad_log.entries(),
                        audio_examples=list(examples[: cfg.audio_players]), sampling_rate=sampling_rate, config=config)
    columns = benchmark(cfg.benchmark).breakdown if cfg.benchmark else ()
    headline = headline_metric(task)
    (out / "metrics.json").write_text(json.dumps({
        "task": task, "benchmark": cfg.benchmark, "dataset": cfg.data.dataset, "split": cfg.split,
        "rows": len(examples), "models": report.table(), "notices": notices, "skipped": len(report.skipped),
        # per model, the standard error of each metric that is a mean over clips: is a difference noise?
        "standard_errors": {m.name: standard_errors(m.predictions) for m in scored},
        # per model, a 95% bootstrap interval of the headline metric (WER too: resampled as a corpus ratio)
        "intervals": {m.name: {headline: bootstrap_interval(m.predictions, headline, normalizer=cfg.asr_normalizer)}
                      for m in scored},
        "breakdown": {m.name: {c: breakdown(m.predictions, [e.meta.get("row", {}).get(c) for e in examples])
                               for c in columns} for m in scored},
        "config": config}, indent=2))
    return report


def score_predictions(cfg: EvalConfig, predictions: str | Path) -> EvalReport:
    """``audiotune score``: score answers made elsewhere (another harness, a vLLM run, a hand-edited file) on the
    split ``cfg`` names, with eval's rules, into the same ``predictions.jsonl`` and ``metrics.json``.

    ``predictions``: JSON lines with ``id`` (a split without an id column: the 0-based row number, as lmms-eval's
    ``doc_id``) and ``prediction`` (and ``model``, for several models in one file). The
    rows are decoded as eval decodes them (``--model``'s family, else AF3's: the same rows are skipped); a row with
    no prediction is an error naming it, and a prediction whose id is not in the split is one too.
    """
    from .models.families import family_by_name
    from .models.loading import offline_facts, resolve_family

    cfg = with_benchmark(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    by_model = read_predictions(predictions)
    family = resolve_family(cfg.model) if cfg.model else offline_facts(family_by_name("af3"))
    bad_log = BadSampleLog(out / "skipped.jsonl")
    examples, task = load_examples(cfg, family, bad_log)
    ids = {e.id for e in examples}
    notices: list[str] = []
    scored = []
    for name, answers in by_model.items():
        # a split without an id column names its rows "row N": a harness's 0-based doc_id N is that row
        answers = {(f"row {k}" if k not in ids and f"row {k}" in ids else k): v for k, v in answers.items()}
        unknown = sorted(set(answers) - ids - {s["id"] for s in bad_log.entries() if "id" in s})
        if unknown:
            raise DatasetSchemaError(f"{predictions}: model {name!r} has predictions for ids that are not in "
                                     f"{cfg.data.dataset} [{cfg.split}] (first: {unknown[0]!r}); check --benchmark, "
                                     "--dataset and --split.")
        missing = [e.id for e in examples if e.id not in answers]
        if missing:
            raise DatasetSchemaError(f"{predictions}: model {name!r} has no prediction for {len(missing)} row(s) "
                                     f"(first: {missing[0]!r}); add them, or score with --take.")
        scored.append(ModelScores(name, *score_answers(examples, [answers[e.id] for e in examples], task,
                                                        cfg.generation, cfg, notices)))
    return write_scores(cfg, task, examples, scored, notices, bad_log, family.sampling_rate)


def read_predictions(path: str | Path) -> dict[str, dict[str, str]]:
    """{model: {id: prediction}} from JSON lines (``model`` defaults to "model"); a bad line is an error naming it."""
    by_model: dict[str, dict[str, str]] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            example_id, prediction = str(row["id"]), row["prediction"]
        except (ValueError, KeyError, TypeError):
            raise DatasetSchemaError(f"{path}:{number}: each line must be a JSON object with \"id\" and "
                                     "\"prediction\" (and optionally \"model\").") from None
        if not isinstance(prediction, str):
            raise DatasetSchemaError(f"{path}:{number}: \"prediction\" must be text, got {prediction!r}.")
        answers = by_model.setdefault(str(row.get("model") or "model"), {})
        if example_id in answers:
            raise DatasetSchemaError(f"{path}:{number}: a second prediction for id {example_id!r}.")
        answers[example_id] = prediction
    if not by_model:
        raise DatasetSchemaError(f"{path}: no predictions in it.")
    return by_model


def with_benchmark(cfg: EvalConfig) -> EvalConfig:
    """``cfg`` with its ``--benchmark`` preset applied (options the user gave win); unchanged without one."""
    return apply_benchmark(cfg, EvalConfig()) if cfg.benchmark else cfg


def _run_key(cfg: EvalConfig, variants: list[tuple[str, str, str | None]], examples: Sequence[Example],
             settings: GenerationSettings) -> dict[str, Any]:
    """What the saved answers depend on: resuming with anything else different is refused (``answer_log.py``)."""
    return {"models": [list(v) for v in variants], "dataset": cfg.data.dataset, "split": cfg.split,
            "rows": [e.id for e in examples], "generation": settings.as_kwargs(), "backend": cfg.engine.backend}
