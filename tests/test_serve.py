"""The OpenAI-compatible server, live on 127.0.0.1, driven by the official ``openai`` client."""

from __future__ import annotations

import base64
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import soundfile as sf
from openai import APIStatusError, OpenAI

from benchmarks.soak_harness import wait_until_healthy
from audiotune.generate import GenerationSettings, examples_from_audio, generate
from audiotune.models.loading import load_model, load_processor
from tests.conftest import tone

pytestmark = pytest.mark.slow
KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model, *extra) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "audiotune", "serve", "--model", str(model), "--port", str(port),
                                *map(str, extra)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(process, base, 120, lambda: process.stderr.read()[-3000:])
    return process, base


@pytest.fixture(scope="module")
def server(tiny_af3, trained_adapter):
    process, base = _start(tiny_af3, "--adapter", f"tuned={trained_adapter}", "--api-key", KEY,
                           "--max-audio-seconds", "5", "--max-request-mb", "1", "--max-tokens", "64",
                           "--served-name", "base")
    yield base
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def _b64(wave, rate=16000) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def _messages(wave, text="Describe the audio.", part="input_audio"):
    audio = ({"type": "input_audio", "input_audio": {"data": _b64(wave), "format": "wav"}} if part == "input_audio"
             else {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64," + _b64(wave)}})
    return [{"role": "user", "content": [audio, {"type": "text", "text": text}]}]


def test_caption_with_input_audio_matches_local_generation(client, tiny_af3, trained_adapter, family):
    wave = tone(2.0, 220)
    response = client.chat.completions.create(model="tuned", messages=_messages(wave), temperature=0, max_tokens=24)
    answer = response.choices[0].message.content
    model, _ = load_model(tiny_af3, adapter=trained_adapter)
    local = generate(model, load_processor(trained_adapter), family, examples_from_audio([wave], "Describe the audio."),
                     settings=GenerationSettings(max_new_tokens=24))[0]
    assert answer == local and answer
    assert response.choices[0].finish_reason in ("stop", "length")
    assert response.usage.prompt_tokens > 50  # 2 s of audio alone is 50 placeholder tokens
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    data_uri = client.chat.completions.create(model="tuned", messages=_messages(wave, part="audio_url"),
                                              temperature=0, max_tokens=24)
    assert data_uri.choices[0].message.content == answer


def test_streaming_gives_the_same_text(client):
    messages = _messages(tone(1.5, 880))
    # The random base: its 24 greedy tokens are never cut short by an end of turn, so there is something to stream.
    whole = client.chat.completions.create(model="base", messages=messages, temperature=0, max_tokens=24)
    stream = client.chat.completions.create(model="base", messages=messages, temperature=0, max_tokens=24,
                                            stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(pieces) == whole.choices[0].message.content
    assert len([p for p in pieces if p]) > 1  # really streamed, piece by piece
    assert finish == whole.choices[0].finish_reason and usage.completion_tokens == whole.usage.completion_tokens


def test_stop_strings_and_seeded_sampling(client):
    messages = _messages(tone(2.0, 220))  # the random base writes 24 tokens (the 40-step adapter may stop at ".")
    whole = client.chat.completions.create(model="base", messages=messages, temperature=0, max_tokens=24)
    text = whole.choices[0].message.content
    assert len(text) >= 4, text
    word = text[len(text) // 2:len(text) // 2 + 2]  # a piece from the middle: whatever words the adapter writes
    cut = client.chat.completions.create(model="base", messages=messages, temperature=0, max_tokens=24, stop=[word])
    assert cut.choices[0].message.content == text[: text.index(word)] and cut.choices[0].finish_reason == "stop"
    def sample(seed: int, clip=messages) -> str:
        return client.chat.completions.create(model="base", messages=clip, temperature=1.0, top_p=0.9, seed=seed,
                                              max_tokens=12).choices[0].message.content

    sampled = [sample(7), sample(7)]
    assert sampled[0] == sampled[1]  # the same seed gives the same sample
    others = {sample(seed) for seed in (8, 9, 10)}
    assert sampled[0] not in others and len(others) > 1 and text not in others  # seeds matter: it samples
    # In a batch of other requests (other seeds, other clips) the seeded request still gets its own sample.
    with ThreadPoolExecutor(4) as pool:
        batch = list(pool.map(lambda job: sample(*job), [(7, messages), (8, _messages(tone(1.0, 660))),
                                                         (11, _messages(tone(1.5, 330))), (12, messages)]))
    assert batch[0] == sampled[0]


def test_adapter_chosen_by_name(client):
    assert [m.id for m in client.models.list().data] == ["base", "tuned"]
    messages = _messages(tone(2.0, 220))
    tuned = client.chat.completions.create(model="tuned", messages=messages, temperature=0, max_tokens=16)
    base = client.chat.completions.create(model="base", messages=messages, temperature=0, max_tokens=16)
    assert tuned.choices[0].message.content != base.choices[0].message.content
    assert tuned.model == "tuned" and base.model == "base"


def test_sixteen_concurrent_requests_equal_one_at_a_time(client, server):
    waves = [tone(1.0 + 0.1 * i, 200 + 60 * i) for i in range(16)]

    def ask(wave):
        r = client.chat.completions.create(model="tuned", messages=_messages(wave), temperature=0, max_tokens=12)
        return r.choices[0].message.content

    sequential = [ask(w) for w in waves]
    with ThreadPoolExecutor(16) as pool:
        concurrent = list(pool.map(ask, waves))
    assert concurrent == sequential
    assert httpx.get(f"{server}/health").json()["largest_batch"] > 1  # they really were batched


def test_seeded_sampled_requests_batch_and_reproduce_their_single_answers(client, server):
    """Sampled requests with different temperatures, top-p, seeds and limits share batches with greedy ones, and a
    seeded request answers as it does alone (each row samples from its own seeded generator)."""
    waves = [tone(1.0 + 0.15 * i, 250 + 70 * i) for i in range(8)]
    settings = [dict(temperature=0.6 + 0.1 * i, top_p=0.8 + 0.02 * i, seed=100 + i, max_tokens=8 + i)
                if i % 4 else dict(temperature=0, max_tokens=10) for i in range(8)]

    def ask(i):
        r = client.chat.completions.create(model="tuned", messages=_messages(waves[i]), **settings[i])
        return r.choices[0].message.content

    before = httpx.get(f"{server}/health").json()["batches_run"]
    alone = [ask(i) for i in range(8)]
    between = httpx.get(f"{server}/health").json()["batches_run"]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8)))
    after = httpx.get(f"{server}/health").json()["batches_run"]
    assert together == alone
    assert between - before == 8 and after - between < 8  # alone: one batch each; together: fewer, shared batches


BAD_REQUESTS = [
    ("malformed JSON", b"{not json", 400, "invalid_json"),
    ("bad base64", {"model": "tuned", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "%%%not-base64", "format": "wav"}}]}]}, 400, "invalid_base64"),
    ("bytes that are not audio", {"model": "tuned", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"hello " * 50).decode(),
                                                "format": "wav"}}]}]}, 400, "invalid_audio"),
    ("unknown model", {"model": "gpt-4o", "messages": _messages(tone(0.5))}, 404, "model_not_found"),
    ("missing audio part", {"model": "tuned", "messages": [{"role": "user", "content": "hello"}]}, 400,
     "missing_audio"),
    ("audio too long", {"model": "tuned", "messages": _messages(tone(6.0))}, 400, "audio_too_long"),
    ("max_tokens too large", {"model": "tuned", "messages": _messages(tone(0.5)), "max_tokens": 100000}, 400, None),
    ("n > 1", {"model": "tuned", "messages": _messages(tone(0.5)), "n": 2}, 400, None),
    ("remote URL disabled", {"model": "tuned", "messages": [{"role": "user", "content": [
        {"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:1/a.wav"}}]}]}, 400, None),
    ("local path", {"model": "tuned", "messages": [{"role": "user", "content": [
        {"type": "audio_url", "audio_url": {"url": "/etc/passwd"}}]}]}, 400, None),
    ("body too large", {"model": "tuned", "messages": _messages(tone(40.0))}, 413, "request_too_large"),
]


def _short_answer(client) -> str:
    reply = client.chat.completions.create(model="tuned", messages=_messages(tone(0.5)), temperature=0, max_tokens=4)
    return reply.choices[0].message.content


@pytest.fixture(scope="module")
def short_answer(client) -> str:
    """The answer to one small request, taken before any bad request is sent."""
    return _short_answer(client)


@pytest.mark.parametrize("name, body, status, code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_openai_errors_and_the_server_survives(server, client, short_answer, name, body, status,
                                                                 code):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server}/v1/chat/completions", content=content, timeout=60,
                          headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if code:
        assert error["code"] == code
    assert httpx.get(f"{server}/health").status_code == 200
    assert _short_answer(client) == short_answer  # still serving, and the same answer as before the bad request


def test_api_key_is_required(server):
    wrong = OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(APIStatusError) as caught:
        wrong.models.list()
    assert caught.value.status_code == 401


def test_remote_audio_when_allowed_then_sigterm_finishes_in_flight_requests(tiny_af3, tmp_path):
    import functools
    import http.server

    sf.write(tmp_path / "clip.wav", tone(1.0), 16000)
    (tmp_path / "big.wav").write_bytes(b"\0" * (2 * 1024 * 1024))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    process, base = _start(tiny_af3, "--max-wait-ms", "200", "--served-name", "tiny-af3", "--allow-remote-audio",
                           "--remote-audio-allow-hosts", "127.0.0.1", "--max-request-mb", "1")
    client = OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)
    url = f"http://127.0.0.1:{files.server_address[1]}"
    remote = [{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": f"{url}/clip.wav"}},
                                           {"type": "text", "text": "Describe the audio."}]}]
    fetched = client.chat.completions.create(model="tiny-af3", messages=remote, temperature=0, max_tokens=8)
    local = client.chat.completions.create(model="tiny-af3", messages=_messages(tone(1.0)), temperature=0, max_tokens=8)
    assert fetched.choices[0].message.content == local.choices[0].message.content
    too_big = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={"model": "tiny-af3", "messages": [
        {"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": f"{url}/big.wav"}}]}]})
    assert too_big.status_code == 400 and "larger than" in too_big.json()["error"]["message"]
    missing = httpx.post(f"{base}/v1/chat/completions", timeout=60, json={"model": "tiny-af3", "messages": [
        {"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": f"{url}/nope.wav"}}]}]})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "audio_fetch_failed"
    files.shutdown()
    results: list = []

    def ask():
        try:
            r = client.chat.completions.create(model="tiny-af3", messages=_messages(tone(3.0)), temperature=0,
                                               max_tokens=64)
            results.append(r.choices[0].finish_reason)
        except Exception as error:  # noqa: BLE001 - shown by the assertion below
            results.append(repr(error))

    thread = threading.Thread(target=ask)
    thread.start()
    deadline = time.time() + 30
    while httpx.get(f"{base}/health").json()["in_flight"] < 2 and time.time() < deadline:  # it and this probe
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)  # while the request waits in the batcher's 200 ms window or generates
    thread.join(timeout=120)
    assert results == ["length"]  # answered in full
    # uvicorn finishes its graceful shutdown, then re-raises the signal it caught: exit by SIGTERM, not a crash
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Traceback" not in process.stderr.read()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/health", timeout=2)


def test_a_request_that_sets_nothing_gets_the_servers_generation_settings(micro_af3):
    """serve's --max-new-tokens / --do-sample / --temperature are the defaults of a request that sets none (the same
    GenerationSettings as infer and eval); what a request sets wins."""
    from fastapi.testclient import TestClient

    from audiotune.config import ServeConfig
    from audiotune.serve.server import build_app

    wave = tone(1.0, 330)
    audio = {"type": "input_audio", "input_audio": {"data": _b64(wave), "format": "wav"}}
    messages = [{"role": "user", "content": [audio, {"type": "text", "text": "Describe the audio."}]}]

    def ask(http, **fields):
        reply = http.post("/v1/chat/completions", json={"model": "micro", "messages": messages, **fields})
        assert reply.status_code == 200, reply.text
        assert "server-timing" not in reply.headers  # only with --server-timing
        return reply.json()

    cfg = ServeConfig.from_flat(model=str(micro_af3), served_name="micro", max_new_tokens=3, max_tokens=40)
    with TestClient(build_app(cfg)) as http:
        unset, asked = ask(http), ask(http, max_tokens=12)
    assert unset["usage"]["completion_tokens"] == 3 and unset["choices"][0]["finish_reason"] == "length"
    assert asked["usage"]["completion_tokens"] == 12
    model, family = load_model(micro_af3)
    local = generate(model, load_processor(micro_af3), family, examples_from_audio([wave], "Describe the audio."),
                     settings=GenerationSettings(max_new_tokens=3))
    assert unset["choices"][0]["message"]["content"] == local[0]  # greedy, as infer answers

    sampled = ServeConfig.from_flat(model=str(micro_af3), served_name="micro", max_new_tokens=8, do_sample=True,
                                    temperature=1.5, top_p=0.9)
    with TestClient(build_app(sampled)) as http:
        by_default = ask(http, seed=7)["choices"][0]["message"]["content"]
        explicit = ask(http, seed=7, temperature=1.5, top_p=0.9, max_tokens=8)["choices"][0]["message"]["content"]
        greedy = ask(http, temperature=0, max_tokens=8)["choices"][0]["message"]["content"]
    assert by_default == explicit != greedy  # unset temperature/top_p are the server's, not greedy


def test_length_buckets_batch_similar_clips_and_answers_stay_those_of_one_at_a_time(micro_af3, micro_processor,
                                                                                   family):
    """More requests queued than one batch holds: each batch takes clips of similar length (little audio padding),
    the oldest request always among them, and every answer is the one its request gets alone."""
    import asyncio

    from audiotune.engines import GenerationRequest
    from audiotune.engines.native import NativeEngine
    from audiotune.serve.batcher import DynamicBatcher

    model, _ = load_model(micro_af3)
    engine = NativeEngine.wrap(model, micro_processor, family, name="micro")
    seconds = [0.5, 3.0, 0.6, 2.8, 0.7, 2.6]  # short and long alternate in arrival order
    requests = [GenerationRequest(examples_from_audio([tone(s, 200 + 90 * i)], "Describe the audio.")[0], "micro",
                                  max_tokens=4, temperature=0) for i, s in enumerate(seconds)]
    alone = [engine.run([request])[0].text for request in requests]

    async def queued_then_batched():
        batcher = DynamicBatcher(engine, max_batch_size=3, max_wait_ms=0)
        answers = [asyncio.ensure_future(batcher.submit(request)) for request in requests]
        while batcher.queue.qsize() < len(requests):  # every request waits before the worker starts
            await asyncio.sleep(0)
        batcher.start()
        texts = [result.text for result in await asyncio.gather(*answers)]
        await batcher.stop()
        return texts, batcher

    together, batcher = asyncio.run(queued_then_batched())
    assert together == alone and len(set(alone)) > 1
    # Arrival order would batch short with long clips (over 40% padding); buckets batch the 3 short, then the 3 long.
    assert batcher.batches_run == 2 and batcher.audio_padding < 0.1, batcher.audio_padding


def test_server_timing_adds_up_to_the_request_time(micro_af3):
    """--server-timing: each answer says where its time went, stage by stage, and the stages (exclusive times)
    cover the server's time for the request without counting any of it twice."""
    from fastapi.testclient import TestClient

    from audiotune.config import ServeConfig
    from audiotune.profiling import parse_server_timing
    from audiotune.serve.server import build_app

    body = {"model": "micro", "messages": _messages(tone(1.0, 330)), "max_tokens": 4, "temperature": 0}
    with TestClient(build_app(ServeConfig.from_flat(model=str(micro_af3), served_name="micro",
                                                    server_timing=True))) as http:
        reply = http.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    stages = parse_server_timing(reply.headers["server-timing"])
    total = stages.pop("total")
    assert {"HTTP/JSON", "audio decode", "resample", "waiting in the batcher", "feature extraction", "encoder",
            "projector", "prefill", "decode steps", "detokenisation"} <= set(stages), stages
    assert all(seconds >= 0 for seconds in stages.values())
    assert 0.8 * total <= sum(stages.values()) <= total
