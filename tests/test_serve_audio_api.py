"""OpenAI's audio API (#26.1) with the official ``openai`` client: every response format, streaming, translations,
adapters by model name, long audio in windows with segment times, and errors in OpenAI's shape.

The server is ``audiotune serve``'s app (the transformers engine, a base and a LoRA that changes answers) on a
loopback port. Each window's text is checked against what chat completions answers for that window alone with
the same prompt, so the stitching is of real answers, in order.
"""

from __future__ import annotations

import base64
import io
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from openai import OpenAI

from audiotune.config import ServeConfig
from audiotune.serve.server import build_app
from audiotune.serve.transcription import TRANSLATE
from tests.conftest import tone
from tests.test_engines import random_adapter  # noqa: F401  (the module fixture: a LoRA that changes answers)

KEY = "audio-api-key"
MAX_TOKENS = 12
RATE = 16000


def _wav(wave: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, RATE, format="WAV")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(micro_af3, random_adapter):  # noqa: F811
    import uvicorn

    from tests.test_serve import _free_port

    port = _free_port()
    app = build_app(ServeConfig.from_flat(model=str(micro_af3), adapters=[f"tuned={random_adapter}"], api_key=KEY,
                                          max_tokens=MAX_TOKENS, max_audio_seconds=90, served_name="micro"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def long_clip():
    """65 s: three 30 s windows of AF3 (0-30, 30-60, 60-65), each a different tone."""
    return np.concatenate([tone(30.0, 300), tone(30.0, 600), tone(5.0, 900)]).astype(np.float32)


def _chat(client, model: str, wave: np.ndarray, prompt: str) -> str:
    audio = base64.b64encode(_wav(wave)).decode()
    reply = client.chat.completions.create(model=model, max_tokens=MAX_TOKENS, temperature=0, messages=[
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                                     {"type": "text", "text": prompt}]}])
    return reply.choices[0].message.content.strip()


def test_every_format_stitches_the_windows_answers_in_order(client, long_clip):
    file = ("long.wav", _wav(long_clip), "audio/wav")
    verbose = client.audio.transcriptions.create(model="micro", file=file, response_format="verbose_json",
                                                 timestamp_granularities=["segment"])
    windows = [long_clip[:30 * RATE], long_clip[30 * RATE:60 * RATE], long_clip[60 * RATE:]]
    alone = [_chat(client, "micro", w, "Transcribe the input speech.") for w in windows]
    assert [(s.start, s.end) for s in verbose.segments] == [(0.0, 30.0), (30.0, 60.0), (60.0, 65.0)]
    assert [s.text for s in verbose.segments] == alone
    assert verbose.duration == 65.0 and verbose.text == " ".join(a for a in alone if a)

    as_json = client.audio.transcriptions.create(model="micro", file=file)
    assert as_json.text == verbose.text
    assert client.audio.transcriptions.create(model="micro", file=file, response_format="text") == verbose.text + "\n"
    srt = client.audio.transcriptions.create(model="micro", file=file, response_format="srt")
    assert srt.startswith("1\n00:00:00,000 --> 00:00:30,000\n" + alone[0] + "\n\n2\n00:00:30,000 --> 00:01:00,000\n")
    assert "3\n00:01:00,000 --> 00:01:05,000\n" + alone[2] in srt
    vtt = client.audio.transcriptions.create(model="micro", file=file, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:30.000\n" + alone[0])


def test_adapters_by_model_name_streaming_and_translations(client):
    wave = tone(2.0, 440)
    file = ("clip.wav", _wav(wave), "audio/wav")
    base = client.audio.transcriptions.create(model="micro", file=file).text
    tuned = client.audio.transcriptions.create(model="tuned", file=file).text
    assert tuned == _chat(client, "tuned", wave, "Transcribe the input speech.") and tuned != base

    events = list(client.audio.transcriptions.create(model="tuned", file=file, stream=True))
    deltas = "".join(e.delta for e in events if e.type == "transcript.text.delta")
    assert events[-1].type == "transcript.text.done" and events[-1].text == tuned
    assert deltas.strip() == tuned

    translated = client.audio.translations.create(model="micro", file=file)
    assert translated.text == _chat(client, "micro", wave, TRANSLATE)


def test_errors_are_openai_errors_and_name_the_field(client, server):
    file = ("clip.wav", _wav(tone(1.0, 440)), "audio/wav")
    with pytest.raises(openai.BadRequestError, match="word timestamps are not available"):
        client.audio.transcriptions.create(model="micro", file=file, response_format="verbose_json",
                                           timestamp_granularities=["word"])
    with pytest.raises(openai.NotFoundError, match="'whisper-1' does not exist on this server"):
        client.audio.transcriptions.create(model="whisper-1", file=file)
    with pytest.raises(openai.BadRequestError, match="response_format 'tsv'"):
        client.audio.transcriptions.create(model="micro", file=file, response_format="tsv")
    with pytest.raises(openai.BadRequestError, match="file: .*no samples|file: .*not"):
        client.audio.transcriptions.create(model="micro", file=("empty.wav", b"RIFF", "audio/wav"))
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).audio.transcriptions.create(
            model="micro", file=file)
    no_file = httpx.post(f"{server}/v1/audio/transcriptions", data={"model": "micro"},
                         headers={"Authorization": f"Bearer {KEY}"})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"
    assert client.audio.transcriptions.create(model="micro", file=file).text is not None  # still serving
