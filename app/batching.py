"""Dynamic batching: requests for one model are gathered into batches and run in the model's device thread.

A :class:`DynamicBatcher` collects submitted items until ``max_batch_size`` are waiting or the first one has
waited ``max_batch_delay_ms``, then calls the batch function once in its executor (one thread per device, so
torch never runs on the event loop and one device runs one batch at a time). Each submitter gets its own
result or its own exception; a failing batch is re-run item by item so that one bad input cannot fail its
neighbours. A submitter that is cancelled (its client went away) leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from app.errors import QueueFullError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

BatchFn = Callable[[list[T]], Sequence["R | BaseException"]]


@dataclass
class BatchStats:
    """Timings of one completed submission: seconds queued, seconds of the batch's compute, its size."""

    queue_s: float = 0.0
    compute_s: float = 0.0
    batch_size: int = 0


@dataclass(eq=False)
class _Entry(Generic[T]):
    item: T
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)


class DynamicBatcher(Generic[T, R]):
    """Gather single requests into batches for one model.

    Args:
        fn: called with a list of at most ``max_batch_size`` items; returns one result per item, where an
            exception instance stands for that item's failure. If it raises, the batch is re-run one item
            at a time so each item gets its own outcome.
        max_batch_size: most items per call.
        max_batch_delay_ms: longest wait for a batch to fill after its first item arrived.
        max_queue: most items waiting (not yet running); more raise :class:`QueueFullError`.
        executor: where ``fn`` runs (the model's device thread); ``None`` uses the loop's default.
        name: for logs and errors.
        retry_after_s: advertised on a full queue.
        on_batch: called in the event loop after each batch with its stats (for metrics).

    Raises:
        ValueError: for a non-positive size, delay or queue bound.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_batch_size: int = 8,
        max_batch_delay_ms: float = 10.0,
        max_queue: int = 64,
        executor: Executor | None = None,
        name: str = "model",
        retry_after_s: int = 1,
        on_batch: Callable[[BatchStats, list[float]], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay_ms must be non-negative, got {max_batch_delay_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_batch_delay_s = float(max_batch_delay_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.executor = executor
        self.name = name
        self.retry_after_s = retry_after_s
        self.on_batch = on_batch
        self._pending: deque[_Entry[T]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches_run = 0
        self.items_run = 0

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return len(self._pending)

    def start(self) -> None:
        """Start the collecting loop in the running event loop."""
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        """Stop collecting and fail everything still waiting."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(QueueFullError(f"{self.name}: service is shutting down"))

    async def submit(self, item: T) -> R:
        """Queue one item and wait for its own result.

        Raises:
            QueueFullError: when ``max_queue`` items are already waiting.
            BaseException: whatever the batch function reported for this item.
        """
        return (await self.submit_with_stats(item))[0]

    async def submit_with_stats(self, item: T) -> tuple[R, BatchStats]:
        """Like :meth:`submit`, also returning the queue and compute seconds and the batch size."""
        if self._task is None or self._wakeup is None:
            raise RuntimeError(f"batcher {self.name} is not started")
        if len(self._pending) >= self.max_queue:
            raise QueueFullError(
                f"{self.name}: {self.max_queue} requests are already waiting; retry shortly", self.retry_after_s
            )
        entry: _Entry[T] = _Entry(item, asyncio.get_running_loop().create_future())
        self._pending.append(entry)
        self._wakeup.set()
        try:
            return await entry.future
        except asyncio.CancelledError:
            # the client went away: free its slot now rather than computing a result nobody reads
            try:
                self._pending.remove(entry)
            except ValueError:
                pass
            raise

    async def _wait_for_items(self) -> None:
        assert self._wakeup is not None
        while not self._pending:
            self._wakeup.clear()
            await self._wakeup.wait()
        deadline = self._pending[0].enqueued + self.max_batch_delay_s
        while len(self._pending) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_items()
            batch: list[_Entry[T]] = []
            while self._pending and len(batch) < self.max_batch_size:
                entry = self._pending.popleft()
                if not entry.future.done():
                    batch.append(entry)
            if not batch:
                continue
            started = time.monotonic()
            queue_times = [started - e.enqueued for e in batch]
            try:
                results = await loop.run_in_executor(self.executor, self._call, [e.item for e in batch])
            except asyncio.CancelledError:
                for e in batch:
                    if not e.future.done():
                        e.future.set_exception(QueueFullError(f"{self.name}: service is shutting down"))
                raise
            compute = time.monotonic() - started
            self.batches_run += 1
            self.items_run += len(batch)
            stats = BatchStats(compute_s=compute, batch_size=len(batch))
            if self.on_batch is not None:
                try:
                    self.on_batch(stats, queue_times)
                except Exception:  # metrics must never break serving
                    logger.exception("batch callback failed")
            for entry, result, q in zip(batch, results, queue_times, strict=True):
                if entry.future.done():
                    continue
                if isinstance(result, BaseException):
                    entry.future.set_exception(result)
                else:
                    entry.future.set_result((result, BatchStats(q, compute, len(batch))))

    def _call(self, items: list[T]) -> list[R | BaseException]:
        """Run the batch; if it fails as a whole, run each item alone so failures stay per item."""
        try:
            results = list(self.fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: batch function returned {len(results)} results for {len(items)}")
            return results
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            logger.warning("%s: batch of %d failed (%s); retrying one by one", self.name, len(items), exc)
        out: list[R | BaseException] = []
        for item in items:
            try:
                (res,) = list(self.fn([item]))
                out.append(res)
            except Exception as exc:
                out.append(exc)
        return out
