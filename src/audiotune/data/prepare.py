"""One place that turns a run's data settings into rows and an :class:`ExampleBuilder`.

Training, evaluation and ``data check`` all go through :func:`prepare_split`, so a column name is
resolved (flag, else auto-detected), a fatal problem (no such split, missing column, empty split)
is raised, and relative paths are resolved, the same way everywhere, before any model loads.
``spec`` is a :class:`~audiotune.config.DataConfig`: the ``data`` part every command config composes
(``TrainConfig.data``, ``EvalConfig.data``, ``DataCheckConfig.data``), so each reads the dataset the same way.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from ..audio import AudioLimits, LongAudioPolicy
from ..errors import ConfigError, DatasetSchemaError
from ..models.family import Family
from ..tasks import EXTRA_COLUMNS, Task, make_task, task_class
from .examples import ExampleBuilder
from .shapes import Shape, detect_shape
from .sources import AUDIO_COLUMNS, base_dir, check_tar_shard, first_row, open_split, pick_column, row_id, tar_shards

logger = logging.getLogger(__name__)


def label_set(rows, column: str) -> tuple[str, ...]:
    """Class names: a ``ClassLabel`` feature's names, else the sorted distinct values (non-streaming only)."""
    feature = (rows.features or {}).get(column) if hasattr(rows, "features") else None
    if feature is not None and hasattr(feature, "names"):
        return tuple(feature.names)
    if not hasattr(rows, "unique"):
        raise ConfigError("--task classify on a streaming dataset needs the label set: pass --labels a,b,c.")
    return tuple(sorted(str(v) for v in rows.unique(column) if v is not None))


def resolve_task_name(spec: Any, shape: Shape) -> str:
    """The configured task; left at the default (caption, no --text-column), the shape's own task: a chat manifest
    (ShareGPT, content lists, Audio Flamingo JSON) is chat, AudioBench's layout is qa."""
    if spec.task == "caption" and not spec.text_column and shape.task and shape.task != spec.task:
        logger.info("%s holds %s rows: using --task %s.", spec.dataset, shape.name, shape.task)
        return shape.task
    return spec.task


def make_task_for(spec: Any, rows, where: str, shape: Shape, columns: list[str]) -> Task:
    """The run's task, its columns resolved (the setting, else the first of the task's common names present)."""
    name = resolve_task_name(spec, shape)
    cls = task_class(name)
    text = pick_column(columns, spec.text_column, cls.text_columns, "text", "--text-column", where)
    references = pick_column(columns, spec.references_column, cls.reference_columns, "references",
                             "--references-column", where, required=False)
    extra = {}
    for field, required in cls.extra_columns.items():
        what, candidates = EXTRA_COLUMNS[field]
        extra[field] = pick_column(columns, getattr(spec, field, None), candidates, what,
                                   "--" + field.replace("_", "-"), where, required=required)
    labels = tuple(spec.labels) if spec.labels else (label_set(rows, text) if cls.needs_labels else None)
    task = make_task(name, prompt=spec.prompt, system_prompt=spec.system_prompt, text_column=text,
                     references_column=references, labels=labels, choice_format=getattr(spec, "choice_format", None),
                     **extra)
    missing = {field: None for field, found in extra.items() if found is None}
    if missing:  # an optional column the rows lack (preference's prompt): not the task's default name either
        import dataclasses

        task = dataclasses.replace(task, **missing)
    return task


def prepare_split(spec: Any, split: str, family: Family, check_rows: bool = True, clip_limit_fatal: bool = True):
    """``(rows, builder)`` for ``split``; schema and emptiness problems raise here.

    The dataset's shape (``--format``, else detected) says how a row becomes canonical columns; column detection then
    runs on those. ``clip_limit_fatal``: conversations holding more clips than the family takes stop here, before a
    model loads, with one error naming them (``data check`` passes ``False`` and lists them as failing rows).
    """
    where = f"{spec.dataset} [{split}]"
    shard_problems = _shard_problems(spec.dataset)
    files = None
    if shard_problems:  # each broken shard replaced by the copy of its complete keys (or left out: none complete)
        broken = {p.shard: p.salvaged for p in shard_problems.values()}
        files = [broken.get(shard, shard) for shard in tar_shards(spec.dataset)]
        files = [f for f in files if f]
    rows = open_split(spec.dataset, split, spec.streaming, files=files, name=getattr(spec, "dataset_config", None))
    raw = list(rows.column_names or [])
    shape = detect_shape(raw, getattr(spec, "format", "auto") or "auto", where)
    columns = shape.columns(raw, getattr(rows, "features", None))
    task = make_task_for(spec, rows, where, shape, columns)
    if check_rows:
        first_row(rows, spec.dataset, split)
    try:
        policy = LongAudioPolicy(spec.long_audio)
    except ValueError:
        raise ConfigError(f"--long-audio {spec.long_audio!r}: choose window, truncate, skip or error.") from None
    limits = AudioLimits(family.window_seconds, family.max_audio_seconds, policy)
    audio_column = pick_column(columns, spec.audio_column, AUDIO_COLUMNS, "audio", "--audio-column", where,
                               required=not task.clips_in_conversation)
    audio_dir = getattr(spec, "audio_dir", None)
    folder = Path(audio_dir).resolve() if audio_dir else base_dir(spec.dataset)
    builder = ExampleBuilder(task, family.sampling_rate, limits, audio_column, spec.id_column, base_dir=folder,
                             max_audios=family.max_audios, shape=shape, shard_problems=shard_problems,
                             family=family)
    if task.clips_in_conversation and clip_limit_fatal:  # (data check lists such rows one by one instead)
        _check_clip_limit(rows, builder, family, spec, split)
    return rows, builder


def _shard_problems(source: str) -> dict:
    """Local webdataset shards that are cut short, by the resolved path rows will carry in ``__url__`` (the salvaged
    copy of their complete keys); one warning each. A run prepares its train and eval splits (and ``data check``
    the same files) from one set of shards: each is walked once per version of the file."""
    problems = {}
    for shard in tar_shards(source):
        stat = Path(shard).stat()
        problem = _walked(str(Path(shard).resolve()), stat.st_size, stat.st_mtime_ns)
        if problem is not None:
            logger.warning("%s", problem.message)
            problems[str(Path(problem.salvaged or problem.shard).resolve())] = problem
    return problems


@functools.lru_cache(maxsize=4096)
def _walked(shard: str, size: int, mtime_ns: int):
    """:func:`check_tar_shard` of one version of a shard (``size`` and ``mtime_ns`` are the cache key), salvaging into
    a folder of the temporary directory named by that version."""
    tag = hashlib.sha256(f"{shard}:{size}:{mtime_ns}".encode()).hexdigest()[:16]
    return check_tar_shard(shard, Path(tempfile.gettempdir()) / "audiotune-salvaged" / tag)


def _check_clip_limit(rows, builder: ExampleBuilder, family: Family, spec: Any, split: str) -> None:
    """Conversations with more clips than ``family`` takes, found before training (the text alone is read).

    A family that takes one clip a conversation (AF3: its processor pairs each text with exactly one audio) cannot
    learn from a two-clip conversation, and skipping such rows one by one would quietly drop a whole kind of example:
    one error names them all. A stream is checked on its first row only; its later rows are skipped and listed.
    """
    over: list[str] = []
    sample = rows.take(1) if spec.streaming else rows
    for index, row in enumerate(sample):
        try:
            canonical = builder.canonical(row, index)
            name = row_id(canonical, index, builder.id_column)
            clips = builder.task.audio_items(canonical, builder.audio_column, name)
        except DatasetSchemaError:
            continue  # the row's own problem: reported (and skipped) when it is built
        if len(clips) > family.max_audios:
            over.append(f"{name} ({len(clips)} clips)")
    if over:
        shown = ", ".join(over[:5]) + (f" and {len(over) - 5} more" if len(over) > 5 else "")
        raise ConfigError(f"{spec.dataset} [{split}]: {len(over)} conversation(s) hold more clips than {family.name} "
                          f"takes ({family.max_audios} a conversation): {shown}. Split them into conversations of "
                          f"{family.max_audios} clip(s), drop them, or use a family that takes several clips "
                          "(`audiotune models --json` shows each family's max_audios).")
