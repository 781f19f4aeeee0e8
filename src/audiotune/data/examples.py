"""Datasets of :class:`Example` for the Trainer and for evaluation, robust to bad rows.

A bad row (corrupt audio, empty caption, ...) never kills a run under ``on_bad_sample="skip"``:
it is recorded in the run folder's ``skipped.jsonl`` (appends are atomic for short lines, so
dataloader workers can share the file) and the next good row takes its place (map-style) or it is
simply not yielded (streaming). Under ``"fail"`` the first bad row raises its own error.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..audio import AudioLimits, load_audio
from ..errors import AudiotuneError, DatasetSchemaError
from .sources import row_id
from .tasks import CaptionTask, Example

logger = logging.getLogger(__name__)


class BadSampleLog:
    """Append-only record of skipped rows, shared by processes through the file system."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self.in_memory: list[dict[str, str]] = []

    def record(self, item_id: str, error: Exception) -> None:
        entry = {"id": item_id, "error": type(error).__name__, "message": str(error)}
        self.in_memory.append(entry)
        logger.warning("skipping %s: %s", item_id, error)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = (json.dumps(entry) + "\n").encode()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def entries(self) -> list[dict[str, str]]:
        """Unique skipped rows (a row skipped in several epochs is listed once)."""
        if self.path is None or not self.path.exists():
            raw = self.in_memory
        else:
            raw = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        unique: dict[str, dict[str, str]] = {}
        for entry in raw:
            unique.setdefault(entry["id"], entry)
        return list(unique.values())


@dataclass
class ExampleBuilder:
    """Row → Example: decode the audio (family rate, long-audio policy), then apply the task."""

    task: CaptionTask
    sampling_rate: int
    limits: AudioLimits
    audio_column: str = "audio"
    id_column: str | None = None

    def __call__(self, row: dict[str, Any], index: int) -> Example:
        example_id = row_id(row, index, self.id_column)
        if self.audio_column not in row or row[self.audio_column] is None:
            raise DatasetSchemaError(f"{example_id}: the audio cell ({self.audio_column!r}) is empty.")
        self.task.references(row, example_id)  # cheap text checks before the costly decode
        self.task.user_text(row, example_id)
        audio = load_audio(row[self.audio_column], self.sampling_rate, example_id, self.limits)
        return self.task.build(row, audio, example_id)


class _RowsToExamples:
    """What both dataset kinds share: rows, the builder, and the bad-row policy."""

    def __init__(self, rows, build: ExampleBuilder, bad_log: BadSampleLog, on_bad_sample: str = "skip") -> None:
        self.rows = rows
        self.build = build
        self.bad_log = bad_log
        self.on_bad_sample = on_bad_sample

    def _try_build(self, row: dict[str, Any], index: int) -> Example | None:
        """The row's Example, or ``None`` after recording it as bad (``skip``); ``fail`` re-raises."""
        try:
            return self.build(row, index)
        except AudiotuneError as error:
            if self.on_bad_sample == "fail":
                raise
            self.bad_log.record(row_id(row, index, self.build.id_column), error)
            return None


class ExampleDataset(_RowsToExamples, torch.utils.data.Dataset):
    """Map-style dataset over a non-streaming ``datasets.Dataset``; a bad row yields the next good one."""

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Example:
        n = len(self.rows)
        for offset in range(n):
            i = (index + offset) % n
            example = self._try_build(self.rows[i], i)
            if example is not None:
                return example
        raise DatasetSchemaError("Every row of the dataset is bad; see skipped.jsonl in the run folder.")


class ExampleStream(_RowsToExamples, torch.utils.data.IterableDataset):
    """Iterable dataset over a streaming ``datasets.IterableDataset``: bad rows are not yielded."""

    def __iter__(self) -> Iterator[Example]:
        for i, row in enumerate(self.rows):
            example = self._try_build(row, i)
            if example is not None:
                yield example

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls this on iterable datasets
        if hasattr(self.rows, "set_epoch"):
            self.rows.set_epoch(epoch)
