"""Multiple choice: a question, its choices listed in the prompt, and a letter for the answer."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..answers import LETTERS, extract_choice
from ..conversation import Example
from ..errors import DatasetSchemaError
from ..metrics import MCQ_METRICS, mcq_metrics
from .base import Scores, ScoreOptions, Task, row_question

_OWN_LETTER = re.compile(r"^\(?(?P<letter>[A-Z])[.):]\s+(?P<text>\S.*)$", re.DOTALL)


@dataclass(frozen=True)
class McqTask(Task):
    """Multiple choice (MMAU-style rows): a question, its ``choices`` (a list, a JSON-encoded list, or a string with
    one per line) and the ``answer``: the correct choice's text, its letter (``B``/``(B)``) or its 0-based index.
    The prompt lists the choices as ``choice_format`` says (``(A) …``); the training target is the letter.
    ``meta["choices"]`` keeps the choices so evaluation and rewards can read answers given as text.

    Scored strictly (an answer that picks no choice is wrong), beside the number lmms-eval's MMAU scorer prints."""

    prompt: str = "{question}\nChoices:\n{choices}\nAnswer with the letter of the correct choice."
    text_column: str = "answer"
    question_column: str = "question"
    choices_column: str = "choices"
    choice_format: str = "({letter}) {choice}"

    name = "mcq"
    text_columns = ("answer", "correct_answer", "label")
    extra_columns = {"question_column": True, "choices_column": True}
    metrics = MCQ_METRICS
    headline = "accuracy"
    has_right_answer = True
    default_rewards = ("accuracy",)
    verifiable = True

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
        question = row_question(row, self.question_column, name)
        listed = "\n".join(self.choice_format.format(letter=LETTERS[i], choice=c)
                            for i, c in enumerate(self.choices(row, name)))
        return self.prompt.format(question=question, choices=listed)

    def make_example(self, row: dict[str, Any], example_id: str, audio_column: str,
                     load: Callable[[Any, str], np.ndarray], max_audios: int = 1) -> Example:
        example = super().make_example(row, example_id, audio_column, load, max_audios)
        example.meta["choices"] = self.choices(row, example_id)
        return example

    @classmethod
    def score(cls, predictions: dict[str, str], references: dict[str, list[str]],
              options: ScoreOptions | None = None) -> Scores:
        return mcq_metrics(predictions, references, (options or ScoreOptions()).choices)

    @classmethod
    def parse(cls, answer: str, example: Example) -> str | None:
        """The letter of the choice the answer picks (``None``: it picks none)."""
        picked = extract_choice(answer, example.meta.get("choices") or [])
        return None if picked is None else LETTERS[picked]

    @classmethod
    def is_right(cls, completion: str, references: Sequence[str], choices: Sequence[str] | None = None) -> bool:
        """The choice the completion picks is the reference's letter."""
        gold = LETTERS.find(references[0]) if references else -1
        picked = extract_choice(completion, list(choices or []))
        return picked is not None and picked == gold
