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
from audiotune.engines.vllm_env import vllm_environment
from audiotune.serve.vllm_server import vllm_command
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
    cfg = ServeConfig.from_flat(model=str(micro_af3), api_key_file=str(key_file), served_name="micro",
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
    assert resolve_api_key(ServeConfig.from_flat(model="m", api_key_file=str(key_file)), {}) == "from-file"
    assert resolve_api_key(ServeConfig.from_flat(model="m"), {"AUDIOTUNE_API_KEY": "from-env"}) == "from-env"
    assert resolve_api_key(ServeConfig.from_flat(model="m", api_key="flag"),
                           {"AUDIOTUNE_API_KEY": "from-env"}) == "flag"
    assert resolve_api_key(ServeConfig.from_flat(model="m", api_key_file=str(key_file)),
                           {"AUDIOTUNE_API_KEY": "from-env"}) == "from-file"
    assert resolve_api_key(ServeConfig.from_flat(model="m"), {}) is None
    with pytest.raises(ConfigError, match="both given"):
        resolve_api_key(ServeConfig.from_flat(model="m", api_key="a", api_key_file=str(key_file)), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_api_key(ServeConfig.from_flat(model="m", api_key_file=str(tmp_path / "empty")), {})
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_api_key(ServeConfig.from_flat(model="m", api_key_file=str(tmp_path / "missing")), {})


def test_vllm_child_gets_the_key_in_its_environment_not_its_command_line(micro_af3, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("vllm-secret-123\n")
    for cfg, environ in ((ServeConfig.from_flat(model=str(micro_af3), api_key="vllm-secret-123"), {}),
                         (ServeConfig.from_flat(model=str(micro_af3), api_key_file=str(key_file)), {}),
                         (ServeConfig.from_flat(model=str(micro_af3)), {"AUDIOTUNE_API_KEY": "vllm-secret-123"})):
        command = vllm_command(cfg, "python")
        assert command[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
        assert not any("vllm-secret-123" in arg for arg in command) and "--api-key" not in command
        assert vllm_environment(resolve_api_key(cfg, environ), environ)["VLLM_API_KEY"] == "vllm-secret-123"
    none = ServeConfig.from_flat(model=str(micro_af3))
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
    from audiotune.conversation import Example, prompt_messages
    from audiotune.serve.batcher import DynamicBatcher
    from audiotune.engines import GenerationRequest
    from audiotune.engines.native import NativeEngine as Engine

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


# --- remote audio cannot reach inside (SSRF) -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def file_server(tmp_path_factory):
    """A plain HTTP server on 127.0.0.1 with a clip, and ``/hop?to=URL`` answering a 302 to URL."""
    import http.server
    from urllib.parse import parse_qs, urlsplit

    folder = tmp_path_factory.mktemp("remote")
    sf.write(folder / "clip.wav", tone(1.0), 16000)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def do_GET(self):  # noqa: N802 (http.server's name)
            parts = urlsplit(self.path)
            if parts.path == "/hop":
                self.send_response(302)
                self.send_header("Location", parse_qs(parts.query)["to"][0])
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def _remote_app(micro_af3, allow_hosts: list[str]):
    from fastapi.testclient import TestClient

    cfg = ServeConfig.from_flat(model=str(micro_af3), served_name="micro", allow_remote_audio=True,
                                remote_audio_allow_hosts=allow_hosts, max_tokens=4)
    return TestClient(build_app(cfg))


def _url_body(url: str) -> dict:
    return {"model": "micro", "temperature": 0, "max_tokens": 3, "messages": [{"role": "user", "content": [
        {"type": "audio_url", "audio_url": {"url": url}}, {"type": "text", "text": "Describe the audio."}]}]}


def test_remote_audio_inside_the_network_is_refused_unless_its_host_is_allowed(micro_af3, file_server):
    clip = f"http://127.0.0.1:{file_server}/clip.wav"
    with _remote_app(micro_af3, []) as client:
        refused = client.post("/v1/chat/completions", json=_url_body(clip))
        assert refused.status_code == 400
        error = refused.json()["error"]
        assert error["code"] == "audio_url_refused" and "a loopback address" in error["message"]
        assert "--remote-audio-allow-hosts 127.0.0.1" in error["message"]
        for inside in ("http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/a.wav", "http://[::1]/a.wav"):
            answer = client.post("/v1/chat/completions", json=_url_body(inside)).json()["error"]
            assert answer["code"] == "audio_url_refused", (inside, answer)
        assert "link-local" in client.post("/v1/chat/completions", json=_url_body(
            "http://169.254.169.254/latest/meta-data/")).json()["error"]["message"]
    with _remote_app(micro_af3, ["127.0.0.1"]) as client:
        assert client.post("/v1/chat/completions", json=_url_body(clip)).status_code == 200
        # An allowed host redirecting to a refused one: every hop is checked (localhost is not on the list).
        hop = f"http://127.0.0.1:{file_server}/hop?to=http://localhost:{file_server}/clip.wav"
        redirected = client.post("/v1/chat/completions", json=_url_body(hop))
        assert redirected.status_code == 400 and redirected.json()["error"]["code"] == "audio_url_refused"
        assert "http://localhost:" in redirected.json()["error"]["message"]
        inside_hop = f"http://127.0.0.1:{file_server}/hop?to=http://127.0.0.1:{file_server}/clip.wav"
        assert client.post("/v1/chat/completions", json=_url_body(inside_hop)).status_code == 200


def test_address_rules():
    from audiotune.serve.remote_audio import refused_rule

    assert [refused_rule(a) for a in ("127.0.0.1", "169.254.169.254", "10.0.0.1", "192.168.1.1", "172.16.0.1",
                                      "::1", "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "224.0.0.1", "100.64.0.1",
                                      "8.8.8.8", "2606:4700:4700::1111")] == [
        "loopback", "link-local", "private", "private", "private", "loopback", "link-local", "loopback",
        "private", "multicast", "not globally routable", None, None]


def test_vllm_remote_audio_needs_the_hosts_and_fetches_only_from_them(micro_af3):
    with pytest.raises(ConfigError, match="--remote-audio-allow-hosts"):
        ServeConfig.from_flat(model=str(micro_af3), backend="vllm", allow_remote_audio=True).validate()
    cfg = ServeConfig.from_flat(model=str(micro_af3), backend="vllm", allow_remote_audio=True,
                                remote_audio_allow_hosts="files.internal,cdn.example.org").validate()
    command = vllm_command(cfg, "python", {}, on_cpu=True)
    at = command.index("--allowed-media-domains")
    assert command[at + 1:at + 3] == ["files.internal", "cdn.example.org"]


# --- a small file must not cost the server gigabytes -----------------------------------------------------------------

def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def test_a_long_clip_in_a_small_file_is_refused_from_its_header(live):
    """10 minutes of 48 kHz stereo silence: 0.1 MB as FLAC, 230 MB as float32 samples. The 400 comes from the header:
    the server (a thread of this process) never holds the samples."""
    base, _ = live
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", 48000, 2, format="FLAC") as handle:
        block = np.zeros((48000 * 60, 2), dtype=np.float32)
        for _ in range(10):
            handle.write(block)
    data = base64.b64encode(buffer.getvalue()).decode()
    assert len(data) < LIMIT  # within the body limit: only the audio limit can refuse it
    body = {"model": "micro", "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": data, "format": "flac"}}]}]}
    peak, stop = [_rss_mb()], threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(_rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        response = httpx.post(f"{base}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    finally:
        stop.set()
        sampler.join()
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "audio_too_long" and "600.0 s" in error["message"] and "at most 2 s" in error["message"]
    assert max(peak) - peak[0] < 100, f"memory rose by {max(peak) - peak[0]:.0f} MB"


def test_a_header_that_states_no_length_is_capped_at_the_limit():
    """A WAV whose header claims an unknown size (streamed writers) still decodes at most the limit plus a second."""
    from audiotune.audio import load_audio
    from audiotune.errors import AudioTooLongError

    buffer = io.BytesIO()
    sf.write(buffer, tone(5.0), 16000, format="WAV", subtype="PCM_16")
    data = bytearray(buffer.getvalue())
    data[4:8] = (0xFFFFFFFF).to_bytes(4, "little")  # RIFF size unknown
    data[40:44] = (0xFFFFFFFF).to_bytes(4, "little")  # data size unknown
    with pytest.raises(AudioTooLongError, match="at most 2 s"):
        load_audio(bytes(data), 16000, "clip", max_seconds=2.0)
    assert len(load_audio(bytes(data), 16000, "clip", max_seconds=6.0)) == 5 * 16000


# --- the key, end to end on the real process ---------------------------------------------------------------------

ENV_KEY = "env-secret-7f3a9c"


def test_a_key_from_the_environment_guards_every_route_and_never_leaks(micro_af3):
    """``audiotune serve`` as users start it, the key in $AUDIOTUNE_API_KEY: every route but /health answers 401
    without it (the API, FastAPI's docs and schema, unknown paths); nothing the server says or logs holds it."""
    import os
    import signal
    import subprocess
    import sys

    port = _free_port()
    env = {**os.environ, "AUDIOTUNE_API_KEY": ENV_KEY}
    process = subprocess.Popen([sys.executable, "-m", "audiotune", "serve", "--model", str(micro_af3), "--port",
                                str(port), "--served-name", "micro", "--max-tokens", "4"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base, bodies = f"http://127.0.0.1:{port}", []
    try:
        deadline = time.time() + 120
        while True:
            assert process.poll() is None and time.time() < deadline, "the server did not start"
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        good = {"Authorization": f"Bearer {ENV_KEY}"}
        routes = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/docs"), ("GET", "/redoc"),
                  ("GET", "/openapi.json"), ("GET", "/no/such/route")]
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ENV_KEY}):
                response = httpx.request(method, f"{base}{path}", headers=headers, json={}, timeout=30)
                assert response.status_code == 401, (method, path, headers)
                bodies.append(response.text)
        assert httpx.get(f"{base}/v1/models", headers=good).status_code == 200
        assert httpx.get(f"{base}/openapi.json", headers=good).status_code == 200
        for body in ({}, {"model": "micro", "messages": "nope"}, _body(_b64(tone(0.5)), max_tokens=2)):
            response = httpx.post(f"{base}/v1/chat/completions", json=body, headers=good, timeout=60)
            bodies.append(response.text)
        assert [b for b in bodies[-3:-1] if '"error"' in b] and '"choices"' in bodies[-1]
    finally:
        process.send_signal(signal.SIGTERM)
        log = process.communicate(timeout=60)[0]
    assert not [b for b in bodies if ENV_KEY in b]
    assert log.strip() and ENV_KEY not in log


def test_a_key_file_open_to_others_gets_the_warning(tmp_path):
    """Checked before the model loads: the real command warns, then stops on the (missing) model."""
    import subprocess
    import sys

    key_file = tmp_path / "api_key"
    key_file.write_text("file-secret-55\n")
    key_file.chmod(0o644)
    done = subprocess.run([sys.executable, "-m", "audiotune", "serve", "--model", str(tmp_path / "no-model"),
                           "--api-key-file", str(key_file)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    flat = "".join(done.stderr.split())  # the log is wrapped to the terminal's width
    assert "".join(f"{key_file} is open to other users (mode 644): chmod 600 it.".split()) in flat
    assert "file-secret-55" not in done.stderr + done.stdout
    key_file.chmod(0o600)
    private = subprocess.run([sys.executable, "-m", "audiotune", "serve", "--model", str(tmp_path / "no-model"),
                              "--api-key-file", str(key_file)], capture_output=True, text=True, timeout=120)
    assert private.returncode != 0 and "open to other users" not in private.stderr
