"""Metric implementations, computed the way each field computes them; which task uses which is the task's own
fact (``audiotune.tasks``: each task's ``score``, ``metrics`` and ``headline``), so nothing here switches on a task.

- caption: ``pycocoevalcap`` (the reference implementation behind published AudioCaps/Clotho numbers):
  PTB tokenisation (Stanford CoreNLP, Java), BLEU-1..4, METEOR, ROUGE-L, CIDEr-D over all references
  of each clip; SPICE and SPIDEr (mean of CIDEr-D and SPICE) when SPICE's CoreNLP models are present.
- asr: WER and CER with ``jiwer`` after :func:`transcript_normalizer` (Whisper's English normaliser by default, as
  lmms-eval's LibriSpeech task applies it, so the numbers compare with published ones).
- classify: accuracy and macro-F1 on :func:`normalize_answer`-ed answers; qa: those plus the caption metrics.
- mcq: accuracy of the choice each answer picks (:func:`~audiotune.answers.extract_choice`: a letter, the
  choice's text, ``<answer>`` tags), strict, beside the number lmms-eval's MMAU scorer prints.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .answers import LETTERS, extract_choice, lmms_eval_letter, normalize_answer, transcript_normalizer
from .errors import ConfigError

logger = logging.getLogger(__name__)

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "SPICE", "SPIDEr")
ASR_METRICS = ("WER", "CER")
CLASSIFY_METRICS = ("accuracy", "macro-F1")
HARNESS_ACCURACY = "accuracy_lmms_eval"  # the number lmms-eval's MMAU task prints (a seeded guess where none parses)
MCQ_METRICS = ("accuracy", "answered", HARNESS_ACCURACY)
SPICE_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")
GENERATION_PREFIX = "eval_gen_"  # generation metrics in the Trainer's logs (eval_gen_CIDEr-D, eval_gen_WER)
LOWER_IS_BETTER = {"WER", "CER", "loss", "eval_loss"}


def best_value(metric: str, values: list[float | None]) -> float | None:
    """The best of several models' values for ``metric`` (lowest for WER/CER/loss), or ``None`` on a tie."""
    present = [v for v in values if v is not None]
    if len(set(present)) < 2:
        return None
    return min(present) if metric in LOWER_IS_BETTER else max(present)


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


def spice_models_ready(models_dir: str | Path | None = None) -> tuple[bool, str]:
    """Whether SPICE can run: its CoreNLP jars in pycocoevalcap's spice/lib, or in ``models_dir``.

    They cannot be downloaded here (pycocoevalcap would try at import of the scorer); a path to
    pre-downloaded jars is linked into place.
    """
    import pycocoevalcap.spice as spice_pkg

    lib = Path(spice_pkg.__file__).parent / "lib"
    if all((lib / jar).exists() for jar in SPICE_JARS):
        return True, ""
    if models_dir is not None:
        source = Path(models_dir)
        missing = [jar for jar in SPICE_JARS if not (source / jar).exists()]
        if missing:
            return False, f"SPICE/SPIDEr skipped: {source} lacks {', '.join(missing)}."
        for jar in SPICE_JARS:
            target = lib / jar
            if not target.exists():
                target.symlink_to((source / jar).resolve())
        return True, ""
    return False, ("SPICE/SPIDEr skipped: Stanford CoreNLP 3.6.0 models not found; pass --spice-models DIR with "
                   f"{' and '.join(SPICE_JARS)} (from stanford-corenlp-full-2015-12-09.zip).")


def caption_metrics(predictions: dict[str, str], references: dict[str, list[str]], with_meteor: bool = True,
                    spice_models: str | Path | None = None,
                    notices: list[str] | None = None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Corpus metrics and per-clip scores (BLEU-4, METEOR-free, ROUGE-L, CIDEr-D[, SPICE]) for ``predictions``."""
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
    ready, notice = spice_models_ready(spice_models)
    if ready:
        from pycocoevalcap.spice.spice import Spice

        scorer = Spice.__new__(Spice)  # its __init__ only downloads the models, which are present
        spice, spice_each = scorer.compute_score(gts, res_safe)
        corpus["SPICE"] = float(spice)
        corpus["SPIDEr"] = (corpus["CIDEr-D"] + corpus["SPICE"]) / 2
        for k, s in zip(keys, spice_each):
            per_clip[k]["SPICE"] = float(s["All"]["f"])
    elif notices is not None and notice not in notices:
        notices.append(notice)
        logger.warning(notice)
    corpus["vocabulary"] = float(len({w for k in keys for w in res[k][0].split()}))
    return corpus, per_clip


def max_ngram_repeats(text: str, n: int = 3) -> int:
    """How often the most frequent word ``n``-gram of ``text`` occurs (0 when it has fewer than ``n`` words).

    A degenerate caption loops ("hear a beep repeated hear a beep repeated ..."): its top 3-gram
    occurs three or more times, while a fluent one rarely uses a 3-gram twice. Words are lower-cased
    runs of letters, digits and apostrophes, so punctuation does not hide a loop.
    """
    from collections import Counter

    words = re.findall(r"[\w']+", text.lower())
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return max(counts.values(), default=0)


def asr_metrics(predictions: dict[str, str], references: dict[str, list[str]], normalizer: str = "whisper"
                ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Corpus WER and CER (jiwer) against the first reference after ``normalizer``, and per-clip WER."""
    import jiwer

    normalize = transcript_normalizer(normalizer)
    keys = sorted(predictions)
    hyps = [normalize(predictions[k]) for k in keys]
    refs = [normalize(references[k][0]) for k in keys]
    scored = [(k, h, r) for k, h, r in zip(keys, hyps, refs) if r]
    if not scored:
        raise ConfigError("Every reference transcript is empty after normalisation: nothing to score.")
    keys, hyps, refs = (list(x) for x in zip(*scored))
    corpus = {"WER": float(jiwer.wer(refs, hyps)), "CER": float(jiwer.cer(refs, hyps))}
    per_clip = {k: {"WER": float(jiwer.wer(r, h))} for k, h, r in zip(keys, hyps, refs)}
    return corpus, per_clip


def classification_metrics(predictions: dict[str, str], references: dict[str, list[str]],
                           harness_keywords: Sequence[tuple[str, str]] = ()
                           ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Accuracy (a prediction matching any reference) and macro-F1 over the reference classes. With
    ``harness_keywords`` ((keyword, label) in order), also the accuracy lmms-eval's reading gives: the label of the
    first keyword the lower-cased answer contains, none found being wrong (its VocalSound ``get_answer``)."""
    keys = sorted(predictions)
    pred = {k: normalize_answer(predictions[k]) for k in keys}
    gold = {k: [normalize_answer(r) for r in references[k]] for k in keys}
    correct = {k: float(pred[k] in gold[k]) for k in keys}
    labels = sorted({gold[k][0] for k in keys})
    f1s = []
    for label in labels:
        tp = sum(1 for k in keys if gold[k][0] == label and pred[k] == label)
        fp = sum(1 for k in keys if gold[k][0] != label and pred[k] == label)
        fn = sum(1 for k in keys if gold[k][0] == label and pred[k] != label)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    corpus = {"accuracy": sum(correct.values()) / len(keys), "macro-F1": sum(f1s) / len(f1s)}
    per_clip = {k: {"accuracy": v} for k, v in correct.items()}
    if harness_keywords:
        for k in keys:
            found = next((label for word, label in harness_keywords if word in predictions[k].lower()), None)
            per_clip[k][HARNESS_ACCURACY] = float(found is not None and normalize_answer(found) in gold[k])
        corpus[HARNESS_ACCURACY] = sum(v[HARNESS_ACCURACY] for v in per_clip.values()) / len(keys)
    return corpus, per_clip


def mcq_metrics(predictions: dict[str, str], references: dict[str, list[str]],
                choices: dict[str, list[str]] | None = None
                ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Accuracy of multiple-choice answers; ``references[k]`` is ``[letter, choice text]`` (the mcq task's) and
    ``choices[k]`` the clip's choices. ``accuracy`` is strict (an answer that picks no choice is wrong);
    ``answered``: the share of answers that pick any choice at all; ``accuracy_lmms_eval``: what lmms-eval's MMAU
    scorer would print (:func:`lmms_eval_letter`, a seeded random letter where it reads none; per clip only where
    it reads one)."""
    import random

    keys = sorted(predictions)
    per_clip: dict[str, dict[str, float]] = {}
    answered = harness_correct = 0
    guesses = random.Random(0)
    for k in keys:
        options = (choices or {}).get(k) or []
        gold = LETTERS.find(references[k][0].strip().strip("()").upper()) if references[k] else -1
        if not options:  # no choice list: the letter, or the gold text itself
            options = [""] * max(gold + 1, 1)
            if 0 <= gold < len(options) and len(references[k]) > 1:
                options[gold] = references[k][1]
        picked = extract_choice(predictions[k], options)
        answered += picked is not None
        per_clip[k] = {"accuracy": float(picked is not None and picked == gold)}
        harness = lmms_eval_letter(predictions[k], len(options))
        if harness is None:  # lmms-eval guesses a letter at random here: seeded, and only in the corpus number
            harness = guesses.choice(LETTERS[: len(options)])
        else:
            per_clip[k][HARNESS_ACCURACY] = float(LETTERS.index(harness) == gold)
        harness_correct += LETTERS.index(harness) == gold
    n = max(len(keys), 1)
    return ({"accuracy": sum(v["accuracy"] for v in per_clip.values()) / n, "answered": answered / n,
             HARNESS_ACCURACY: harness_correct / n}, per_clip)


# Corpus metrics that are the mean of their per-clip values, so the standard error of that mean says how far a
# difference between two models is from noise (pycocoevalcap's CIDEr-D averages its per-clip scores). WER is a
# corpus ratio and BLEU/METEOR corpus-level statistics: no per-clip mean stands for them.
MEAN_OVER_CLIPS = ("accuracy", "CIDEr-D")


def standard_errors(rows: Sequence[dict]) -> dict[str, float]:
    """The standard error of each ``MEAN_OVER_CLIPS`` metric over the per-clip ``scores`` of ``rows`` (two or more)."""
    import statistics

    errors = {}
    for metric in MEAN_OVER_CLIPS:
        values = [row["scores"][metric] for row in rows if metric in row.get("scores", {})]
        if len(values) >= 2 and len(values) == len(rows):
            errors[metric] = statistics.stdev(values) / math.sqrt(len(values))
    return errors


BOOTSTRAP_RESAMPLES = 1000


def _clip_values(rows: Sequence[dict], metric: str, normalizer: str) -> tuple[list[float], list[float]] | None:
    """Per clip, (numerator, denominator) whose sums give the corpus metric: WER's word errors over reference words
    (the reference normalised as WER normalises it), a mean-over-clips metric's value over 1; None when a row lacks
    it."""
    if any(metric not in row.get("scores", {}) for row in rows):
        return None
    if metric == "WER":
        normalize = transcript_normalizer(normalizer)
        words = [float(len(normalize(row["references"][0]).split())) for row in rows]
        return [row["scores"]["WER"] * w for row, w in zip(rows, words)], words
    if metric in MEAN_OVER_CLIPS:
        return [float(row["scores"][metric]) for row in rows], [1.0] * len(rows)
    return None


def bootstrap_interval(rows: Sequence[dict], metric: str, baseline: Sequence[dict] | None = None,
                       normalizer: str = "whisper", level: float = 0.95) -> tuple[float, float] | None:
    """A percentile bootstrap interval (seeded: the same rows give the same interval) of the corpus ``metric``
    over ``rows``, or, with ``baseline`` (the same clips in the same order, another model), of the difference
    ``metric(rows) - metric(baseline)``: clips are resampled in pairs, so the interval reflects how the two models
    differ on the same clips. WER is resampled as a corpus ratio (errors over words), not as a mean of clip WERs.
    None when the rows do not carry the metric per clip."""
    import numpy as np

    values = _clip_values(rows, metric, normalizer)
    base = _clip_values(baseline, metric, normalizer) if baseline is not None else None
    if values is None or (baseline is not None and base is None) or len(rows) < 2:
        return None
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(rows), size=(BOOTSTRAP_RESAMPLES, len(rows)))

    def corpus(pair: tuple[list[float], list[float]]) -> np.ndarray:
        top, bottom = np.asarray(pair[0])[picks].sum(1), np.asarray(pair[1])[picks].sum(1)
        return top / np.maximum(bottom, 1e-12)

    samples = corpus(values) - (corpus(base) if base is not None else 0.0)
    low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def breakdown(rows: Sequence[dict], groups: Sequence[Any], n_min: int = 1) -> dict[str, dict[str, float]]:
    """Each ``MEAN_OVER_CLIPS`` metric per group (``groups[i]``: row i's value of a column, e.g. MMAU's task), with
    its ``n``: the per-task and per-difficulty accuracy MMAU's official scorer reports."""
    by_group: dict[str, list[dict]] = {}
    for row, group in zip(rows, groups):
        by_group.setdefault(str(group), []).append(row)
    out = {}
    for group, members in sorted(by_group.items()):
        if len(members) < n_min:
            continue
        values = {"n": float(len(members))}
        for metric in MEAN_OVER_CLIPS:
            scores = [m["scores"][metric] for m in members if metric in m.get("scores", {})]
            if len(scores) == len(members):
                values[metric] = sum(scores) / len(scores)
        out[group] = values
    return out
