"""``TrainConfig``: ``transformers.TrainingArguments`` plus the run's own fields, with data, adapter, generation and RL
settings composed as parts.

TRL's pattern: the config *is* the Trainer's arguments, so every Trainer option (epochs, optimizer, scheduler, weight
decay, clipping, ``report_to``, ``run_name``, ``deepspeed``, ``fsdp``, ``torch_compile``, ...) is a field with
transformers' own default and help, and nothing is re-mapped by hand. A few Trainer defaults are audiotune's (the
reference guide's values: batch 4 × accumulation 4, lr 1e-4, 500 steps, ...); their help is transformers' text. The
rest is composed, not inherited, as TRL composes its configs: ``cfg.data`` (:class:`~audiotune.config.DataConfig`),
``cfg.adapter``, ``cfg.generation``, ``cfg.rl`` are their own dataclasses, so a function that needs a part takes the
part, and each part is defined once for every command that shares it.

Flags and ``run_config.yaml`` stay flat (``--dataset``, ``--lora-r``, ``--method``, ...: each name is unique across
the parts); :meth:`TrainConfig.from_flat` routes each name to its part. One spelling per option: the names retired
in :attr:`TrainConfig.RETIRED` get one error naming their successor. :meth:`TrainConfig.trainer_arguments` builds
the Trainer's arguments (TRL's GRPO/DPO config for RL methods) once, with the values derived at run time (output
folder, evaluation on or off, CPU, best-checkpoint keys); those are never written back, so ``run_config.yaml``
(:meth:`TrainConfig.to_yaml`) holds the user-level configuration and replays exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SchedulerType

from .config import (AdapterConfig, DataConfig, GenerationSettings, check_choices, compose, flat_values, option, part,
                     plain, read_yaml, require_given)
from .errors import ConfigError
from .rl.config import RLConfig

_TRAINER_FIELDS = {f.name: f for f in dataclasses.fields(TrainingArguments)}
AudioCache = Literal["memory", "disk", "off"]


def trainer_option(name: str, default: Any, help_suffix: str = "") -> Any:
    """A ``TrainingArguments`` field with audiotune's default, and transformers' help text."""
    metadata = dict(_TRAINER_FIELDS[name].metadata)
    if help_suffix:
        metadata["help"] = f"{metadata.get('help', '')} {help_suffix}".strip()
    return dataclasses.field(default=default, metadata=metadata)


def gpu_only_message(flag: str) -> str:
    """The one message for --qlora/--bf16 on a machine without CUDA (also raised by train.require_gpu_features)."""
    return (f"{flag} needs a CUDA GPU (4-bit NF4 quantisation and bf16 mixed precision run there); this machine has "
            f"none. Drop {flag} to train in float32 on the CPU.")


@dataclass
class TrainConfig(TrainingArguments):
    """One fine-tuning run: ``audiotune train``'s options, the web UI's form, ``run_config.yaml``."""

    # Retired names (old name → the one name now) for flags, YAML keys and keywords: each gets one error naming its
    # successor. The last two are transformers' deprecated mirrors of activation_checkpointing.
    RETIRED = {"out": "output_dir", "batch_size": "per_device_train_batch_size",
               "eval_batch_size": "per_device_eval_batch_size", "lr_scheduler": "lr_scheduler_type",
               "gradient_checkpointing": "activation_checkpointing",
               "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs"}

    model: str = option("", "Hub id or local checkpoint of the base model.")
    output_dir: str = trainer_option("output_dir", "runs/latest",
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
    packing: bool = option(False, "Pack each batch's examples end to end into rows of at most --max-length tokens "
                                  "(first-fit by length; positions restart per example, attention stays inside "
                                  "it): no padding, same loss (data/packing.py).")
    max_length: int = option(2048, "--packing: most tokens in a packed row (an example longer than this gets a row of "
                                   "its own; it is never cut).")
    audio_cache: AudioCache = option("memory", "Reuse the frozen encoder's audio embeddings across epochs and "
                                               "evaluations: in memory, on disk, or off (see audio_cache.py).")
    audio_cache_dir: str | None = option(None, "Disk cache folder (default: the run folder's audio-cache).")
    eval_generate_take: int = option(16, "Eval clips to generate for at each evaluation (metrics in the log); 0 turns "
                                         "it off.")
    best_metric: str | None = option(None, "e.g. CIDEr-D or loss: keep the best checkpoint by it (loaded and saved "
                                           "at the end).")
    spice_models: str | None = option(None, "Folder with SPICE's Stanford CoreNLP 3.6.0 jars (SPICE in the "
                                            "generated metrics).")
    # The guide's values where they differ from transformers' defaults.
    per_device_train_batch_size: int = trainer_option("per_device_train_batch_size", 4)
    per_device_eval_batch_size: int = trainer_option("per_device_eval_batch_size", 4)
    gradient_accumulation_steps: int = trainer_option("gradient_accumulation_steps", 4)
    learning_rate: float = trainer_option("learning_rate", 1e-4)
    max_steps: int = trainer_option("max_steps", 500, help_suffix="audiotune: 500 (the guide's); pass -1 to train "
                                                                 "for --num-train-epochs.")
    lr_scheduler_type: SchedulerType | str = trainer_option("lr_scheduler_type", "linear")
    logging_steps: float = trainer_option("logging_steps", 10)
    eval_strategy: IntervalStrategy | str = trainer_option("eval_strategy", "steps",
                                                           help_suffix="audiotune: 'steps', turned to 'no' when there "
                                                                       "are no eval rows.")
    eval_steps: float | None = trainer_option("eval_steps", 100)
    save_steps: float = trainer_option("save_steps", 250)
    save_total_limit: int | None = trainer_option("save_total_limit", 2)
    remove_unused_columns: bool = trainer_option("remove_unused_columns", False, help_suffix="audiotune: False (the "
                                                                                             "collator reads them).")
    disable_tqdm: bool | None = trainer_option("disable_tqdm", False)
    # The composed parts: each is its own dataclass, shared with the commands that need it.
    data: DataConfig = part(DataConfig, "The dataset and how its rows become examples.")
    adapter: AdapterConfig = part(AdapterConfig, "What trains: LoRA on the language model, the whole LM, or QLoRA.")
    generation: GenerationSettings = part(GenerationSettings, "How the eval slice's answers (and GRPO's "
                                                              "completions) are generated.")
    rl: RLConfig = part(RLConfig, "Reinforcement learning and preferences (--method grpo | dpo).")

    def __post_init__(self) -> None:
        if isinstance(self.eval_split, str) and self.eval_split.lower() in ("none", ""):
            self.eval_split = None
        check_choices(self)
        try:
            super().__post_init__()
        except ValueError as error:  # transformers' checks (an unknown optimizer, scheduler, bf16 without a GPU...)
            if self.bf16 and "bf16" in str(error):
                raise ConfigError(gpu_only_message("--bf16")) from None
            raise ConfigError(f"training configuration: {error}") from None
        except ImportError as error:  # an option whose package is missing (--deepspeed without deepspeed, ...)
            raise ConfigError(f"training configuration: {error} Install it (DeepSpeed: on the GPU machine), or drop "
                              "the option.") from None

    @classmethod
    def from_flat(cls, **values: Any) -> "TrainConfig":
        """A config from flat option names, as flags and ``run_config.yaml`` spell them:
        ``TrainConfig.from_flat(model=..., dataset=..., lora_r=8, method="grpo")`` routes ``dataset`` to ``data``,
        ``lora_r`` to ``adapter``, ``method`` to ``rl``. An unknown or retired name is a ConfigError."""
        return compose(cls, values, "TrainConfig", "keyword")

    def validate(self) -> "TrainConfig":
        require_given(self.model, self.data.dataset, needs_dataset=True)
        self.adapter.validate_adapter()
        for config in (self, self.data, self.rl):  # a field set after construction (the UI's) is checked too
            check_choices(config)
        if self.rl.method != "sft":
            from .rl.config import validate_rl

            validate_rl(self)
        if self.best_metric and self.eval_steps and self.save_steps % self.eval_steps:
            raise ConfigError(f"--best-metric needs --save-steps ({self.save_steps:g}) to be a multiple of "
                              f"--eval-steps ({self.eval_steps:g}), so every saved checkpoint has been scored.")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)}).")
        if self.packing and self.rl.method != "sft":
            raise ConfigError(f"--packing packs supervised batches; --method {self.rl.method} builds its own batches "
                              "(TRL's). Drop --packing for it.")
        if self.max_length < 1:
            raise ConfigError(f"max_length must be at least 1 (got {self.max_length}).")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"max_steps must be at least 1, or -1 to train for --num-train-epochs "
                              f"(got {self.max_steps}).")
        return self

    def user_values(self) -> dict[str, Any]:
        """The user-level configuration, flat (``run_config.yaml``'s keys): every audiotune option (the run's and
        each part's), the Trainer options whose default is audiotune's, and each other Trainer option that differs
        from transformers' default normalised the same way (secrets left out).
        ``TrainConfig.from_flat(**user_values())`` is this configuration."""
        defaults = _trainer_defaults()
        declared = set(TrainConfig.__dict__["__annotations__"])
        values = {name: plain(value) for name, value in flat_values(self).items() if not name.endswith("_token")}
        ours = {name: value for name, value in values.items() if name not in defaults}
        trainer = {name: value for name, value in values.items()
                   if name in defaults and (name in declared or value != defaults[name])}
        return {**ours, **trainer}

    def to_dict(self) -> dict[str, Any]:
        """transformers' dict of the fields, each part as a dict of its own: ``to_json_string`` and a tracker's
        config logging serialise it."""
        values = super().to_dict()
        for f in dataclasses.fields(self):
            if "part" in f.metadata:
                values[f.name] = dataclasses.asdict(getattr(self, f.name))
        return values

    def trainer_values(self, has_eval: bool, **changes: Any) -> dict[str, Any]:
        """Every ``TrainingArguments`` field as the Trainer gets it: this config's, with the values derived at run
        time (set here only, never written back) and ``changes`` on top."""
        import torch

        from .metrics import GENERATION_PREFIX, LOWER_IS_BETTER

        values = {name: plain(getattr(self, name)) for name, f in _TRAINER_FIELDS.items()
                  if f.init and name not in self.RETIRED}
        values.update(use_cpu=self.use_cpu or not torch.cuda.is_available(),
                      data_seed=self.seed if self.data_seed is None else self.data_seed,
                      label_names=self.label_names or ["labels"])
        if not has_eval:
            values.update(eval_strategy="no", eval_steps=None, do_eval=False)
        if self.activation_checkpointing and self.activation_checkpointing_kwargs is None:
            values["activation_checkpointing_kwargs"] = {"use_reentrant": False}
        if self.best_metric and has_eval:
            name = self.best_metric.removeprefix("eval_")
            values.update(metric_for_best_model="eval_loss" if name == "loss" else f"{GENERATION_PREFIX}{name}",
                          greater_is_better=name not in LOWER_IS_BETTER, load_best_model_at_end=True)
        return {**values, **changes}

    def trainer_arguments(self, has_eval: bool, **changes: Any) -> TrainingArguments:
        """The arguments the Trainer gets, built once from :meth:`trainer_values`: ``TrainingArguments`` for
        supervised training, TRL's ``GRPOConfig``/``DPOConfig`` (with ``self.rl``) for ``--method grpo|dpo``."""
        values = self.trainer_values(has_eval, **changes)
        if self.rl.method == "sft":
            return TrainingArguments(**values)
        from .rl.config import rl_arguments

        return rl_arguments(self.rl, self.generation, values)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Read ``path`` (flat keys, as ``run_config.yaml``) and apply ``overrides`` (those not ``None``) on top."""
        data = read_yaml(path, cls)
        data.update({k: v for k, v in overrides.items() if v is not None})
        return compose(cls, data, str(path))

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.user_values(), sort_keys=False))


@functools.cache
def _trainer_defaults() -> dict[str, Any]:
    """Each Trainer field of a default ``TrainConfig`` as ``__post_init__`` leaves it (``report_to`` 'none' → [],
    ``do_eval`` from ``eval_strategy``): a field's value is compared with this, normalised the same way, to tell
    whether the user set it, so a value transformers derives is not mistaken for one the user chose."""
    defaults = TrainConfig()
    return {name: plain(getattr(defaults, name)) for name, f in _TRAINER_FIELDS.items() if f.init}
