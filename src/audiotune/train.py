"""Fine-tune an audio-language model with the Hugging Face ``Trainer``: LoRA on the LM by default.

The flow: check the data (columns, non-empty) *before* loading the model, so a wrong column costs
seconds, not a model load; load the base; freeze encoder and projector; wrap with LoRA on the
family's language-model layers; train with assistant-only labels; save adapter, processor,
resolved config and a model card. Bad rows are skipped and listed (see ``data/examples.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from .audio_cache import AudioEmbeddingCache, cache_is_safe, install_audio_cache
from .checkpoints import (GracefulStopCallback, checkpoint_is_complete,  # noqa: F401
                          clean_staging, latest_checkpoint, save_atomically)
from .callbacks import GenerationMetricsCallback, LiveLogCallback
from .config import DataConfig
from .train_config import TrainConfig, gpu_only_message
from .trainer import AudiotuneTrainer
from .data.collator import ConversationCollator
from .data.packing import PackingCollator, check_packing
from .data.examples import BadSampleLog, ExampleDataset, ExampleStream, streaming_workers
from .data.prepare import prepare_split
from .data.sources import first_row
from .distributed import rank_and_world_size
from .errors import AudiotuneError, ConfigError
from .metrics import GENERATION_PREFIX
from .models.family import Family
from .models.packed_attention import use_packed_attention
from .models.loading import (AdaptationPlan, count_parameters, load_base_model, load_processor,
                             prepare_for_training, resolve_family)

logger = logging.getLogger(__name__)

RUN_CONFIG = "run_config.yaml"
SKIPPED = "skipped.jsonl"


@dataclass
class TrainResult:
    out_dir: Path
    trainable_parameters: int
    total_parameters: int
    train_loss: float | None
    eval_loss: float | None
    steps: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: str | None = None
    interrupted: bool = False  # stopped by SIGINT/SIGTERM after saving a checkpoint
    generation_metrics: dict[str, float] = field(default_factory=dict)  # final, on the eval slice
    best_checkpoint: str | None = None
    audio_cache_hits: int = 0
    audio_cache_misses: int = 0


def _take(rows, start: int, count: int | None):
    """Rows ``start … start+count`` of a streaming or in-memory split (the guide's skip/take)."""
    if hasattr(rows, "select"):
        stop = len(rows) if count is None else min(len(rows), start + count)
        return rows.select(range(min(start, stop), stop))
    rows = rows.skip(start) if start else rows
    return rows.take(count) if count is not None else rows


def build_datasets(cfg: TrainConfig, family: Family, run_dir: Path, data: DataConfig | None = None):
    """Train and eval datasets of Examples; fatal data problems raise here, before the model loads. ``data``: the
    data settings to read with (default ``cfg.data``; DPO's reads preference pairs); the splits are the run's."""
    data = data or cfg.data
    train_rows, build = prepare_split(data, cfg.train_split, family)
    if cfg.eval_split:
        eval_rows, eval_build = prepare_split(data, cfg.eval_split, family)
        eval_rows = _take(eval_rows, 0, cfg.eval_take)
        train_rows = _take(train_rows, 0, cfg.train_take)
    else:
        eval_build = build
        eval_rows = _take(train_rows, cfg.train_take or 0, cfg.eval_take) if cfg.eval_take else None
        train_rows = _take(train_rows, 0, cfg.train_take)
    first_row(train_rows, data.dataset, cfg.train_split)

    rank, world_size = rank_and_world_size()
    if data.streaming and world_size > 1:
        from datasets.distributed import split_dataset_by_node

        # Each rank reads and decodes only its own part of the stream (whole shards when there are enough).
        train_rows = split_dataset_by_node(train_rows, rank=rank, world_size=world_size)
    bad_log = BadSampleLog(run_dir / SKIPPED)
    wrap = ExampleStream if data.streaming else ExampleDataset
    train_ds = wrap(train_rows, build, bad_log, data.on_bad_sample)
    eval_ds = wrap(eval_rows, eval_build, bad_log, data.on_bad_sample) if eval_rows is not None else None
    return train_ds, eval_ds, bad_log


def estimated_lengths(dataset: ExampleDataset, family: Family) -> list[int]:
    """Approximate token length of every row (audio tokens from each clip's header duration, or a segment's stated
    duration, plus text), cheap: no decoding, so the length-grouped sampler does not cost a pass over the audio."""
    build = dataset.build
    lengths = []
    for i in range(len(dataset.rows)):
        try:
            row = build.canonical(dataset.rows[i], i)
            items = build.task.audio_items(row, build.audio_column, f"row {i}")
        except AudiotuneError:  # a bad row: built (and skipped) later; any length will do here
            row, items = {}, [None]
        seconds = [_header_seconds(build, item) for item in items] or [0.0]
        text = _text_of(row.get(build.task.text_column))
        lengths.append(sum(family.audio_tokens(s) for s in seconds) + len(text) // 4 + 32)
    return lengths


def _text_of(value) -> str:
    """The text of a cell: a string, or every text of a conversation (its turns' contents and text parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return " ".join(_text_of(value.get(k)) for k in ("content", "value", "text") if value.get(k) is not None)
    if isinstance(value, (list, tuple)):
        return " ".join(_text_of(v) for v in value)
    return "" if value is None else str(value)


def _header_seconds(build, item) -> float:
    """A clip's duration from its header (a segment's from the manifest); 10 s where none can be read."""
    import io

    import soundfile as sf

    if isinstance(item, dict) and item.get("duration") is not None:
        return float(item["duration"])
    if isinstance(item, str) and item.startswith(("http://", "https://", "data:")):
        return 10.0  # not fetched just to sort
    item = build.resolve(item)
    try:
        if isinstance(item, dict) and item.get("bytes"):
            info = sf.info(io.BytesIO(item["bytes"]))
        elif isinstance(item, dict) and item.get("path"):
            info = sf.info(item["path"])
        elif isinstance(item, (bytes, bytearray)):
            info = sf.info(io.BytesIO(item))
        else:
            info = sf.info(item)
        return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - unknown containers count as 10 s; the sampler only groups
        return 10.0


def dataloader_workers(cfg: TrainConfig, train_ds) -> int:
    """The data-loader workers a run uses: a stream gets no more than it has shards (derived, never written back)."""
    if cfg.data.streaming and cfg.dataloader_num_workers > 1:
        return streaming_workers(train_ds.rows, cfg.dataloader_num_workers)
    return cfg.dataloader_num_workers


def write_model_card(out_dir: Path, cfg: TrainConfig, family: Family, result: TrainResult, prompt: str,
                     metrics: dict[str, float] | None = None) -> None:
    """README.md in the adapter folder: what was trained, on what, and how it scored."""
    rows = {"train loss": result.train_loss, "eval loss": result.eval_loss,
            **{f"{k} (eval slice, generated)": v for k, v in (metrics or {}).items() if k != "vocabulary"}}
    table = "\n".join(f"| {k} | {v:.4f} |" for k, v in rows.items() if isinstance(v, (int, float)))
    adapter, data = cfg.adapter, cfg.data
    mode = "full fine-tuning of the language model" if adapter.full else (
        f"LoRA r={adapter.lora_r}, alpha={adapter.lora_alpha}, dropout={adapter.lora_dropout} on "
        + ("the language model's linear layers" if adapter.lora_targets is None else f"{adapter.lora_targets}"))
    (out_dir / "README.md").write_text(
        f"---\nbase_model: {cfg.model}\nlibrary_name: peft\npipeline_tag: audio-text-to-text\n"
        f"tags: [audiotune, {family.name}, {data.task}]\n---\n\n"
        f"# {out_dir.name}\n\nFine-tuned with audiotune from `{cfg.model}` on `{data.dataset}` "
        f"({data.task}, prompt: \"{prompt}\").\n\n"
        f"- Adaptation: {mode}; audio encoder frozen"
        f"{'' if adapter.train_projector else ', projector frozen'}.\n"
        f"- Method: {cfg.rl.method}; loss on the assistant's tokens only.\n"
        f"- Steps: {result.steps}, batch {cfg.per_device_train_batch_size} × accumulation "
        f"{cfg.gradient_accumulation_steps}, "
        f"learning rate {cfg.learning_rate}.\n"
        f"- Trainable parameters: {result.trainable_parameters:,} of {result.total_parameters:,}.\n"
        f"- Rows skipped as bad: {len(result.skipped)}.\n\n"
        f"## Metrics\n\n| metric | value |\n|---|---|\n{table}\n\n"
        "## Use\n\n```python\nfrom peft import PeftModel\nfrom transformers import AutoProcessor, "
        f"{family.model_class}\n\nbase = {family.model_class}.from_pretrained('{cfg.model}')\n"
        f"model = PeftModel.from_pretrained(base, '{out_dir}')\nprocessor = AutoProcessor.from_pretrained('{out_dir}')\n"
        "```\n\nor `audiotune infer --model ... --adapter ... FILES`.\n"
    )


def train(cfg: TrainConfig, callbacks: list | None = None) -> TrainResult:
    """Run one fine-tuning job described by ``cfg``; return losses, counts and the output folder."""

    cfg.validate()
    require_gpu_features(cfg)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rank, world_size = rank_and_world_size()
    main_process = rank == 0
    if main_process:
        clean_staging(out_dir)
    family = resolve_family(cfg.model)
    if cfg.packing:  # refused before the data is read or the model loads
        from transformers import AutoConfig

        check_packing(family, AutoConfig.from_pretrained(cfg.model))
    rl, adapter = cfg.rl, cfg.adapter
    # DPO reads preference pairs (audio, prompt, chosen, rejected) whatever --task says; the user's config keeps its.
    data = dataclasses.replace(cfg.data, task="preference") if rl.method == "dpo" else cfg.data
    train_ds, eval_ds, bad_log = build_datasets(cfg, family, out_dir, data)  # fails fast, before the model loads
    if rl.method == "grpo":
        train_ds.build.keep_fields = True  # user rewards receive the row's columns
        from .rl.rewards import build_rewards

        build_rewards(rl.rewards, rl.reward_weights, train_ds.build.task.name)  # a bad reward fails here too

    resume_from = None
    if cfg.resume:
        checkpoint = latest_checkpoint(out_dir)
        if checkpoint is None:
            logger.warning("--resume: no complete checkpoint in %s; starting from scratch.", out_dir)
        else:
            logger.info("--resume: continuing from %s.", checkpoint)
        resume_from = str(checkpoint) if checkpoint else None

    torch.manual_seed(cfg.seed)
    processor = load_processor(cfg.model)
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    model, _ = load_base_model(cfg.model, dtype=dtype, quantize_lm_4bit=adapter.qlora)
    if not family.loss_uses_num_items:
        model.accepts_loss_kwargs = False  # the Trainer then averages over accumulation steps itself
    if cfg.packing and use_packed_attention(model, family):  # sdpa without the other examples' blocks
        logger.info("--packing: the language model attends one example at a time (models/packed_attention.py).")
    plan = AdaptationPlan(full=adapter.full, lora_r=adapter.lora_r, lora_alpha=adapter.lora_alpha,
                          lora_dropout=adapter.lora_dropout, lora_targets=adapter.lora_targets,
                          train_projector=adapter.train_projector, train_audio_encoder=adapter.train_audio_encoder)
    model = start_from_adapter(model, cfg) if rl.init_adapter else prepare_for_training(model, family, plan)
    trainable, total = count_parameters(model)
    audio_cache = None
    if cfg.audio_cache != "off":
        if cache_is_safe(model, family):
            directory = Path(cfg.audio_cache_dir or out_dir / "audio-cache") if cfg.audio_cache == "disk" else None
            audio_cache = AudioEmbeddingCache(directory=directory)
            install_audio_cache(model, family, audio_cache)
        else:
            logger.info("audio-embedding cache off: part of the encoder or projector trains.")
    logger.info("trainable parameters: %s of %s (%.3f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)

    if main_process:
        cfg.to_yaml(out_dir / RUN_CONFIG)  # what the user asked for; the run-time values below are derived
    has_eval = eval_ds is not None and rl.method == "sft"
    args = cfg.trainer_arguments(has_eval, output_dir=str(out_dir),  # TRL's GRPO/DPO config for those methods
                                 dataloader_num_workers=dataloader_workers(cfg, train_ds))
    stop = GracefulStopCallback()
    callbacks = [stop, *(callbacks or [])]
    generation_metrics = None
    if eval_ds is not None and cfg.eval_generate_take > 0 and rl.method != "dpo":
        generation_metrics = GenerationMetricsCallback(
            _first(eval_ds, cfg.eval_generate_take), processor, family, data.task,
            cfg.generation, batch_size=cfg.per_device_eval_batch_size * 4)
        callbacks.append(generation_metrics)
    callbacks.append(LiveLogCallback(out_dir))  # last: an eval line then carries the generation metrics
    if rl.method == "sft":
        trainer = AudiotuneTrainer(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            data_collator=training_collator(cfg, processor, family, model),
            callbacks=callbacks,
        )
    else:  # grpo | dpo: see rl/; evaluation is the generated metrics at the end
        from .rl import make_rl_trainer

        trainer = make_rl_trainer(args, rl, model, processor, family, train_ds, callbacks, model_path=cfg.model)
    trainer.rank_split_stream = cfg.data.streaming and world_size > 1
    trainer.learning_rate_of = group_learning_rates(family, adapter)
    if cfg.group_by_length and isinstance(train_ds, ExampleDataset):
        trainer.lengths = estimated_lengths(train_ds, family)
    output = trainer.train(resume_from_checkpoint=resume_from)
    if stop.stopped_at is not None:
        logger.warning("stopped by a signal at step %d; checkpoint-%d is saved: rerun with --resume to continue.",
                       stop.stopped_at, stop.stopped_at)
        return TrainResult(out_dir=out_dir, trainable_parameters=trainable, total_parameters=total,
                           train_loss=None, eval_loss=None, steps=int(output.global_step), skipped=bad_log.entries(),
                           log_history=list(trainer.state.log_history), resumed_from=resume_from, interrupted=True)
    eval_loss = None
    final_metrics: dict[str, float] = {}
    if eval_ds is not None and rl.method != "sft":
        if generation_metrics is not None:
            final_metrics = generation_metrics.score_now(trainer.model)
    elif eval_ds is not None:
        final = trainer.evaluate()
        eval_loss = float(final["eval_loss"])
        final_metrics = {k.removeprefix(GENERATION_PREFIX): float(v) for k, v in final.items()
                         if k.startswith(GENERATION_PREFIX)}

    save_atomically(trainer, processor, out_dir)
    result = TrainResult(
        out_dir=out_dir, trainable_parameters=trainable, total_parameters=total,
        train_loss=float(output.training_loss) if output.training_loss is not None else None,
        eval_loss=eval_loss, steps=int(output.global_step), skipped=bad_log.entries(),
        log_history=list(trainer.state.log_history), resumed_from=resume_from,
        generation_metrics=final_metrics, best_checkpoint=trainer.state.best_model_checkpoint,
        audio_cache_hits=audio_cache.hits if audio_cache else 0,
        audio_cache_misses=audio_cache.misses if audio_cache else 0,
    )
    if main_process:
        (out_dir / "train_metrics.json").write_text(json.dumps(
            {k: v for k, v in dataclasses.asdict(result).items() if k != "out_dir"}, indent=2, default=str))
        write_model_card(out_dir, cfg, family, result, train_ds.build.task.prompt, final_metrics)
    return result


def training_collator(cfg: TrainConfig, processor, family: Family, model=None):
    """The supervised collator: padded batches, or packed rows with ``--packing`` (the same examples per batch, so
    the schedule and the loss normalisation are unchanged); one row per batch under flash attention, which finds
    packed examples only in a single row (``PackingCollator.single_row``)."""
    collator = ConversationCollator(processor, family, training=True)
    if not cfg.packing:
        return collator
    attention = str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")
    return PackingCollator(collator, max_length=cfg.max_length, single_row="flash" in attention)


def start_from_adapter(model, cfg: TrainConfig):
    """Continue training the adapter in ``cfg.rl.init_adapter`` (base frozen). For GRPO/DPO a frozen copy of its
    LoRA matrices is loaded as the ``ref`` adapter (TRL's convention), so the reference is the starting model,
    not the bare base; only adapter-sized weights are added, never a second model."""
    from peft import PeftModel

    from .errors import CheckpointError

    init_adapter = cfg.rl.init_adapter
    if cfg.adapter.full or not (Path(init_adapter) / "adapter_config.json").exists():
        raise CheckpointError(f"--init-adapter {init_adapter}: needs a LoRA adapter folder (with "
                              "adapter_config.json), e.g. the --output-dir of an earlier `audiotune train`, and no "
                              "--full.")
    model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    if cfg.rl.method != "sft":
        model.load_adapter(init_adapter, adapter_name="ref", is_trainable=False)
        model.set_adapter("default")
        for name, parameter in model.named_parameters():
            if ".ref." in name:
                parameter.requires_grad_(False)
    return model


def require_gpu_features(cfg: TrainConfig) -> None:
    """--qlora, --bf16, --fsdp and --deepspeed are GPU features: say so at once, not deep inside bitsandbytes,
    autocast or accelerate."""
    if (cfg.adapter.qlora or cfg.bf16) and not torch.cuda.is_available():
        flag = "--qlora" if cfg.adapter.qlora else "--bf16"
        raise ConfigError(gpu_only_message(flag))
    sharded = cfg.fsdp or cfg.deepspeed or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    if sharded and not torch.cuda.is_available():
        flag = "--deepspeed" if cfg.deepspeed else "--fsdp"
        raise ConfigError(f"{flag} shards the model over GPUs: accelerate runs FSDP and DeepSpeed on CUDA devices only "
                          "(on CPU processes it would silently train plain DDP instead). On this machine drop "
                          f"{flag} and use --nproc N (data parallel, gloo); on GPUs see docs/scaling.md.")
    if cfg.adapter.qlora:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError("--qlora needs bitsandbytes: pip install bitsandbytes (on the GPU machine).")
        if cfg.adapter.full:
            raise ConfigError("--qlora trains LoRA adapters on a 4-bit base; it cannot be combined with --full.")


def group_learning_rates(family: Family, adapter) -> Callable[[str], float | None] | None:
    """A parameter name's own learning rate (``--encoder-learning-rate``, ``--projector-learning-rate``), or None
    for the run's; None when neither is set."""
    if adapter.encoder_learning_rate is None and adapter.projector_learning_rate is None:
        return None

    def rate(name: str) -> float | None:
        if family.is_projector_module(name):
            return adapter.projector_learning_rate
        if family.is_encoder_module(name):
            return adapter.encoder_learning_rate
        return None

    return rate


def _first(dataset, n: int) -> list:
    """The first ``n`` examples of a map-style or iterable dataset (the fixed slice scored each evaluation)."""
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        return [dataset[i] for i in range(min(n, len(dataset)))]
    import itertools

    return list(itertools.islice(iter(dataset), n))
