"""The playground's model side (pure: no Gradio here): conversations and the two backends.

A chat is one clip plus turns of text. :func:`conversation` turns a chat history (the Chatbot's
``{"role", "content"}`` messages) into audiotune's one conversation format, the clip in the first
user turn. A backend streams an answer for one model: :class:`LocalBackend` runs the same
:class:`~audiotune.engines.native.NativeEngine` as ``audiotune serve`` (base + named adapters), one
generation at a time behind a lock; :class:`RemoteBackend` sends OpenAI chat-completions requests
with ``input_audio`` parts to a running ``audiotune serve`` or vLLM server and reads its SSE stream.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import encode_audio
from ..conversation import Example
from ..errors import AudiotuneError, ConfigError
from .paths import Root

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatSettings:
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0

    def checked(self) -> "ChatSettings":
        if not 1 <= int(self.max_tokens) <= 4096:
            raise ConfigError(f"max tokens must be from 1 to 4096 (got {self.max_tokens}).")
        if not 0 <= float(self.temperature) <= 2:
            raise ConfigError(f"temperature must be from 0 to 2 (got {self.temperature}).")
        if not 0 < float(self.top_p) <= 1:
            raise ConfigError(f"top-p must be greater than 0 and at most 1 (got {self.top_p}).")
        return ChatSettings(int(self.max_tokens), float(self.temperature), float(self.top_p))


def message_text(content: Any) -> str:
    """The text of a Chatbot message's content (a string, a text part, or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "") if content.get("type", "text") == "text" else ""
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return str(content)


def conversation(history: list[dict[str, Any]], audio: np.ndarray | None,
                 system_prompt: str | None = None) -> list[dict[str, Any]]:
    """Chat messages (``{"role", "content"}``) → audiotune messages, the clip in the first user turn."""
    messages: list[dict[str, Any]] = []
    if system_prompt and system_prompt.strip():
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt.strip()}]})
    placed = False
    for message in history:
        role = message.get("role")
        if role not in ("user", "assistant"):
            continue
        parts: list[dict[str, Any]] = []
        if role == "user" and not placed and audio is not None:
            parts.append({"type": "audio", "audio": audio})
            placed = True
        parts.append({"type": "text", "text": message_text(message.get("content"))})
        messages.append({"role": role, "content": parts})
    if not messages or messages[-1]["role"] != "user":
        raise ConfigError("Type a question first: the last turn must be yours.")
    if audio is None:
        raise ConfigError("Add a clip first: upload an audio file or record one with the microphone.")
    return messages


def parse_adapters(text: str, root: Root) -> dict[str, str]:
    """Adapter lines ``NAME=PATH`` or ``PATH`` (named after its folder), paths confined to the root."""
    adapters: dict[str, str] = {}
    for line in (text or "").replace(",", "\n").splitlines():
        line = line.strip()
        if not line:
            continue
        name, sep, path = line.partition("=")
        if not sep:
            name, path = "", line
        resolved = root.confine(path.strip(), "adapter")
        if not (resolved / "adapter_config.json").exists():
            raise ConfigError(f"adapter {path.strip()!r}: no adapter_config.json in {resolved}; pick a LoRA "
                              "adapter folder (a training run's out folder).")
        name = name.strip() or resolved.name
        if name in adapters:
            raise ConfigError(f"two adapters are named {name!r}; name them with NAME=PATH.")
        adapters[name] = str(resolved)
    return adapters


class LocalBackend:
    """The serve engine in this process: base + adapters loaded once, one generation at a time."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()

    @classmethod
    def load(cls, model: str, adapters: dict[str, str] | None = None, device: str | None = None) -> "LocalBackend":
        from ..engines import open_engine

        return cls(open_engine("transformers", model, adapters, device=device))

    @property
    def sampling_rate(self) -> int:
        return self.engine.family.sampling_rate

    def models(self) -> list[str]:
        return self.engine.model_names()

    def describe(self) -> str:
        return f"local engine: {', '.join(self.models())}"

    def stream(self, model: str, messages: list[dict[str, Any]], settings: ChatSettings) -> Iterator[str]:
        """Yield the answer so far as it grows; the last value is the finished answer."""
        from ..engines import GenerationRequest

        self.engine.check_model(model)
        pieces: queue.Queue = queue.Queue()
        request = GenerationRequest(example=Example(id="playground", messages=messages, references=[""]),
                                    model=model, max_tokens=settings.max_tokens,
                                    temperature=settings.temperature, top_p=settings.top_p,
                                    on_text=lambda delta: pieces.put(("text", delta)))

        def work() -> None:
            try:
                with self.lock:  # the engine switches adapters on one model: one request at a time
                    pieces.put(("done", self.engine.run([request])[0].text))
            except Exception as error:  # noqa: BLE001 - re-raised in the caller's thread
                pieces.put(("error", error))

        threading.Thread(target=work, name="audiotune-ui-generate", daemon=True).start()
        text = ""
        while True:
            kind, value = pieces.get()
            if kind == "text":
                text += value
                yield text
            elif kind == "done":
                yield value
                return
            else:
                raise value


class RemoteBackend:
    """A running OpenAI-compatible server (``audiotune serve``, vLLM): ``/v1/models``, ``/v1/chat/completions``."""

    sampling_rate = 16000  # the clip is sent as a 16 kHz WAV; the server resamples to its model's rate

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 300.0) -> None:
        url = (url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"server URL {url!r}: give an http(s) URL such as http://127.0.0.1:8000.")
        self.base = url if url.endswith("/v1") else url + "/v1"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s
        self._models: list[str] | None = None

    def _error(self, response) -> AudiotuneError:
        try:
            message = response.json()["error"]["message"]
        except Exception:  # noqa: BLE001 - any body: show what came back
            message = response.text[:300]
        return AudiotuneError(f"{self.base}: HTTP {response.status_code}: {message}")

    def models(self) -> list[str]:
        import httpx

        if self._models is None:
            try:
                response = httpx.get(f"{self.base}/models", headers=self.headers, timeout=10)
            except httpx.HTTPError as error:
                raise AudiotuneError(f"cannot reach {self.base}: {error}. Is the server running?") from None
            if response.status_code != 200:
                raise self._error(response)
            self._models = [m["id"] for m in response.json().get("data", [])]
        return list(self._models)

    def describe(self) -> str:
        return f"server {self.base}: {', '.join(self.models())}"

    @staticmethod
    def openai_messages(messages: list[dict[str, Any]], rate: int) -> list[dict[str, Any]]:
        """audiotune messages → OpenAI chat messages with ``input_audio`` (base64 WAV) parts."""
        out = []
        for message in messages:
            parts = []
            for part in message["content"]:
                if part.get("type") == "audio":
                    data = base64.b64encode(encode_audio(np.asarray(part["audio"], dtype=np.float32), rate)).decode()
                    parts.append({"type": "input_audio", "input_audio": {"data": data, "format": "wav"}})
                else:
                    parts.append({"type": "text", "text": part.get("text", "")})
            out.append({"role": message["role"], "content": parts})
        return out

    def stream(self, model: str, messages: list[dict[str, Any]], settings: ChatSettings) -> Iterator[str]:
        import httpx

        body = {"model": model, "messages": self.openai_messages(messages, self.sampling_rate), "stream": True,
                "max_tokens": settings.max_tokens, "temperature": settings.temperature, "top_p": settings.top_p}
        text = ""
        try:
            with httpx.stream("POST", f"{self.base}/chat/completions", json=body, headers=self.headers,
                              timeout=self.timeout_s) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._error(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line.removeprefix("data:").strip()
                    if payload == "[DONE]":
                        break
                    chunk = json.loads(payload)
                    if "error" in chunk:
                        raise AudiotuneError(f"{self.base}: {chunk['error'].get('message', chunk['error'])}")
                    for choice in chunk.get("choices", []):
                        delta = (choice.get("delta") or {}).get("content")
                        if delta:
                            text += delta
                            yield text
        except httpx.HTTPError as error:
            raise AudiotuneError(f"cannot reach {self.base}: {error}. Is the server running?") from None
        yield text


def load_clip(path: str | Path | None, rate: int) -> np.ndarray | None:
    """An uploaded or recorded file (Gradio's own upload folder) decoded like every other clip."""
    if not path:
        return None
    from ..audio import load_audio

    return load_audio(str(path), rate, Path(path).name)
