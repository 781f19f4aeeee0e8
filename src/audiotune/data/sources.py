"""Open a dataset split from the Hub or from local files, and check its columns before any model loads.

The audio column is cast to ``Audio(decode=False)`` so that rows carry the raw ``{bytes, path}``
and :mod:`audiotune.audio` decodes them: this names the row when a file is bad instead of dying
inside the ``datasets`` iterator.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DatasetSchemaError

logger = logging.getLogger(__name__)

_FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow",
                  ".tar": "webdataset"}
_AUDIOFOLDER_METADATA = ("metadata.csv", "metadata.jsonl")

# Common names, tried in order when the configured column is absent (auto-detection); the text and other columns a
# task reads are the task's own (``audiotune.tasks``).
AUDIO_COLUMNS = ("audio", "audios", "audio_path", "audio_filepath", "audio_file", "path", "file", "file_name",
                 "filename", "wav", "audio_id")  # audio_id: MMAU's relative path


def base_dir(source: str) -> Path | None:
    """The folder relative audio paths are resolved against: the manifest's (or the dataset folder)."""
    path = Path(source)
    matches = sorted(glob.glob(source)) if any(c in source for c in "*?[") else []
    if matches:
        return Path(matches[0]).parent.resolve()
    if path.is_file():
        return path.parent.resolve()
    if path.is_dir():
        return path.resolve()
    return None


def pick_column(columns: list[str], wanted: str | None, candidates: tuple[str, ...], what: str, flag: str,
                source: str, required: bool = True) -> str | None:
    """``wanted`` if given (it must exist), else the first common name present; a clear error otherwise."""
    if wanted:
        if columns and wanted not in columns:
            raise DatasetSchemaError(f"{source}: no {what} column {wanted!r}; columns are {columns}. Pass {flag} NAME.")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    if required and columns:
        raise DatasetSchemaError(f"{source}: cannot find the {what} column (tried {list(candidates)}); columns are "
                                 f"{columns}. Pass {flag} NAME.")
    return None


def local_files(source: str) -> list[str]:
    """The files ``source`` names (a file or a glob); empty for a folder or a Hub id."""
    matches = sorted(glob.glob(source)) if any(c in source for c in "*?[") else []
    return matches or ([source] if Path(source).is_file() else [])


def tar_shards(source: str) -> list[str]:
    """The webdataset shards ``source`` names: ``.tar`` files, or the ``.tar`` files of a folder."""
    path = Path(source)
    files = sorted(str(p) for p in path.glob("*.tar")) if path.is_dir() else local_files(source)
    return [f for f in files if f.endswith(".tar")]


def _load(source: str, split: str, streaming: bool, files: list[str] | None = None, name: str | None = None):
    from datasets import load_dataset

    path = Path(source)
    files = files or local_files(source)
    if files:
        first = Path(files[0])
        suffix = first.suffix if first.suffix != ".gz" else Path(first.stem).suffix  # cuts.jsonl.gz: json, gzipped
        builder = _FILE_BUILDERS.get(suffix)
        if builder is None:
            raise DatasetSchemaError(f"{source}: unsupported file type; use parquet, jsonl, json, csv, arrow or tar "
                                     "(webdataset shards).")
        return load_dataset(builder, data_files={split: files}, split=split, streaming=streaming)
    if path.is_dir():
        if any((path / name).exists() for name in _AUDIOFOLDER_METADATA):
            return load_dataset("audiofolder", data_dir=str(path), split=split, streaming=streaming)
        shards = tar_shards(source)
        if shards and not any(path.glob("*.parquet")):
            return load_dataset("webdataset", data_files={split: shards}, split=split, streaming=streaming)
        return load_dataset(str(path), split=split, streaming=streaming)
    if path.suffix or source.startswith((".", "/")):
        raise DatasetSchemaError(f"{source}: no such file or folder. Check the path, or pass a Hub dataset id.")
    return load_dataset(source, name, split=split, streaming=streaming)  # a Hub id (and its configuration)


def open_split(source: str, split: str, streaming: bool = False, files: list[str] | None = None,
               name: str | None = None):
    """Load ``split`` of ``source`` with every audio column left undecoded; raise a clear error on a bad split.

    Audio-typed columns are cast to ``Audio(decode=False)``; path columns stay strings and are resolved by the
    example builder. Which column is the audio is the shape's and the task's business (:mod:`.prepare`). ``files``
    replaces the files ``source`` names (webdataset shards with a salvaged copy in place of a broken one); ``name``
    is a Hub dataset's configuration.
    """
    from datasets import Audio

    try:
        dataset = _load(source, split, streaming, files, name)
    except ValueError as error:  # datasets raises ValueError for an unknown or empty split
        if "corresponds to no data" in str(error):
            raise DatasetSchemaError(f"{source} [{split}]: the split is empty. Point --dataset at data with rows.") \
                from error
        if "split" in str(error).lower():
            raise DatasetSchemaError(f"{source}: has no split {split!r} ({error}). Pick one with --train-split/"
                                     "--eval-split.") from error
        raise
    features = getattr(dataset, "features", None) or {}
    for column, feature in features.items():
        if isinstance(feature, Audio):
            dataset = dataset.cast_column(column, Audio(decode=False))
    return dataset


def first_row(dataset, source: str, split: str) -> dict[str, Any]:
    """The first row, or a clear error when the split is empty (checked before the model loads)."""
    for row in dataset.take(1) if hasattr(dataset, "take") else dataset:
        return row
    raise DatasetSchemaError(f"{source} [{split}]: the split is empty. Point --dataset at data with rows.")


def row_id(row: dict[str, Any], index: int, id_column: str | None) -> str:
    if id_column and row.get(id_column) is not None:
        return str(row[id_column])
    for column in ("youtube_id", "id", "clip_id", "audiocap_id", "__key__"):
        if row.get(column) is not None:
            return str(row[column])
    return f"row {index}"


@dataclass(frozen=True)
class ShardProblem:
    """A webdataset shard that is cut short or unreadable: the keys it lost, and the copy of its whole keys."""

    shard: str
    message: str
    lost_keys: tuple[str, ...]
    salvaged: str | None = None  # a tar of the shard's complete keys (what is loaded in its place)


def _key(name: str) -> str:
    return Path(name).name.split(".", 1)[0]


def check_tar_shard(path: str, salvage_dir: str | Path | None = None) -> ShardProblem | None:
    """``None`` for a whole tar archive; else what is wrong with it, and (``salvage_dir``) a copy of its whole keys.

    ``datasets``' webdataset reader dies on an archive cut inside a member ("unexpected end of data") and stops
    quietly on one cut between members, so the archive is walked here first: every member's data must lie inside the
    file and the archive must end with its end-of-archive blocks (two zero 512-byte blocks, POSIX ustar). A key with
    any incomplete member is lost (named in the message); the complete keys are copied so that they still train.
    """
    size = Path(path).stat().st_size
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 1024))
        ends_cleanly = size >= 1024 and handle.read(1024) == bytes(1024)
    members, walk_failed = _walk(path, size)  # headers only: a whole shard costs no data reads
    lost = sorted({_key(m.name) for m, complete in members if not complete})
    if ends_cleanly and not lost and not walk_failed:
        return None
    whole = [m for m, complete in members if complete and _key(m.name) not in lost]
    last = _key(whole[-1].name) if whole else None
    message = (f"shard {path} is cut short" + (f" after key {last!r}" if last else " at its start") +
               (f"; key(s) {', '.join(lost)} lost a member" if lost else "") +
               ". Re-create or re-download it; its complete keys are still used.")
    salvaged = _salvage(path, whole, Path(salvage_dir)) if salvage_dir is not None and whole else None
    return ShardProblem(path, message, tuple(lost), salvaged)


def _walk(path: str, size: int) -> tuple[list, bool]:
    """``([(member, its data lies inside the file)], the walk ended in an error)`` from the headers alone."""
    import tarfile

    members = []
    try:
        with tarfile.open(path, "r:") as archive:
            for member in archive:
                members.append((member, member.isfile() and member.offset_data + member.size <= size))
    except (tarfile.TarError, OSError, EOFError):
        return members, True
    return members, False


def _salvage(path: str, whole: list, folder: Path) -> str:
    """A tar of ``whole`` (the complete members, in order) under ``folder``, written once: the folder is keyed by the
    shard's path, size and time, and a stream of an earlier preparation may be reading the copy while it is reused."""
    import io
    import os
    import tarfile

    salvaged = folder / Path(path).name
    if salvaged.exists():
        return str(salvaged)
    folder.mkdir(parents=True, exist_ok=True)
    partial = salvaged.with_name(f"{salvaged.name}.tmp{os.getpid()}")
    keep, final = {m.name for m in whole}, whole[-1].name
    with tarfile.open(path, "r:") as archive, tarfile.open(partial, "w") as out:
        for member in archive:
            if member.name in keep:
                out.addfile(member, io.BytesIO(archive.extractfile(member).read()))
            if member.name == final:
                break
    os.replace(partial, salvaged)
    return str(salvaged)
