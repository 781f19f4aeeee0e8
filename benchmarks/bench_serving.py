"""Serving: requests/s and p50/p95 latency at 1, 4 and 16 concurrent clients, dynamic batching vs
one request at a time (the same server with --max-batch-size 1), same model and clips, one run.

Both servers run side by side on 127.0.0.1 and are measured alternately, level by level.
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


def _start(model: Path, batch: int) -> tuple[subprocess.Popen, str]:
    port = _port()
    process = subprocess.Popen([sys.executable, "-m", "audiotune", "serve", "--model", str(model), "--port", str(port),
                                "--max-batch-size", str(batch), "--served-name", "tiny"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
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
        response.raise_for_status()
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, bodies))
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"rps": len(bodies) / wall, "p50": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]}


def run(requests: int = 32, levels: tuple[int, ...] = (1, 4, 16)) -> dict:
    from audiotune.models.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny("af3", Path(tmp) / "tiny")
        single, single_url = _start(model, 1)
        batched, batched_url = _start(model, 16)
        bodies = _bodies(requests)
        try:
            _load(batched_url, bodies[:4], 4)  # warm-up both
            _load(single_url, bodies[:4], 4)
            results = {}
            for level in levels:
                results[level] = {"one at a time": _load(single_url, bodies, level),
                                  "dynamic batching": _load(batched_url, bodies, level)}
        finally:
            for process in (single, batched):
                process.terminate()
                process.wait(timeout=60)
    return {"requests": requests, "levels": results}
