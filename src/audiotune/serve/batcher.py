"""Dynamic batching: concurrent requests are grouped into one ``generate`` call, clips of similar length together.

Requests wait in a queue; the worker takes the oldest, then keeps collecting for up to ``max_wait_ms`` or until
``max_batch_size`` requests share its batch key (same adapter). The model runs in one worker thread, so the event
loop keeps accepting requests while a batch generates. If a batch fails, each of its requests is retried alone, so
one bad request fails only itself and never the batch or the server.

Length buckets: when more requests share the key than one batch holds (they queued while the last batch ran), the
batch is the ``max_batch_size`` of them closest in audio length that include the oldest request (so no request
waits behind newer ones for ever), and the rest wait for the next batch. Why: a batch pads every clip's prompt to
its longest (an AF3 clip's audio tokens grow with its length), and with ``--encoder-frames valid`` the encoder runs
over the longest clip's frames for every row, so a 1 s clip batched with a 30 s one costs 30 s of work. Requests
that fit one batch are never split: a second ``generate`` costs more than the padding it saves. The encoder runs
once per batch, over all its clips together (the prefill's forward; decode steps reuse the cache).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .. import profiling
from ..generate import Generation, audio_length
from ..engines import Engine, GenerationRequest

logger = logging.getLogger(__name__)


@dataclass(eq=False)  # compared by identity: a request holds numpy audio
class _Pending:
    request: GenerationRequest
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)
    profile: profiling.Profile | None = field(default_factory=profiling.current)  # the request's, when one collects

    @property
    def length(self) -> int:
        return audio_length(self.request.example)


def length_bucket(pool: list[_Pending], size: int) -> list[_Pending]:
    """The ``size`` requests of ``pool`` (oldest first) closest in audio length that include the oldest, in age
    order: of the windows of ``size`` consecutive requests by length that hold it, the one with the least padding
    to its longest clip."""
    if len(pool) <= size:
        return pool
    by_length = sorted(pool, key=lambda p: p.length)
    lengths = [p.length for p in by_length]
    oldest = next(i for i, p in enumerate(by_length) if p is pool[0])
    starts = range(max(0, oldest - size + 1), min(oldest, len(pool) - size) + 1)
    best = min(starts, key=lambda i: size * lengths[i + size - 1] - sum(lengths[i:i + size]))
    chosen = by_length[best:best + size]
    return [p for p in pool if any(p is c for c in chosen)]


class DynamicBatcher:
    def __init__(self, engine: Engine, max_batch_size: int = 16, max_wait_ms: float = 10.0) -> None:
        self.engine = engine
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.backlog: list[_Pending] = []  # taken from the queue, oldest first, not yet in a batch
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audiotune-generate")
        self.task: asyncio.Task | None = None
        self.batches_run = 0
        self.largest_batch = 0
        self.audio_samples = 0  # the batches' audio, and the same padded to each batch's longest clip: /health's
        self.padded_samples = 0  # audio_padding, what length buckets keep low
        self.busy_seconds = 0.0  # time the model spent on batches: /health's, the model's share of the wall time

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        while not self.queue.empty() or self.backlog:
            await asyncio.sleep(0.01)
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, request: GenerationRequest) -> Generation:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(request, future))
        return await future

    @property
    def audio_padding(self) -> float:
        """The share of the batches' audio that was padding to their longest clip."""
        return 1 - self.audio_samples / self.padded_samples if self.padded_samples else 0.0

    def _drain(self) -> None:
        while not self.queue.empty():
            self.backlog.append(self.queue.get_nowait())

    async def _collect(self) -> list[_Pending]:
        if not self.backlog:
            self.backlog.append(await self.queue.get())
        self._drain()
        key = self.backlog[0].request.batch_key()
        deadline = time.perf_counter() + self.max_wait
        while sum(p.request.batch_key() == key for p in self.backlog) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                self.backlog.append(await asyncio.wait_for(self.queue.get(), timeout=remaining))
            except asyncio.TimeoutError:
                break
        self._drain()  # what queued meanwhile competes for the batch by length; other adapters wait their turn
        batch = length_bucket([p for p in self.backlog if p.request.batch_key() == key], self.max_batch_size)
        self.backlog = [p for p in self.backlog if all(p is not b for b in batch)]
        return batch

    def _run(self, live: list[_Pending]) -> tuple[list[Generation], profiling.Profile | None]:
        """The batch in the model's thread, under a profile of its own when any of its requests is profiled."""
        requests = [p.request for p in live]
        if not any(p.profile is not None for p in live):
            return self.engine.run(requests), None
        with profiling.collecting() as profile:
            return self.engine.run(requests), profile

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.cancelled()]
            if not live:
                continue
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(live))
            lengths = [p.length for p in live]
            self.audio_samples += sum(lengths)
            self.padded_samples += len(lengths) * max(lengths)
            started = time.perf_counter()
            try:
                results, profile = await loop.run_in_executor(self.executor, self._run, live)
                self.busy_seconds += time.perf_counter() - started
                for pending, result in zip(live, results):
                    if pending.profile is not None:
                        pending.profile.add(profiling.BATCHER_WAIT, started - pending.enqueued)
                        pending.profile.merge(profile)
                    if not pending.future.done():
                        pending.future.set_result(result)
            except Exception:  # isolate the failure: retry each request alone
                logger.exception("batch of %d failed; retrying its requests one by one", len(live))
                for pending in live:
                    try:
                        result = (await loop.run_in_executor(self.executor, self.engine.run, [pending.request]))[0]
                        if not pending.future.done():
                            pending.future.set_result(result)
                    except Exception as error:  # noqa: BLE001 - reported to that request only
                        if not pending.future.done():
                            pending.future.set_exception(error)
