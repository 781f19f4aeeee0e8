"""OpenAI chat-completions requests → audiotune conversations, with OpenAI-style errors.

Audio arrives as ``input_audio`` parts (``{"data": base64, "format"}``, as OpenAI and vLLM take it)
or ``audio_url`` parts: ``data:`` URIs always, ``http(s)`` only when the server allows remote audio
(with a size and time limit), local paths never (a client must not read the server's files).
Every problem becomes an :class:`ApiError` naming the offending field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio import base64_bytes, data_uri_bytes, load_audio
from ..errors import AudioDecodeError, AudiotuneError, AudioTooLongError
from ..conversation import Example
from ..engines import GenerationRequest
from ..profiling import AUDIO_DECODE, stage

AUDIO_FORMATS = {"wav", "mp3", "flac", "ogg"}


class ApiError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type_: str = "invalid_request_error", code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    max_request_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 600.0
    max_tokens: int = 1024
    default_max_tokens: int = 256
    allow_remote_audio: bool = False
    remote_allow_hosts: tuple[str, ...] = ()  # hosts fetched even where they resolve inside (remote_audio.py)
    remote_timeout_s: float = 10.0
    remote_max_bytes: int = 25 * 1024 * 1024
    require_audio: bool = True


def parse_json(body: bytes, limits: Limits) -> dict[str, Any]:
    if len(body) > limits.max_request_bytes:
        raise ApiError(413, f"Request body is {len(body)} bytes; the limit is {limits.max_request_bytes}.",
                       code="request_too_large")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"The body is not valid JSON: {error}.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "The body must be a JSON object.", code="invalid_json")
    return data


def _fetch_remote(url: str, limits: Limits, param: str) -> bytes:
    from .remote_audio import RemoteAudioError, fetch_remote

    try:
        return fetch_remote(url, param, limits.remote_timeout_s, limits.remote_max_bytes, limits.remote_allow_hosts)
    except RemoteAudioError as error:
        raise ApiError(400, str(error), param, code=error.code) from None


def _audio_bytes(part: dict[str, Any], limits: Limits, param: str) -> bytes:
    if part["type"] == "input_audio":
        spec = part.get("input_audio")
        if not isinstance(spec, dict) or not isinstance(spec.get("data"), str):
            raise ApiError(400, f"{param}.input_audio must be {{'data': base64, 'format': ...}}.", param)
        fmt = spec.get("format")
        if fmt is not None and fmt not in AUDIO_FORMATS:
            raise ApiError(400, f"{param}.input_audio.format {fmt!r}: use one of {sorted(AUDIO_FORMATS)}.", param)
        return _b64(spec["data"], f"{param}.input_audio.data")
    spec = part.get("audio_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise ApiError(400, f"{param}.audio_url must be {{'url': ...}}.", param)
    if url.startswith("data:"):
        try:
            return data_uri_bytes(url, f"{param}.audio_url.url")
        except AudioDecodeError as error:
            raise ApiError(400, str(error), param, code="invalid_base64") from None
    if url.startswith(("http://", "https://")):
        if not limits.allow_remote_audio:
            raise ApiError(400, f"{param}: remote audio URLs are disabled on this server; send the audio as "
                                "input_audio or a data: URI (or start the server with --allow-remote-audio).", param)
        return _fetch_remote(url, limits, param)
    raise ApiError(400, f"{param}: audio_url must be a data: URI or an http(s) URL; local paths are not accepted.",
                   param)


def _b64(text: str, param: str) -> bytes:
    try:
        return base64_bytes(text, param)
    except AudioDecodeError as error:
        raise ApiError(400, str(error), param, code="invalid_base64") from None


def _content(message: dict[str, Any], index: int, rate: int, limits: Limits) -> tuple[list[dict[str, Any]], int]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}], 0
    if not isinstance(content, list):
        raise ApiError(400, f"messages[{index}].content must be a string or a list of parts.", f"messages[{index}]")
    parts, n_audio = [], 0
    for j, part in enumerate(content):
        param = f"messages[{index}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"{param}.text must be a string.", param)
            parts.append({"type": "text", "text": part["text"]})
        elif kind in ("input_audio", "audio_url"):
            with stage(AUDIO_DECODE):  # base64 (or a fetch); the container's decoding is timed in load_audio
                data = _audio_bytes(part, limits, param)
            try:  # a clip longer than the limit is refused from its header, before its samples are decoded
                audio = load_audio(data, rate, param, max_seconds=limits.max_audio_seconds)
            except AudioTooLongError as error:
                seconds = f"{error.seconds:.1f} s" if error.seconds is not None else "too long"
                raise ApiError(400, f"{param}: audio is {seconds}; this server accepts at most "
                                    f"{limits.max_audio_seconds:g} s per clip (--max-audio-seconds). Send a "
                                    "shorter clip or split it.", param, code="audio_too_long") from None
            except AudiotuneError as error:
                raise ApiError(400, f"{error}", param, code="invalid_audio") from None
            seconds = len(audio) / rate
            if seconds > limits.max_audio_seconds:  # resampling can add a sample or two
                raise ApiError(400, f"{param}: audio is {seconds:.1f} s; this server accepts at most "
                                    f"{limits.max_audio_seconds:g} s per clip (--max-audio-seconds). Send a "
                                    "shorter clip or split it.", param, code="audio_too_long")
            parts.append({"type": "audio", "audio": audio.astype(np.float32)})
            n_audio += 1
        else:
            raise ApiError(400, f"{param}: unsupported part type {kind!r}; use text, input_audio or audio_url.", param)
    return parts, n_audio


def parse_chat_request(data: dict[str, Any], model_names: list[str], rate: int, limits: Limits) -> tuple[
        GenerationRequest, bool, bool]:
    """(request, stream, include_usage) from a chat-completions body."""
    model = data.get("model")
    if model not in model_names:
        raise ApiError(404, f"The model {model!r} does not exist on this server; available: {model_names}.",
                       "model", code="model_not_found")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list.", "messages")
    converted, n_audio = [], 0
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant", "developer"):
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant.", f"messages[{i}].role")
        parts, audios = _content(message, i, rate, limits)
        n_audio += audios
        converted.append({"role": "system" if role == "developer" else role, "content": parts})
    if converted[-1]["role"] == "assistant":
        raise ApiError(400, "The last message must not be the assistant's.", "messages")
    if limits.require_audio and n_audio == 0:
        raise ApiError(400, "This is an audio model: include an input_audio or audio_url part in a user message.",
                       "messages", code="missing_audio")
    if data.get("n", 1) != 1:
        raise ApiError(400, "Only n=1 is supported.", "n")
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens", limits.default_max_tokens))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= limits.max_tokens:
        raise ApiError(400, f"max_tokens must be an integer from 1 to {limits.max_tokens}.", "max_tokens")
    temperature = _number(data, "temperature", 0.0, 2.0)
    top_p = _number(data, "top_p", 0.0, 1.0)
    if top_p is not None and top_p == 0:
        raise ApiError(400, "top_p must be greater than 0.", "top_p")
    seed = data.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ApiError(400, "seed must be an integer.", "seed")
    stop = data.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "stop must be a string or a list of at most 4 non-empty strings.", "stop")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false.", "stream")
    options = data.get("stream_options") or {}
    example = Example(id="request", messages=converted, references=[""])
    request = GenerationRequest(example=example, model=model, max_tokens=max_tokens, temperature=temperature,
                                top_p=top_p, seed=seed, stop=stop)
    return request, stream, bool(isinstance(options, dict) and options.get("include_usage"))


def _number(data: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = data.get(name)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(400, f"{name} must be a number from {low} to {high}.", name)
    return float(value)
