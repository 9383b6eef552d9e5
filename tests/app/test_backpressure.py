"""Backpressure: admission before the body, bounded decoding, work counted until it has really stopped, time
limits, Retry-After that grows with the work ahead, and one model's long batch not holding another's back.

Decoding is made to block with an :class:`threading.Event` (``Gate``) so that every ordering is forced, never
timed: the tests wait for states, not for durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import serve_testkit
from fastapi.testclient import TestClient
from serve_testkit import AddOnePredictor, AddOneTask, npy_bytes, wait_until

from app.batching import DynamicBatcher, FairPool, WorkLedger, when_all_released
from app.errors import QueueFullError
from app.main import create_app
from app.service import Service
from app.settings import Settings
from pipelines.common.checkpoint import save_checkpoint
from pipelines.common.task import InputItem, Prepared, register_task

PREDICT = "/api/v1/models/addone/predict"
BLOCK = 7.0  # an input whose first value is this blocks in prepare until the gate opens


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


class Gate:
    """Counts addone's prepares running at once; those of a ``BLOCK`` input wait for ``release``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    def prepare(self, original: Callable[[Any, InputItem], Prepared]) -> Callable[[Any, InputItem], Prepared]:
        def prepare(predictor: Any, item: InputItem) -> Prepared:
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            try:
                first = np.load(item.paths["x"]).reshape(-1)[:1]
                if first.size and float(first[0]) == BLOCK:
                    self.release.wait(30)
                return original(predictor, item)
            finally:
                with self.lock:
                    self.running -= 1

        return prepare


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    g = Gate()
    monkeypatch.setattr(AddOnePredictor, "prepare", g.prepare(AddOnePredictor.prepare))
    try:
        yield g
    finally:
        g.release.set()  # never leave a decode thread waiting


@contextlib.asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """The real app in this event loop; a client whose cancelled requests cancel their handlers."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        service: Service = app.state.service
        await until(lambda: service.ready, 60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield service, client


def one_file(value: float, name: str = "v.npy") -> dict[str, tuple[str, bytes]]:
    return {"files": (name, npy_bytes([value]))}


# -- admission -----------------------------------------------------------------------------------------------
def test_a_full_model_answers_503_before_the_body_is_read(settings: Settings, gate: Gate) -> None:
    settings = settings.model_copy(update={"max_queue": 1, "decode_workers": 1, "retry_after_s": 2})

    async def main() -> None:
        async with served(settings) as (service, c):
            first = asyncio.create_task(c.post(PREDICT, files=one_file(BLOCK)))
            await until(lambda: gate.running == 1)
            pulled: list[bytes] = []

            async def body() -> AsyncIterator[bytes]:
                chunk = b'--xyz\r\nContent-Disposition: form-data; name="files"; filename="a.npy"\r\n\r\n'
                pulled.append(chunk)
                yield chunk
                yield npy_bytes([1]) + b"\r\n--xyz--\r\n"

            r = await c.post(PREDICT, content=body(), headers={"content-type": "multipart/form-data; boundary=xyz"})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "overloaded"
            assert r.headers["Retry-After"] == str(service.runtimes["addone"].ledger.retry_after())
            assert int(r.headers["Retry-After"]) >= 2
            assert pulled == []  # refused on the headers: not a byte of the upload was read
            gate.release.set()
            assert (await first).status_code == 200
            assert (await c.post(PREDICT, files=one_file(1))).status_code == 200

    asyncio.run(main())


def test_clients_that_leave_free_nothing_until_their_decodes_end(settings: Settings, gate: Gate) -> None:
    """However many clients connect and leave, at most ``decode_workers`` inputs are decoded at once, and the
    work of a client that left is counted (and refuses others) until its decoding has really returned."""
    settings = settings.model_copy(update={"max_queue": 3, "decode_workers": 2})
    tmp = Path(settings.data_dir) / "tmp"

    async def main() -> None:
        async with served(settings) as (service, c):
            rt = service.runtimes["addone"]

            def post(value: float) -> asyncio.Task[httpx.Response]:
                return asyncio.create_task(c.post(PREDICT, files=one_file(value)))

            gone = [post(BLOCK) for _ in range(2)]
            await until(lambda: gate.running == 2)
            for t in gone:
                t.cancel()
            await asyncio.gather(*gone, return_exceptions=True)
            # the clients are gone; their decodes are not: their work, threads and uploads stay counted
            assert rt.ledger.items == 2
            assert rt.pool.busy == 2
            assert len(list(tmp.iterdir())) == 2
            # a third is admitted but waits for a decode thread; leaving while it waits frees its share at once
            waiting = post(BLOCK)
            await until(lambda: rt.ledger.items == 3 and rt.pool.waiting >= 1)
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            await until(lambda: rt.ledger.items == 2)
            # a storm of clients: one more fits, every other one is refused on its headers
            storm = [post(BLOCK) for _ in range(8)]
            await until(lambda: sum(t.done() for t in storm) == 7)
            refused = [t.result() for t in storm if t.done()]
            assert {r.status_code for r in refused} == {503}
            assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
            for t in storm:
                t.cancel()
            await asyncio.gather(*storm, return_exceptions=True)
            await until(lambda: rt.ledger.items == 2)
            assert gate.peak == 2  # never more decodes at once than decode_workers
            assert rt.pool.peak == 2
            gate.release.set()
            await until(lambda: rt.ledger.items == 0 and rt.pool.busy == 0)
            await until(lambda: not any(tmp.iterdir()))  # uploads removed once nothing reads them
            r = await c.post(PREDICT, files=one_file(1))
            assert r.status_code == 200
            assert r.json()["results"][0]["outputs"]["values"] == [2.0]

    asyncio.run(main())


def test_retry_after_grows_with_the_outstanding_work() -> None:
    ledger = WorkLedger("m", max_items=100, max_bytes=10**9, retry_after_s=1, max_retry_after_s=30, batch_size=4)
    assert ledger.retry_after() == 1  # no pace known yet
    ledger.observe_batch(2.0, 4)
    claims = []
    values = []
    for n in (4, 8, 16, 40, 100):
        while ledger.items < n:
            claims.append(ledger.claim())
        values.append(ledger.retry_after())
    assert values == [2, 4, 8, 20, 30]  # ceil(items / batch size × seconds per batch), capped
    with pytest.raises(QueueFullError) as info:
        ledger.claim()
    assert info.value.status == 503
    assert info.value.headers["Retry-After"] == "30"
    for c in claims:
        c.let_go()
    assert ledger.retry_after() == 1


def test_the_ledger_counts_items_and_bytes_until_the_last_holder_lets_go() -> None:
    ledger = WorkLedger("m", max_items=3, max_bytes=100)
    big = ledger.claim(1, 500)  # alone it is admitted, or it could never run
    with pytest.raises(QueueFullError):
        ledger.claim(1, 1)
    big.let_go()
    assert (ledger.items, ledger.nbytes) == (0, 0)
    a, b = ledger.claim(1, 40), ledger.claim(1, 40)
    with pytest.raises(QueueFullError):
        ledger.claim(1, 30)  # 110 bytes > 100
    c = ledger.claim(1, 20)
    with pytest.raises(QueueFullError):
        ledger.claim(1, 0)  # 4 items > 3
    a.hold()  # a thread works for it
    a.let_go()  # its request is gone...
    assert ledger.items == 3  # ...but the thread still holds it
    a.let_go()
    assert (ledger.items, ledger.nbytes) == (2, 60)
    b.let_go()
    c.let_go()
    ticket = ledger.claim(1, 90)  # a request whose body is not read yet
    with pytest.raises(QueueFullError):
        ledger.claim_each([10, 10, 10, 10], replacing=ticket)  # all or none
    assert (ledger.items, ledger.nbytes) == (1, 90)
    items = ledger.claim_each([10, 10, 10], replacing=ticket)
    assert (ledger.items, ledger.nbytes) == (3, 30)
    ticket.let_go()
    assert ledger.items == 3
    released: list[bool] = []
    when_all_released(items, lambda: released.append(True))
    items[0].resize(50)  # decoded, it weighs more
    assert ledger.nbytes == 70
    items[0].let_go()
    items[1].let_go()
    assert released == []
    items[2].let_go()
    assert released == [True]
    assert (ledger.items, ledger.nbytes) == (0, 0)


# -- the decode pool -----------------------------------------------------------------------------------------
def test_the_decode_pool_is_bounded_and_takes_models_in_turn() -> None:
    pool = FairPool(1)
    gate = threading.Event()
    order: list[str] = []
    try:
        blocker = pool.submit("a", gate.wait, 5)
        wait_until(lambda: pool.busy == 1)
        burst = [pool.submit("a", order.append, f"a{i}") for i in range(3)]
        other = pool.submit("b", order.append, "b0")
        urgent = pool.submit("c", order.append, "finish", urgent=True)
        dropped = pool.submit("a", order.append, "never")
        assert dropped.cancel()  # not started: dropped at once
        assert pool.busy == 1
        gate.set()
        blocker.result(5)
        for f in [*burst, other, urgent]:
            f.result(5)
        wait_until(lambda: pool.waiting == 0)
        # finishing first, then one call per model in turn: a burst of one model holds another back by one call
        assert order == ["finish", "a0", "b0", "a1", "a2"]
        assert pool.peak == 1
    finally:
        gate.set()
        pool.shutdown()


def test_the_decode_pool_never_runs_more_than_its_workers() -> None:
    pool = FairPool(2)
    lock = threading.Lock()
    running, peak = 0, 0
    release = threading.Event()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        release.wait(5)
        with lock:
            running -= 1

    try:
        futures = [pool.submit(f"m{i % 3}", work) for i in range(9)]
        wait_until(lambda: pool.busy == 2)
        assert pool.waiting == 7
        release.set()
        for f in futures:
            f.result(5)
        assert peak == 2
    finally:
        release.set()
        pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit("m", work)


# -- the batcher's own bound ---------------------------------------------------------------------------------
def test_the_batcher_bounds_queued_cost_and_releases_each_item_once() -> None:
    gate = threading.Event()

    def slow(items: list[int]) -> list[int]:
        gate.wait(5)
        return [x + 1 for x in items]

    async def main() -> None:
        released: list[str] = []

        def on(name: str) -> Callable[[], None]:
            return lambda: released.append(name)

        b = DynamicBatcher(slow, max_batch_size=1, max_batch_delay_ms=0, max_queue=10, max_queue_cost=10)
        b.start()
        running = asyncio.ensure_future(b.submit_with_stats(0, cost=8, on_release=on("running")))
        await until(lambda: b.running == 1)
        queued = asyncio.ensure_future(b.submit_with_stats(1, cost=8, on_release=on("queued")))
        await until(lambda: b.queued == 1)
        assert b.queued_cost == 8
        with pytest.raises(QueueFullError):
            await b.submit_with_stats(2, cost=5, on_release=on("refused"))  # 13 > 10
        assert released == ["refused"]
        queued.cancel()  # leaves the queue at once
        await until(lambda: b.queued == 0)
        assert released == ["refused", "queued"]
        running.cancel()  # its client left, but the device is busy with it until the batch ends
        await asyncio.sleep(0.05)
        assert "running" not in released
        gate.set()
        await until(lambda: "running" in released)
        assert released.count("running") == 1
        assert await b.submit(5, cost=50) == 6  # larger than the bound, but nothing waits: it runs
        await b.stop()

    try:
        asyncio.run(main())
    finally:
        gate.set()


# -- time limits ---------------------------------------------------------------------------------------------
def test_an_input_over_its_time_limit_gets_its_own_error_and_keeps_its_slot(
    start_client: Callable[..., TestClient], settings: Settings, gate: Gate
) -> None:
    client = start_client(settings.model_copy(update={"item_timeout_s": 0.5, "decode_workers": 2}))
    rt = client.app.state.service.runtimes["addone"]  # type: ignore[attr-defined]
    tmp = Path(settings.data_dir) / "tmp"
    files = [("files", ("slow.npy", npy_bytes([BLOCK]))), ("files", ("fast.npy", npy_bytes([1])))]
    r = client.post(PREDICT, files=files)
    assert r.status_code == 200, r.text
    slow, fast = r.json()["results"]
    assert slow["status"] == "error"
    assert slow["error"] == "files[0]: timed out after 0.5 s"
    assert fast["outputs"]["values"] == [2.0]
    # the request has ended; its decode has not: its share, its thread and its upload stay until it returns
    assert rt.ledger.items == 1
    assert rt.pool.busy == 1
    assert any(tmp.iterdir())
    gate.release.set()
    wait_until(lambda: rt.ledger.items == 0 and rt.pool.busy == 0)
    wait_until(lambda: not any(tmp.iterdir()))
    assert 'medinfer_item_failures_total{reason="timeout",task="addone"} 1.0' in client.get("/metrics").text


def test_an_input_whose_batch_outlasts_its_limit_times_out_504_when_alone(
    start_client: Callable[..., TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "1.0")
    client = start_client(settings.model_copy(update={"item_timeout_s": 0.3}))
    rt = client.app.state.service.runtimes["addone"]  # type: ignore[attr-defined]
    r = client.post(PREDICT, files=one_file(3))
    assert r.status_code == 504
    assert r.json()["error"] == {"code": "timeout", "message": "files[0]: timed out after 0.3 s"}
    assert rt.ledger.items == 1  # the device is still busy with its batch
    wait_until(lambda: rt.ledger.items == 0)
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0")
    assert client.post(PREDICT, files=one_file(3)).status_code == 200


def test_a_request_over_its_time_limit_is_504(
    start_client: Callable[..., TestClient], settings: Settings, gate: Gate
) -> None:
    client = start_client(settings.model_copy(update={"request_timeout_s": 0.3}))
    rt = client.app.state.service.runtimes["addone"]  # type: ignore[attr-defined]
    r = client.post(PREDICT, files=one_file(BLOCK))
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "timeout"
    assert "took longer than 0.3 s" in r.json()["error"]["message"]
    assert rt.ledger.items == 1  # until the decode returns
    gate.release.set()
    wait_until(lambda: rt.ledger.items == 0)
    assert client.post(PREDICT, files=one_file(1)).status_code == 200


# -- fairness ------------------------------------------------------------------------------------------------
SLOW = "addslow"


class SlowPredictor(AddOnePredictor):
    """Its batches wait for ``gate`` (the stand-in for a volume's long forward pass)."""

    entered = threading.Event()
    gate = threading.Event()

    def run(self, batch: Any) -> list[Any]:
        SlowPredictor.entered.set()
        SlowPredictor.gate.wait(10)
        return super().run(batch)


class SlowTask(AddOneTask):
    name = SLOW
    title = "x + 1, slowly (test-only)"

    def load_predictor(self, checkpoint: Any, options: Any) -> SlowPredictor:
        return SlowPredictor(checkpoint, options)


@pytest.fixture
def two_models(settings: Settings, tmp_path: Path) -> Iterator[Settings]:
    """Settings serving ``addone`` and ``addslow`` (a second task of the same arithmetic)."""
    from pipelines.common import task as task_registry

    folder = tmp_path / "two"
    serve_testkit.install(folder)
    save_checkpoint(dataclasses.replace(serve_testkit.checkpoint(), task=SLOW), folder / f"{SLOW}.pt")
    register_task(SlowTask())
    SlowPredictor.entered.clear()
    SlowPredictor.gate.clear()
    try:
        yield settings.model_copy(update={"checkpoints": folder, "tasks": f"addone,{SLOW}"})
    finally:
        SlowPredictor.gate.set()
        task_registry._TASKS.pop(SLOW, None)


def test_a_long_batch_of_one_model_does_not_hold_back_another(
    start_client: Callable[..., TestClient], two_models: Settings
) -> None:
    client = start_client(two_models)
    slow_response: list[httpx.Response] = []
    slow = threading.Thread(
        target=lambda: slow_response.append(client.post(f"/api/v1/models/{SLOW}/predict", files=one_file(5)))
    )
    slow.start()
    assert SlowPredictor.entered.wait(10)  # the slow model's batch is on its device thread now
    r = client.post(PREDICT, files=one_file(1))  # with one thread per device shared by all, this would wait
    assert r.status_code == 200
    assert r.json()["results"][0]["outputs"]["values"] == [2.0]
    assert slow.is_alive()  # answered while the other model's batch still runs
    assert slow_response == []
    SlowPredictor.gate.set()
    slow.join(10)
    assert slow_response[0].status_code == 200
    assert slow_response[0].json()["results"][0]["outputs"]["values"] == [6.0]
