"""Run configuration: one flat, typed record that a YAML file or CLI flags fill in.

Flat because every field is also a CLI flag of the same name (``lora_r`` ↔ ``--lora-r``), and a
saved ``run_config.yaml`` can be fed back with ``--config`` to repeat a run exactly.
Defaults reproduce the reference guide's hyper-parameters, except for its two mistakes: LoRA targets
the language model only (``lora_targets=None`` → the family's LM regex) and the loss covers the
assistant's tokens only (see ``data/collator.py``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .audio import LongAudioPolicy
from .errors import ConfigError


@dataclass
class TrainConfig:
    model: str = ""
    dataset: str = ""
    out: str = "runs/latest"
    # data
    task: str = "caption"  # caption | asr | qa | classify | mcq | chat (| preference: what --method dpo reads)
    prompt: str | None = None  # None: the task's default ("Describe the audio." for caption)
    system_prompt: str | None = None
    audio_column: str | None = None  # None: auto-detected (audio, audio_path, path, file_name, ...)
    text_column: str | None = None  # None: auto-detected per task (caption/text, text/transcript, answer, label)
    references_column: str | None = None  # None: the task's default (captions for caption)
    question_column: str | None = None
    labels: list[str] | None = None  # classify: the label set (default: read from the dataset)
    id_column: str | None = None
    train_split: str = "train"
    eval_split: str | None = "validation"  # None: carve eval rows from train (guide: skip(train_take).take(eval_take))
    streaming: bool = False
    train_take: int | None = None
    eval_take: int | None = None
    long_audio: str = LongAudioPolicy.WINDOW.value
    on_bad_sample: str = "skip"
    # adaptation
    full: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] | None = None
    train_projector: bool = False
    # optimisation (the guide's values)
    batch_size: int = 4
    eval_batch_size: int = 4
    gradient_accumulation_steps: int = 4
    learning_rate: float = 1e-4
    max_steps: int = 500
    warmup_steps: int = 0
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    logging_steps: int = 10
    eval_steps: int = 100
    save_steps: int = 250
    save_total_limit: int = 2
    seed: int = 42
    bf16: bool = False
    qlora: bool = False  # 4-bit NF4 language model (bitsandbytes, CUDA), LoRA on top
    gradient_checkpointing: bool = False
    dataloader_num_workers: int = 0
    group_by_length: bool = False  # batches of similar length (less padding); changes the sample order
    audio_cache: str = "memory"  # memory | disk | off: reuse frozen audio embeddings (see audio_cache.py)
    audio_cache_dir: str | None = None  # disk cache folder (default: OUT/audio-cache)
    resume: bool = False
    max_new_tokens: int = 64
    # generation-based evaluation during training (see callbacks.py)
    eval_generate_take: int = 16  # eval clips to generate for at each evaluation; 0 turns it off
    best_metric: str | None = None  # e.g. CIDEr-D or loss: keep the best checkpoint by it
    spice_models: str | None = None
    # reinforcement learning and preferences (docs/rl.md explains each setting)
    method: str = "sft"  # sft | grpo (sampled groups, verifiable rewards) | dpo (chosen/rejected pairs)
    init_adapter: str | None = None  # start from this LoRA adapter (e.g. a short SFT run) instead of a fresh one
    choices_column: str | None = None  # mcq: the choices (None: auto-detected, choices/options)
    rejected_column: str | None = None  # dpo: the rejected answer (None: auto-detected, rejected/...)
    num_generations: int = 4  # grpo: completions sampled per prompt (the group); batch_size counts prompts
    num_iterations: int = 1  # grpo: optimizer steps on each generated batch (mu); >1 makes the ratio clip bite
    epsilon: float = 0.2  # grpo: clip range of the probability ratio, 1-epsilon … 1+epsilon_high
    epsilon_high: float | None = None  # grpo: upper clip (None: epsilon; DAPO uses 0.28)
    beta: float = 0.04  # grpo: weight of the KL penalty to the reference (the base, adapter disabled); 0: none
    temperature: float = 1.0  # grpo: sampling temperature of the completions
    top_p: float = 1.0  # grpo: nucleus sampling of the completions
    max_completion_length: int = 32  # grpo: most new tokens per completion
    rewards: list[str] | None = None  # grpo: accuracy | format | wer | cider | meteor | module:function (None: task's)
    reward_weights: list[float] | None = None  # grpo: one weight per reward (None: all 1)
    scale_rewards: str = "group"  # grpo: divide advantages by the group's std (group), the batch's (batch), or none
    grpo_loss_type: str = "grpo"  # grpo: loss normalisation, grpo (per sequence) | bnpo (per token) | dr_grpo
    dpo_beta: float = 0.1  # dpo: temperature of the implicit reward; lower strays further from the reference
    dpo_loss_type: str = "sigmoid"  # dpo: sigmoid (DPO) | hinge (SLiC) | ipo
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        if not self.model:
            raise ConfigError("No model given: pass --model (a Hub id or a local checkpoint folder).")
        if not self.dataset:
            raise ConfigError("No dataset given: pass --dataset (a Hub id, a local folder or parquet files).")
        try:
            LongAudioPolicy(self.long_audio)
        except ValueError:
            raise ConfigError(f"--long-audio {self.long_audio!r}: choose one of "
                              f"{', '.join(p.value for p in LongAudioPolicy)}.") from None
        if self.audio_cache not in ("memory", "disk", "off"):
            raise ConfigError(f"--audio-cache {self.audio_cache!r}: choose memory, disk or off.")
        if self.on_bad_sample not in ("skip", "fail"):
            raise ConfigError(f"--on-bad-sample {self.on_bad_sample!r}: choose skip or fail.")
        if self.task not in ("caption", "asr", "qa", "classify", "chat", "mcq", "preference"):
            raise ConfigError(f"--task {self.task!r}: choose caption, asr, qa, classify, mcq or chat.")
        if self.method != "sft":
            from .rl.config import validate_rl

            validate_rl(self)
        if self.best_metric and self.eval_steps and self.save_steps % self.eval_steps:
            raise ConfigError(f"--best-metric needs --save-steps ({self.save_steps}) to be a multiple of "
                              f"--eval-steps ({self.eval_steps}), so every saved checkpoint has been scored.")
        for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "max_steps", "lora_r"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)}).")
        return self

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Read ``path`` and apply ``overrides`` (those that are not ``None``) on top."""
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"Config file {path} does not exist.") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}. Known keys: {', '.join(sorted(known))}.")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))
