"""The FastAPI app: OpenAI's ``/v1/chat/completions`` (with SSE streaming), ``/v1/models`` and ``/health``.

Shutdown (SIGTERM/SIGINT through uvicorn): the listening socket closes, so new connections are
refused; requests already in flight finish; new requests on open connections get 503.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from .. import profiling
from .batcher import DynamicBatcher
from ..engines import Engine
from .protocol import ApiError, Limits, parse_chat_request, parse_json
from .transcription import AudioRequest, parse_audio_request, render

logger = logging.getLogger(__name__)


@dataclass
class ServerSettings:
    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    api_key: str | None = None
    limits: Limits = field(default_factory=Limits)
    server_timing: bool = False  # a Server-Timing header on each chat answer (profiling.py; the engine instrumented)


def create_app(engine: Engine, settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    state = {"draining": False, "in_flight": 0}
    batcher = DynamicBatcher(engine, settings.max_batch_size, settings.max_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        state["draining"] = True
        await batcher.stop()

    app = FastAPI(title="audiotune", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_request_bytes)
    app.state.batcher = batcher
    app.state.engine = engine

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception):
        logger.exception("request failed")
        return JSONResponse(ApiError(500, f"Internal error: {type(error).__name__}: {error}",
                                     type_="server_error").body(), status_code=500)

    expected = f"Bearer {settings.api_key}".encode() if settings.api_key is not None else None

    def authorise(request: Request) -> None:
        if expected is None:
            return
        header = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(header, expected):  # constant time: no timing hint of a key's prefix
            raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer KEY'.",
                           type_="authentication_error", code="invalid_api_key")

    @app.middleware("http")
    async def require_key(request: Request, call_next):
        """Every route but ``/health`` (what load balancers probe) needs the key: the API, and FastAPI's own
        ``/docs``, ``/redoc`` and ``/openapi.json``, and paths that do not exist (no hint of what does)."""
        if request.url.path != "/health":
            try:
                authorise(request)
            except ApiError as error:
                return JSONResponse(error.body(), status_code=error.status)
        return await call_next(request)

    @app.get("/health")
    async def health():
        if state["draining"]:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return {"status": "ok", "models": engine.model_names(), "in_flight": state["in_flight"],
                "batches_run": batcher.batches_run, "largest_batch": batcher.largest_batch,
                "audio_padding": round(batcher.audio_padding, 4), "busy_seconds": round(batcher.busy_seconds, 3)}

    @app.get("/v1/models")
    async def models(request: Request):
        authorise(request)
        created = int(time.time())
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "audiotune"}
                                           for name in engine.model_names()]}

    @app.middleware("http")
    async def count_in_flight(request: Request, call_next):
        state["in_flight"] += 1
        try:
            return await call_next(request)
        finally:
            state["in_flight"] -= 1

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorise(request)
        if state["draining"]:
            raise ApiError(503, "The server is shutting down; retry on another replica.", type_="server_error")
        if not settings.server_timing:
            return await chat(request)
        started = time.perf_counter()
        with profiling.collecting() as profile:
            response = await chat(request)
        if not isinstance(response, StreamingResponse):  # a stream's headers leave before its time is known
            response.headers["Server-Timing"] = profile.server_timing(time.perf_counter() - started)
        return response

    async def chat(request: Request):
        with profiling.stage(profiling.HTTP):
            body = parse_json(await request.body(), settings.limits)  # BodyLimit has refused oversized bodies
        generation, stream, include_usage = await asyncio.to_thread(
            parse_chat_request, body, engine.model_names(), engine.family.sampling_rate, settings.limits)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if not stream:
            result = await batcher.submit(generation)
            with profiling.stage(profiling.HTTP):
                return JSONResponse({"id": completion_id, "object": "chat.completion", "created": created,
                                     "model": generation.model,
                                     "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                                                  "finish_reason": result.finish_reason}],
                                     "usage": _usage(result)})
        return StreamingResponse(_stream(batcher, generation, completion_id, created, include_usage),
                                 media_type="text/event-stream")

    async def audio_api(request: Request, task: str):
        """OpenAI's audio API (``transcription.py``): the clip's windows batched like chat, stitched in order."""
        authorise(request)
        if state["draining"]:
            raise ApiError(503, "The server is shutting down; retry on another replica.", type_="server_error")
        try:
            form = await request.form()
        except Exception as error:  # noqa: BLE001 - any malformed multipart body is the client's
            raise ApiError(400, f"The body must be multipart/form-data with a file field: {error}.") from None
        parsed = await parse_audio_request(form, task, engine.model_names(), engine.family.sampling_rate,
                                           engine.family.window_seconds, settings.limits)
        if parsed.stream:
            return StreamingResponse(_stream_audio(batcher, parsed), media_type="text/event-stream")
        results = await asyncio.gather(*(batcher.submit(window) for window in parsed.windows))
        body, media = render(parsed, [r.text for r in results])
        return JSONResponse(body) if media == "application/json" else PlainTextResponse(body, media_type=media)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        return await audio_api(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request):
        return await audio_api(request, "translate")

    return app


class BodyLimit:
    """Pure ASGI middleware: refuse a request body over ``max_bytes`` with 413 before it is read whole.

    A declared ``Content-Length`` over the limit is answered at once, without reading the body; a
    chunked (or under-declared) body is counted as it streams in and refused at the chunk that
    crosses the limit, so a client cannot make the server buffer more than the limit.
    """

    DRAIN_SECONDS = 2.0  # how long a refused body is still read (and dropped) so the client gets the 413
    DRAIN_FACTOR = 4  # ... and at most this many times the limit

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await self._refuse(send, receive, f"Request body is {int(declared)} bytes; the limit is {limit} bytes.")
            return
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge(f"Request body is over {limit} bytes (the limit); stopped reading at {received}.")
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge as error:
            if started:
                raise
            await self._refuse(send, receive, str(error))

    async def _refuse(self, send, receive, message: str) -> None:
        """Send the 413, discard what the client is still sending (bounded), then end the response.

        Closing a socket with unread data makes the kernel reset the connection, and the client may
        lose the answer; like nginx's lingering close, the rest of the body is read and dropped (never
        kept), for at most ``DRAIN_SECONDS`` and ``DRAIN_FACTOR`` times the limit, before closing.
        """
        body = json.dumps(ApiError(413, message, code="request_too_large").body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        budget, deadline = self.DRAIN_FACTOR * self.max_bytes, time.monotonic() + self.DRAIN_SECONDS
        while budget > 0:
            try:
                chunk = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
            if chunk["type"] != "http.request" or not chunk.get("more_body", False):
                break
            budget -= len(chunk.get("body", b""))
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    """Raised from inside ``receive`` when the streamed body crosses the limit."""


async def _stream_audio(batcher: DynamicBatcher, request: AudioRequest) -> AsyncIterator[str]:
    """OpenAI's transcription events: ``transcript.text.delta`` pieces, window after window, then
    ``transcript.text.done`` with the whole text. Every window is submitted at once; later windows' pieces wait
    their turn."""
    loop = asyncio.get_running_loop()
    queues: list[asyncio.Queue[str]] = [asyncio.Queue() for _ in request.windows]
    for queue, window in zip(queues, request.windows):
        window.on_text = lambda text, q=queue: loop.call_soon_threadsafe(q.put_nowait, text)
    tasks = [asyncio.ensure_future(batcher.submit(window)) for window in request.windows]

    def event(body: dict) -> str:
        return f"data: {json.dumps(body)}\n\n"

    texts = []
    try:
        for number, (queue, task) in enumerate(zip(queues, tasks)):
            sent = ""
            lead = " " if number and texts and texts[-1] else ""
            while not (task.done() and queue.empty()):
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    continue
                piece = getter.result()
                if piece:
                    yield event({"type": "transcript.text.delta", "delta": (lead if not sent else "") + piece})
                    sent += piece
            final = task.result().text.strip()
            if final.startswith(sent.strip()) and len(final) > len(sent.strip()):  # what the streamer held back
                yield event({"type": "transcript.text.delta", "delta": (lead if not sent else "") +
                             final[len(sent.strip()):]})
            texts.append(final)
    except Exception as error:  # noqa: BLE001 - reported in-stream, the server stays up
        for task in tasks:
            task.cancel()
        yield event(ApiError(500, str(error), type_="server_error").body())
        yield "data: [DONE]\n\n"
        return
    yield event({"type": "transcript.text.done", "text": " ".join(t for t in texts if t)})
    yield "data: [DONE]\n\n"


def _usage(result) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


async def _stream(batcher: DynamicBatcher, generation, completion_id: str, created: int,
                  include_usage: bool) -> AsyncIterator[str]:
    """SSE chunks in OpenAI's format: role, content deltas, the finish reason, optional usage, [DONE]."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    generation.on_text = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
    task = asyncio.ensure_future(batcher.submit(generation))

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": generation.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    sent = ""
    stopped = False
    while True:
        getter = asyncio.ensure_future(pieces.get())
        done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            text = getter.result()
        else:
            getter.cancel()
            text = ""
            while not pieces.empty():
                text += pieces.get_nowait()
        if text and not stopped:
            candidate = sent + text
            cut = min((candidate.find(s) for s in generation.stop if s in candidate), default=-1)
            if cut >= 0:
                text, stopped = candidate[:cut][len(sent):], True
            if text:
                sent += text
                yield chunk({"content": text})
        if task.done() and pieces.empty():
            break
    try:
        result = task.result()
    except Exception as error:  # noqa: BLE001 - reported in-stream, the server stays up
        yield f"data: {json.dumps(ApiError(500, str(error), type_='server_error').body())}\n\n"
        yield "data: [DONE]\n\n"
        return
    if result.text.startswith(sent) and len(result.text) > len(sent) and not stopped:
        yield chunk({"content": result.text[len(sent):]})  # anything the streamer held back
    yield chunk({}, finish=result.finish_reason)
    if include_usage:
        yield chunk({}, usage=_usage(result), choices=False)
    yield "data: [DONE]\n\n"
