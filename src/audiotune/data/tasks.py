"""Turn a dataset row into an :class:`Example`: chat messages plus the reference answer(s).

One conversation format everywhere (training, evaluation, generation, serving): transformers chat
messages, ``{"role", "content": [{"type": "text", "text"} | {"type": "audio", "audio": array}]}``,
with audio as mono float32 at the family's rate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..answers import LETTERS, extract_choice
from ..errors import DatasetSchemaError


@dataclass
class Example:
    """A prompt (messages without the answer) and its references; ``references[0]`` is the training target."""

    id: str
    messages: list[dict[str, Any]]
    references: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.references[0]

    def conversation(self, target: str | None = None) -> list[dict[str, Any]]:
        """The full training conversation: the prompt then the assistant's answer (``target``: as the model
        writes it, when that differs from the reference)."""
        text = self.target if target is None else target
        return self.messages + [{"role": "assistant", "content": [{"type": "text", "text": text}]}]

    def audios(self) -> list[np.ndarray]:
        return [part["audio"] for m in self.messages if isinstance(m["content"], list)
                for part in m["content"] if part.get("type") == "audio"]


def user_turn(audio: np.ndarray | None, text: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if audio is not None:
        content.append({"type": "audio", "audio": audio})
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def prompt_messages(audio: np.ndarray | None, prompt: str, system_prompt: str | None = None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append(user_turn(audio, prompt))
    return messages


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]  # a wrong type: reported by the caller


@dataclass(frozen=True)
class CaptionTask:
    """Audio captioning: the user asks ``prompt`` about the clip; the answer is its caption.

    Several references per clip (AudioCaps/Clotho evaluation) come from ``references_column``
    when the row has it; the training target is then the first one.
    """

    prompt: str = "Describe the audio."
    system_prompt: str | None = None
    text_column: str = "caption"
    references_column: str | None = "captions"
    name: str = "caption"

    def required_columns(self) -> list[str]:
        return [self.text_column]

    def references(self, row: dict[str, Any], name: str) -> list[str]:
        refs: list[Any] = []
        if self.references_column and row.get(self.references_column):
            refs = _texts(row[self.references_column])
        elif self.text_column in row:
            refs = _texts(row[self.text_column])
        return _checked(refs, self.text_column, name)

    def user_text(self, row: dict[str, Any], name: str) -> str:
        return self.prompt

    def audio_items(self, row: dict[str, Any], audio_column: str | None, name: str,
                    max_audios: int | None = None) -> list[Any]:
        """The row's raw audio items (not decoded): what ``data check`` decodes one by one."""
        cell = row.get(audio_column) if audio_column else None
        return list(cell) if isinstance(cell, (list, tuple)) else [cell]

    def make_example(self, row: dict[str, Any], example_id: str, audio_column: str,
                     load: Callable[[Any, str], np.ndarray], max_audios: int = 1) -> Example:
        """Check the text first (cheap), then decode the audio cell with ``load``."""
        references = self.references(row, example_id)
        text = self.user_text(row, example_id)
        audio = load(row.get(audio_column), example_id)
        return Example(id=example_id, messages=prompt_messages(audio, text, self.system_prompt), references=references)


def _checked(refs: list[Any], column: str, name: str) -> list[str]:
    if not refs or any(not isinstance(r, str) for r in refs):
        raise DatasetSchemaError(f"{name}: column {column!r} must hold text, got {refs!r}. "
                                 "Map the right column with --text-column.")
    refs = [r.strip() for r in refs]
    if not all(refs):
        raise DatasetSchemaError(f"{name}: the {column!r} text is empty or only whitespace. Fill it in or drop the row.")
    return refs


@dataclass(frozen=True)
class AsrTask(CaptionTask):
    """Speech recognition: the answer is the transcript in ``text_column``."""

    prompt: str = "Transcribe the input speech."
    text_column: str = "text"
    references_column: str | None = None
    name: str = "asr"


@dataclass(frozen=True)
class QaTask(CaptionTask):
    """Question answering: the user's text is the row's question; the answer(s) the reference(s)."""

    prompt: str = "{question}"
    text_column: str = "answer"
    references_column: str | None = "answers"
    question_column: str = "question"
    name: str = "qa"

    def required_columns(self) -> list[str]:
        return [self.question_column, self.text_column]

    def user_text(self, row: dict[str, Any], name: str) -> str:
        question = row.get(self.question_column)
        if not isinstance(question, str) or not question.strip():
            raise DatasetSchemaError(f"{name}: the question ({self.question_column!r}) is empty or not text.")
        return self.prompt.format(question=question.strip())


@dataclass(frozen=True)
class ClassifyTask(CaptionTask):
    """Classification: the prompt lists the label set; the answer is the row's label name."""

    prompt: str = "What sound is this? Answer with one of: {labels}."
    text_column: str = "label"
    references_column: str | None = None
    labels: tuple[str, ...] = ()
    name: str = "classify"

    def references(self, row: dict[str, Any], name: str) -> list[str]:
        value = row.get(self.text_column)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and self.labels:
            if not 0 <= int(value) < len(self.labels):
                raise DatasetSchemaError(f"{name}: label index {value} is outside the {len(self.labels)} labels.")
            value = self.labels[int(value)]
        return _checked(_texts(value), self.text_column, name)

    def user_text(self, row: dict[str, Any], name: str) -> str:
        return self.prompt.format(labels=", ".join(self.labels))


# <audio> (LLaMA-Factory, ms-swift), <sound> and <sound-k> (Audio Flamingo: <sound-k> is the k-th clip, 1-based).
_AUDIO_TAG = re.compile(r"<audio>|<sound>|<sound-(\d+)>")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# The keys each content part may carry (what transformers' chat template and the OpenAI API put there); any other
# key is an error, never ignored.
_PART_KEYS = {"text": {"type", "text"}, "audio": {"type", "path", "url", "audio", "base64"},
              "input_audio": {"type", "input_audio"}, "audio_url": {"type", "audio_url"}}


def _b64(text: Any, where: str) -> bytes:
    from ..audio import base64_bytes
    from ..errors import AudioDecodeError

    try:
        return base64_bytes(text, f"{where}: the audio part's base64 data")
    except AudioDecodeError as error:  # the row's text is wrong, not its audio: a schema error
        raise DatasetSchemaError(str(error)) from None


def _inline_audio(part: dict[str, Any], where: str) -> Any:
    """The loadable item of an audio content part: a path or URL string, bytes, or a decoded/undecoded dict."""
    kind = part["type"]
    if kind == "input_audio":
        spec = part.get("input_audio")
        if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
            raise DatasetSchemaError(f"{where}: an input_audio part needs {{'data': base64, 'format': ...}}.")
        return _b64(spec["data"], where)
    if kind == "audio_url":
        spec = part.get("audio_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        if not isinstance(url, str) or not url.strip():
            raise DatasetSchemaError(f"{where}: an audio_url part needs {{'url': ...}}.")
        return url
    given = [k for k in ("path", "url", "audio", "base64") if part.get(k) is not None]
    if len(given) != 1:
        raise DatasetSchemaError(f"{where}: an audio part needs exactly one of path, url, audio or base64; it has "
                                 f"{given or 'none'}.")
    value = part[given[0]]
    if given[0] == "base64":
        return _b64(value, where)
    return value


@dataclass(frozen=True)
class ChatTask(CaptionTask):
    """Conversations, in the shapes the field writes them:

    - ShareGPT (LLaMA-Factory, ms-swift): ``messages`` (or ``conversations`` with ``from``/``value``) whose text carries
      ``<audio>`` tags, and ``audios``, the files in tag order; Audio Flamingo's ``<sound>`` / ``<sound-k>`` (k-th
      clip, 1-based) tags likewise (``data/shapes.py`` maps its ``sound`` list to ``audios``);
    - transformers' content lists: ``content`` is a list of ``{"type": "text", "text"}`` and audio parts
      (``{"type": "audio", "path"|"url"|"audio"|"base64"}``, or the OpenAI ``input_audio``/``audio_url`` parts the
      server accepts), the clips inline.

    Clips may sit in any user turn; audio without any tag opens the first user turn. The last assistant turn is the
    reference; every assistant turn is trained on (the collator labels each). How many clips a conversation may hold
    is the family's ``max_audios``.
    """

    prompt: str = ""
    text_column: str = "messages"
    references_column: str | None = None
    name: str = "chat"

    def parse(self, row: dict[str, Any], audio_column: str | None, name: str, max_audios: int | None = None,
              check_clips: bool = True) -> tuple[list[tuple[str, list[tuple[str, Any]]]], list[Any]]:
        """``(turns, clips)``: each turn ``(role, [("text", str) | ("audio", clip index)])`` and the raw clip items,
        checked (tags against clips, roles, the answer last, the family's clip limit) without decoding any audio.
        ``check_clips=False`` reads the text alone (a reference, the question)."""
        raw = row.get(self.text_column)
        if not isinstance(raw, list) or not raw:
            raise DatasetSchemaError(f"{name}: {self.text_column!r} must be a non-empty list of messages.")
        listed = row.get(audio_column) if audio_column else None
        listed = [] if listed is None else [listed] if isinstance(listed, (str, dict, bytes)) else list(listed)
        inline: list[Any] = []
        numbered: list[int] = []
        plain = 0
        turns: list[tuple[str, list[tuple[str, Any]]]] = []
        for i, turn in enumerate(raw):
            if not isinstance(turn, dict):
                raise DatasetSchemaError(f"{name}: message {i} is not an object.")
            role = _ROLES.get(str(turn.get("role") or turn.get("from") or "").lower())
            content = turn.get("content") if turn.get("content") is not None else turn.get("value")
            if role is None or not isinstance(content, (str, list)):
                raise DatasetSchemaError(f"{name}: message {i} needs a role (user/assistant/system or human/gpt) and "
                                         "content (text, or a list of parts).")
            parts: list[tuple[str, Any]] = []
            if isinstance(content, str):
                position = 0
                for match in _AUDIO_TAG.finditer(content):
                    parts.append(("text", content[position:match.start()]))
                    if match.group(1):
                        numbered.append(int(match.group(1)))
                        parts.append(("audio", int(match.group(1)) - 1))
                    else:
                        parts.append(("audio", plain))
                        plain += 1
                    position = match.end()
                parts.append(("text", content[position:]))
            else:
                for j, part in enumerate(content):
                    where = f"{name}: message {i} part {j}"
                    part = {k: v for k, v in part.items() if v is not None} if isinstance(part, dict) else part
                    kind = part.get("type") if isinstance(part, dict) else None
                    if kind not in _PART_KEYS:
                        raise DatasetSchemaError(f"{where}: unsupported part {kind!r}; use text, audio, input_audio "
                                                 "or audio_url parts.")
                    unknown = sorted(set(part) - _PART_KEYS[kind])
                    if unknown:
                        raise DatasetSchemaError(f"{where}: unknown key(s) {unknown} in a {kind} part; a {kind} part "
                                                 f"holds {sorted(_PART_KEYS[kind])}.")
                    if kind == "text":
                        if not isinstance(part.get("text"), str):
                            raise DatasetSchemaError(f"{where}: a text part needs its 'text'.")
                        parts.append(("text", part["text"]))
                    else:
                        parts.append(("audio", ("inline", len(inline))))
                        inline.append(_inline_audio(part, where))
            parts = [(k, v.strip() if k == "text" else v) for k, v in parts if k == "audio" or v.strip()]
            if role != "user" and any(k == "audio" for k, _ in parts):
                raise DatasetSchemaError(f"{name}: message {i} ({role}) holds audio; clips belong in user turns.")
            turns.append((role, parts))
        if check_clips:
            _match_clips(turns, name, audio_column, listed, inline, numbered, plain)
        clips = inline or listed
        turns = [(r, [("audio", v[1]) if k == "audio" and isinstance(v, tuple) else (k, v) for k, v in p])
                 for r, p in turns]
        if max_audios is not None and len(clips) > max_audios:
            raise DatasetSchemaError(f"{name}: {len(clips)} clips in one conversation; this model takes at most "
                                     f"{max_audios}. Split the conversation, or use a family that takes several clips.")
        role, last = turns[-1]
        if role != "assistant" or not last or any(k != "text" for k, _ in last):
            raise DatasetSchemaError(f"{name}: the last message must be a non-empty assistant answer.")
        return turns, clips

    def audio_items(self, row: dict[str, Any], audio_column: str | None, name: str,
                    max_audios: int | None = None) -> list[Any]:
        return self.parse(row, audio_column, name, max_audios)[1]

    def references(self, row: dict[str, Any], name: str) -> list[str]:
        turns, _ = self.parse(row, None, name, check_clips=False)
        return [" ".join(text for _, text in turns[-1][1])]

    def required_columns(self) -> list[str]:
        return [self.text_column]

    def user_text(self, row: dict[str, Any], name: str) -> str:
        turns, _ = self.parse(row, None, name, check_clips=False)
        return next((" ".join(v for k, v in p if k == "text") for r, p in turns if r == "user"), "")

    def make_example(self, row: dict[str, Any], example_id: str, audio_column: str | None,
                     load: Callable[[Any, str], np.ndarray], max_audios: int = 1) -> Example:
        turns, clips = self.parse(row, audio_column, example_id, max_audios)
        decoded = [load(item, f"{example_id} audio {i}") for i, item in enumerate(clips)]
        messages: list[dict[str, Any]] = []
        for role, parts in turns[:-1]:
            content = [{"type": "audio", "audio": decoded[v]} if k == "audio" else {"type": "text", "text": v}
                       for k, v in parts]
            messages.append({"role": role, "content": content})
        if self.system_prompt and messages and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        answer = " ".join(text for _, text in turns[-1][1])
        return Example(id=example_id, messages=messages, references=[answer])


def _match_clips(turns: list, name: str, audio_column: str | None, listed: list, inline: list, numbered: list[int],
                 plain: int) -> None:
    """Tags against the listed clips, one to one; clips listed without tags open the first user turn."""
    if inline and (listed or plain or numbered):
        raise DatasetSchemaError(f"{name}: audio given both as content parts and as tags/{audio_column!r}; use one.")
    if numbered and plain:
        raise DatasetSchemaError(f"{name}: mixes numbered <sound-k> tags with plain <audio>/<sound> tags; use one "
                                 "kind.")
    if numbered:
        outside = sorted({k for k in numbered if not 1 <= k <= len(listed)})
        unused = sorted(set(range(1, len(listed) + 1)) - set(numbered))
        if outside or unused:
            raise DatasetSchemaError(f"{name}: tags <sound-k> name clip(s) {sorted(set(numbered))} of the "
                                     f"{len(listed)} listed in {audio_column!r}" +
                                     (f"; {outside} do not exist" if outside else "") +
                                     (f"; {unused} are never used" if unused else "") + ". Make them match.")
    elif plain and plain != len(listed):
        raise DatasetSchemaError(f"{name}: {plain} audio tag(s) but {len(listed)} file(s) in {audio_column!r}; "
                                 "they must match one to one.")
    elif not plain and listed:  # no tags: every clip opens the first user turn
        first_user = next((i for i, (r, _) in enumerate(turns) if r == "user"), None)
        if first_user is None:
            raise DatasetSchemaError(f"{name}: clips are listed but the conversation has no user turn.")
        turns[first_user] = ("user", [("audio", k) for k in range(len(listed))] + turns[first_user][1])


_OWN_LETTER = re.compile(r"^\(?(?P<letter>[A-Z])[.):]\s+(?P<text>\S.*)$", re.DOTALL)


@dataclass(frozen=True)
class McqTask(CaptionTask):
    """Multiple choice (MMAU-style rows): a question, its ``choices`` (a list, a JSON-encoded list, or a string with
    one per line) and the ``answer``: the correct choice's text, its letter (``B``/``(B)``) or its 0-based index.
    The prompt lists the choices as ``choice_format`` says (``(A) …``); the training target is the letter. ``meta["choices"]`` keeps the
    choices so evaluation and rewards can read answers given as text."""

    prompt: str = "{question}\nChoices:\n{choices}\nAnswer with the letter of the correct choice."
    text_column: str = "answer"
    references_column: str | None = None
    question_column: str = "question"
    choices_column: str = "choices"
    choice_format: str = "({letter}) {choice}"
    name: str = "mcq"

    def required_columns(self) -> list[str]:
        return [self.question_column, self.choices_column, self.text_column]

    def choices(self, row: dict[str, Any], name: str) -> list[str]:
        """The row's choices without letters: a list, a JSON-encoded list (lmms-lab's MMAU copy: lmms-eval's
        ``tasks/mmau/utils.py`` reads ``json.loads(doc["choices"])``) or one choice a line. Choices that carry
        their own position's letter (MMAR's ``A. Owl``) lose it, or the prompt would read ``(A) A. Owl``."""
        value = row.get(self.choices_column)
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise DatasetSchemaError(f"{name}: {self.choices_column!r} starts like a JSON list but does not "
                                         f"parse ({error.msg}): {value[:80]!r}. Fix the row or drop it.") from None
        elif isinstance(value, str):
            value = [line.strip() for line in value.splitlines() if line.strip()]
        if not isinstance(value, (list, tuple)) or len(value) < 2 or not all(isinstance(c, str) and c.strip()
                                                                             for c in value):
            raise DatasetSchemaError(f"{name}: {self.choices_column!r} must hold at least two non-empty choices, "
                                     f"got {value!r}. Map the right column with --choices-column.")
        if len(value) > len(LETTERS):
            raise DatasetSchemaError(f"{name}: {len(value)} choices; at most {len(LETTERS)} are supported.")
        choices = [c.strip() for c in value]
        lettered = [_OWN_LETTER.match(c) for c in choices]
        if all(m and m.group("letter") == LETTERS[i] for i, m in enumerate(lettered)):
            choices = [m.group("text").strip() for m in lettered]
        return choices

    def answer_index(self, row: dict[str, Any], name: str) -> int:
        choices = self.choices(row, name)
        value = row.get(self.text_column)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if 0 <= int(value) < len(choices):
                return int(value)
        elif isinstance(value, str) and value.strip():
            found = extract_choice(value, choices)
            if found is not None:
                return found
        raise DatasetSchemaError(f"{name}: the answer {value!r} ({self.text_column!r}) is none of the choices "
                                 f"{choices}. Give the choice's text, its letter or its 0-based index.")

    def references(self, row: dict[str, Any], name: str) -> list[str]:
        index = self.answer_index(row, name)
        return [LETTERS[index], self.choices(row, name)[index]]

    def user_text(self, row: dict[str, Any], name: str) -> str:
        question = row.get(self.question_column)
        if not isinstance(question, str) or not question.strip():
            raise DatasetSchemaError(f"{name}: the question ({self.question_column!r}) is empty or not text.")
        listed = "\n".join(self.choice_format.format(letter=LETTERS[i], choice=c)
                            for i, c in enumerate(self.choices(row, name)))
        return self.prompt.format(question=question.strip(), choices=listed)

    def make_example(self, row: dict[str, Any], example_id: str, audio_column: str,
                     load: Callable[[Any, str], np.ndarray], max_audios: int = 1) -> Example:
        example = super().make_example(row, example_id, audio_column, load, max_audios)
        example.meta["choices"] = self.choices(row, example_id)
        return example


@dataclass(frozen=True)
class PreferenceTask(CaptionTask):
    """Preference pairs for DPO: the audio, a prompt (the row's ``question_column`` when it has one, else
    ``prompt``), the ``chosen`` answer (``text_column``, the target) and the ``rejected`` one (in
    ``meta["rejected"]``)."""

    prompt: str = "Describe the audio."
    text_column: str = "chosen"
    references_column: str | None = None
    question_column: str | None = "prompt"
    rejected_column: str = "rejected"
    name: str = "preference"

    def required_columns(self) -> list[str]:
        return [self.text_column, self.rejected_column]

    def user_text(self, row: dict[str, Any], name: str) -> str:
        question = row.get(self.question_column) if self.question_column else None
        if question is None:
            return self.prompt
        if not isinstance(question, str) or not question.strip():
            raise DatasetSchemaError(f"{name}: the prompt ({self.question_column!r}) is empty or not text.")
        return question.strip()

    def make_example(self, row: dict[str, Any], example_id: str, audio_column: str,
                     load: Callable[[Any, str], np.ndarray], max_audios: int = 1) -> Example:
        rejected = _checked(_texts(row.get(self.rejected_column)), self.rejected_column, example_id)[0]
        example = super().make_example(row, example_id, audio_column, load, max_audios)
        example.meta["rejected"] = rejected
        return example


TASKS = {"caption": CaptionTask, "asr": AsrTask, "qa": QaTask, "classify": ClassifyTask, "chat": ChatTask,
         "mcq": McqTask, "preference": PreferenceTask}


def make_task(name: str, **fields: Any) -> CaptionTask:
    """Build task ``name``; ``fields`` that are ``None`` keep the task's own default."""
    if name not in TASKS:
        raise DatasetSchemaError(f"Unknown task {name!r}; choose one of {', '.join(TASKS)}.")
    cls = TASKS[name]
    known = {f for f in cls.__dataclass_fields__}
    return cls(**{k: v for k, v in fields.items() if v is not None and k in known})
