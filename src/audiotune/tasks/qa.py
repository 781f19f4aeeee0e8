"""Question answering: a question about the clip, answered in a word or a phrase."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..answers import normalize_answer
from ..conversation import Example
from ..metrics import CAPTION_METRICS, CLASSIFY_METRICS, caption_metrics, classification_metrics
from .base import Scores, ScoreOptions, Task, row_question


@dataclass(frozen=True)
class QaTask(Task):
    """Question answering: the user's text is the row's question; the answer(s) the reference(s).

    Scored both ways: accuracy on normalised answers (a short answer is right or wrong) and the caption metrics (a
    longer one is partly right)."""

    prompt: str = "{question}"
    text_column: str = "answer"
    references_column: str | None = "answers"
    question_column: str = "question"

    name = "qa"
    text_columns = ("answer", "response", "output")
    reference_columns = ("answers",)
    extra_columns = {"question_column": True}
    metrics = CLASSIFY_METRICS + CAPTION_METRICS
    headline = "accuracy"
    has_right_answer = True
    default_rewards = ("accuracy",)
    verifiable = True

    def required_columns(self) -> list[str]:
        return [self.question_column, self.text_column]

    def user_text(self, row: dict[str, Any], name: str) -> str:
        return self.prompt.format(question=row_question(row, self.question_column, name))

    @classmethod
    def score(cls, predictions: dict[str, str], references: dict[str, list[str]],
              options: ScoreOptions | None = None) -> Scores:
        options = options or ScoreOptions()
        corpus, per_clip = classification_metrics(predictions, references)
        caption, caption_each = caption_metrics(predictions, references, options.with_meteor, options.spice_models,
                                                options.notices)
        for k in per_clip:
            per_clip[k].update(caption_each[k])
        return {**corpus, **caption}, per_clip

    @classmethod
    def parse(cls, answer: str, example: Example) -> str | None:
        return normalize_answer(answer)
