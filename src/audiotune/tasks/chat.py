"""Conversations: one row is a whole chat (several turns, clips in any user turn), in the shapes the field writes.

Its reference is the last assistant turn, scored as free text (the base's caption metrics); GRPO cannot verify it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..conversation import Example
from ..errors import DatasetSchemaError
from .base import Task

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
class ChatTask(Task):
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

    text_column: str = "messages"

    name = "chat"
    text_columns = ("messages", "conversations")
    clips_in_conversation = True
    default_rewards = ("cider",)

    def read_turns(self, row: dict[str, Any], audio_column: str | None, name: str, max_audios: int | None = None,
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
        return self.read_turns(row, audio_column, name, max_audios)[1]

    def references(self, row: dict[str, Any], name: str) -> list[str]:
        turns, _ = self.read_turns(row, None, name, check_clips=False)
        return [" ".join(text for _, text in turns[-1][1])]

    def user_text(self, row: dict[str, Any], name: str) -> str:
        turns, _ = self.read_turns(row, None, name, check_clips=False)
        return next((" ".join(v for k, v in p if k == "text") for r, p in turns if r == "user"), "")

    def make_example(self, row: dict[str, Any], example_id: str, audio_column: str | None,
                     load: Callable[[Any, str], np.ndarray], max_audios: int = 1) -> Example:
        turns, clips = self.read_turns(row, audio_column, example_id, max_audios)
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


