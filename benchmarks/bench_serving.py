"""Serving: requests/s and p50/p95 latency at 1, 4, 16 and 64 concurrent clients: audiotune one request at a time
(--max-batch-size 1), audiotune with dynamic batching (whole 30 s encoder windows, the default, and
``--encoder-frames valid``), and vLLM (`--backend vllm`, when `make vllm-env` was run); same model and clips, one run.

The servers run side by side on 127.0.0.1 and are measured alternately, level by level, in three passes that each
start with another server; a ratio is req/s against one at a time in the same pass, reported as the median and the
min–max over the passes. Every level of every pass sends clips no server has seen before (its own seed; the
warm-up has its own too), as real traffic does: vLLM caches a clip's processed audio (and shares prompt prefixes),
so repeating clips would measure its cache. A last row per pass sends that pass's first clips again, labelled as
repeats, and vLLM's own counters give its multimodal and prefix cache hit rates for the distinct levels and for the
repeats.
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


def _start(model: Path, batch: int, *extra: str) -> tuple[subprocess.Popen, str]:
    port = _port()
    log = model.parent / f"serve-{port}.log"
    process = subprocess.Popen([sys.executable, "-m", "audiotune", "serve", "--model", str(model), "--port", str(port),
                                "--max-batch-size", str(batch), "--served-name", "tiny", *extra],
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


def _bodies(n: int, seed: int = 11) -> list[dict]:
    """``n`` requests, each with its own clip; another ``seed`` gives other clips."""
    from audiotune.data.synthetic import make_clip

    bodies = []
    for i in range(n):
        clip = make_clip(i, seed=seed, max_seconds=6.0)
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


def _vllm_cache_counters(url: str) -> dict[str, float]:
    """vLLM's cumulative cache counters from its Prometheus ``/metrics`` (vllm/v1/metrics/loggers.py names)."""
    names = ("vllm:mm_cache_queries", "vllm:mm_cache_hits", "vllm:prefix_cache_queries", "vllm:prefix_cache_hits")
    totals = dict.fromkeys(names, 0.0)
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0].removesuffix("_total")
        if name in totals and not line.startswith("#"):
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def run(requests: int = 64, passes: int = 3, levels: tuple[int, ...] = (1, 4, 16, 64)) -> dict:
    """Each level ``passes`` times, the servers alternated (each pass starts with another); every pass and level
    sends its own clips (the same to every server: each sees a clip once). A level sends ``requests`` requests, or
    twice its clients where that is more (each client then sends more than one). Returns req/s, p50 and p95 per
    pass, and per server and level the median and min–max over the passes of req/s and of its ratio against one at
    a time in the same pass."""
    from audiotune.models.tiny import build_tiny

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny("af3", Path(tmp) / "tiny")
        single, single_url = _start(model, 1)
        batched, batched_url = _start(model, 16)
        valid, valid_url = _start(model, 16, "--encoder-frames", "valid")
        vllm, vllm_url = _start_vllm(model)
        servers = {"one at a time": single_url, "dynamic batching": batched_url,
                   "dynamic batching, valid frames": valid_url}
        if vllm_url:
            servers["vLLM"] = vllm_url
        warm_up = _bodies(4, seed=10)
        top = levels[-1]
        rows = [*levels, f"{top} (repeated clips)"]
        runs: dict = {row: {name: [] for name in servers} for row in rows}
        cache: dict[str, dict] = {}
        seed = 11
        try:
            for url in servers.values():
                _load(url, warm_up, 4)
            for number in range(passes):
                order = list(servers)[number % len(servers):] + list(servers)[:number % len(servers)]
                first = None
                for level in levels:
                    bodies = _bodies(max(requests, 2 * level), seed=seed)  # no clip seen twice
                    seed += 1
                    first = first or bodies
                    start = _vllm_cache_counters(vllm_url) if vllm_url else None
                    for name in order:
                        runs[level][name].append(_load(servers[name], bodies, level))
                    if vllm_url:
                        _add_hits(cache, "distinct clips", start, _vllm_cache_counters(vllm_url))
                # the same load again with this pass's first clips: what repeats are worth
                start = _vllm_cache_counters(vllm_url) if vllm_url else None
                for name in order:
                    runs[rows[-1]][name].append(_load(servers[name], first, top))
                if vllm_url:
                    _add_hits(cache, "repeated clips", start, _vllm_cache_counters(vllm_url))
        finally:
            for process in (single, batched, valid):
                process.terminate()
                process.wait(timeout=60)
            if vllm:
                vllm.stop()
    levels_out = {}
    for row, by_name in runs.items():
        base = [r["rps"] for r in by_name["one at a time"]]
        levels_out[row] = {name: {"rps": _spread([r["rps"] for r in results]),
                                  "p50": statistics.median(r["p50"] for r in results),
                                  "p95": statistics.median(r["p95"] for r in results),
                                  "ratio": _spread([r["rps"] / b for r, b in zip(results, base)])}
                           for name, results in by_name.items()}
    hits = {kind: {name: counts[f"{name}_hits"] / counts[f"{name}_queries"] if counts[f"{name}_queries"] else None
                   for name in ("mm", "prefix")} for kind, counts in cache.items()}
    return {"requests": requests, "passes": passes, "levels": levels_out, "vllm_cache": hits}


def _add_hits(cache: dict, kind: str, before: dict[str, float], after: dict[str, float]) -> None:
    """Add the cache queries and hits between two readings of vLLM's counters to ``cache[kind]``."""
    counts = cache.setdefault(kind, {"mm_queries": 0.0, "mm_hits": 0.0, "prefix_queries": 0.0, "prefix_hits": 0.0})
    for name in ("mm", "prefix"):
        for what in ("queries", "hits"):
            counts[f"{name}_{what}"] += after[f"vllm:{name}_cache_{what}"] - before[f"vllm:{name}_cache_{what}"]
