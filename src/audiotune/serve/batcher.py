"""Dynamic batching: concurrent requests are grouped into one ``generate`` call.

Requests wait in a queue; the worker takes the first, then keeps collecting for up to
``max_wait_ms`` or until ``max_batch_size`` requests share its batch key (same adapter, compatible
sampling settings). The model runs in one worker thread, so the event loop keeps accepting
requests while a batch generates. If a batch fails, each of its requests is retried alone, so one
bad request fails only itself and never the batch or the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..generate import Generation
from ..engines import Engine, GenerationRequest

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    request: GenerationRequest
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    def __init__(self, engine: Engine, max_batch_size: int = 16, max_wait_ms: float = 10.0) -> None:
        self.engine = engine
        self.max_batch_size = max(1, max_batch_size)
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audiotune-generate")
        self.task: asyncio.Task | None = None
        self.batches_run = 0
        self.largest_batch = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        while not self.queue.empty():
            await asyncio.sleep(0.01)
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=True)

    async def submit(self, request: GenerationRequest) -> Generation:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(request, future))
        return await future

    async def _collect(self) -> list[_Pending]:
        first = await self.queue.get()
        batch, held = [first], []
        key = first.request.batch_key()
        deadline = time.perf_counter() + self.max_wait
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 and self.queue.empty():
                break
            try:
                item = await asyncio.wait_for(self.queue.get(), timeout=max(remaining, 0.0005))
            except asyncio.TimeoutError:
                break
            (batch if item.request.batch_key() == key else held).append(item)
        for item in held:  # other adapters/settings go back for the next batch, in order
            self.queue.put_nowait(item)
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.cancelled()]
            if not live:
                continue
            self.batches_run += 1
            self.largest_batch = max(self.largest_batch, len(live))
            try:
                results = await loop.run_in_executor(self.executor, self.engine.run, [p.request for p in live])
                for pending, result in zip(live, results):
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
