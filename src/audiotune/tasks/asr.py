"""Speech recognition: scored by WER and CER after a stated transcript normalisation."""

from __future__ import annotations

from dataclasses import dataclass

from ..answers import ASR_NORMALIZERS
from ..metrics import ASR_METRICS, asr_metrics
from .base import Scores, ScoreOptions, Task


@dataclass(frozen=True)
class AsrTask(Task):
    """Speech recognition: the answer is the transcript in ``text_column``."""

    prompt: str = "Transcribe the input speech."
    text_column: str = "text"

    name = "asr"
    text_columns = ("text", "transcript", "transcription", "sentence", "normalized_text")
    metrics = ASR_METRICS
    headline = "WER"
    default_rewards = ("wer",)
    verifiable = True

    @classmethod
    def score(cls, predictions: dict[str, str], references: dict[str, list[str]],
              options: ScoreOptions | None = None) -> Scores:
        return asr_metrics(predictions, references, (options or ScoreOptions()).asr_normalizer)

    @classmethod
    def score_notices(cls, options: ScoreOptions) -> list[str]:
        """WER depends on the normalisation as much as on the model: the report says which one was applied."""
        return [f"WER and CER compare transcripts after {ASR_NORMALIZERS[options.asr_normalizer]} "
                f"(--asr-normalizer {options.asr_normalizer})."]
