"""The :class:`Task` base: what every task shares, and the facts each task states about itself.

A task is one object because its parts change together: the columns a row holds, the prompt built from them, the
references, how an answer is read, which metrics score it and which one leads, and which reward GRPO trains it with.
Kept apart (column names in ``data/sources.py``, metrics switched on names in ``metrics.py``, rewards in a dict in
``rl/rewards.py``), adding a task meant editing each switch and hoping none was missed. Here the instance holds a
run's settings (prompt, column names: dataclass fields, set from the config) and the class holds the facts (class
attributes and class methods), so evaluation, reports and rewards ask the class by name without building one.

The defaults are those of a task answered in free text (caption, chat, preference): scored with the caption
metrics, CIDEr-D first, no single right answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..answers import answer_span, normalize_answer
from ..conversation import Example, prompt_messages
from ..errors import DatasetSchemaError
from ..metrics import CAPTION_METRICS, caption_metrics

Scores = tuple[dict[str, float], dict[str, dict[str, float]]]  # corpus metrics, per-clip metrics

# The columns a task may read besides its text, by the field (and run setting, and --flag) that names each: what an
# error calls it and the common names tried in order when the setting is empty. Shared, because a question column
# is found the same way whichever task asks a question.
EXTRA_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "question_column": ("question", ("question", "instruction", "prompt", "query")),
    "choices_column": ("choices", ("choices", "options")),
    "rejected_column": ("rejected answer", ("rejected", "rejected_response", "response_rejected")),
}


@dataclass
class ScoreOptions:
    """How to score, where tasks differ; each task reads the options it needs and leaves the rest.

    ``notices`` collects what the reader must know about the numbers (SPICE skipped); ``choices`` is each clip's
    choice list (mcq); ``asr_normalizer`` the transcript normalisation WER compares after; ``harness_keywords``
    classify's answers read as lmms-eval reads them."""

    with_meteor: bool = True
    spice_models: str | Path | None = None
    notices: list[str] | None = None
    choices: dict[str, list[str]] | None = None
    asr_normalizer: str = "whisper"
    harness_keywords: Sequence[tuple[str, str]] = ()


def cell_texts(value: Any) -> list[str]:
    """A cell as a list of texts (one text, or a list of them); a wrong type is passed on for the caller to report."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def checked_texts(refs: list[Any], column: str, name: str) -> list[str]:
    """``refs`` stripped, or an error naming the row and column when one is not text or is empty."""
    if not refs or any(not isinstance(r, str) for r in refs):
        raise DatasetSchemaError(f"{name}: column {column!r} must hold text, got {refs!r}. "
                                 "Map the right column with --text-column.")
    refs = [r.strip() for r in refs]
    if not all(refs):
        raise DatasetSchemaError(f"{name}: the {column!r} text is empty or only whitespace. Fill it in or drop the "
                                 "row.")
    return refs


def row_question(row: dict[str, Any], column: str, name: str, what: str = "question") -> str:
    """The row's question (or prompt) text, stripped; an error naming the row when it is empty or not text."""
    question = row.get(column)
    if not isinstance(question, str) or not question.strip():
        raise DatasetSchemaError(f"{name}: the {what} ({column!r}) is empty or not text.")
    return question.strip()


@dataclass(frozen=True)
class Task:
    """One task: the fields are a run's settings, the class attributes and class methods the task's facts.

    The user asks ``prompt`` about the clip; the answer is the row's ``text_column`` (several references, the first
    being the training target, from ``references_column`` when the row has it)."""

    prompt: str = ""
    system_prompt: str | None = None
    text_column: str = ""
    references_column: str | None = None

    name: ClassVar[str] = ""
    text_columns: ClassVar[tuple[str, ...]] = ()  # the answer's column, tried in order when --text-column is empty
    reference_columns: ClassVar[tuple[str, ...]] = ()  # a column of several references, likewise (optional)
    # The EXTRA_COLUMNS this task reads, each mapped to whether a row must have it (else the field is left None)
    extra_columns: ClassVar[dict[str, bool]] = {}
    needs_labels: ClassVar[bool] = False  # the prompt lists the label set (read from the split unless given)
    # The conversation itself places its clips (inline parts or tags): an audio column is optional, and a row may
    # hold more clips than the family takes (checked before training)
    clips_in_conversation: ClassVar[bool] = False
    metrics: ClassVar[tuple[str, ...]] = CAPTION_METRICS  # in display order
    headline: ClassVar[str] = "CIDEr-D"  # the one number samples are sorted and checkpoints picked by
    has_right_answer: ClassVar[bool] = False  # eval writes each row's verdict (correct, harness_correct)
    default_rewards: ClassVar[tuple[str, ...]] = ()  # GRPO's rewards when --rewards is empty
    verifiable: ClassVar[bool] = False  # GRPO can score a sampled answer against the row's reference

    def required_columns(self) -> list[str]:
        return [self.text_column]

    def references(self, row: dict[str, Any], name: str) -> list[str]:
        refs: list[Any] = []
        if self.references_column and row.get(self.references_column):
            refs = cell_texts(row[self.references_column])
        elif self.text_column in row:
            refs = cell_texts(row[self.text_column])
        return checked_texts(refs, self.text_column, name)

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

    @classmethod
    def score(cls, predictions: dict[str, str], references: dict[str, list[str]],
              options: ScoreOptions | None = None) -> Scores:
        """Corpus and per-clip metrics of ``predictions`` (clip id → answer) against each clip's references."""
        options = options or ScoreOptions()
        return caption_metrics(predictions, references, options.with_meteor, options.spice_models, options.notices)

    @classmethod
    def shown_metrics(cls, available: Sequence[str]) -> list[str]:
        """The metrics to show, in the task's order, limited to those computed."""
        return [m for m in cls.metrics if m in available]

    @classmethod
    def score_notices(cls, options: ScoreOptions) -> list[str]:
        """What a reader of this task's numbers must know before reading them (none by default)."""
        return []

    @classmethod
    def parse(cls, answer: str, example: Example) -> str | None:
        """The answer as the scorer reads it, written beside the prediction (``None``: nothing to read out)."""
        return None

    @classmethod
    def is_right(cls, completion: str, references: Sequence[str], choices: Sequence[str] | None = None) -> bool:
        """The accuracy reward's verdict on one completion: its answer (``<answer>`` tags read), normalised, equals
        a normalised reference."""
        said = normalize_answer(answer_span(completion))
        return bool(said) and said in {normalize_answer(r) for r in references}
