"""``TrainConfig``: the data, adapter, generation and RL settings on top of ``transformers.TrainingArguments``.

TRL's ``SFTConfig`` pattern: the config *is* the Trainer's arguments, so every Trainer option (epochs, optimizer,
scheduler, weight decay, clipping, ``report_to``, ``run_name``, ``deepspeed``, ``fsdp``, ``torch_compile``, ...) is a
field with transformers' own default and help, and nothing is re-mapped by hand. A few Trainer defaults are
audiotune's (the reference guide's values: batch 4 × accumulation 4, lr 1e-4, 500 steps, ...); their help is
transformers' text. :meth:`TrainConfig.trainer_arguments` derives the run-time copy the Trainer gets (output
folder, evaluation on or off, CPU, best-checkpoint keys); those derived values are never written back, so
``run_config.yaml`` (:meth:`TrainConfig.to_yaml`) holds the user-level configuration and replays exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SchedulerType

from .config import (AdapterConfig, DataConfig, GenerationSettings, option, plain, read_yaml, require_given,
                     resolve_aliases, split_commas)
from .errors import ConfigError

_TRAINER_FIELDS = {f.name: f for f in dataclasses.fields(TrainingArguments)}


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def trainer_option(name: str, default: Any, *aliases: str, help_suffix: str = "") -> Any:
    """A ``TrainingArguments`` field with audiotune's default: transformers' help text, plus the old flag names."""
    metadata = dict(_TRAINER_FIELDS[name].metadata)
    if help_suffix:
        metadata["help"] = f"{metadata.get('help', '')} {help_suffix}".strip()
    if aliases:
        metadata["aliases"] = list(aliases)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass
class RLConfig:
    """Reinforcement learning and preferences (docs/rl.md explains each setting); sampling uses --temperature/--top-p."""

    method: str = option("sft", "sft | grpo | dpo: supervised; GRPO (sampled groups, verifiable rewards); DPO "
                                    "(chosen/rejected pairs).")
    init_adapter: str | None = option(None, "Start from this LoRA adapter (e.g. a short SFT run) instead of a fresh "
                                            "one.")
    num_generations: int = option(4, "grpo: completions sampled per prompt (the group); batch size counts prompts.")
    num_iterations: int = option(1, "grpo: optimizer steps on each generated batch (mu); >1 makes the ratio clip "
                                    "bite.")
    epsilon: float = option(0.2, "grpo: clip range of the probability ratio, 1-epsilon … 1+epsilon_high.")
    epsilon_high: float | None = option(None, "grpo: upper clip (empty: epsilon; DAPO uses 0.28).")
    beta: float = option(0.04, "grpo: weight of the KL penalty to the reference (the base, adapter disabled); 0: "
                               "none.")
    max_completion_length: int = option(32, "grpo: most new tokens per completion.")
    rewards: list[str] | None = option(None, "grpo: comma-separated rewards: accuracy, format, wer, cider, meteor or "
                                             "module:function (empty: the task's).")
    reward_weights: list[float] | None = option(None, "grpo: comma-separated weights, one per reward (empty: all 1).")
    scale_rewards: str = option("group", "grpo: group | batch | none: divide advantages by the group's or the "
                                         "batch's std, or not.")
    grpo_loss_type: str = option("grpo", "grpo: grpo (per sequence) | bnpo (per token) | dr_grpo: loss "
                                         "normalisation.")
    dpo_beta: float = option(0.1, "dpo: temperature of the implicit reward; lower strays further from the "
                                  "reference.")
    dpo_loss_type: str = option("sigmoid", "dpo: sigmoid (DPO) | hinge (SLiC) | ipo")


def gpu_only_message(flag: str) -> str:
    """The one message for --qlora/--bf16 on a machine without CUDA (also raised by train.require_gpu_features)."""
    return (f"{flag} needs a CUDA GPU (4-bit NF4 quantisation and bf16 mixed precision run there); this machine has "
            f"none. Drop {flag} to train in float32 on the CPU.")


@dataclass
class TrainConfig(DataConfig, AdapterConfig, GenerationSettings, RLConfig, TrainingArguments):
    """One fine-tuning run: ``audiotune train``'s options, the web UI's form, ``run_config.yaml``."""

    model: str = option("", "Hub id or local checkpoint of the base model.")
    output_dir: str = trainer_option("output_dir", "runs/latest", "--out",
                                     help_suffix="audiotune: the run folder (adapter, checkpoints, run_config.yaml, "
                                                 "model card).")
    train_split: str = option("train", "The split to train on.")
    eval_split: str | None = option("validation", "The split to evaluate on; 'none' carves --eval-take rows from "
                                                  "train (the guide's skip(train_take).take(eval_take)).")
    train_take: int | None = option(None, "Train on the first N rows only.")
    eval_take: int | None = option(None, "Evaluate on the first N rows only.")
    resume: bool = option(False, "Continue from the newest complete checkpoint in the run folder.")
    group_by_length: bool = option(False, "Batch clips of similar length together (less padding); changes the "
                                           "sample order.")
    audio_cache: str = option("memory", "memory | disk | off: reuse the frozen encoder's audio embeddings across "
                                        "epochs and evaluations (see audio_cache.py).")
    audio_cache_dir: str | None = option(None, "Disk cache folder (default: the run folder's audio-cache).")
    eval_generate_take: int = option(16, "Eval clips to generate for at each evaluation (metrics in the log); 0 turns "
                                         "it off.")
    best_metric: str | None = option(None, "e.g. CIDEr-D or loss: keep the best checkpoint by it (loaded and saved "
                                           "at the end).")
    spice_models: str | None = option(None, "Folder with SPICE's Stanford CoreNLP 3.6.0 jars (SPICE in the "
                                            "generated metrics).")
    # The guide's values where they differ from transformers' defaults.
    per_device_train_batch_size: int = trainer_option("per_device_train_batch_size", 4, "--batch-size",
                                                      "--batch_size")
    per_device_eval_batch_size: int = trainer_option("per_device_eval_batch_size", 4, "--eval-batch-size",
                                                     "--eval_batch_size")
    gradient_accumulation_steps: int = trainer_option("gradient_accumulation_steps", 4)
    learning_rate: float = trainer_option("learning_rate", 1e-4)
    max_steps: int = trainer_option("max_steps", 500, help_suffix="audiotune: 500 (the guide's); pass -1 to train "
                                                                 "for --num-train-epochs.")
    lr_scheduler_type: SchedulerType | str = trainer_option("lr_scheduler_type", "linear", "--lr-scheduler", "--lr_scheduler")
    logging_steps: float = trainer_option("logging_steps", 10)
    eval_strategy: IntervalStrategy | str = trainer_option("eval_strategy", "steps", help_suffix="audiotune: 'steps', turned to 'no' "
                                                                             "when there are no eval rows.")
    eval_steps: float | None = trainer_option("eval_steps", 100)
    save_steps: float = trainer_option("save_steps", 250)
    save_total_limit: int | None = trainer_option("save_total_limit", 2)
    remove_unused_columns: bool = trainer_option("remove_unused_columns", False, help_suffix="audiotune: False (the "
                                                                                             "collator reads them).")
    disable_tqdm: bool | None = trainer_option("disable_tqdm", False)

    def __post_init__(self) -> None:
        DataConfig.__post_init__(self)
        AdapterConfig.__post_init__(self)
        self.rewards = split_commas(self.rewards)
        if self.reward_weights is not None:
            try:
                self.reward_weights = [float(w) for w in split_commas(self.reward_weights) or []] or None
            except ValueError:
                raise ConfigError(f"--reward-weights {self.reward_weights}: numbers, comma-separated.") from None
        if isinstance(self.eval_split, str) and self.eval_split.lower() in ("none", ""):
            self.eval_split = None
        # What the user asked for, before transformers normalises it: what run_config.yaml records.
        self._user = {f.name: copy.deepcopy(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}
        try:
            TrainingArguments.__post_init__(self)
        except ValueError as error:  # transformers' checks (an unknown optimizer, scheduler, bf16 without a GPU...)
            if self.bf16 and "bf16" in str(error):
                raise ConfigError(gpu_only_message("--bf16")) from None
            raise ConfigError(f"training configuration: {error}") from None
        except ImportError as error:  # an option whose package is missing (--deepspeed without deepspeed, ...)
            raise ConfigError(f"training configuration: {error} Install it (DeepSpeed: on the GPU machine), or drop "
                              "the option.") from None
        self._initialised = True

    def __setattr__(self, name: str, value: Any) -> None:
        # A field set after construction (the UI confining a path) is what the user asked for, too.
        super().__setattr__(name, value)
        if self.__dict__.get("_initialised") and name in self.__dict__.get("_user", {}):
            self._user[name] = copy.deepcopy(value)

    # The old names, for code that reads them (they are also accepted as keywords, flags and YAML keys).
    @property
    def out(self) -> str:
        return self.output_dir

    @property
    def batch_size(self) -> int:
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        return self.per_device_eval_batch_size

    @property
    def lr_scheduler(self) -> str:
        return plain(self.lr_scheduler_type)

    def validate(self) -> "TrainConfig":
        require_given(self.model, self.dataset, needs_dataset=True)
        self.validate_data()
        self.validate_adapter()
        if self.audio_cache not in ("memory", "disk", "off"):
            raise ConfigError(f"--audio-cache {self.audio_cache!r}: choose memory, disk or off.")
        if self.method != "sft":
            from .rl.config import validate_rl

            validate_rl(self)
        if self.best_metric and self.eval_steps and self.save_steps % self.eval_steps:
            raise ConfigError(f"--best-metric needs --save-steps ({self.save_steps:g}) to be a multiple of "
                              f"--eval-steps ({self.eval_steps:g}), so every saved checkpoint has been scored.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)}).")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"max_steps must be at least 1, or -1 to train for --num-train-epochs "
                              f"(got {self.max_steps}).")
        return self

    def user_values(self) -> dict[str, Any]:
        """The user-level configuration: every audiotune field, and each Trainer field that differs from
        transformers' default (secrets left out). ``TrainConfig(**user_values())`` is this configuration."""
        own = {f.name for f in dataclasses.fields(self)} - set(_TRAINER_FIELDS)
        own |= set(TrainConfig.__annotations__)  # the Trainer fields whose default is audiotune's
        values = {}
        for name, value in self._user.items():
            if name.endswith("_token"):
                continue
            if name in own or value != _default(_TRAINER_FIELDS[name]):
                values[name] = plain(value)
        return values

    def trainer_arguments(self, has_eval: bool, **changes: Any) -> "TrainConfig":
        """The copy of this config the Trainer gets: the values derived at run time, set here only."""
        import torch

        from .metrics import GENERATION_PREFIX
        from .metrics import LOWER_IS_BETTER

        derived: dict[str, Any] = dict(use_cpu=self.use_cpu or not torch.cuda.is_available(),
                                       data_seed=self.seed if self.data_seed is None else self.data_seed,
                                       label_names=self.label_names or ["labels"])
        if not has_eval:
            derived.update(eval_strategy="no", eval_steps=None)
        if self.activation_checkpointing and self.activation_checkpointing_kwargs is None:
            derived["activation_checkpointing_kwargs"] = {"use_reentrant": False}
        if self.best_metric and has_eval:
            name = self.best_metric.removeprefix("eval_")
            derived.update(metric_for_best_model="eval_loss" if name == "loss" else f"{GENERATION_PREFIX}{name}",
                           greater_is_better=name not in LOWER_IS_BETTER, load_best_model_at_end=True)
        derived.update(changes)
        values = {**self.user_values(), **derived}
        values.pop("gradient_checkpointing", None)  # the deprecated mirror of activation_checkpointing
        values.pop("gradient_checkpointing_kwargs", None)
        return TrainConfig(**values)

    def trainer_kwargs(self) -> dict[str, Any]:
        """This config's ``TrainingArguments`` fields as keywords (what TRL's GRPO/DPO configs are built from)."""
        skip = {"gradient_checkpointing", "gradient_checkpointing_kwargs"}
        return {name: value for name, value in self._user.items() if name in _TRAINER_FIELDS and name not in skip}

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Read ``path`` (old key names accepted) and apply ``overrides`` (those that are not ``None``) on top."""
        data = read_yaml(path, cls)
        data.update(resolve_aliases({k: v for k, v in overrides.items() if v is not None}, "overrides"))
        return cls(**data)

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.user_values(), sort_keys=False))


def _accept_old_names(init):
    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **resolve_aliases(kwargs, "TrainConfig"))

    return __init__


TrainConfig.__init__ = _accept_old_names(TrainConfig.__init__)  # batch_size=4, out="runs/x", ... keep working
