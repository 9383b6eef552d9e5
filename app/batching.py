"""Scheduling of a model's work: dynamic batches, the shared decode pool and the outstanding-work ledger.

A :class:`DynamicBatcher` collects submitted items until ``max_batch_size`` are waiting or the first one has
waited ``max_batch_delay_ms``, then calls the batch function once in its executor (the model's own device
thread, so torch never runs on the event loop and one model's long batch never queues another model's). Each
submitter gets its own result or its own exception; a failing batch is re-run item by item so that one bad
input cannot fail its neighbours. A submitter that is cancelled (its client went away) leaves the queue at once.

A :class:`FairPool` is the service's bounded set of decode threads (``prepare`` and ``finish``): however many
clients connect and leave, no more inputs are decoded at once than it has threads, and models take turns.

A :class:`WorkLedger` counts one model's outstanding work (items and bytes) from admission until that work has
really stopped (a thread cannot be killed: a cancelled decode still holds its share until it returns), and
refuses more beyond its bounds with a ``Retry-After`` that grows with the work ahead.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
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
    cost: float = 1.0
    on_release: Callable[[], None] | None = None
    enqueued: float = field(default_factory=time.monotonic)
    released: bool = False

    def release(self) -> None:
        """Call ``on_release`` once: the entry has left the batcher (dropped, or its batch has ended)."""
        if self.released:
            return
        self.released = True
        if self.on_release is not None:
            try:
                self.on_release()
            except Exception:  # accounting must never break serving
                logger.exception("release callback failed")


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
        retry_after_s: advertised on a full queue (``retry_after``, when given, is asked instead).
        on_batch: called in the event loop after each batch with its stats (for metrics).
        max_queue_cost: most total ``cost`` waiting (e.g. bytes of prepared tensors); ``None``: unbounded. An
            item is refused when it would pass the bound, unless nothing waits (a single item larger than the
            bound would otherwise never run).
        retry_after: the ``Retry-After`` seconds of a refusal, asked at refusal time.

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
        max_queue_cost: float | None = None,
        retry_after: Callable[[], int] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay_ms must be non-negative, got {max_batch_delay_ms}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        if max_queue_cost is not None and max_queue_cost <= 0:
            raise ValueError(f"max_queue_cost must be positive, got {max_queue_cost}")
        self.fn = fn
        self.max_batch_size = int(max_batch_size)
        self.max_batch_delay_s = float(max_batch_delay_ms) / 1000.0
        self.max_queue = int(max_queue)
        self.max_queue_cost = max_queue_cost
        self.executor = executor
        self.name = name
        self.retry_after_s = retry_after_s
        self.retry_after = retry_after
        self.on_batch = on_batch
        self._pending: deque[_Entry[T]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.batches_run = 0
        self.items_run = 0
        self.running = 0

    @property
    def queued(self) -> int:
        """Items waiting for a batch."""
        return len(self._pending)

    @property
    def queued_cost(self) -> float:
        """Total cost of the items waiting for a batch."""
        return sum(e.cost for e in self._pending)

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
            entry.release()

    async def submit(self, item: T, *, cost: float = 1.0) -> R:
        """Queue one item and wait for its own result.

        Raises:
            QueueFullError: when ``max_queue`` items (or ``max_queue_cost``) are already waiting.
            BaseException: whatever the batch function reported for this item.
        """
        return (await self.submit_with_stats(item, cost=cost))[0]

    def _full(self, cost: float) -> str | None:
        if len(self._pending) >= self.max_queue:
            return f"{self.max_queue} inputs are already waiting"
        if self.max_queue_cost is not None and self._pending and self.queued_cost + cost > self.max_queue_cost:
            return "the inputs already waiting fill its queue"
        return None

    async def submit_with_stats(
        self, item: T, *, cost: float = 1.0, on_release: Callable[[], None] | None = None
    ) -> tuple[R, BatchStats]:
        """Like :meth:`submit`, also returning the queue and compute seconds and the batch size.

        Args:
            item: the input.
            cost: its share of ``max_queue_cost`` (e.g. the bytes of its tensors).
            on_release: called exactly once when the item has left the batcher for good: refused, dropped from
                the queue (its submitter was cancelled), or its batch has ended (even when its submitter was
                cancelled while the batch ran: the device was busy with it until then).
        """
        entry: _Entry[T] | None = None
        try:
            if self._task is None or self._wakeup is None:
                raise RuntimeError(f"batcher {self.name} is not started")
            reason = self._full(cost)
            if reason is not None:
                retry = self.retry_after() if self.retry_after is not None else self.retry_after_s
                raise QueueFullError(f"{self.name}: {reason}; retry shortly", retry)
            entry = _Entry(item, asyncio.get_running_loop().create_future(), cost, on_release)
            self._pending.append(entry)
            self._wakeup.set()
            return await entry.future
        except BaseException:
            if entry is None:
                if on_release is not None:
                    on_release()
            elif entry in self._pending:
                # the client went away: free its slot now rather than computing a result nobody reads
                self._pending.remove(entry)
                entry.release()
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
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a stop()'s cancellation that
                # arrives as an item wakes it, and the loop would then run on
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                break

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wait_for_items()
            batch: list[_Entry[T]] = []
            while self._pending and len(batch) < self.max_batch_size:
                entry = self._pending.popleft()
                if entry.future.done():
                    entry.release()  # cancelled before its submitter could take it out
                else:
                    batch.append(entry)
            if not batch:
                continue
            started = time.monotonic()
            queue_times = [started - e.enqueued for e in batch]
            self.running = len(batch)
            try:
                results = await loop.run_in_executor(self.executor, self._call, [e.item for e in batch])
            except asyncio.CancelledError:
                for e in batch:
                    if not e.future.done():
                        e.future.set_exception(QueueFullError(f"{self.name}: service is shutting down"))
                    e.release()
                raise
            finally:
                self.running = 0
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
                entry.release()
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
            # the type only: a message may name an input
            logger.warning(
                "%s: batch of %d failed (%s); retrying one by one", self.name, len(items), type(exc).__name__
            )
        out: list[R | BaseException] = []
        for item in items:
            try:
                (res,) = list(self.fn([item]))
                out.append(res)
            except Exception as exc:
                out.append(exc)
        return out


# -- the decode pool -----------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Call:
    key: str
    future: Future[Any]
    fn: Callable[[], Any]
    on_start: Callable[[], None] | None


class FairPool:
    """A fixed number of worker threads shared by every model, taking the models' waiting calls in turn.

    Waiting calls are kept per key (a model) and served round-robin, so a burst of one model's slow decodes
    holds another model's call back by at most one call per busy thread; ``urgent`` calls (``finish``: they
    complete work and free its memory) go before any other. A call that has not started can be cancelled
    through its future; a started one runs to its end (a thread cannot be stopped) and its future completes
    then, which is when whoever waits on the future learns that the thread is free.

    Args:
        workers: threads, i.e. the most calls running at once.
        name: thread name prefix.

    Raises:
        ValueError: for fewer than one worker.
    """

    def __init__(self, workers: int, name: str = "decode") -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = int(workers)
        self.name = name
        self._cond = threading.Condition()
        self._urgent: deque[_Call] = deque()
        self._queues: dict[str, deque[_Call]] = {}
        self._turns: deque[str] = deque()  # keys with waiting calls, next first
        self._threads: list[threading.Thread] = []
        self._busy: dict[str, int] = {}
        self._closed = False
        self.peak = 0  # most calls ever running at once

    @property
    def busy(self) -> int:
        """Calls running now."""
        with self._cond:
            return sum(self._busy.values())

    def busy_for(self, key: str) -> int:
        """Calls of ``key`` running now."""
        with self._cond:
            return self._busy.get(key, 0)

    @property
    def waiting(self) -> int:
        """Calls not started yet (cancelled ones included until a worker drops them)."""
        with self._cond:
            return len(self._urgent) + sum(len(q) for q in self._queues.values())

    def submit(
        self,
        key: str,
        fn: Callable[..., T],
        *args: Any,
        urgent: bool = False,
        on_start: Callable[[], None] | None = None,
    ) -> Future[T]:
        """Queue ``fn(*args)`` for ``key``; ``on_start`` is called in the worker thread just before it runs.

        Raises:
            RuntimeError: after :meth:`shutdown`.
        """
        future: Future[T] = Future()
        call = _Call(key, future, functools.partial(fn, *args), on_start)
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} pool is shut down")
            if urgent:
                self._urgent.append(call)
            else:
                queue = self._queues.get(key)
                if queue is None:
                    queue = self._queues[key] = deque()
                    self._turns.append(key)
                queue.append(call)
            while len(self._threads) < self.workers:
                thread = threading.Thread(
                    target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True
                )  # daemon: a decode that never returns must not keep the process alive at exit
                self._threads.append(thread)
                thread.start()
            self._cond.notify()
        return future

    def _next(self) -> _Call | None:
        if self._urgent:
            return self._urgent.popleft()
        if not self._turns:
            return None
        key = self._turns.popleft()
        queue = self._queues[key]
        call = queue.popleft()
        if queue:
            self._turns.append(key)  # back of the line
        else:
            del self._queues[key]
        return call

    def _work(self) -> None:
        while True:
            with self._cond:
                while (call := self._next()) is None:
                    if self._closed:
                        return
                    self._cond.wait()
            if not call.future.set_running_or_notify_cancel():
                continue  # cancelled while waiting
            with self._cond:
                self._busy[call.key] = self._busy.get(call.key, 0) + 1
                self.peak = max(self.peak, sum(self._busy.values()))
            result: Any = None
            error: BaseException | None = None
            try:
                if call.on_start is not None:
                    call.on_start()
                result = call.fn()
            except BaseException as exc:
                error = exc
            with self._cond:
                self._busy[call.key] -= 1
            if error is not None:
                call.future.set_exception(error)
            else:
                call.future.set_result(result)
            del call, result, error

    def shutdown(self) -> None:
        """Refuse new calls and cancel the waiting ones; running ones end on their own."""
        with self._cond:
            self._closed = True
            waiting = [*self._urgent, *(c for q in self._queues.values() for c in q)]
            self._urgent.clear()
            self._queues.clear()
            self._turns.clear()
            self._cond.notify_all()
        for call in waiting:
            call.future.cancel()


# -- outstanding work ----------------------------------------------------------------------------------------
class Claim:
    """A share of a :class:`WorkLedger` (items, bytes), counted until the last of its holders lets go.

    Whoever made the claim holds it once; every thread or batch that works for it holds it as well
    (:meth:`hold`) and lets go when that work has really ended. A client that goes away thus frees nothing
    until its decodes and its batch have returned. Thread-safe.
    """

    def __init__(self, ledger: WorkLedger, items: int, nbytes: int) -> None:
        self.ledger = ledger
        self.items = items
        self.nbytes = nbytes
        self._holds = 1
        self._callbacks: list[Callable[[], None]] = []

    @property
    def released(self) -> bool:
        return self._holds == 0

    def hold(self) -> None:
        """One more holder.

        Raises:
            RuntimeError: the claim was already released.
        """
        with self.ledger.lock:
            if self._holds == 0:
                raise RuntimeError("claim already released")
            self._holds += 1

    def let_go(self) -> None:
        """One holder less; the last one returns the share to the ledger and runs the release callbacks."""
        with self.ledger.lock:
            if self._holds == 0:
                return
            self._holds -= 1
            if self._holds:
                return
            self.ledger.items -= self.items
            self.ledger.nbytes -= self.nbytes
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception:
                logger.exception("release callback failed")

    def resize(self, nbytes: int) -> None:
        """Count ``nbytes`` for this share from now on (e.g. the decoded tensors instead of the file)."""
        with self.ledger.lock:
            if self._holds:
                self.ledger.nbytes += nbytes - self.nbytes
                self.nbytes = nbytes

    def when_released(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the share is released (at once if it already is), in the releasing thread."""
        with self.ledger.lock:
            if self._holds:
                self._callbacks.append(fn)
                return
        fn()


def when_all_released(claims: Sequence[Claim], fn: Callable[[], None]) -> None:
    """Call ``fn`` once every claim is released (at once for none), in the thread that releases the last."""
    lock = threading.Lock()
    left = len(claims)
    if not left:
        fn()
        return

    def one() -> None:
        nonlocal left
        with lock:
            left -= 1
            last = left == 0
        if last:
            fn()

    for c in claims:
        c.when_released(one)


class WorkLedger:
    """One model's outstanding work against its bounds, and the ``Retry-After`` it implies.

    Work counts from admission until it has really stopped: a request whose body is still arriving (one item
    and its declared size), inputs being unpacked, decoded, queued, run or finished (each input one item and
    the bytes of its files, then of its decoded tensors). A claim fits while the items stay within
    ``max_items`` and the bytes within ``max_bytes``; the byte bound is waived when nothing else is
    outstanding (an input larger than the bound could otherwise never run).

    ``Retry-After`` is the time the device needs to get through the outstanding items at the recent pace:
    ``ceil(items / batch_size × recent seconds per batch)``, at least ``retry_after_s`` and at most
    ``max_retry_after_s``; before any batch has run it is ``retry_after_s``.

    Args:
        name: the model, for messages.
        max_items: most outstanding items.
        max_bytes: most outstanding bytes.
        retry_after_s: the shortest ``Retry-After``.
        max_retry_after_s: the longest ``Retry-After``.
        batch_size: items per batch (set once the model is loaded).

    Raises:
        ValueError: for a non-positive bound.
    """

    #: weight of the newest batch in the recent seconds per batch
    SMOOTHING = 0.3

    def __init__(
        self,
        name: str,
        *,
        max_items: int,
        max_bytes: int,
        retry_after_s: int = 1,
        max_retry_after_s: int = 60,
        batch_size: int = 1,
    ) -> None:
        if max_items < 1 or max_bytes < 1:
            raise ValueError(f"work bounds must be positive, got {max_items} items and {max_bytes} bytes")
        self.name = name
        self.max_items = int(max_items)
        self.max_bytes = int(max_bytes)
        self.retry_after_s = int(retry_after_s)
        self.max_retry_after_s = max(int(max_retry_after_s), self.retry_after_s)
        self.batch_size = max(1, int(batch_size))
        self.lock = threading.Lock()
        self.items = 0
        self.nbytes = 0
        self.batch_s: float | None = None

    def _fits(self, items: int, nbytes: int, others_items: int, others_bytes: int) -> bool:
        if others_items + items > self.max_items:
            return False
        return others_items == 0 or others_bytes + nbytes <= self.max_bytes

    def claim(self, items: int = 1, nbytes: int = 0, *, wait: bool = False) -> Claim:
        """Claim a share when it fits.

        Args:
            items: items to count.
            nbytes: bytes to count.
            wait: claim even beyond the bounds (the caller has already waited for its turn).

        Raises:
            QueueFullError: beyond the bounds (503 with ``Retry-After``).
        """
        with self.lock:
            if not wait and not self._fits(items, nbytes, self.items, self.nbytes):
                raise self.full_error()
            return self._add(items, nbytes)

    def claim_each(self, sizes: Sequence[int], *, replacing: Claim | None = None) -> list[Claim]:
        """Claim one item per size at once (all or none), taking over the share of ``replacing``.

        ``replacing`` is the claim a request held while its body was unknown; its share goes to the items (it
        stays open for its holders, counting nothing).

        Raises:
            QueueFullError: the items do not fit beside the other outstanding work (503 with ``Retry-After``).
        """
        with self.lock:
            old_items = replacing.items if replacing is not None and replacing._holds else 0
            old_bytes = replacing.nbytes if replacing is not None and replacing._holds else 0
            if not self._fits(len(sizes), sum(sizes), self.items - old_items, self.nbytes - old_bytes):
                raise self.full_error(len(sizes))
            if replacing is not None and replacing._holds:
                self.items -= old_items
                self.nbytes -= old_bytes
                replacing.items = replacing.nbytes = 0
            return [self._add(1, int(n)) for n in sizes]

    def _add(self, items: int, nbytes: int) -> Claim:
        self.items += items
        self.nbytes += nbytes
        return Claim(self, items, nbytes)

    def observe_batch(self, seconds: float, size: int) -> None:
        """Record a batch's seconds (the pace behind ``Retry-After``)."""
        if size < 1 or not math.isfinite(seconds):
            return
        with self.lock:
            previous = self.batch_s
            self.batch_s = seconds if previous is None else previous + self.SMOOTHING * (seconds - previous)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the device time the outstanding work needs (see above)."""
        with self.lock:
            return self._retry_after()

    def _retry_after(self) -> int:
        estimate = 0 if self.batch_s is None else math.ceil(self.items / self.batch_size * self.batch_s)
        return min(self.max_retry_after_s, max(self.retry_after_s, estimate))

    def full_error(self, wanted: int = 1) -> QueueFullError:
        """The 503 of a refusal (called with the lock held: it reads the counts without taking it)."""
        items, retry = self.items, self._retry_after()
        what = "an input" if wanted == 1 else f"{wanted} inputs"
        return QueueFullError(
            f"{self.name}: too much work outstanding ({items} inputs, {self.nbytes / 2**20:.0f} MB) to take "
            f"{what} more; retry in {retry} s",
            retry,
        )
