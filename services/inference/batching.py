"""Micro-batching: concurrent requests gathered into one model call, run off the event loop.

One model thread: forward passes never compete with each other for the CPU (torch already uses all the
threads it is given), and requests that arrive while the model is busy queue up and become the next batch.
When recent batches held several requests (concurrent clients), the batcher also waits up to `max_wait_s`
for more to arrive; a lone client is never delayed by that wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from shared.holder import PredictorHolder
from shared.schemas import JobRecord, Prediction, PredictOptions


class ModelNotReady(Exception):
    """No model is loaded yet (the registry has no best model, or loading failed)."""


@dataclass
class _Pending:
    records: list[JobRecord]
    options: PredictOptions
    future: asyncio.Future[tuple[str, list[Prediction]]]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    def __init__(
        self,
        holder: PredictorHolder,
        *,
        max_records: int,
        max_wait_s: float,
        metrics: Any = None,
    ):
        self.holder = holder
        self.max_records = max_records
        self.max_wait_s = max_wait_s
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._last_batch_requests = 1

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(ModelNotReady("service shutting down"))
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, records: list[JobRecord], options: PredictOptions) -> tuple[str, list[Prediction]]:
        """Predictions for `records` and the version of the model that made them."""
        if self.holder.current is None:
            raise ModelNotReady(self.holder.last_error or "no model loaded yet")
        future: asyncio.Future[tuple[str, list[Prediction]]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(records, options, future))
        return await future

    async def _gather(self) -> list[_Pending]:
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        size = len(batch[0].records)
        wait = self.max_wait_s if self._last_batch_requests > 1 else 0.0
        deadline = loop.time() + wait
        while size < self.max_records:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            batch.append(item)
            size += len(item.records)
        return [p for p in batch if not p.future.done()]  # a client that went away needs no answer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            self._last_batch_requests = len(batch)
            predictor = self.holder.current  # one model for the whole batch, even if a reload swaps it now
            started = time.perf_counter()
            try:
                if predictor is None:
                    raise ModelNotReady(self.holder.last_error or "no model loaded yet")
                groups = [(p.records, p.options) for p in batch]
                results = await loop.run_in_executor(self.executor, predictor.predict_groups, groups)
            except Exception as exc:  # answer every waiting request with the error instead of hanging
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            if self.metrics is not None:
                self.metrics.observe_batch(
                    requests=len(batch),
                    records=sum(len(p.records) for p in batch),
                    seconds=time.perf_counter() - started,
                    predictor=predictor,
                )
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result((predictor.version, result))
