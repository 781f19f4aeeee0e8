"""One place that turns a run's data settings into rows and an :class:`ExampleBuilder`.

Training, evaluation and ``data check`` all go through :func:`prepare_split`, so a column name is
resolved (flag, else auto-detected), a fatal problem (no such split, missing column, empty split)
is raised, and relative paths are resolved, the same way everywhere, before any model loads.
``spec`` is any object with the data fields of :class:`~audiotune.config.TrainConfig` (``EvalConfig``
has the same names).
"""

from __future__ import annotations

import logging
from typing import Any

from ..audio import AudioLimits, LongAudioPolicy
from ..errors import ConfigError
from ..models.families import Family
from .examples import ExampleBuilder
from .sources import (CHOICES_COLUMNS, QUESTION_COLUMNS, REFERENCE_COLUMNS, REJECTED_COLUMNS, TEXT_COLUMNS,
                      audio_column_of, base_dir, first_row, open_split, pick_column)
from .tasks import CaptionTask, make_task

logger = logging.getLogger(__name__)


def label_set(rows, column: str) -> tuple[str, ...]:
    """Class names: a ``ClassLabel`` feature's names, else the sorted distinct values (non-streaming only)."""
    feature = (rows.features or {}).get(column) if hasattr(rows, "features") else None
    if feature is not None and hasattr(feature, "names"):
        return tuple(feature.names)
    if not hasattr(rows, "unique"):
        raise ConfigError("--task classify on a streaming dataset needs the label set: pass --labels a,b,c.")
    return tuple(sorted(str(v) for v in rows.unique(column) if v is not None))


def resolve_task_name(spec: Any, columns: list[str]) -> str:
    """The configured task; a ShareGPT/ms-swift manifest (messages + audios) given as caption becomes chat."""
    if spec.task == "caption" and not spec.text_column and any(c in columns for c in TEXT_COLUMNS["chat"]) \
            and not any(c in columns for c in TEXT_COLUMNS["caption"]):
        logger.info("%s has a messages column and no caption: using --task chat.", spec.dataset)
        return "chat"
    return spec.task


def make_task_for(spec: Any, rows, where: str) -> CaptionTask:
    columns = list(rows.column_names or [])
    name = resolve_task_name(spec, columns)
    text = pick_column(columns, spec.text_column, TEXT_COLUMNS.get(name, ()), "text", "--text-column", where)
    references = pick_column(columns, spec.references_column, REFERENCE_COLUMNS.get(name, ()), "references",
                             "--references-column", where, required=False)
    question = choices = rejected = None
    if name in ("qa", "mcq", "preference"):  # preference: the prompt column is optional (else --prompt)
        question = pick_column(columns, spec.question_column, QUESTION_COLUMNS, "question", "--question-column", where,
                               required=name != "preference")
    if name == "mcq":
        choices = pick_column(columns, getattr(spec, "choices_column", None), CHOICES_COLUMNS, "choices",
                              "--choices-column", where)
    if name == "preference":
        rejected = pick_column(columns, getattr(spec, "rejected_column", None), REJECTED_COLUMNS, "rejected answer",
                               "--rejected-column", where)
    labels = tuple(spec.labels) if spec.labels else (label_set(rows, text) if name == "classify" else None)
    fields = dict(prompt=spec.prompt, system_prompt=spec.system_prompt, text_column=text,
                  references_column=references, question_column=question, labels=labels, choices_column=choices,
                  rejected_column=rejected)
    task = make_task(name, **fields)
    if name == "preference" and question is None:  # no prompt column: every row gets --prompt
        import dataclasses

        task = dataclasses.replace(task, question_column=None)
    return task


def prepare_split(spec: Any, split: str, family: Family, check_rows: bool = True):
    """``(rows, builder)`` for ``split``; schema and emptiness problems raise here."""
    where = f"{spec.dataset} [{split}]"
    rows = open_split(spec.dataset, split, spec.streaming, spec.audio_column)
    task = make_task_for(spec, rows, where)
    if check_rows:
        first_row(rows, spec.dataset, split)
    try:
        policy = LongAudioPolicy(spec.long_audio)
    except ValueError:
        raise ConfigError(f"--long-audio {spec.long_audio!r}: choose window, truncate, skip or error.") from None
    limits = AudioLimits(family.window_seconds, family.max_audio_seconds, policy)
    builder = ExampleBuilder(task, family.sampling_rate, limits, audio_column_of(rows, spec.audio_column),
                             spec.id_column, base_dir=base_dir(spec.dataset),
                             max_audios=family.max_audios)
    return rows, builder
