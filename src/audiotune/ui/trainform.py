"""The training form, generated from :class:`~audiotune.config.TrainConfig` (pure: no Gradio here).

One source for each fact: the fields, their types and defaults come from ``dataclasses.fields``;
the help texts from the ``audiotune train`` options' help (else the field's comment in config.py);
choice lists from a help text that starts ``a | b | c``; the groups from config.py's section
comments (``# data``, ``# adaptation``, ...). A form's values become a ``TrainConfig`` through
:func:`config_from_form`, which confines the paths and runs the same ``validate()`` as the CLI.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from ..config import TrainConfig
from ..errors import ConfigError
from .paths import Root

# Fields the form leaves out: `resume` is the Resume button, `extra` is free-form for API users.
HIDDEN = ("resume", "extra")
# How path fields are confined: a Hub id or a local path, or a folder the run may create.
HUB_OR_LOCAL = ("model", "dataset")
NEW_PATHS = ("out", "audio_cache_dir")
EXISTING_PATHS = ("spice_models",)
_CHOICES = re.compile(r"^\s*([\w.-]+(?:\s*\|\s*[\w.-]+)+)\s*(?::|$)")


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


def _source_comments() -> tuple[dict[str, str], dict[str, str]]:
    """(field → trailing comment, field → section) from config.py's source of ``TrainConfig``."""
    source = inspect.getsource(TrainConfig)
    comments, groups = {}, {}
    group, line_field = "run", None
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.start[1] == 4 and line_field is None:
            line_field = token.string
        elif token.type == tokenize.COMMENT:
            text = token.string.lstrip("#").strip()
            if token.line.strip().startswith("#"):
                if token.start[1] == 4:
                    group = re.split(r"\s\(", text)[0]
            elif line_field:
                comments[line_field] = text
        elif token.type in (tokenize.NEWLINE, tokenize.NL):
            if line_field:
                groups.setdefault(line_field, group)
            line_field = None
    return comments, groups


def _cli_help() -> dict[str, str]:
    """Each ``audiotune train`` option's help text, by parameter name."""
    from .. import cli

    hints = typing.get_type_hints(cli.train, include_extras=True)
    helps = {}
    for name, hint in hints.items():
        for meta in getattr(hint, "__metadata__", ()):
            if getattr(meta, "help", None):
                helps[name] = meta.help
    return helps


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
    """The form's fields, in the config's order, each with its group, kind, default, help and choices."""
    comments, groups = _source_comments()
    cli_help = _cli_help()
    hints = typing.get_type_hints(TrainConfig)
    specs = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in HIDDEN:
            continue
        kind, optional = _kind(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = cli_help.get(f.name) or comments.get(f.name, "")
        match = _CHOICES.match(help_text)
        choices = tuple(c.strip() for c in match.group(1).split("|")) if match and kind == "text" else ()
        if match and help_text.strip() == match.group(0).strip(" :") and comments.get(f.name) \
                and not _CHOICES.fullmatch(comments[f.name]):
            help_text = f"{help_text}; {comments[f.name]}"  # a bare choice list: the comment says more
        help_text = re.sub(r"^None:", "empty:", help_text)  # an empty box is None
        specs.append(FieldSpec(f.name, groups.get(f.name, "run"), "choice" if choices else kind, default, optional,
                               help_text, choices))
    return tuple(specs)


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
    if value is None:
        return None if spec.kind in ("int", "float") else ""
    if spec.kind == "list":
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
            from ..cli import _parse_targets

            return _parse_targets(text)  # a regex or a comma list, exactly as the CLI reads it
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
    cfg = TrainConfig(**parsed)
    for name in HUB_OR_LOCAL:
        if getattr(cfg, name):
            setattr(cfg, name, root.local_or_hub(getattr(cfg, name), name))
    for name in NEW_PATHS:
        if getattr(cfg, name):
            setattr(cfg, name, str(root.confine(getattr(cfg, name), name, must_exist=False)))
    for name in EXISTING_PATHS:
        if getattr(cfg, name):
            setattr(cfg, name, str(root.confine(getattr(cfg, name), name)))
    return cfg.validate()
