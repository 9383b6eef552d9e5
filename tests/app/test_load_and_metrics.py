"""Overload (503 with Retry-After), client disconnects, upload size limit and the Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from serve_testkit import npy_bytes

from app.main import create_app
from app.settings import Settings

PREDICT = "/api/v1/models/addone/predict"


def test_full_queue_answers_503_with_retry_after(
    start_client: Callable[..., TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0.3")
    client = start_client(settings.model_copy(update={"max_queue": 1, "max_batch_size": 1, "retry_after_s": 3}))

    def one(i: int) -> httpx.Response:
        return client.post(PREDICT, files={"files": (f"v{i}.npy", npy_bytes([i]))})

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(one, range(6)))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes, codes
    assert 503 in codes, codes
    full = next(r for r in responses if r.status_code == 503)
    assert full.headers["Retry-After"] == "3"
    assert full.json()["error"]["code"] == "overloaded"
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0")
    assert one(99).status_code == 200  # it recovers
    assert 'medinfer_request_failures_total{code="503",task="addone"}' in client.get("/metrics").text


def test_client_disconnect_frees_its_slot(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that gives up while queued leaves the queue; the next request is admitted.

    ``max_queue`` counts all outstanding work: the running input and the queued one fill a bound of 2.
    """
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0.5")
    settings = settings.model_copy(update={"max_queue": 2, "max_batch_size": 1})
    app = create_app(settings)

    async def main() -> None:
        async with app.router.lifespan_context(app):
            service = app.state.service
            while not service.ready:
                await asyncio.sleep(0.01)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:

                async def post(i: int) -> httpx.Response:
                    return await c.post(PREDICT, files={"files": (f"v{i}.npy", npy_bytes([i]))})

                running = asyncio.create_task(post(1))
                await asyncio.sleep(0.2)  # in the device thread now
                queued = asyncio.create_task(post(2))
                await asyncio.sleep(0.1)
                assert service.runtimes["addone"].batcher.queued == 1
                assert (await post(3)).status_code == 503
                queued.cancel()  # the client disconnects
                await asyncio.sleep(0.05)
                assert service.runtimes["addone"].batcher.queued == 0
                assert service.runtimes["addone"].ledger.items == 1  # the running input only
                late = asyncio.create_task(post(4))
                assert (await running).status_code == 200
                assert (await late).status_code == 200

    asyncio.run(main())


def test_upload_limit_is_413_even_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # a streamed body has no Content-Length
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="files"; filename="a.npy"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * (100 << 10)
        yield b"\r\n--xyz--\r\n"

    r = client.post(PREDICT, content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"


def test_metrics_exposition(client: TestClient) -> None:
    assert client.post(PREDICT, files={"files": ("a.npy", npy_bytes([1]))}).status_code == 200
    assert client.post(PREDICT, files={"files": ("b.npy", b"")}).status_code == 400
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    for needle in (
        'medinfer_requests_total{code="200",route="/api/v1/models/{task}/predict",task="addone"} 1.0',
        'medinfer_requests_total{code="400",route="/api/v1/models/{task}/predict",task="addone"} 1.0',
        'medinfer_request_failures_total{code="400",task="addone"} 1.0',
        'medinfer_queue_seconds_bucket{le="0.01",task="addone"}',
        'medinfer_compute_seconds_count{task="addone"} ',
        'medinfer_batch_size_bucket{le="1.0",task="addone"}',
        'medinfer_jobs{state="queued"} 0.0',
        'medinfer_queue_depth{task="addone"} 0.0',
        'medinfer_item_failures_total{reason="input",task="addone"} 1.0',
    ):
        assert needle in text, needle


def test_a_request_larger_than_the_queue_is_refused_whole(
    start_client: Callable[..., TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0.2")
    client = start_client(settings.model_copy(update={"max_queue": 1, "max_batch_size": 1}))
    files = [("files", (f"v{i}.npy", npy_bytes([i]))) for i in range(5)]
    r = client.post(PREDICT, files=files)
    assert r.status_code == 413  # more inputs than the model's work bound could ever take at once
    assert "the limit is 1 (submit a job for more)" in r.json()["error"]["message"]
    batcher = client.app.state.service.runtimes["addone"].batcher  # type: ignore[attr-defined]
    assert batcher.queued == 0  # its other inputs left the queue with it
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0")
    assert client.post(PREDICT, files=files[:1]).status_code == 200
