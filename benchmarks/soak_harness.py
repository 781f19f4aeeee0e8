"""A bounded soak of ``audiotune serve`` on loopback: mixed good and malformed requests, memory watched.

Starts the real server (``python -m audiotune serve``, key from a file, small limits) on 127.0.0.1,
sends a fixed number of requests from concurrent clients, one in ``bad_every`` malformed in one of
many ways (bad base64, missing audio, audio over the limit, wrong types, garbage bytes, broken JSON,
an unknown model, a wrong key, oversized bodies declared and chunked), and records each status,
the good requests' latencies and the server's resident memory. Bounded in count and in time: it
stops by itself. Used by ``tests/test_soak.py`` (slow) and ``make soak`` (``benchmarks/soak.py``),
which prints the figures; nothing here prints. It lives beside the benchmarks, not in the package: users of
audiotune never import a load tester.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

SERVED_NAME = "soak"


@dataclass(frozen=True)
class SoakSettings:
    requests: int = 300
    concurrency: int = 32
    bad_every: int = 5  # every fifth request is malformed
    max_tokens: int = 4  # per good request (the server's cap is twice this)
    max_audio_seconds: float = 2.0  # the server's limit; good clips are 0.3-1.2 s
    max_request_kb: int = 256  # the server's body limit
    time_limit_s: float = 300.0  # the whole soak stops here, finished or not
    # Allowed growth of the server's median RSS from the middle third of the requests to the last: the larger of
    # an absolute floor and a fraction of the middle third's median. Medians, not peaks: at 32 clients the peak
    # swings by tens of MB with how many requests happen to share a batch, which is not a leak.
    rss_tolerance_mb: float = 50.0
    rss_tolerance_fraction: float = 0.1
    seed: int = 0


@dataclass
class Outcome:
    index: int
    kind: str  # "good" or the malformation
    expected: int  # the status it should get
    status: int  # 0: no HTTP answer (connection error)
    seconds: float
    detail: str = ""


@dataclass
class SoakReport:
    settings: SoakSettings
    outcomes: list[Outcome]
    wall_s: float
    timed_out: bool
    rss_mb: list[tuple[int, float]] = field(default_factory=list)  # (requests finished, server RSS) samples
    rss_start_mb: float | None = None  # after the server came up, before any request
    rss_end_mb: float | None = None  # after the last request

    def _median(self, low: float, high: float) -> float | None:
        n = self.settings.requests
        values = sorted(rss for done, rss in self.rss_mb if low * n <= done < high * n)
        return values[len(values) // 2] if values else None

    @property
    def rss_middle_third_mb(self) -> float | None:
        """Median RSS while the middle third of the requests finished: after the first third's warm-up."""
        return self._median(1 / 3, 2 / 3)

    @property
    def rss_last_third_mb(self) -> float | None:
        """Median RSS while the last third finished; a leak shows as a higher level than the middle third's."""
        return self._median(2 / 3, 1.0 + 1e-9)

    @property
    def rss_allowed_growth_mb(self) -> float:
        middle = self.rss_middle_third_mb or 0.0
        return max(self.settings.rss_tolerance_mb, self.settings.rss_tolerance_fraction * middle)
    server_log_tail: str = ""

    @property
    def good(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind == "good"]

    @property
    def bad(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.kind != "good"]

    @property
    def rss_growth_mb(self) -> float | None:
        middle, last = self.rss_middle_third_mb, self.rss_last_third_mb
        return None if middle is None or last is None else last - middle

    def latency_ms(self, q: float) -> float:
        values = sorted(o.seconds * 1000 for o in self.good if o.status == 200)
        if not values:
            return math.nan
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]

    def problems(self) -> list[str]:
        """Everything that breaks the soak's promises; empty when it passed."""
        found = []
        if self.timed_out:
            found.append(f"stopped at the {self.settings.time_limit_s:.0f} s limit after {len(self.outcomes)} of "
                         f"{self.settings.requests} requests")
        elif len(self.outcomes) != self.settings.requests:
            found.append(f"{len(self.outcomes)} outcomes for {self.settings.requests} requests")
        for o in self.outcomes:
            if o.status >= 500 or o.status == 0:
                found.append(f"request {o.index} ({o.kind}): {o.status or 'no answer'} {o.detail}")
            elif o.kind == "good" and o.status != 200:
                found.append(f"request {o.index} (good): {o.status} {o.detail}")
            elif o.kind != "good" and not 400 <= o.status < 500:
                found.append(f"request {o.index} ({o.kind}): {o.status}, expected a 4xx")
            elif o.kind != "good" and o.status != o.expected:
                found.append(f"request {o.index} ({o.kind}): {o.status}, expected {o.expected} {o.detail}")
        growth = self.rss_growth_mb
        if growth is not None and growth > self.rss_allowed_growth_mb:
            found.append(f"server RSS grew {growth:.0f} MB after warm-up (median {self.rss_middle_third_mb:.0f} MB in "
                         f"the middle third, {self.rss_last_third_mb:.0f} MB in the last; tolerance "
                         f"{self.rss_allowed_growth_mb:.0f} MB)")
        return found

    def summary(self) -> dict[str, Any]:
        statuses = Counter(o.status for o in self.outcomes)
        by_kind: dict[str, Counter] = {}
        for o in self.outcomes:
            by_kind.setdefault(o.kind, Counter())[o.status] += 1
        return {"requests": len(self.outcomes), "good": len(self.good), "malformed": len(self.bad),
                "concurrency": self.settings.concurrency, "wall_s": round(self.wall_s, 1),
                "requests_per_s": round(len(self.outcomes) / self.wall_s, 1) if self.wall_s else None,
                "statuses": dict(sorted(statuses.items())),
                "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
                "latency_ms_good": {"p50": round(self.latency_ms(0.5), 1), "p95": round(self.latency_ms(0.95), 1)},
                "rss_mb": {"start": _round(self.rss_start_mb), "peak": _round(max((r for _, r in self.rss_mb), default=None)),
                           "middle_third_median": _round(self.rss_middle_third_mb),
                           "last_third_median": _round(self.rss_last_third_mb), "end": _round(self.rss_end_mb),
                           "growth_after_warmup": _round(self.rss_growth_mb),
                           "tolerance": _round(self.rss_allowed_growth_mb)},
                "timed_out": self.timed_out, "problems": self.problems()}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def rss_mb(pid: int) -> float | None:
    """Resident memory of a process (Linux ``/proc``); ``None`` where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _wav_b64(seconds: float, freq: float, rate: int = 16000) -> str:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    buffer = io.BytesIO()
    sf.write(buffer, (0.5 * np.sin(2 * np.pi * freq * t)).astype("float32"), rate, format="WAV")
    return base64.b64encode(buffer.getvalue()).decode()


def _chat(audio_b64: str | None, text: str = "Describe the audio.") -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if audio_b64 is not None:
        content.insert(0, {"type": "input_audio", "input_audio": {"data": audio_b64, "format": "wav"}})
    return [{"role": "user", "content": content}]


# Each malformation: (name, expected status, builder(settings, rng) -> (body bytes or an iterator of chunks, key ok)).
def _bad_requests(settings: SoakSettings, rng: np.random.Generator) -> list[tuple[str, int, Any]]:
    short = _wav_b64(0.5, 440.0)
    too_long = _wav_b64(settings.max_audio_seconds + 1.0, 330.0)

    def body(data: dict[str, Any]) -> bytes:
        return json.dumps(data).encode()

    big = settings.max_request_kb * 1024 + 4096
    return [
        ("bad_base64", 400, lambda: body({"model": SERVED_NAME, "messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "%%%not-base64%%%", "format": "wav"}}]}]})),
        ("missing_audio", 400, lambda: body({"model": SERVED_NAME, "messages": _chat(None)})),
        ("audio_too_long", 400, lambda: body({"model": SERVED_NAME, "messages": _chat(too_long)})),
        ("max_tokens_wrong_type", 400, lambda: body({"model": SERVED_NAME, "messages": _chat(short),
                                                     "max_tokens": "ten"})),
        ("messages_wrong_type", 400, lambda: body({"model": SERVED_NAME, "messages": "hello"})),
        ("temperature_wrong_type", 400, lambda: body({"model": SERVED_NAME, "messages": _chat(short),
                                                      "temperature": "hot"})),
        ("garbage_audio", 400, lambda: body({"model": SERVED_NAME, "messages": _chat(
            base64.b64encode(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()).decode())})),
        ("broken_json", 400, lambda: b'{"model": "soak", "messages": [tru'),
        ("unknown_model", 404, lambda: body({"model": "gpt-4o", "messages": _chat(short)})),
        ("wrong_key", 401, lambda: body({"model": SERVED_NAME, "messages": _chat(short)})),
        ("body_too_large", 413, lambda: body({"model": SERVED_NAME, "messages": _chat("A" * big)})),
        ("chunked_too_large", 413, lambda: _chunks([b'{"model": "soak", "messages": "'] + [b"A" * 65536] *
                                                   (big // 65536 + 1) + [b'"}'])),
    ]


async def _chunks(parts: list[bytes]):
    """A body without a Content-Length: httpx sends it chunked."""
    for part in parts:
        yield part


def _plan(settings: SoakSettings) -> list[tuple[str, int, Any]]:
    """(kind, expected status, body builder) for each request, in sending order."""
    rng = np.random.default_rng(settings.seed)
    bad = _bad_requests(settings, rng)
    plan = []
    for i in range(settings.requests):
        if i % settings.bad_every == settings.bad_every - 1:
            name, status, build = bad[(i // settings.bad_every) % len(bad)]
            plan.append((name, status, build))
        else:
            seconds, freq = float(rng.uniform(0.3, 1.2)), float(rng.uniform(200, 2000))
            tokens = int(rng.integers(1, settings.max_tokens + 1))
            plan.append(("good", 200, (lambda s=seconds, f=freq, n=tokens: json.dumps(
                {"model": SERVED_NAME, "messages": _chat(_wav_b64(s, f)), "temperature": 0,
                 "max_tokens": n}).encode())))
    return plan


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str | Path, settings: SoakSettings, key_file: Path, log_path: Path,
                 startup_timeout_s: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``audiotune serve`` on a free loopback port with the soak's limits; returns (process, base URL)."""
    port = _free_port()
    command = [sys.executable, "-m", "audiotune", "serve", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--api-key-file", str(key_file), "--served-name", SERVED_NAME,
               "--max-audio-seconds", f"{settings.max_audio_seconds:g}",
               "--max-request-mb", f"{settings.max_request_kb / 1024:g}",
               "--max-tokens", str(2 * settings.max_tokens), "--max-batch-size", "16"]
    with log_path.open("w") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_until_healthy(process, base, startup_timeout_s, lambda: log_path.read_text()[-3000:])
    return process, base


def wait_until_healthy(process: subprocess.Popen, base: str, timeout_s: float, output: Callable[[], str]) -> None:
    """Return once ``base``/health answers 200; the child's ``output()`` in the error if it exits or stays silent
    (then it is stopped). Shared with tests/test_serve.py, which starts its servers the same way."""
    import httpx

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {output()}")
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    stop_server(process)
    raise RuntimeError(f"the server did not answer within {timeout_s:.0f} s: {output()}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _drive(base: str, key: str, plan: list, settings: SoakSettings, pid: int,
                 report: SoakReport) -> None:
    import httpx

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(plan)):
        queue.put_nowait(i)
    deadline = time.perf_counter() + settings.time_limit_s

    async def sample_rss() -> None:
        while True:
            value = rss_mb(pid)
            if value is not None:
                report.rss_mb.append((len(report.outcomes), value))
            await asyncio.sleep(0.1)

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            kind, expected, build = plan[i]
            content = build()
            headers = {"Content-Type": "application/json",
                       "Authorization": f"Bearer {'not-the-key' if kind == 'wrong_key' else key}"}
            start = time.perf_counter()
            try:
                response = await http.post(f"{base}/v1/chat/completions", content=content, headers=headers,
                                           timeout=max(1.0, deadline - start))
                status, detail = response.status_code, "" if response.status_code == 200 else response.text[:200]
            except httpx.HTTPError as error:  # a refused body may close the connection mid-upload
                status, detail = 0, f"{type(error).__name__}: {error}"
            report.outcomes.append(Outcome(i, kind, expected, status, time.perf_counter() - start, detail))

    sampler = asyncio.ensure_future(sample_rss())
    limits = httpx.Limits(max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency)
    async with httpx.AsyncClient(limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(settings.concurrency)))
    report.timed_out = len(report.outcomes) < len(plan)
    sampler.cancel()
    report.rss_end_mb = rss_mb(pid)
    if report.rss_end_mb is not None:
        report.rss_mb.append((len(report.outcomes), report.rss_end_mb))


def run_soak(model: str | Path, settings: SoakSettings | None = None, workdir: str | Path | None = None) -> SoakReport:
    """Start a server for ``model``, soak it, stop it; the report says what happened (see ``problems()``)."""
    settings = settings or SoakSettings()
    with tempfile.TemporaryDirectory(prefix="audiotune-soak-") as scratch:
        folder = Path(workdir) if workdir else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(24)
        key_file = folder / "api_key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        log_path = folder / "server.log"
        process, base = start_server(model, settings, key_file, log_path)
        plan = _plan(settings)
        report = SoakReport(settings, [], 0.0, False, rss_start_mb=rss_mb(process.pid))
        start = time.perf_counter()
        try:
            asyncio.run(_drive(base, key, plan, settings, process.pid, report))
        finally:
            report.wall_s = time.perf_counter() - start
            stop_server(process)
            report.server_log_tail = log_path.read_text()[-3000:]
        report.outcomes.sort(key=lambda o: o.index)
        return report
