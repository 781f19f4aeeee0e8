"""The server's secret and limits: key sources and comparison, the vLLM child's key, body and audio limits,
and one bad request in a batch costing only itself. A real uvicorn on 127.0.0.1 serves the micro AF3 in a thread."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import soundfile as sf

from audiotune.errors import ConfigError
from audiotune.serve.server import ServeConfig, build_app, resolve_api_key
from audiotune.serve.vllm_backend import vllm_command, vllm_environment
from tests.conftest import tone

KEY = "s3cret-key-from-a-file"
LIMIT = 200_000  # bytes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live(micro_af3, tmp_path_factory):
    """(base URL, config): the app behind a real uvicorn, key from a file, a 200 kB body and 2 s audio limit."""
    import uvicorn

    key_file = tmp_path_factory.mktemp("key") / "api_key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    cfg = ServeConfig(model=str(micro_af3), api_key_file=str(key_file), served_name="micro",
                      max_request_mb=LIMIT / 2**20, max_audio_seconds=2.0, max_tokens=8, max_wait_ms=400)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}", port
    server.should_exit = True
    thread.join(timeout=30)


def _b64(wave, rate=16000) -> str:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def _body(audio_b64: str, max_tokens: int = 6) -> dict:
    return {"model": "micro", "temperature": 0, "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": audio_b64, "format": "wav"}},
        {"type": "text", "text": "Describe the audio."}]}]}


AUTH = {"Authorization": f"Bearer {KEY}"}


# --- the key ---------------------------------------------------------------------------------------------------------

def test_key_sources_and_their_precedence(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    assert resolve_api_key(ServeConfig(model="m", api_key_file=str(key_file)), {}) == "from-file"
    assert resolve_api_key(ServeConfig(model="m"), {"AUDIOTUNE_API_KEY": "from-env"}) == "from-env"
    assert resolve_api_key(ServeConfig(model="m", api_key="flag"), {"AUDIOTUNE_API_KEY": "from-env"}) == "flag"
    assert resolve_api_key(ServeConfig(model="m", api_key_file=str(key_file)),
                           {"AUDIOTUNE_API_KEY": "from-env"}) == "from-file"
    assert resolve_api_key(ServeConfig(model="m"), {}) is None
    with pytest.raises(ConfigError, match="both given"):
        resolve_api_key(ServeConfig(model="m", api_key="a", api_key_file=str(key_file)), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_api_key(ServeConfig(model="m", api_key_file=str(tmp_path / "empty")), {})
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_api_key(ServeConfig(model="m", api_key_file=str(tmp_path / "missing")), {})


def test_vllm_child_gets_the_key_in_its_environment_not_its_command_line(micro_af3, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("vllm-secret-123\n")
    for cfg, environ in ((ServeConfig(model=str(micro_af3), api_key="vllm-secret-123"), {}),
                         (ServeConfig(model=str(micro_af3), api_key_file=str(key_file)), {}),
                         (ServeConfig(model=str(micro_af3)), {"AUDIOTUNE_API_KEY": "vllm-secret-123"})):
        command = vllm_command(cfg, "python")
        assert command[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
        assert not any("vllm-secret-123" in arg for arg in command) and "--api-key" not in command
        assert vllm_environment(resolve_api_key(cfg, environ), environ)["VLLM_API_KEY"] == "vllm-secret-123"
    none = ServeConfig(model=str(micro_af3))
    assert "VLLM_API_KEY" not in vllm_environment(resolve_api_key(none, {"PATH": "/bin"}), {"PATH": "/bin"})


def test_only_the_exact_key_is_accepted(live):
    base, _ = live
    assert httpx.get(f"{base}/v1/models", headers=AUTH).status_code == 200
    for header in (None, "Bearer wrong", f"Bearer {KEY[:-1]}", f"Bearer {KEY}x", KEY, f"bearer {KEY}".upper(),
                   b"Bearer \xff\xfe"):
        response = httpx.get(f"{base}/v1/models", headers={} if header is None else {"Authorization": header})
        assert response.status_code == 401, header
        assert response.json()["error"]["code"] == "invalid_api_key"


# --- body and audio limits -------------------------------------------------------------------------------------------

def _read_response(sock: socket.socket, timeout: float = 20.0) -> tuple[int, bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = int(next(line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), rest


def test_declared_oversized_body_is_refused_before_it_is_sent(live):
    _, port = live
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {KEY}\r\nContent-Length: {10 ** 9}\r\n\r\n".encode())
        status, body = _read_response(sock)  # not one byte of the 1 GB body was sent
    assert status == 413 and b"request_too_large" in body and str(LIMIT).encode() in body


def test_chunked_body_is_refused_while_it_streams(live):
    _, port = live
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     + f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"A" * 50_000
        for _ in range(5):  # 250 kB, over the 200 kB limit; the terminating chunk is never sent
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, body = _read_response(sock)
    assert status == 413 and b"request_too_large" in body and b"stopped reading" in body


def test_chunked_body_under_the_limit_is_served(live):
    base, _ = live
    payload = httpx.Request("POST", "/", json=_body(_b64(tone(0.5)))).content

    def pieces():
        yield from (payload[i:i + 4096] for i in range(0, len(payload), 4096))

    response = httpx.post(f"{base}/v1/chat/completions", content=pieces(), timeout=60,
                          headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    declared = httpx.post(f"{base}/v1/chat/completions", json=_body(_b64(tone(0.5))), headers=AUTH, timeout=60)
    assert declared.json()["choices"][0]["message"] == response.json()["choices"][0]["message"]


def test_audio_over_the_limit_names_the_limit(live):
    base, _ = live
    response = httpx.post(f"{base}/v1/chat/completions", json=_body(_b64(tone(3.0))), headers=AUTH, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "audio_too_long" and "3.0 s" in error["message"] and "at most 2 s" in error["message"]
    ok = httpx.post(f"{base}/v1/chat/completions", json=_body(_b64(tone(1.9))), headers=AUTH, timeout=60)
    assert ok.status_code == 200


# --- one bad request in a batch --------------------------------------------------------------------------------------

def test_garbage_audio_in_a_batch_fails_only_itself(live):
    base, _ = live
    waves = [tone(0.6 + 0.1 * i, 300 + 150 * i) for i in range(5)]
    garbage = base64.b64encode(np.random.default_rng(0).integers(0, 256, 6000, dtype=np.uint8).tobytes()).decode()
    bodies = [_body(_b64(w)) for w in waves[:3]] + [_body(garbage)] + [_body(_b64(w)) for w in waves[3:]]

    def ask(body):
        return httpx.post(f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=120)

    alone = [ask(b).json()["choices"][0]["message"]["content"] for i, b in enumerate(bodies) if i != 3]
    before = httpx.get(f"{base}/health").json()["batches_run"]
    with ThreadPoolExecutor(len(bodies)) as pool:  # all inside one 400 ms batching window
        responses = list(pool.map(ask, bodies))
    statuses = [r.status_code for r in responses]
    assert statuses == [200, 200, 200, 400, 200, 200], [r.text for r in responses]
    assert responses[3].json()["error"]["code"] == "invalid_audio"
    together = [r.json()["choices"][0]["message"]["content"] for i, r in enumerate(responses) if i != 3]
    assert together == alone
    health = httpx.get(f"{base}/health").json()
    assert health["largest_batch"] > 1 and health["batches_run"] - before < 5  # the good five were batched


def test_a_request_that_fails_inside_the_model_fails_alone(micro_af3):
    """A request that passed parsing but breaks ``generate`` (a 2-D waveform) costs only itself."""
    from audiotune.data.tasks import Example, prompt_messages
    from audiotune.serve.batcher import DynamicBatcher
    from audiotune.serve.engine import Engine, GenerationRequest

    engine = Engine(str(micro_af3))

    def request(audio):
        return GenerationRequest(Example("r", prompt_messages(audio, "Describe the audio."), [""]),
                                 engine.base_name, max_tokens=5, temperature=0)

    good = [request(tone(0.5 + 0.2 * i, 400 + 100 * i)) for i in range(3)]
    broken = request(np.zeros((2, 8000), dtype=np.float32))
    alone = [engine.run([r])[0].text for r in good]

    async def together():
        batcher = DynamicBatcher(engine, max_batch_size=8, max_wait_ms=200)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(r) for r in [good[0], broken, *good[1:]]),
                                       return_exceptions=True)
        await batcher.stop()
        return results, batcher.largest_batch

    results, largest = asyncio.run(together())
    assert isinstance(results[1], Exception)
    assert [r.text for r in (results[0], results[2], results[3])] == alone
    assert largest == 4  # they did share the batch that failed
