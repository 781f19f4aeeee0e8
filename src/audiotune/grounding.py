"""Grounding check: does a tuned captioner listen, or does it recite the caption prior?

A model that ignores its audio can still score well on a captioning metric by writing the most
typical caption. The check scores the same model twice on the same clips and the same references:
once with each clip's own audio, once with another clip's audio (a fixed derangement, so no clip
keeps its own). A listening model loses most of its score when the audio is swapped; a model that
guesses the prior scores about the same both ways.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .conversation import Example
from .errors import ConfigError
from .generate import GenerationSettings, generate
from .metrics import max_ngram_repeats
from .models.family import Family
from .tasks import headline_metric, score


def derangement(n: int, seed: int = 0) -> list[int]:
    """A fixed permutation of ``range(n)`` with no fixed point: ``order[i]`` is whose audio clip ``i`` gets.

    A seeded shuffle, then each clip in that order takes the next one's audio (a single cycle).
    """
    if n < 2:
        raise ConfigError(f"The grounding check needs at least 2 clips to swap audio between (got {n}); "
                          "evaluate on more clips.")
    cycle = list(range(n))
    random.Random(seed).shuffle(cycle)
    order = [0] * n
    for position, clip in enumerate(cycle):
        order[clip] = cycle[(position + 1) % n]
    return order


def with_other_audio(examples: Sequence[Example], order: Sequence[int]) -> list[Example]:
    """Examples that keep their id, prompt text and references but carry clip ``order[i]``'s messages."""
    return [Example(id=e.id, messages=examples[j].messages, references=e.references, meta=dict(e.meta))
            for e, j in zip(examples, order)]


@dataclass
class GroundingCheck:
    """The headline metric with each clip's own audio and with another clip's, on the same references."""

    metric: str
    own: float
    other: float
    pairs: dict[str, str]  # clip id → id of the clip whose audio it was given
    own_predictions: dict[str, str] = field(default_factory=dict)
    other_predictions: dict[str, str] = field(default_factory=dict)
    references: dict[str, list[str]] = field(default_factory=dict)

    @property
    def drop(self) -> float:
        """How much of the own-audio score is lost when the audio is swapped (1.0: all of it)."""
        return 1.0 - self.other / self.own if self.own else 0.0


def grounding_check(model, processor, family: Family, examples: Sequence[Example], task: str = "caption",
                    settings: GenerationSettings | None = None, own_predictions: dict[str, str] | None = None,
                    batch_size: int = 16, seed: int = 0) -> GroundingCheck:
    """Score ``model`` on ``examples`` with their own audio and with a derangement of it.

    ``own_predictions`` (clip id → answer), when the caller already generated them with the same model and
    settings (the evaluation did), are scored instead of generating again.
    """
    order = derangement(len(examples), seed)
    swapped = with_other_audio(examples, order)
    if own_predictions is None:
        answers = generate(model, processor, family, examples, batch_size=batch_size, settings=settings)
        own_predictions = {e.id: a for e, a in zip(examples, answers)}
    other_answers = generate(model, processor, family, swapped, batch_size=batch_size, settings=settings)
    other_predictions = {e.id: a for e, a in zip(swapped, other_answers)}
    references = {e.id: list(e.references) for e in examples}
    metric = headline_metric(task)
    own, _ = score(task, {k: own_predictions[k] for k in references}, references, with_meteor=False)
    other, _ = score(task, other_predictions, references, with_meteor=False)
    return GroundingCheck(metric, own[metric], other[metric],
                          {e.id: examples[j].id for e, j in zip(examples, order)},
                          own_predictions, other_predictions, references)


def repeat_summary(predictions: dict[str, str], n: int = 3) -> tuple[int, str | None]:
    """The largest per-caption count of one word ``n``-gram, and the clip it occurs in (``None`` if no caption)."""
    worst = max(predictions, key=lambda k: max_ngram_repeats(predictions[k], n), default=None)
    return (max_ngram_repeats(predictions[worst], n), worst) if worst is not None else (0, None)
