"""OpenAI's audio API (``/v1/audio/transcriptions``, ``/v1/audio/translations``) on any family's chat model.

Why: ASR users and their tools (Open WebUI, voice agents, ``client.audio.transcriptions.create``) speak this API,
not chat completions. A request becomes one conversation per window of the clip, each asking the model for its
transcript (or English translation), answered by the same batcher and engine as chat; the windows' answers are
stitched in order, and each window is a segment with its start and end times (``verbose_json``, ``srt``, ``vtt``).
The window is the family's own (AF3, Qwen2-Audio: 30 s), so a long recording is transcribed piece by piece as
the model was trained to hear it. The form fields, formats and events follow OpenAI's API reference
(platform.openai.com/docs/api-reference/audio); what a chat model cannot give is refused by name (word timestamps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio import load_audio
from ..conversation import Example, prompt_messages
from ..engines import GenerationRequest
from ..errors import AudiotuneError, AudioTooLongError
from ..tasks import make_task
from .protocol import ApiError, Limits

FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
TRANSLATE = "Translate the speech into English."


@dataclass
class AudioRequest:
    """A parsed transcription or translation: one generation request per window, and how to answer."""

    task: str  # "transcribe" | "translate"
    model: str
    windows: list[GenerationRequest]
    starts: list[float]
    duration: float
    response_format: str
    language: str | None
    stream: bool


def _field(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is not None and not isinstance(value, str):
        raise ApiError(400, f"{name} must be a text field.", name)
    return value.strip() if isinstance(value, str) and value.strip() else None


async def parse_audio_request(form: Any, task: str, model_names: list[str], rate: int, window_s: float,
                              limits: Limits) -> AudioRequest:
    """The multipart form (``file``, ``model``, ``language``, ``prompt``, ``response_format``, ``temperature``,
    ``timestamp_granularities[]``, ``stream``) as an :class:`AudioRequest`; every problem an :class:`ApiError`."""
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise ApiError(400, "file is required: send the audio as a multipart file field named 'file'.", "file")
    model = _field(form, "model")
    if model not in model_names:
        raise ApiError(404, f"The model {model!r} does not exist on this server; available: {model_names}.",
                       "model", code="model_not_found")
    response_format = _field(form, "response_format") or "json"
    if response_format not in FORMATS:
        raise ApiError(400, f"response_format {response_format!r}: use one of {', '.join(FORMATS)}.",
                       "response_format")
    granularities = [g for g in form.getlist("timestamp_granularities[]") + form.getlist("timestamp_granularities")
                     if isinstance(g, str)]
    if "word" in granularities:
        raise ApiError(400, "timestamp_granularities: word timestamps are not available (the model writes text, "
                            "not token times); 'segment' gives each window's start and end.",
                       "timestamp_granularities")
    temperature = _field(form, "temperature")
    try:
        temperature_value = float(temperature) if temperature is not None else 0.0
    except ValueError:
        raise ApiError(400, "temperature must be a number from 0 to 1.", "temperature") from None
    if not 0.0 <= temperature_value <= 1.0:
        raise ApiError(400, "temperature must be a number from 0 to 1.", "temperature")
    stream = (_field(form, "stream") or "false").lower()
    if stream not in ("true", "false"):
        raise ApiError(400, "stream must be true or false.", "stream")
    if stream == "true" and response_format not in ("json", "text"):
        raise ApiError(400, f"stream: response_format {response_format} cannot be streamed; use json or text.",
                       "stream")
    language = _field(form, "language") if task == "transcribe" else None
    audio = _decode(await upload.read(), upload.filename or "file", rate, limits)
    instruction = make_task("asr").prompt if task == "transcribe" else TRANSLATE  # asr: the task's own prompt
    if language:
        instruction += f" The speech is in the language with ISO-639-1 code {language!r}."
    context = _field(form, "prompt")
    if context:  # OpenAI's prompt: earlier text or spellings to follow, not an instruction
        instruction += f" Context (follow its spelling and style): {context}"
    step = max(int(window_s * rate), 1)
    starts = list(range(0, len(audio), step))
    windows = [GenerationRequest(example=Example(id=f"window {i}", messages=prompt_messages(
                   audio[start:start + step], instruction), references=[""]), model=model,
                   max_tokens=limits.max_tokens, temperature=temperature_value)
               for i, start in enumerate(starts)]
    return AudioRequest(task, model, windows, [s / rate for s in starts], len(audio) / rate, response_format,
                        language, stream == "true")


def _decode(data: bytes, name: str, rate: int, limits: Limits) -> np.ndarray:
    try:
        return load_audio(data, rate, name, max_seconds=limits.max_audio_seconds).astype(np.float32)
    except AudioTooLongError as error:
        seconds = f"{error.seconds:.1f} s" if error.seconds is not None else "too long"
        raise ApiError(400, f"file: audio is {seconds}; this server accepts at most {limits.max_audio_seconds:g} s "
                            "(--max-audio-seconds). Send a shorter file or split it.", "file",
                       code="audio_too_long") from None
    except AudiotuneError as error:
        raise ApiError(400, f"file: {error}", "file", code="invalid_audio") from None


def segments(request: AudioRequest, texts: list[str]) -> list[dict[str, Any]]:
    """One segment per window: its id, start and end in seconds, and its text."""
    ends = request.starts[1:] + [request.duration]
    return [{"id": i, "seek": int(start * 100), "start": round(start, 3), "end": round(end, 3), "text": text}
            for i, (start, end, text) in enumerate(zip(request.starts, ends, texts))]


def _clock(seconds: float, separator: str) -> str:
    millis = int(round(seconds * 1000))
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"


def render(request: AudioRequest, texts: list[str]) -> tuple[Any, str]:
    """(the body, its media type) in the request's ``response_format``."""
    text = " ".join(t.strip() for t in texts if t.strip())
    parts = segments(request, [t.strip() for t in texts])
    if request.response_format == "json":
        return {"text": text}, "application/json"
    if request.response_format == "text":
        return text + "\n", "text/plain"
    if request.response_format == "verbose_json":
        return {"task": request.task, "language": request.language or "unknown", "duration": round(request.duration,
                3), "text": text, "segments": parts}, "application/json"
    if request.response_format == "srt":
        return "".join(f"{s['id'] + 1}\n{_clock(s['start'], ',')} --> {_clock(s['end'], ',')}\n{s['text']}\n\n"
                       for s in parts), "application/x-subrip"
    return "WEBVTT\n\n" + "".join(f"{_clock(s['start'], '.')} --> {_clock(s['end'], '.')}\n{s['text']}\n\n"
                                  for s in parts), "text/vtt"
