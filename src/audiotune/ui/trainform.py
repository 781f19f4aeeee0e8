"""The training form, generated from :class:`~audiotune.train_config.TrainConfig` (pure: no Gradio here).

One source for each fact: the fields (the CLI's flat options: ``TrainConfig``'s own and its parts'), their types,
defaults and help come from the dataclass fields (``metadata["help"]``, the text ``audiotune train --help`` shows);
choice lists from the field's type (a ``Literal`` or transformers' enum), as argparse's ``choices``; the groups from
the part that declares a field (``DataConfig`` → data, ``AdapterConfig`` → adaptation, ...). The form shows
audiotune's own fields and the Trainer options in :data:`TRAINER_FIELDS` (every other ``TrainingArguments`` option
stays a CLI flag and a YAML key). A form's values become a ``TrainConfig`` through :func:`config_from_form`, which
confines the paths and runs the same ``validate()`` as the CLI.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from transformers import TrainingArguments

from ..config import (AdapterConfig, DataConfig, GenerationSettings, compose, flat_fields, flat_hints,
                      literal_choices, parse_targets, plain)
from ..errors import ConfigError
from ..rl.config import RLConfig
from ..train_config import TrainConfig
from .paths import Root

# Fields the form leaves out: `resume` is the Resume button; the other two are plumbing (the collator needs the
# columns; the log shows the Trainer's progress bar).
HIDDEN = ("resume", "remove_unused_columns", "disable_tqdm")
# The Trainer options the form shows, besides those whose default is audiotune's (TrainConfig's own fields).
TRAINER_FIELDS = ("num_train_epochs", "optim", "weight_decay", "warmup_steps", "max_grad_norm", "seed", "bf16",
                  "activation_checkpointing", "dataloader_num_workers", "report_to", "run_name")
# How path fields are confined: a Hub id or a local path, or a folder the run may create.
HUB_OR_LOCAL = ("model", "dataset")
NEW_PATHS = ("output_dir", "audio_cache_dir")
EXISTING_PATHS = ("spice_models",)
GROUPS = ("run", "data", "adaptation", "optimisation", "generation-based evaluation during training", "generation",
          "reinforcement learning and preferences")
_RUN = ("model", "dataset", "output_dir")
_SPLITS = ("train_split", "eval_split", "train_take", "eval_take")
_EVALUATION = ("eval_generate_take", "best_metric", "spice_models")
_BY_CLASS = ((DataConfig, "data"), (AdapterConfig, "adaptation"), (GenerationSettings, "generation"),
             (RLConfig, "reinforcement learning and preferences"))


@dataclass(frozen=True)
class FieldSpec:
    name: str
    group: str
    kind: str  # "bool" | "int" | "float" | "text" | "choice" | "list"
    default: Any
    optional: bool  # empty means None
    help: str = ""
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _group(name: str) -> str:
    if name in _RUN:
        return "run"
    if name in _SPLITS:
        return "data"
    if name in _EVALUATION:
        return "generation-based evaluation during training"
    for cls, group in _BY_CLASS:
        if name in {f.name for f in dataclasses.fields(cls)}:
            return group
    return "optimisation"


def form_fields() -> list[str]:
    """The names the form shows: audiotune's fields and :data:`TRAINER_FIELDS`, in the config's order."""
    trainer = {f.name for f in dataclasses.fields(TrainingArguments)} - set(TrainConfig.__dict__["__annotations__"])
    return [f.name for f in flat_fields(TrainConfig)
            if f.name not in HIDDEN and (f.name not in trainer or f.name in TRAINER_FIELDS)]


def _choices(hint: Any) -> tuple[str, ...]:
    """A choice field's values, from its type as argparse reads it: a ``Literal`` or an enum (``optim``)."""
    literal = literal_choices(hint)
    if literal:
        return tuple(str(value) for value in literal)
    for arg in typing.get_args(hint) or (hint,):
        if isinstance(arg, type) and issubclass(arg, enum.Enum):
            return tuple(str(member.value) for member in arg)
    return ()


def _kind(hint: Any) -> tuple[str, bool]:
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    inner = next((a for a in args if a is not type(None)), hint) if optional else hint
    if inner is bool:
        return "bool", optional
    if inner is int:
        return "int", optional
    if inner is float:
        return "float", optional
    if typing.get_origin(inner) is list:
        return "list", optional
    return "text", optional


@lru_cache(maxsize=1)
def form_spec() -> tuple[FieldSpec, ...]:
    """The form's fields, grouped (in :data:`GROUPS`' order), each with its kind, default, help and choices."""
    hints = flat_hints(TrainConfig)
    fields = {f.name: f for f in flat_fields(TrainConfig)}
    specs = []
    for name in form_fields():
        f = fields[name]
        kind, optional = _kind(hints[name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        default = default.value if isinstance(default, enum.Enum) else default
        help_text = f.metadata.get("help", "")
        choices = _choices(hints[name])
        specs.append(FieldSpec(name, _group(name), "choice" if choices else kind, default, optional, help_text,
                               choices))
    return tuple(sorted(specs, key=lambda spec: GROUPS.index(spec.group)))


def groups() -> dict[str, list[FieldSpec]]:
    """The form's sections in order, each with its fields."""
    out: dict[str, list[FieldSpec]] = {}
    for spec in form_spec():
        out.setdefault(spec.group, []).append(spec)
    return out


def default_values() -> dict[str, Any]:
    """What each widget starts with: the default, as the widget shows it (lists comma-joined, None empty)."""
    return {s.name: display_value(s, s.default) for s in form_spec()}


def display_value(spec: FieldSpec, value: Any) -> Any:
    """A value as its widget shows it. Enum values (a loaded config's ``IntervalStrategy.STEPS``) by their value."""
    value = plain(value)
    if value == [] and isinstance(spec.default, str):  # report_to "none" comes back from transformers as []
        return spec.default
    if value is None:
        return None if spec.kind in ("int", "float") else ""
    if spec.kind == "list" or isinstance(value, list):  # report_to: a list once transformers normalised it
        return value if isinstance(value, str) else ",".join(str(v) for v in value)
    return value


def _parse(spec: FieldSpec, raw: Any) -> Any:
    if spec.kind == "bool":
        return bool(raw)
    if spec.kind in ("int", "float"):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            if spec.optional:
                return None
            raise ConfigError(f"{spec.name} ({spec.flag}) needs a number.")
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{spec.name} ({spec.flag}): {raw!r} is not a number.") from None
        if spec.kind == "int":
            if number != int(number):
                raise ConfigError(f"{spec.name} ({spec.flag}) must be a whole number (got {raw}).")
            return int(number)
        return number
    text = "" if raw is None else str(raw).strip()
    if spec.kind == "list":
        if not text:
            return None
        if spec.name == "lora_targets":
            return parse_targets(text)  # a regex or a comma list, exactly as the CLI reads it
        return [t.strip() for t in text.split(",") if t.strip()]
    if spec.name == "eval_split" and text.lower() == "none":
        return None  # as on the CLI: carve the eval rows from train
    if not text and spec.optional:
        return None
    return text


def config_from_form(values: dict[str, Any], root: Root) -> TrainConfig:
    """A validated ``TrainConfig`` from the form's values (missing names keep their defaults).

    Paths are confined to ``root`` and made absolute, so the launched process (started in the
    root) and the saved ``run_config.yaml`` name the same files.
    """
    specs = {s.name: s for s in form_spec()}
    unknown = sorted(set(values) - set(specs))
    if unknown:
        raise ConfigError(f"unknown training fields {unknown}.")
    parsed = {name: _parse(specs[name], raw) for name, raw in values.items()}
    for name in HUB_OR_LOCAL:
        if parsed.get(name):
            parsed[name] = root.local_or_hub(parsed[name], name)
    for name in NEW_PATHS:
        if parsed.get(name):
            parsed[name] = str(root.confine(parsed[name], name, must_exist=False))
    for name in EXISTING_PATHS:
        if parsed.get(name):
            parsed[name] = str(root.confine(parsed[name], name))
    return compose(TrainConfig, parsed, "the training form", "field").validate()
