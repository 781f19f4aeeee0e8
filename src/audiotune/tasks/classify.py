"""Classification: one label of a known set, named in the prompt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..answers import normalize_answer
from ..conversation import Example
from ..errors import DatasetSchemaError
from ..metrics import CLASSIFY_METRICS, classification_metrics
from .base import Scores, ScoreOptions, Task, cell_texts, checked_texts


@dataclass(frozen=True)
class ClassifyTask(Task):
    """Classification: the prompt lists the label set; the answer is the row's label name (a label index is read
    through ``labels``, as a ``ClassLabel`` column stores it)."""

    prompt: str = "What sound is this? Answer with one of: {labels}."
    text_column: str = "label"
    labels: tuple[str, ...] = ()

    name = "classify"
    text_columns = ("label", "class", "category")
    needs_labels = True
    metrics = CLASSIFY_METRICS
    headline = "accuracy"
    has_right_answer = True
    default_rewards = ("accuracy",)
    verifiable = True

    def references(self, row: dict[str, Any], name: str) -> list[str]:
        value = row.get(self.text_column)
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and self.labels:
            if not 0 <= int(value) < len(self.labels):
                raise DatasetSchemaError(f"{name}: label index {value} is outside the {len(self.labels)} labels.")
            value = self.labels[int(value)]
        return checked_texts(cell_texts(value), self.text_column, name)

    def user_text(self, row: dict[str, Any], name: str) -> str:
        return self.prompt.format(labels=", ".join(self.labels))

    @classmethod
    def score(cls, predictions: dict[str, str], references: dict[str, list[str]],
              options: ScoreOptions | None = None) -> Scores:
        return classification_metrics(predictions, references, (options or ScoreOptions()).harness_keywords)

    @classmethod
    def parse(cls, answer: str, example: Example) -> str | None:
        return normalize_answer(answer)
