"""Score predictions the way the audio-captioning field does, and run a model over an eval split.

Caption metrics come from ``pycocoevalcap`` (the reference implementation behind published
AudioCaps/Clotho numbers): PTB tokenisation (Stanford CoreNLP, needs Java), then BLEU-1..4,
METEOR, ROUGE-L and CIDEr-D over all references of each clip. Java-less machines get a clear
:class:`~audiotune.errors.ConfigError` telling them to install a JRE.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data.tasks import Example
from .errors import ConfigError
from .generate import GenerationSettings, generate
from .models.families import Family

logger = logging.getLogger(__name__)

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D")


def _require_java() -> None:
    if shutil.which("java") is None:
        raise ConfigError("Caption metrics need Java for the PTB tokenizer and METEOR: install a JRE "
                          "(Debian: apt-get install default-jre-headless) and retry.")


def ptb_tokenize(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    """PTB-tokenise (lower-cased, punctuation removed) as the COCO caption evaluation does.

    Empty strings are kept as empty without going through the tokenizer (which would drop the
    line and misalign every caption after it).
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    _require_java()
    non_empty = {f"{key}\t{i}": [{"caption": text}] for key, values in texts.items()
                 for i, text in enumerate(values) if text.strip()}
    tokenized = PTBTokenizer().tokenize(non_empty) if non_empty else {}
    return {key: [tokenized.get(f"{key}\t{i}", [""])[0] for i in range(len(values))]
            for key, values in texts.items()}


def caption_metrics(predictions: dict[str, str], references: dict[str, list[str]],
                    with_meteor: bool = True) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Corpus metrics and per-clip scores (BLEU-4, ROUGE-L and CIDEr-D) for ``predictions``."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    keys = sorted(predictions)
    if not keys:
        raise ConfigError("No predictions to score: the evaluation split produced no rows.")
    missing = [k for k in keys if not references.get(k)]
    if missing:
        raise ConfigError(f"No references for {missing[:5]}: every scored clip needs at least one reference.")
    res = ptb_tokenize({k: [predictions[k]] for k in keys})
    gts = ptb_tokenize({k: list(references[k]) for k in keys})
    # pycocoevalcap's BLEU divides by the hypothesis length; an empty prediction scores 0 by definition.
    res_safe = {k: [v[0] if v[0] else "<empty>"] for k, v in res.items()}
    corpus: dict[str, float] = {}
    per_clip: dict[str, dict[str, float]] = {k: {} for k in keys}
    bleu, bleu_each = Bleu(4).compute_score(gts, res_safe, verbose=0)
    for n in range(4):
        corpus[f"BLEU-{n + 1}"] = float(bleu[n])
    for k, score in zip(keys, bleu_each[3]):
        per_clip[k]["BLEU-4"] = float(score)
    if with_meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()  # a Java subprocess; it is killed when the object is collected
        corpus["METEOR"] = float(meteor.compute_score(gts, res_safe)[0])
        del meteor
    rouge, rouge_each = Rouge().compute_score(gts, res_safe)
    corpus["ROUGE-L"] = float(rouge)
    cider, cider_each = Cider().compute_score(gts, res_safe)
    corpus["CIDEr-D"] = float(cider)
    for k, r, c in zip(keys, rouge_each, cider_each):
        per_clip[k]["ROUGE-L"] = float(r)
        per_clip[k]["CIDEr-D"] = float(c)
    corpus["vocabulary"] = float(len({w for k in keys for w in res[k][0].split()}))
    return corpus, per_clip


@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list[dict[str, Any]] = field(default_factory=list)


def evaluate_model(model, processor, family: Family, examples: Sequence[Example], batch_size: int = 16,
                   settings: GenerationSettings | None = None, prompt: str | None = None,
                   on_batch: Callable[[int], None] | None = None, with_meteor: bool = True) -> EvalResult:
    """Generate for every example and score against its references."""
    settings = settings or GenerationSettings()
    answers = generate(model, processor, family, examples, batch_size=batch_size, settings=settings,
                       on_batch=on_batch)
    predictions = {e.id: a for e, a in zip(examples, answers)}
    references = {e.id: e.references for e in examples}
    metrics, per_clip = caption_metrics(predictions, references, with_meteor=with_meteor)
    rows = [{"id": e.id, "prompt": prompt, "references": e.references, "prediction": a,
             "scores": per_clip[e.id], "generation": settings.as_kwargs()} for e, a in zip(examples, answers)]
    return EvalResult(metrics=metrics, predictions=rows)


def write_predictions(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    with Path(path).open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
