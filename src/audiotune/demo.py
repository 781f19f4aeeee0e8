"""The demo: the guide's whole workflow on the embedded default, end to end, offline.

synthetic AudioCaps-like data → tiny AF3 → LoRA fine-tune (LM only, assistant-only loss) →
base vs tuned on the held-out test split (BLEU/METEOR/ROUGE-L/CIDEr-D) → batched inference on a
few clips → merge → ``pipeline("audio-text-to-text")`` on one clip → ``report.md``.

The hyper-parameters differ from the guide's on purpose: the tiny model starts from random
weights, so it needs a larger learning rate (2e-3 vs 1e-4) to learn the caption language within
the demo's few minutes on two CPU cores. Everything else is the guide's recipe, corrected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .evaluate import CAPTION_METRICS, EvalResult, evaluate_model, write_predictions
from .report import metrics_table, write_demo_report


@dataclass
class DemoSettings:
    out: str = "runs/demo"
    clips: int = 400
    seed: int = 0
    max_steps: int = 150
    batch_size: int = 8
    learning_rate: float = 2e-3
    eval_clips: int | None = None  # None: the whole test split
    max_new_tokens: int = 40


@dataclass
class DemoResult:
    out_dir: Path
    base: dict[str, float]
    tuned: dict[str, float]
    samples: list[dict[str, Any]]
    pipeline_output: str
    timings: dict[str, float] = field(default_factory=dict)
    report: Path | None = None


def _test_examples(dataset: str, family, limit: int | None):
    from .audio import AudioLimits
    from .data.examples import BadSampleLog, ExampleBuilder, ExampleDataset
    from .data.sources import open_split
    from .data.tasks import CaptionTask

    rows = open_split(dataset, "test")
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    build = ExampleBuilder(CaptionTask(), family.sampling_rate, AudioLimits(family.window_seconds,
                                                                            family.max_audio_seconds))
    data = ExampleDataset(rows, build, BadSampleLog(None))
    return [data[i] for i in range(len(data))]


def run_demo(settings: DemoSettings | None = None, on_stage: Callable[[str], None] | None = None) -> DemoResult:
    """Run every stage; ``on_stage(name)`` is called as each begins (the CLI shows it)."""
    import torch
    from transformers import pipeline

    from .data.synthetic import write_synthetic_audiocaps
    from .generate import GenerationSettings, generate
    from .merge import merge_adapter
    from .models.loading import load_base_model, load_model, load_processor
    from .models.tiny import build_tiny
    from .train import train

    s = settings or DemoSettings()
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    stage = on_stage or (lambda name: None)

    def timed(name: str):
        class _Timer:
            def __enter__(self):
                stage(name)
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                timings[name] = time.perf_counter() - self.start

        return _Timer()

    torch.manual_seed(s.seed)
    with timed("synthesise data"):
        data_dir = out / "data"
        write_synthetic_audiocaps(data_dir, n_clips=s.clips, seed=s.seed)
    with timed("build tiny AF3"):
        model_dir = build_tiny("af3", out / "tiny-af3", seed=s.seed)
    with timed("fine-tune (LoRA)"):
        cfg = TrainConfig(model=str(model_dir), dataset=str(data_dir), out=str(out / "adapter"),
                          batch_size=s.batch_size, eval_batch_size=s.batch_size, gradient_accumulation_steps=1,
                          learning_rate=s.learning_rate, max_steps=s.max_steps, warmup_steps=10,
                          logging_steps=10, eval_steps=max(s.max_steps // 3, 1), save_steps=s.max_steps,
                          save_total_limit=1, eval_take=32, seed=s.seed, max_new_tokens=s.max_new_tokens)
        trained = train(cfg)

    processor = load_processor(out / "adapter")
    settings_gen = GenerationSettings(max_new_tokens=s.max_new_tokens)
    results: dict[str, EvalResult] = {}
    with timed("evaluate base vs tuned"):
        base_model, family = load_model(model_dir)
        examples = _test_examples(str(data_dir), family, s.eval_clips)
        results["base"] = evaluate_model(base_model, processor, family, examples, settings=settings_gen,
                                         prompt=cfg.prompt)
        del base_model
        tuned_model, _ = load_model(model_dir, adapter=out / "adapter")
        results["tuned"] = evaluate_model(tuned_model, processor, family, examples, settings=settings_gen,
                                          prompt=cfg.prompt)
        for name, result in results.items():
            write_predictions(out / f"predictions_{name}.jsonl", result.predictions)
    with timed("infer (batched)"):
        answers = generate(tuned_model, processor, family, examples[:4], batch_size=4, settings=settings_gen)
        samples = [{"id": e.id, "prediction": a, "references": e.references} for e, a in zip(examples[:4], answers)]
        del tuned_model
    with timed("merge"):
        merged_dir = merge_adapter(str(model_dir), str(out / "adapter"), out / "merged")
    with timed("pipeline"):
        merged, _ = load_base_model(merged_dir)
        pipe = pipeline("audio-text-to-text", model=merged, processor=load_processor(merged_dir))
        audio = examples[0].audios()[0]
        pipeline_output = pipe(audio, generate_kwargs={"max_new_tokens": s.max_new_tokens})[0]["generated_text"]

    columns = {"base": results["base"].metrics, "tuned": results["tuned"].metrics}
    table = metrics_table(columns, CAPTION_METRICS)
    summary = {
        "model": f"tiny AF3 ({trained.total_parameters:,} parameters, {trained.trainable_parameters:,} trainable "
                 "with LoRA on the language model)",
        "data": f"{s.clips} synthetic clips ({data_dir})",
        "training": f"{trained.steps} steps × batch {s.batch_size}, lr {s.learning_rate}; final train loss "
                    f"{trained.train_loss:.3f}, eval loss {trained.eval_loss:.3f}",
        "test clips": len(examples),
        "pipeline output on the first test clip": f"\"{pipeline_output}\"",
    }
    timings["total"] = sum(timings.values())
    report = write_demo_report(out / "report.md", summary, table, samples, timings)
    return DemoResult(out_dir=out, base=columns["base"], tuned=columns["tuned"], samples=samples,
                      pipeline_output=pipeline_output, timings=timings, report=report)
