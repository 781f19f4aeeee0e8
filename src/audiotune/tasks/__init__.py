"""The task registry: each task (caption, asr, qa, classify, mcq, chat, preference) is one :class:`Task` class in one
module of this package, and everything that depends on the task asks here by name instead of switching on strings.

Adding a task is one module (a :class:`Task` subclass: its columns, prompt, references, answer parsing, metrics,
headline and default rewards) plus its line in ``TASKS`` below and its entry in ``config.Task``, the torch-free
``Literal`` that argparse, the UI and the docs read (``tests/test_tasks.py`` checks the two name the same tasks).
Code outside the package may also :func:`register` its own task at run time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ..config import TASKS as TASK_NAMES
from ..errors import ConfigError
from .asr import AsrTask
from .base import EXTRA_COLUMNS, Scores, ScoreOptions, Task
from .caption import CaptionTask
from .chat import ChatTask
from .classify import ClassifyTask
from .mcq import McqTask
from .preference import PreferenceTask
from .qa import QaTask

TASKS: dict[str, type[Task]] = {
    "caption": CaptionTask,
    "asr": AsrTask,
    "qa": QaTask,
    "classify": ClassifyTask,
    "mcq": McqTask,
    "chat": ChatTask,
    "preference": PreferenceTask,
}
assert tuple(TASKS) == TASK_NAMES, "config.Task names every task, in the registry's order"

__all__ = ["EXTRA_COLUMNS", "TASKS", "AsrTask", "CaptionTask", "ChatTask", "ClassifyTask", "McqTask", "PreferenceTask",
           "QaTask", "ScoreOptions", "Scores", "Task", "headline_metric", "make_task", "metric_names", "register",
           "score", "task_class"]


def register(cls: type[Task]) -> type[Task]:
    """Add ``cls`` to the registry under its ``name`` (usable as a class decorator); a name already taken is an
    error, so a task is never replaced by accident."""
    if not cls.name or cls.name in TASKS:
        raise ConfigError(f"Cannot register task {cls.__name__} as {cls.name!r}: "
                          f"{'that name is taken' if cls.name else 'it has no name'}.")
    TASKS[cls.name] = cls
    return cls


def task_class(name: str) -> type[Task]:
    """The class of task ``name``; an unknown name is an error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"Unknown task {name!r}; choose one of {', '.join(TASKS)}.") from None


def make_task(name: str, **fields: Any) -> Task:
    """Build task ``name`` from a run's settings; ``fields`` that are ``None``, or that the task has no use for, keep
    the task's own default (one call serves every task: each takes what it reads)."""
    cls = task_class(name)
    known = {f.name for f in dataclasses.fields(cls)}  # the settings, not the class's facts
    return cls(**{k: v for k, v in fields.items() if v is not None and k in known})


def headline_metric(name: str) -> str:
    """The one number to sort samples by and to pick the best checkpoint with, for task ``name``."""
    return task_class(name).headline


def metric_names(name: str, available: Sequence[str]) -> list[str]:
    """The metrics to show for task ``name``, in its order, limited to those computed."""
    return task_class(name).shown_metrics(available)


def score(name: str, predictions: dict[str, str], references: dict[str, list[str]], **options: Any) -> Scores:
    """Corpus and per-clip metrics for task ``name``; ``options`` are :class:`ScoreOptions`' fields."""
    return task_class(name).score(predictions, references, ScoreOptions(**options))
