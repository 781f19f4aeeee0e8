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
from typing import TYPE_CHECKING, Any

import torch

from ..audio import AudioLimits, data_uri_bytes, load_audio
from ..errors import AudioDecodeError, AudiotuneError, DatasetSchemaError
from .shapes import SHAPES, Shape
from .sources import ShardProblem, row_id
from ..conversation import Example
from ..tasks import Task

if TYPE_CHECKING:
    from ..models.family import Family

logger = logging.getLogger(__name__)


def streaming_workers(rows, requested: int) -> int:
    """Workers worth starting for a stream: at most one per shard (a worker without a shard idles)."""
    shards = getattr(rows, "num_shards", None) or getattr(rows, "n_shards", 1) or 1
    if requested > shards:
        logger.warning("the stream has %d shard(s): using %d dataloader worker(s) instead of %d. Split the data "
                       "into more files to prepare it in more processes.", shards, shards, requested)
        return shards
    return requested


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
    """Row → Example: the shape rewrites the row into canonical columns, the task reads it, and audio items are
    decoded here (relative paths resolved against the manifest's folder or ``--audio-dir``, ``data:`` and http(s)
    URLs fetched, segments cut, family rate, long-audio policy)."""

    task: Task
    sampling_rate: int
    limits: AudioLimits
    audio_column: str | None = "audio"
    id_column: str | None = None
    base_dir: Path | None = None
    max_audios: int = 1
    keep_fields: bool = False  # keep the row's other columns in ``meta["row"]`` (GRPO's reward functions read them)
    shape: Shape = SHAPES["table"]
    shard_problems: dict[str, ShardProblem] | None = None  # webdataset shards cut short, by resolved path
    family: Family | None = None  # the model's family: its own answer format in the references (Qwen3-ASR's)

    def canonical(self, row: dict[str, Any], index: int) -> dict[str, Any]:
        """The row in canonical columns; a row its shape cannot read raises naming the row."""
        name = row_id(row, index, self.id_column)
        return self.shape.normalise(row, name)

    def __call__(self, row: dict[str, Any], index: int) -> Example:
        row = self.canonical(row, index)
        example_id = row_id(row, index, self.id_column)
        example = self.task.make_example(row, example_id, self.audio_column, self.load, self.max_audios)
        if self.family is not None and self.family.answer_prefix:
            self._read_answer_format(example, row)
        if self.keep_fields:
            example.meta["row"] = {k: v for k, v in row.items() if k != self.audio_column}
        return example

    def _read_answer_format(self, example: Example, row: dict[str, Any]) -> None:
        """Qwen3-ASR's own fine-tuning data writes each transcript as ``language English<asr_text>…``: the text
        alone becomes the reference (what metrics compare) and the language goes to ``meta["language"]``, with a
        ``language`` column as the other source, so training writes the preamble once, with that language."""
        split = [self.family.split_reference(r) for r in example.references]
        example.references = [text for text, _ in split]
        column = row.get("language")
        language = column.strip() if isinstance(column, str) and column.strip() else split[0][1]
        if language and language != "None":
            example.meta["language"] = language

    def audio_items(self, row: dict[str, Any], name: str) -> list[Any]:
        """A canonical row's audio items, undecoded (for ``data check`` and the UI's players)."""
        return self.task.audio_items(row, self.audio_column, name, self.max_audios)

    def first_clip(self, row: dict[str, Any], index: int) -> Any:
        """A raw row's first audio item, resolved (what the web UI plays for a row); ``None`` without audio."""
        row = self.canonical(row, index)
        name = row_id(row, index, self.id_column)
        items = self.task.audio_items(row, self.audio_column, name)
        return self.resolve(items[0], name) if items else None

    def resolve(self, item: Any, name: str = "audio") -> Any:
        """Make a relative path (string or ``{"path"}`` without bytes) absolute against :attr:`base_dir`; fetch a
        ``data:`` URI or an http(s) URL into bytes."""
        if isinstance(item, str) and item.startswith("data:"):
            return data_uri_bytes(item, name)
        if isinstance(item, str) and item.startswith(("http://", "https://")):
            return _fetch(item, name)
        if self.base_dir is None:
            return item
        if isinstance(item, str) and not Path(item).is_absolute() and "://" not in item:
            return str(self.base_dir / item)
        if isinstance(item, dict) and not item.get("bytes") and item.get("array") is None and item.get("path") \
                and not Path(item["path"]).is_absolute():
            return {**item, "path": str(self.base_dir / item["path"])}
        return item

    def load(self, item: Any, name: str):
        if item is None or (isinstance(item, str) and not item.strip()):
            raise DatasetSchemaError(f"{name}: the audio cell ({self.audio_column!r}) is empty.")
        return load_audio(self.resolve(item, name), self.sampling_rate, name, self.limits)


REMOTE_TIMEOUT_S = 30.0


def _fetch(url: str, name: str) -> bytes:
    """An http(s) audio URL in the user's own data (the server has its own, stricter fetch for clients' URLs)."""
    import httpx

    try:
        response = httpx.get(url, timeout=REMOTE_TIMEOUT_S, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise AudioDecodeError(f"{name}: cannot fetch {url}: {error}. Check the URL or download the file and use "
                               "its path.") from None
    return response.content


class _RowsToExamples:
    """What both dataset kinds share: rows, the builder, and the bad-row policy."""

    def __init__(self, rows, build: ExampleBuilder, bad_log: BadSampleLog, on_bad_sample: str = "skip") -> None:
        self.rows = rows
        self.build = build
        self.bad_log = bad_log
        self.on_bad_sample = on_bad_sample
        for problem in (build.shard_problems or {}).values():  # keys a broken shard lost never reach the rows
            for item in problem.lost_keys or (Path(problem.shard).name,):
                error = DatasetSchemaError(f"{item}: {problem.message}")
                if on_bad_sample == "fail":
                    raise error
                bad_log.record(item, error)

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

    def usable(self) -> list[Example]:
        """Every good row once, in order (bad ones recorded): what evaluation scores."""
        examples = (self._try_build(self.rows[i], i) for i in range(len(self.rows)))
        return [e for e in examples if e is not None]

    def __getitem__(self, index: int) -> Example:
        n = len(self.rows)
        for offset in range(n):
            i = (index + offset) % n
            example = self._try_build(self.rows[i], i)
            if example is not None:
                return example
        raise DatasetSchemaError("Every row of the dataset is bad; see skipped.jsonl in the run folder.")


class ExampleStream(_RowsToExamples, torch.utils.data.IterableDataset):
    """Iterable dataset over a streaming ``datasets.IterableDataset``: bad rows are not yielded.

    Dataloader workers are safe here: iterated inside a worker, a ``datasets`` stream hands each
    worker whole shards (files) of its own, so no row is seen twice, and decoding plus feature
    extraction (the collator) run in the workers. The guide's "``dataloader_num_workers`` must be
    0 for streaming" holds only for streams that are not shard-aware. With fewer shards than
    workers the extra workers idle: :func:`streaming_workers` caps the count and says so.
    """

    def __iter__(self) -> Iterator[Example]:
        for i, row in enumerate(self.rows):
            example = self._try_build(row, i)
            if example is not None:
                yield example

    def set_epoch(self, epoch: int) -> None:  # the Trainer calls this on iterable datasets
        if hasattr(self.rows, "set_epoch"):
            self.rows.set_epoch(epoch)
