"""Serving: requests/s and p50/p95 latency at 1, 4, 16 and 64 concurrent clients: audiotune one request at a time
(--max-batch-size 1), audiotune with dynamic batching, and vLLM (`--backend vllm`, when `make vllm-env` was run);
same model and clips, one run.

The servers run side by side on 127.0.0.1 and are measured alternately, level by level.
"""

from __future__ import annotations

import base64
import io
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import soundfile as sf


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LOGS: dict[str, Path] = {}  # server URL → its log file, shown when a request fails


def _start(model: Path, batch: int) -> tuple[subprocess.Popen, str]:
    port = _port()
    log = model.parent / f"serve-{port}.log"
    process = subprocess.Popen([sys.executable, "-m", "audiotune", "serve", "--model", str(model), "--port", str(port),
                                "--max-batch-size", str(batch), "--served-name", "tiny"],
                               stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    LOGS[url] = log
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def _bodies(n: int) -> list[dict]:
    from audiotune.data.synthetic import make_clip

    bodies = []
    for i in range(n):
        clip = make_clip(i, seed=11, max_seconds=6.0)
        buffer = io.BytesIO()
        sf.write(buffer, clip.audio, clip.sampling_rate, format="WAV")
        data = base64.b64encode(buffer.getvalue()).decode()
        bodies.append({"model": "tiny", "temperature": 0, "max_tokens": 24, "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}},
            {"type": "text", "text": "Describe the audio."}]}]})
    return bodies


def _load(url: str, bodies: list[dict], concurrency: int) -> dict:
    latencies: list[float] = []

    def one(body):
        start = time.perf_counter()
        response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)
        if response.status_code != 200:
            log = LOGS.get(url)
            tail = log.read_text()[-3000:] if log and log.exists() else "(vLLM: see its log above)"
            raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:500]}\n{tail}")
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, bodies))
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"rps": len(bodies) / wall, "p50": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]}


def _start_vllm(model: Path):
    """vLLM's server on the same checkpoint, or ``None`` where no vLLM environment exists."""
    from audiotune.errors import ConfigError
    from audiotune.serve.server import ServeConfig
    from audiotune.serve.vllm_server import VllmServer

    try:
        server = VllmServer(ServeConfig.from_flat(model=str(model), port=_port(), served_name="tiny",
                                                  max_batch_size=64))
    except ConfigError:
        return None, None
    server.start()
    return server, f"http://127.0.0.1:{server.cfg.port}"


def run(requests: int = 64, levels: tuple[int, ...] = (1, 4, 16, 64)) -> dict:
    from audiotune.models.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny("af3", Path(tmp) / "tiny")
        single, single_url = _start(model, 1)
        batched, batched_url = _start(model, 16)
        vllm, vllm_url = _start_vllm(model)
        servers = {"one at a time": single_url, "dynamic batching": batched_url}
        if vllm_url:
            servers["vLLM"] = vllm_url
        bodies = _bodies(requests)
        try:
            for url in servers.values():  # warm-up
                _load(url, bodies[:4], 4)
            results = {level: {name: _load(url, bodies, level) for name, url in servers.items()} for level in levels}
        finally:
            for process in (single, batched):
                process.terminate()
                process.wait(timeout=60)
            if vllm:
                vllm.stop()
    return {"requests": requests, "levels": results}
