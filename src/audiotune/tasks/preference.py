"""Preference pairs (DPO): a prompt, the chosen answer and the rejected one."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..conversation import Example
from .base import Task, cell_texts, checked_texts, row_question

@dataclass(frozen=True)
class PreferenceTask(Task):
    """Preference pairs for DPO: the audio, a prompt (the row's ``question_column`` when it has one, else
    ``prompt``), the ``chosen`` answer (``text_column``, the target) and the ``rejected`` one (in
    ``meta["rejected"]``). Evaluated, an answer is scored against the chosen one as free text (the base's metrics);
    GRPO has nothing to verify."""

    prompt: str = "Describe the audio."
    text_column: str = "chosen"
    question_column: str | None = "prompt"
    rejected_column: str = "rejected"

    name = "preference"
    text_columns = ("chosen", "chosen_response", "response_chosen")
    extra_columns = {"question_column": False, "rejected_column": True}  # no prompt column: every row gets --prompt

    def required_columns(self) -> list[str]:
        return [self.text_column, self.rejected_column]

    def user_text(self, row: dict[str, Any], name: str) -> str:
        if not self.question_column or row.get(self.question_column) is None:
            return self.prompt
        return row_question(row, self.question_column, name, "prompt")

    def make_example(self, row: dict[str, Any], example_id: str, audio_column: str,
                     load: Callable[[Any, str], np.ndarray], max_audios: int = 1) -> Example:
        rejected = checked_texts(cell_texts(row.get(self.rejected_column)), self.rejected_column, example_id)[0]
        example = super().make_example(row, example_id, audio_column, load, max_audios)
        example.meta["rejected"] = rejected
        return example
