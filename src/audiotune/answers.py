"""Reading answers: the one home for how a model's text is read before it is scored or rewarded.

Why its own module: tasks (building prompts and references), metrics (scoring) and rewards (RL) all read answers
the same way, and each used to keep a piece of it, importing the others in a loop. Here: the answer span of a
completion (``<answer>`` tags), the choice a free-text answer picks, the letter lmms-eval's MMAU scorer reads,
and the text normalisers WER and answer matching compare after.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable

from .errors import ConfigError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
# "(B)", "B", "B." or "B: dog" at the start; a bare "A dog" is the article, not a letter.
_LEADING_LETTER = re.compile(r"^(?:\(([A-Za-z])\)|([A-Za-z])(?:[.:)\]]|$))")
_STATED_LETTER = re.compile(r"(?i:answer|option|choice)\s*(?:is|:)?\s*\(?([A-Z])\)?(?![A-Za-z])")


def answer_span(text: str) -> str:
    """The part of a completion that holds the answer: the last ``<answer>…</answer>`` if any, else all of it."""
    tags = _ANSWER_TAG.findall(text or "")
    return (tags[-1] if tags else (text or "")).strip()


def extract_choice(text: str, choices: list[str] | tuple[str, ...]) -> int | None:
    """Which of ``choices`` a free-text answer picks (0-based), or ``None`` when it picks none or is ambiguous.

    Robust to the ways models answer: a letter (``B``, ``(B)``, ``B.``, ``B) dog``), a sentence stating it
    (``The answer is B``), the choice's text (normalised), all of which may sit inside ``<answer>`` tags.
    """
    span = answer_span(text)
    if not span or not choices:
        return None
    n = len(choices)
    letter = _LEADING_LETTER.match(span)
    if letter and 0 <= LETTERS.find((letter.group(1) or letter.group(2)).upper()) < n:
        return LETTERS.index((letter.group(1) or letter.group(2)).upper())
    stated = _STATED_LETTER.search(span)
    if stated and 0 <= LETTERS.find(stated.group(1)) < n:
        return LETTERS.index(stated.group(1).upper())
    said = normalize_answer(span)
    normalised = [normalize_answer(c) for c in choices]
    exact = [i for i, c in enumerate(normalised) if c and c == said]
    if len(exact) == 1:
        return exact[0]
    contained = [i for i, c in enumerate(normalised) if c and f" {c} " in f" {said} "]
    # "a dog barking" names choice "dog barking"; a sentence naming two choices picks neither
    contained = [i for i in contained if not any(j != i and normalised[i] in normalised[j] for j in contained)]
    return contained[0] if len(contained) == 1 else None


_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_transcript(text: str) -> str:
    """NFKC, lower case, punctuation removed, whitespace collapsed: ``--asr-normalizer simple`` (WER's rule before
    Whisper's), and the first step of the classify/qa answer normalisation."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _PUNCTUATION.sub(" ", text)
    return " ".join(text.split())


def normalize_answer(text: str) -> str:
    """Answer normalisation for classify/qa: lower case, no punctuation or articles, single spaces."""
    text = normalize_transcript(text)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


ASR_NORMALIZERS = {
    "whisper": "Whisper's English normaliser: numbers as digits, British spellings made American, contractions and "
               "titles spelled out, fillers (uh, um) dropped, punctuation removed, lower case",
    "whisper-basic": "Whisper's language-independent normaliser: lower case, symbols and punctuation removed "
                     "(for languages other than English)",
    "simple": "NFKC, lower case, punctuation removed (audiotune's rule before the Whisper normaliser)",
}


def transcript_normalizer(name: str = "whisper") -> Callable[[str], str]:
    """The text normalisation WER and CER compare after (``ASR_NORMALIZERS``).

    Why Whisper's by default: lmms-eval's LibriSpeech task (``lmms_eval/tasks/librispeech/utils.py``
    ``compute_wer``) scores English with Whisper's ``EnglishTextNormalizer``, and so do the Whisper-era ASR
    leaderboards; a WER computed after plain lower-casing is not comparable with any of them. The normalisers come
    from the maintained ``whisper-normalizer`` package (OpenAI Whisper's code with its spelling map), not a copy.
    """
    if name == "simple":
        return normalize_transcript
    if name == "whisper":
        from whisper_normalizer.english import EnglishTextNormalizer

        english = EnglishTextNormalizer()
        return lambda text: " ".join(english(text).split())
    if name == "whisper-basic":
        from whisper_normalizer.basic import BasicTextNormalizer

        basic = BasicTextNormalizer()
        return lambda text: " ".join(basic(text).split())
    raise ConfigError(f"--asr-normalizer {name!r}: choose one of {', '.join(ASR_NORMALIZERS)}.")


def lmms_eval_letter(text: str, n_choices: int) -> str | None:
    """The letter lmms-eval's MMAU scorer reads from an answer, or None where it would pick one at random.

    The rules of ``parse_multi_choice_response`` in EvolvingLMMs-Lab/lmms-eval ``lmms_eval/tasks/mmau/utils.py``,
    restated: strip , . ! ? ; : ' from the ends (one character kind after another); take the letters written
    ``(X)``; failing that, those standing alone (`` X ``); failing that, those followed by a period (``X.``);
    of several, the one standing alone last. Why mirror it: a published MMAU number is this harness's number, and
    our strict accuracy (an unreadable answer is wrong) is not comparable with it.
    """
    for mark in ",.!?;:'":
        text = text.strip(mark)
    padded = f" {text} "
    letters = LETTERS[:n_choices]
    found = ([x for x in letters if f"({x})" in padded] or [x for x in letters if f" {x} " in padded]
             or [x for x in letters if f"{x}." in padded])
    if len(found) > 1:
        last = [padded.rfind(f" {x} ") for x in found]
        return found[last.index(max(last))]
    return found[0] if found else None
