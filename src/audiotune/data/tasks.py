"""Turn a dataset row into an :class:`Example`: chat messages plus the reference answer(s).

One conversation format everywhere (training, evaluation, generation, serving): transformers chat
messages, ``{"role", "content": [{"type": "text", "text"} | {"type": "audio", "audio": array}]}``,
with audio as mono float32 at the family's rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

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

    def conversation(self) -> list[dict[str, Any]]:
        """The full training conversation: the prompt then the assistant's answer."""
        return self.messages + [{"role": "assistant", "content": [{"type": "text", "text": self.target}]}]

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

    def required_columns(self) -> list[str]:
        return [self.text_column]

    def references(self, row: dict[str, Any], name: str) -> list[str]:
        refs: list[str] = []
        if self.references_column and row.get(self.references_column):
            value = row[self.references_column]
            refs = [value] if isinstance(value, str) else list(value)
        elif self.text_column in row:
            refs = [row[self.text_column]]
        if not refs or any(not isinstance(r, str) for r in refs):
            raise DatasetSchemaError(f"{name}: column {self.text_column!r} must hold text, got {refs!r}.")
        refs = [r.strip() for r in refs]
        if not all(refs):
            raise DatasetSchemaError(f"{name}: the caption is empty or only whitespace. Fill it in or drop the row.")
        return refs

    def build(self, row: dict[str, Any], audio: np.ndarray, example_id: str) -> Example:
        return Example(
            id=example_id,
            messages=prompt_messages(audio, self.prompt, self.system_prompt),
            references=self.references(row, example_id),
        )
