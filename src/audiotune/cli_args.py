"""Command-line options generated from a config dataclass: one flag per field, with the field's default and help.

Built on transformers' ``HfArgumentParser`` (it already knows every ``TrainingArguments`` field's type and choices,
and a ``Literal`` field's), with what audiotune's flags have always accepted: ``--flag`` alone for a boolean and
``--no-flag`` for each, lists comma-separated or space-separated (and repeatable), and ``--config run.yaml`` read
first with flags on top. A composed config (``TrainConfig``) is parsed together with its parts, as HfArgumentParser
parses several dataclasses, and its flat values composed by :func:`~audiotune.config.compose`. A retired flag
(``--batch-size``) is one error naming its successor, not argparse's "no such option" nor a prefix match.
Imported only inside a command: it imports transformers.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .config import COMMAND_LINE, compose, flat_fields, parts_of, read_yaml, retired_error

CONFIG_HELP = "YAML config (e.g. a run's run_config.yaml), read first; flags override it."


class _ListAction(argparse.Action):
    """A list flag: its first use on the command line replaces the default (or the YAML's), later uses extend."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_lists_given", set())
        current = [] if self.dest not in given else list(getattr(namespace, self.dest) or [])
        given.add(self.dest)
        setattr(namespace, self.dest, current + list(values))


def _unwrap(hint: Any) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


class ConfigParser(HfArgumentParser):
    """``HfArgumentParser`` with audiotune's boolean and list conventions, over a config and its parts."""

    def __init__(self, cls: type, **kwargs: Any) -> None:
        self._skip = set(getattr(cls, "RETIRED", {}))  # read while the fields are added, in super().__init__
        super().__init__([cls, *parts_of(cls)], **kwargs)

    def error(self, message: str):
        # The wording of typer's other commands, so a mistyped flag reads the same everywhere.
        super().error(message.replace("unrecognized arguments:", "No such option:"))

    def _parse_dataclass_field(self, parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
        if "part" in field.metadata or field.name in self._skip:  # a part's fields are its own dataclass's options
            return
        inner = _unwrap(field.type)
        names = [f"--{field.name.replace('_', '-')}"] + ([f"--{field.name}"] if "_" in field.name else [])
        aliases = field.metadata.get("aliases", [])
        aliases = [aliases] if isinstance(aliases, str) else list(aliases)
        help_text = field.metadata.get("help", "")
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if inner is bool:
            parser.add_argument(*names, *aliases, type=string_to_bool, nargs="?", const=True, default=default,
                                help=help_text, metavar="{true,false}")
            parser.add_argument(f"--no-{field.name.replace('_', '-')}", dest=field.name, action="store_false",
                                default=argparse.SUPPRESS, help=argparse.SUPPRESS)
            return
        if typing.get_origin(inner) is list:
            parser.add_argument(*names, *aliases, type=str, nargs="+", action=_ListAction, default=default,
                                help=help_text)
            return
        HfArgumentParser._parse_dataclass_field(parser, field)


def build_parser(cls: type, prog: str, description: str = "",
                 extra: Callable[[argparse.ArgumentParser], None] | None = None) -> ConfigParser:
    """The parser of ``cls``'s fields plus ``--config`` and the options ``extra`` adds (not config fields)."""
    parser = ConfigParser(cls, prog=prog, description=description, usage="%(prog)s [--config YAML] [OPTIONS]",
                          allow_abbrev=False)
    parser.add_argument("--config", default=None, metavar="YAML", help=CONFIG_HELP)
    if extra:
        extra(parser)
    return parser


def field_dests(cls: type) -> set[str]:
    return {f.name for f in flat_fields(cls)}


def refuse_retired(cls: type, argv: Sequence[str]) -> None:
    """A retired flag (``--batch-size``, ``--no-gradient-checkpointing``) is one error naming the flag now."""
    retired = getattr(cls, "RETIRED", {})
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=", 1)[0].replace("-", "_")
            old = name if name in retired else name.removeprefix("no_")
            if old in retired:
                raise retired_error(old, retired[old], COMMAND_LINE)


def parse(cls: type, argv: Sequence[str], prog: str, description: str = "",
          extra: Callable[[argparse.ArgumentParser], None] | None = None) -> tuple[Any, argparse.Namespace]:
    """(the config built from ``--config`` and the flags, the namespace with the ``extra`` options). Positional
    ``extra`` arguments must be optional (``nargs="?"`` or ``"*"``): the command checks them."""
    refuse_retired(cls, argv)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(list(argv))
    parser = build_parser(cls, prog, description, extra)
    values = read_yaml(known.config, cls) if known.config and not {"-h", "--help"} & set(argv) else {}
    parser.set_defaults(**values)
    namespace = parser.parse_args(list(argv))
    # Only what the command line gave counts (argparse's defaults may differ in form from the field's: a string
    # default goes through the option's type); the rest is the YAML's, else the field's own default.
    untouched = parser.parse_args([])
    fields = field_dests(cls)
    for name, value in vars(namespace).items():
        if name in fields and (value != getattr(untouched, name, None) or name in namespace.__dict__.get(
                "_lists_given", ())):
            values[name] = value
    return compose(cls, values, COMMAND_LINE), namespace
