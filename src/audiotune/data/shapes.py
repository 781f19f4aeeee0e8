"""The on-disk shapes of audio datasets the field uses, each turned into the rows our tasks read.

A *shape* is how a dataset lays out one example: a plain table of columns (parquet, CSV, an audio folder, a Hub
dataset), chat messages (ShareGPT strings with ``<audio>`` tags, or transformers' content lists), Audio Flamingo's
own training JSON, a NeMo manifest with segments, Clotho's five caption columns, AudioBench's
``context``/``instruction``/``answer``, or webdataset tar shards. Each is detected from the column names (or named
with ``--format``) and :meth:`Shape.normalise` rewrites a row into the *canonical* columns the tasks already read
(``audio``, ``audios``, ``messages``, ``text``, ``caption``, ``captions``, ``question``, ``answer``, ``id``), so a
task knows nothing of where its rows came from. Normalising is per row and lazy: it works the same on a stream.

Sources for each layout (read, not copied):
- Audio Flamingo 3: NVIDIA/audio-flamingo (branch audio_flamingo_3) ``README.md`` "Training Details" (``id``,
  ``sound`` as a path or a list, ``conversations`` with ``from``/``value``) and ``llava/data/dataset.py``
  (``<sound-k>`` refers to ``sound[k-1]``; a JSON array or JSON lines).
- NeMo: NVIDIA/NeMo ``nemo/collections/common/parts/preprocessing/manifest.py`` (``audio_filepath``, ``duration``
  required, ``offset`` optional, ``text``) and ``nemo/collections/asr/data/audio_to_text.py`` (the reader gets
  ``offset=offset, duration=sample.duration``: a row is that segment of the file).
- Lhotse: lhotse-speech/lhotse ``docs/corpus.rst`` and ``lhotse/cut.py`` (a ``MonoCut`` holds ``start``,
  ``duration``, its ``recording`` with ``sources`` of ``{"type": "file", "source": path}``, and ``supervisions``
  with their ``text``).
- Clotho v2: audio-captioning/clotho-dataset ``settings/dataset_creation.yaml`` (``file_name``, ``caption_{1..5}``).
- AudioBench: AudioLLMs/AudioBench ``src/dataset_src/*.py`` (``context`` is the audio, ``instruction``, ``answer``,
  ``other_attributes``; some sets wrap values as ``{"audio": …}`` / ``{"text": …}``).
- AIR-Bench Foundation: EvolvingLMMs-Lab/lmms-eval ``lmms_eval/tasks/air_bench/utils.py`` (``question``,
  ``choice_a`` … ``choice_d``, the last two possibly missing, and ``answer_gt``, the correct choice's text).
- webdataset: huggingface/datasets ``src/datasets/packaged_modules/webdataset/webdataset.py`` (one column per
  member extension, ``__key__``/``__url__``; a key lacking a member gets ``None``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config import FORMATS
from ..errors import ConfigError, DatasetSchemaError

AUDIO_EXTENSIONS = ("flac", "wav", "mp3", "ogg", "opus", "m4a", "webm")
_CAPTION_N = re.compile(r"^caption_(\d+)$")
_CHOICE_N = re.compile(r"^choice_[a-z]$")


def _unwrap(value: Any, key: str) -> Any:
    """AudioBench's ``{"text": …}`` / ``{"audio": …}`` wrappers around a plain value."""
    if isinstance(value, dict) and set(k for k, v in value.items() if v is not None) == {key}:
        return value[key]
    return value


@dataclass(frozen=True)
class Shape:
    """A layout: which columns give it away, what task it implies, and how a row becomes canonical columns."""

    name: str
    summary: str
    task: str | None = None  # the task a row of this shape is, when the user kept the default (caption)

    def matches(self, columns: set[str]) -> bool:
        return False

    def required(self) -> tuple[str, ...]:
        return ()

    def normalise(self, row: dict[str, Any], name: str) -> dict[str, Any]:
        return row

    def columns(self, raw: list[str], features: Any = None) -> list[str]:
        """The canonical columns a normalised row has (what the tasks' column detection looks at)."""
        return raw

    def check_columns(self, columns: set[str], where: str) -> None:
        """Named with ``--format``: its own columns must be there (a clear error otherwise)."""
        missing = [c for c in self.required() if c not in columns]
        if missing:
            raise DatasetSchemaError(f"{where}: --format {self.name} needs the column(s) {missing}; the columns are "
                                     f"{sorted(columns)}. Check the file or drop --format to detect the shape.")


class Table(Shape):
    """One example a row, one column a field (parquet, CSV, JSONL, audio folders, Hub datasets)."""

    def matches(self, columns: set[str]) -> bool:
        return True


class Chat(Shape):
    """ShareGPT (``messages``/``conversations`` with ``<audio>`` tags and an ``audios`` list, as LLaMA-Factory and
    ms-swift write) and transformers' content lists (``{"type": "audio", "path"|"url"|"audio"}`` parts inline)."""

    def matches(self, columns: set[str]) -> bool:
        # a caption column beside the messages: a caption table that happens to carry them
        return bool({"messages", "conversations"} & columns) and not {"caption", "description"} & columns

    def normalise(self, row: dict[str, Any], name: str) -> dict[str, Any]:
        if row.get("messages") is None and row.get("conversations") is not None:  # one file may hold both spellings
            row = {**{k: v for k, v in row.items() if k != "conversations"}, "messages": row["conversations"]}
        return row

    def columns(self, raw: list[str], features: Any = None) -> list[str]:
        return [c for c in raw if c != "conversations"] + ([] if "messages" in raw else ["messages"])

    def check_columns(self, columns: set[str], where: str) -> None:
        if not {"messages", "conversations"} & columns:
            raise DatasetSchemaError(f"{where}: --format chat needs a 'messages' or 'conversations' column; the "
                                     f"columns are {sorted(columns)}.")


class AudioFlamingo(Shape):
    """Audio Flamingo's training JSON: ``sound`` (a path, a list, or absent for text-only) and ``conversations``
    (``from``/``value``) whose text holds ``<sound>`` or, for several clips, ``<sound-1>``, ``<sound-2>``…"""

    def matches(self, columns: set[str]) -> bool:
        return {"sound", "conversations"} <= columns

    def required(self) -> tuple[str, ...]:
        return ("conversations",)

    def normalise(self, row: dict[str, Any], name: str) -> dict[str, Any]:
        sound = row.get("sound")
        audios = [] if sound is None else [sound] if isinstance(sound, str) else list(sound)
        out = {k: v for k, v in row.items() if k not in ("sound", "conversations")}
        return {**out, "messages": row["conversations"], "audios": audios}

    def columns(self, raw: list[str], features: Any = None) -> list[str]:
        return [c for c in raw if c not in ("sound", "conversations")] + ["messages", "audios"]


class Nemo(Shape):
    """NeMo ASR manifests: ``audio_filepath``, ``text``, ``duration`` and an optional ``offset``; each row is the
    segment ``[offset, offset + duration)`` of its file (NeMo reads it so), not the whole file. ``text`` is a
    transcript (the ASR world's manifest): the task is asr unless ``--task`` says otherwise."""

    def matches(self, columns: set[str]) -> bool:
        return {"audio_filepath", "duration"} <= columns

    def required(self) -> tuple[str, ...]:
        return ("audio_filepath", "duration")

    def normalise(self, row: dict[str, Any], name: str) -> dict[str, Any]:
        path = row.get("audio_filepath")
        if not isinstance(path, str) or not path.strip():
            raise DatasetSchemaError(f"{name}: 'audio_filepath' is empty. Fill it in or drop the row.")
        duration, offset = row.get("duration"), row.get("offset")
        for field, value in (("duration", duration), ("offset", offset)):
            if value is not None and not isinstance(value, (int, float)):
                raise DatasetSchemaError(f"{name}: {field!r} must be a number of seconds, got {value!r}.")
        if duration is None:
            raise DatasetSchemaError(f"{name}: a NeMo manifest row needs its 'duration' (seconds). Add it (soxi -D "
                                     "FILE) or drop the row.")
        out = {k: v for k, v in row.items() if k not in ("audio_filepath", "offset", "duration")}
        out["audio"] = {"path": path, "offset": float(offset or 0.0), "duration": float(duration)}
        if out.get("text") is None and isinstance(row.get("normalized_text"), str):
            out["text"] = row["normalized_text"]  # NeMo's own fallback
        return out

    def columns(self, raw: list[str], features: Any = None) -> list[str]:
        out = [c for c in raw if c not in ("audio_filepath", "offset", "duration")] + ["audio"]
        return out + (["text"] if "normalized_text" in raw and "text" not in raw else [])


class Lhotse(Shape):
    """Lhotse cut manifests (``cuts.jsonl``, one ``MonoCut`` a line): ``start`` and ``duration`` in its
    ``recording`` (whose ``sources`` name the file), and ``supervisions`` with the ``text``; each row is that segment,
    transcribed by its supervisions' texts in order."""

    def matches(self, columns: set[str]) -> bool:
        return {"recording", "supervisions", "start", "duration"} <= columns

    def required(self) -> tuple[str, ...]:
        return ("recording", "supervisions", "start", "duration")

    def normalise(self, row: dict[str, Any], name: str) -> dict[str, Any]:
        recording = row.get("recording")
        sources = recording.get("sources") if isinstance(recording, dict) else None
        if not sources:
            raise DatasetSchemaError(f"{name}: the cut has no recording with sources. Fix the manifest row.")
        if len(sources) > 1:
            raise DatasetSchemaError(f"{name}: the recording has {len(sources)} sources (one file per channel); "
                                     "audiotune reads one file a recording. Merge the channels into one file.")
        source = sources[0]
        if source.get("type") not in ("file", "url"):
            raise DatasetSchemaError(f"{name}: audio source type {source.get('type')!r}; audiotune reads 'file' "
                                     "and 'url' sources.")
        texts = [s.get("text") for s in row.get("supervisions") or [] if s.get("text")]
        out = {k: v for k, v in row.items() if k not in ("recording", "supervisions", "start", "duration")}
        out["audio"] = {"path": source["source"], "offset": float(row["start"]), "duration": float(row["duration"])}
        out["text"] = " ".join(t.strip() for t in texts) if texts else None
        return out

    def columns(self, raw: list[str], features: Any = None) -> list[str]:
        return [c for c in raw if c not in ("recording", "supervisions", "start", "duration")] + ["audio", "text"]


class Clotho(Shape):
    """Clotho-style captions: ``file_name`` plus ``caption_1`` … ``caption_5``; every caption is a reference and the
    first is the training target."""

    def matches(self, columns: set[str]) -> bool:
        return "caption_1" in columns

    def required(self) -> tuple[str, ...]:
        return ("caption_1",)

    def normalise(self, row: dict[str, Any], name: str) -> dict[str, Any]:
        numbered = sorted((int(m.group(1)), k) for k in row if (m := _CAPTION_N.match(k)))
        captions = [row[k] for _, k in numbered if row[k] is not None]
        out = {k: v for k, v in row.items() if not _CAPTION_N.match(k)}
        if "audio" not in out and "file_name" in out:
            out["audio"] = out.pop("file_name")
        return {**out, "caption": captions[0] if captions else None, "captions": captions}

    def columns(self, raw: list[str], features: Any = None) -> list[str]:
        out = [c for c in raw if not _CAPTION_N.match(c)]
        if "audio" not in out and "file_name" in out:
            out[out.index("file_name")] = "audio"
        return out + ["caption", "captions"]


class AudioBench(Shape):
    """AudioBench's layout: ``context`` (the audio), ``instruction`` (the question), ``answer`` and
    ``other_attributes`` (kept as row fields); a question-answering task."""

    def matches(self, columns: set[str]) -> bool:
        return {"context", "instruction", "answer"} <= columns

    def required(self) -> tuple[str, ...]:
        return ("context", "instruction", "answer")

    def normalise(self, row: dict[str, Any], name: str) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if k not in ("context", "instruction", "answer")}
        return {**out, "audio": _unwrap(row["context"], "audio"), "question": _unwrap(row["instruction"], "text"),
                "answer": _unwrap(row["answer"], "text")}

    def columns(self, raw: list[str], features: Any = None) -> list[str]:
        return [c for c in raw if c not in ("context", "instruction", "answer")] + ["audio", "question", "answer"]


class ChoiceColumns(Shape):
    """AIR-Bench Foundation's multiple choice: one column a choice (``choice_a`` … ``choice_d``, empty ones left out)
    and ``answer_gt``, the correct choice's text; rewritten into ``choices`` and ``answer``."""

    def matches(self, columns: set[str]) -> bool:
        return {"choice_a", "choice_b", "answer_gt"} <= columns

    def required(self) -> tuple[str, ...]:
        return ("choice_a", "choice_b", "answer_gt")

    def normalise(self, row: dict[str, Any], name: str) -> dict[str, Any]:
        out = {k: v for k, v in row.items() if not _CHOICE_N.match(k) and k != "answer_gt"}
        lettered = sorted(k for k in row if _CHOICE_N.match(k))
        choices = [row[k] for k in lettered if isinstance(row[k], str) and row[k].strip()]
        return {**out, "choices": choices, "answer": row["answer_gt"]}

    def columns(self, raw: list[str], features: Any = None) -> list[str]:
        return [c for c in raw if not _CHOICE_N.match(c) and c != "answer_gt"] + ["choices", "answer"]


class WebDataset(Shape):
    """webdataset tar shards: one example per key, members ``KEY.flac``/``KEY.wav``… for the audio and
    ``KEY.json`` (its fields become columns) and/or ``KEY.txt`` (the ``text``)."""

    def matches(self, columns: set[str]) -> bool:
        return "__key__" in columns

    def required(self) -> tuple[str, ...]:
        return ("__key__",)

    def normalise(self, row: dict[str, Any], name: str) -> dict[str, Any]:
        key, url = row.get("__key__"), row.get("__url__")
        audio_fields = [k for k in row if k.rsplit(".", 1)[-1] in AUDIO_EXTENSIONS]
        present = [k for k in audio_fields if row[k] is not None]
        where = f"key {key!r} of shard {url}"
        if not present:
            raise DatasetSchemaError(f"{name}: {where} has no audio member ({', '.join('.' + k for k in audio_fields)}"
                                     "). Re-create the shard with the audio, or drop the key.")
        if len(present) > 1:
            raise DatasetSchemaError(f"{name}: {where} has {len(present)} audio members {present}; one per key.")
        out: dict[str, Any] = {"id": key}
        meta = row.get("json")
        if meta is not None:
            if not isinstance(meta, dict):
                raise DatasetSchemaError(f"{name}: the .json member of {where} is not an object.")
            out.update({k: v for k, v in meta.items()})
        for text_field in ("txt", "text", "transcript"):
            if row.get(text_field) is not None:
                out["text"] = row[text_field]
        out["audio"] = row[present[0]]
        return out

    def columns(self, raw: list[str], features: Any = None) -> list[str]:
        meta = (features or {}).get("json") if hasattr(features, "get") else None
        fields = list(meta) if isinstance(meta, dict) else []
        texts = ["text"] if {"txt", "text", "transcript"} & set(raw) else []
        return ["id", *fields, *texts, "audio"]


SHAPES: dict[str, Shape] = {shape.name: shape for shape in (
    WebDataset("webdataset", "tar shards: KEY.flac/.wav + KEY.json/.txt"),
    AudioFlamingo("audio-flamingo", "Audio Flamingo JSON: sound + conversations (<sound>, <sound-1>…)", task="chat"),
    Chat("chat", "messages/conversations (ShareGPT strings with <audio> tags, or content lists)", task="chat"),
    Nemo("nemo", "NeMo manifest: audio_filepath, text, duration, offset (segments)", task="asr"),
    Lhotse("lhotse", "Lhotse cuts: recording.sources, start, duration, supervisions[].text", task="asr"),
    Clotho("clotho", "Clotho captions: file_name, caption_1..caption_5", task="caption"),
    AudioBench("audiobench", "AudioBench: context (audio), instruction, answer", task="qa"),
    ChoiceColumns("air-bench", "AIR-Bench multiple choice: question, choice_a..choice_d, answer_gt", task="mcq"),
    Table("table", "one example a row, one column a field (parquet, csv, jsonl, audio folder, Hub)"),
)}
assert set(FORMATS) == {"auto", *SHAPES}, "config.FORMATS names every shape"


def detect_shape(columns: list[str] | set[str], wanted: str = "auto", where: str = "dataset") -> Shape:
    """The shape named by ``--format``, else the first whose columns match (most specific first)."""
    columns = set(columns)
    if wanted and wanted != "auto":
        if wanted not in SHAPES:
            raise ConfigError(f"--format {wanted!r}: choose one of {', '.join(FORMATS)}.")
        shape = SHAPES[wanted]
        shape.check_columns(columns, where)
        return shape
    return next(shape for shape in SHAPES.values() if shape.matches(columns))
