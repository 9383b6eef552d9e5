"""DynamicBatcher with an analytic model (``x + 1``): batch formation, latency bound, isolation, queue bound."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

from app.batching import DynamicBatcher
from app.errors import QueueFullError

T = TypeVar("T")


class PlusOne:
    """``x + 1`` per item; records batch sizes and threads; ``"bad"`` makes the whole batch raise."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[object]] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s

    def __call__(self, items: list[object]) -> list[object]:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        return [x + 1 for x in items]  # type: ignore[operator]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.mark.parametrize(("n", "cap"), [(1, 4), (8, 4), (10, 3), (16, 16)])
def test_batches_form_up_to_the_cap_and_results_keep_order(n: int, cap: int) -> None:
    model = PlusOne(delay_s=0.01)

    async def main() -> list[object]:
        with ThreadPoolExecutor(1, thread_name_prefix="torch-cpu") as ex:
            b = DynamicBatcher(model, max_batch_size=cap, max_batch_delay_ms=50, max_queue=64, executor=ex)
            b.start()
            out = await asyncio.gather(*(b.submit(i) for i in range(n)))
            await b.stop()
            return out

    assert run(main()) == [i + 1 for i in range(n)]
    assert all(len(batch) <= cap for batch in model.batches)
    assert max(len(batch) for batch in model.batches) == min(n, cap)
    assert sum(len(batch) for batch in model.batches) == n
    assert model.threads == {"torch-cpu_0"}  # never the event loop's thread


def test_delay_bounds_the_latency_of_a_lonely_request() -> None:
    model = PlusOne()

    async def main() -> tuple[object, float]:
        b = DynamicBatcher(model, max_batch_size=64, max_batch_delay_ms=30, max_queue=64)
        b.start()
        t0 = time.perf_counter()
        out = await b.submit(41)
        elapsed = time.perf_counter() - t0
        await b.stop()
        return out, elapsed

    out, elapsed = run(main())
    assert out == 42
    assert 0.025 <= elapsed < 0.5  # waited for the delay, not for 63 more requests
    assert model.batches == [[41]]


def test_full_batch_does_not_wait_for_the_delay() -> None:
    model = PlusOne()

    async def main() -> float:
        b = DynamicBatcher(model, max_batch_size=4, max_batch_delay_ms=5000, max_queue=64)
        b.start()
        t0 = time.perf_counter()
        await asyncio.gather(*(b.submit(i) for i in range(4)))
        elapsed = time.perf_counter() - t0
        await b.stop()
        return elapsed

    assert run(main()) < 1.0
    assert model.batches == [[0, 1, 2, 3]]


def test_one_bad_request_does_not_fail_its_batch() -> None:
    model = PlusOne()

    async def main() -> list[object]:
        b = DynamicBatcher(model, max_batch_size=8, max_batch_delay_ms=50, max_queue=64)
        b.start()
        out = await asyncio.gather(*(b.submit(x) for x in (1, "bad", 3, 4)), return_exceptions=True)
        await b.stop()
        return out

    out = run(main())
    assert out[0] == 2
    assert out[2] == 4
    assert out[3] == 5
    assert isinstance(out[1], TypeError)
    assert model.batches[0] == [1, "bad", 3, 4]  # batched together first, then isolated one by one


def test_per_item_exceptions_reach_only_their_submitter() -> None:
    def fn(items: list[int]) -> list[object]:
        return [ValueError(f"bad {x}") if x < 0 else x + 1 for x in items]

    async def main() -> list[object]:
        b = DynamicBatcher(fn, max_batch_size=8, max_batch_delay_ms=20, max_queue=64)
        b.start()
        out = await asyncio.gather(*(b.submit(x) for x in (1, -1, 2)), return_exceptions=True)
        await b.stop()
        return out

    out = run(main())
    assert out[0] == 2
    assert out[2] == 3
    assert isinstance(out[1], ValueError)
    assert str(out[1]) == "bad -1"


def test_queue_full_raises_503_and_cancelled_request_frees_its_slot() -> None:
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        return [x + 1 for x in items]

    async def main() -> None:
        b = DynamicBatcher(slow, max_batch_size=1, max_batch_delay_ms=0, max_queue=2)
        b.start()
        running = asyncio.ensure_future(b.submit(0))
        await asyncio.sleep(0.05)  # first one is now in the executor; the queue is empty
        waiting = [asyncio.ensure_future(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0.01)
        assert b.queued == 2
        with pytest.raises(QueueFullError) as info:
            await b.submit(3)
        assert info.value.status == 503
        assert info.value.headers["Retry-After"] == "1"
        waiting[0].cancel()  # the client went away
        await asyncio.sleep(0.01)
        assert b.queued == 1
        late = asyncio.ensure_future(b.submit(4))
        await asyncio.sleep(0.01)
        gate.set()
        assert await running == 1
        assert await waiting[1] == 3
        assert await late == 5
        await b.stop()

    run(main())


@pytest.mark.parametrize(
    "kwargs",
    [{"max_batch_size": 0}, {"max_batch_delay_ms": -1}, {"max_queue": 0}],
)
def test_bad_arguments_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DynamicBatcher(PlusOne(), **kwargs)  # type: ignore[arg-type]


def test_submit_before_start_raises() -> None:
    async def main() -> None:
        await DynamicBatcher(PlusOne()).submit(1)

    with pytest.raises(RuntimeError, match="not started"):
        run(main())
