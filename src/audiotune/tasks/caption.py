"""Audio captioning: the task the package was built around, and the shape of a task answered in free text."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Task


@dataclass(frozen=True)
class CaptionTask(Task):
    """Audio captioning: the user asks ``prompt`` about the clip; the answer is its caption.

    Several references per clip (AudioCaps/Clotho evaluation) come from ``references_column`` when the row has it;
    the training target is then the first one. Scored with pycocoevalcap's caption metrics (the base's)."""

    prompt: str = "Describe the audio."
    text_column: str = "caption"
    references_column: str | None = "captions"

    name = "caption"
    text_columns = ("caption", "text", "description")
    reference_columns = ("captions", "references")
    default_rewards = ("cider",)
    verifiable = True
