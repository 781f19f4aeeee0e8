"""``audiotune infer``: answer a prompt for each audio file, where one bad file never costs the good ones.

Files are decoded first (before the model loads, so ``on_bad_file="fail"`` stops at once); a file
that cannot be used (missing, empty, truncated, not audio, NaN samples) becomes an error result
naming it and saying what to do, the good files are generated for in batches, and the results come
back in the order the files were given. Training and evaluation treat bad rows the same way
(skipped and listed); the CLI renders these results and exits non-zero when some failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .audio import AudioLimits, LongAudioPolicy, load_audio
from .config import GenerationSettings
from .errors import AudiotuneError, ConfigError

logger = logging.getLogger(__name__)

ON_BAD_FILE = ("skip", "fail")


@dataclass
class InferResult:
    """The outcome for one file: its ``answer``, or the ``error`` that kept it from being answered."""

    file: str
    answer: str | None = None
    error: str | None = None  # the message: names the file and says what to do
    error_type: str | None = None  # the AudiotuneError subclass, e.g. "AudioDecodeError"

    @property
    def ok(self) -> bool:
        return self.error is None

    def record(self, prompt: str) -> dict[str, Any]:
        """The ``--jsonl`` line: ``{"file", "prompt", "answer"}`` or ``{"file", "prompt", "error", "error_type"}``."""
        if self.ok:
            return {"file": self.file, "prompt": prompt, "answer": self.answer}
        return {"file": self.file, "prompt": prompt, "error": self.error, "error_type": self.error_type}


def decode_files(files: Sequence[str | Path], sampling_rate: int, limits: AudioLimits | None = None,
                 on_bad_file: str = "skip") -> tuple[list[Any], list[InferResult]]:
    """(waveform or ``None`` per file, one result per file with the error filled in for the bad ones)."""
    if on_bad_file not in ON_BAD_FILE:
        raise ConfigError(f"--on-bad-file {on_bad_file!r}: choose skip or fail.")
    audios: list[Any] = []
    results: list[InferResult] = []
    for f in files:
        name = str(f)
        try:
            audios.append(load_audio(f, sampling_rate, name, limits))
            results.append(InferResult(name))
        except AudiotuneError as error:
            if on_bad_file == "fail":
                raise
            logger.debug("skipping %s", error)  # the caller reports it (the CLI: one line per file)
            audios.append(None)
            results.append(InferResult(name, error=str(error), error_type=type(error).__name__))
    return audios, results


def answer_files(engine, files: Sequence[str | Path], prompt: str = "Describe the audio.",
                 system_prompt: str | None = None, max_new_tokens: int | None = None, on_bad_file: str = "skip",
                 on_batch: Callable[[int], None] | None = None, generation: GenerationSettings | None = None,
                 model: str | None = None) -> list[InferResult]:
    """:func:`infer` with an engine already open (a notebook, a test, a long-lived process): ``model`` names its
    base (None) or one of its adapters."""
    audios, results = decode_files(files, engine.family.sampling_rate, _limits(engine.family), on_bad_file)
    return _fill(engine, audios, results, prompt, system_prompt, _settings(generation, max_new_tokens), model,
                 on_batch)


def _settings(generation: GenerationSettings | None, max_new_tokens: int | None) -> GenerationSettings:
    """A copy of ``generation`` (default: :class:`~audiotune.config.GenerationSettings`'s defaults), ``max_new_tokens``
    on top: the caller's settings are never changed."""
    settings = replace(generation) if generation is not None else GenerationSettings()
    if max_new_tokens is not None:
        settings.max_new_tokens = max_new_tokens
    return settings


def infer(files: Sequence[str | Path], model: str, adapter: str | None = None, prompt: str = "Describe the audio.",
          system_prompt: str | None = None, batch_size: int = 16, max_new_tokens: int | None = None,
          on_bad_file: str = "skip", on_batch: Callable[[int], None] | None = None, backend: str = "transformers",
          vllm_python: str | None = None, encoder_frames: str = "window",
          generation: GenerationSettings | None = None) -> list[InferResult]:
    """Answer ``prompt`` for each file; one :class:`InferResult` per file, in the order given.

    ``backend`` names the engine (:mod:`audiotune.engines`): ``transformers`` runs the model in this process,
    ``vllm`` vLLM's offline engine in its own environment. The family is resolved once, here, and handed to it.

    ``on_bad_file="skip"`` (default): a bad file gets an error result and the others are answered;
    ``"fail"``: the first bad file raises its :class:`~audiotune.errors.AudiotuneError` before the
    model loads. The model is not loaded at all when no file is usable.
    """
    from .engines import ONE_ADAPTER, engine_class
    from .models.loading import resolve_family

    opener = engine_class(backend)  # an unknown backend: before any work
    family = resolve_family(model)
    audios, results = decode_files(files, family.sampling_rate, _limits(family), on_bad_file)  # before loading
    if not any(r.ok for r in results):
        return results
    engine = opener(model, {ONE_ADAPTER: str(adapter)} if adapter else None, family=family, batch_size=batch_size,
                    vllm_python=vllm_python, encoder_frames=encoder_frames)
    try:
        return _fill(engine, audios, results, prompt, system_prompt, _settings(generation, max_new_tokens),
                     ONE_ADAPTER if adapter else None, on_batch)
    finally:
        engine.close()


def _limits(family) -> AudioLimits:
    """The family's window and maximum, under the default policy (keep up to the maximum, warn beyond)."""
    return AudioLimits(family.window_seconds, family.max_audio_seconds, LongAudioPolicy.WINDOW)


def _fill(engine, audios: list[Any], results: list[InferResult], prompt: str, system_prompt: str | None,
          settings: GenerationSettings, model: str | None,
          on_batch: Callable[[int], None] | None) -> list[InferResult]:
    """Answer the decoded files (``None`` in ``audios`` marks a bad one) with the engine's ``model``."""
    from .generate import examples_from_audio

    good = [i for i, audio in enumerate(audios) if audio is not None]
    if good:
        examples = examples_from_audio([audios[i] for i in good], prompt, system_prompt,
                                       ids=[results[i].file for i in good])
        for i, text in zip(good, engine.generate(examples, settings, model=model, on_batch=on_batch)):
            results[i].answer = text
    return results
