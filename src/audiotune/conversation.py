"""The one conversation format: an :class:`Example` (chat messages plus references) and the helpers that build one.

One format everywhere (training, evaluation, generation, serving): transformers chat messages,
``{"role", "content": [{"type": "text", "text"} | {"type": "audio", "audio": array}]}``, with audio as mono float32
at the family's rate.

Why its own module on the ground floor: an Example is data, not a task. Tasks build examples, and data, engines,
serving and RL pass them around; living here, below all of them, it lets ``tasks/`` sit below ``data/`` without an
import loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
