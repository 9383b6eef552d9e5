"""Hardened jobs: intake bounds, a worker that survives database and disk errors, readiness of the worker,
path-free states, expiry without leftovers, the startup sweep and the data folder's lock."""

from __future__ import annotations

import asyncio
import errno
import functools
import io
import json
import sqlite3
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import serve_testkit
from fastapi import UploadFile
from fastapi.testclient import TestClient
from serve_testkit import JOBS, npy_bytes, wait_job

from app import jobs as jobs_module
from app.errors import ServiceError
from app.jobs import DataDirInUse, DataDirLock, JobIntake, redact_paths
from app.service import Service
from app.settings import Settings

MB = 1024 * 1024


def submit(client: TestClient, name: str = "a.npy", values: list[float] | None = None) -> dict[str, Any]:
    r = client.post(JOBS, files={"files": (name, npy_bytes(values or [1.0]))}, data={"task": "addone"})
    assert r.status_code == 202, r.text
    return r.json()


def service_of(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


def job_folders(settings: Settings) -> set[str]:
    return {p.name for p in (Path(settings.data_dir) / "jobs").iterdir()}


def row(settings: Settings, job_id: str) -> sqlite3.Row:
    with sqlite3.connect(Path(settings.data_dir) / "jobs.sqlite3") as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()


def files_served(client: TestClient, job_id: str) -> bool:
    """The job's result lists output files and every one of them is served."""
    files = client.get(f"{JOBS}/{job_id}/result").json()["files"]
    return bool(files) and all(client.get(f["url"]).status_code == 200 for f in files)


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs_module, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))


def flaky(fn: Callable[..., Any], failures: int, exc: Exception) -> tuple[Callable[..., Any], list[int]]:
    """``fn`` raising ``exc`` on its first ``failures`` calls; the second value counts the calls."""
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] <= failures:
            raise exc
        return fn(*args, **kwargs)

    return wrapper, calls


# -- intake bounds ---------------------------------------------------------------------------------------------
def test_a_full_queue_is_503_before_the_body_is_read(
    start_client: Callable[..., TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0.4")
    settings = settings.model_copy(update={"max_queued_jobs": 1, "jobs_retry_after_s": 7})
    client = start_client(settings)
    first = submit(client)
    r = client.post(JOBS, files={"files": ("b.npy", npy_bytes([2]))}, data={"task": "addone"})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "overloaded"
    assert "queue is full" in r.json()["error"]["message"]
    assert r.headers["retry-after"] == "7"
    # refused before the body was parsed: a form without its task field is 503, not 422
    assert client.post(JOBS, files={"files": ("b.npy", b"x")}).status_code == 503
    assert job_folders(settings) == {first["id"]}
    assert wait_job(client, first["id"])["state"] == "succeeded"
    assert submit(client)["state"] in ("queued", "running", "succeeded")  # room again once it finished


def test_submit_job_checks_the_queue_itself_and_counts_submissions_in_flight(
    client: TestClient, settings: Settings
) -> None:
    service = service_of(client)
    assert service.intake is not None
    service.intake.max_active = 1
    upload = UploadFile(io.BytesIO(npy_bytes([1])), filename="a.npy", size=10)
    call = functools.partial(service.submit_job, "addone", [upload], {}, explain=False)
    with service.intake.reserve():  # another submission is storing its upload
        with pytest.raises(ServiceError) as info:
            client.portal.call(call)  # type: ignore[union-attr]
    assert info.value.status == 503
    assert info.value.headers["Retry-After"] == str(settings.jobs_retry_after_s)
    assert job_folders(settings) == set()
    record = client.portal.call(call)  # type: ignore[union-attr]
    assert wait_job(client, record.id)["state"] == "succeeded"


def test_intake_reservation_is_released() -> None:
    class Store:
        def active_count(self) -> int:
            return 0

    intake = JobIntake(Store(), max_active=2, max_items=1, max_disk_bytes=1, retry_after_s=1)  # type: ignore[arg-type]
    with intake.reserve(), intake.reserve():
        with pytest.raises(ServiceError, match="queue is full"):
            intake.check_queue()
    intake.check_queue()
    with pytest.raises(ServiceError, match="2 inputs in one job; the limit is 1") as info:
        intake.check_items(2)
    assert info.value.status == 413


def test_full_job_storage_is_503_before_and_after_storing(client: TestClient, settings: Settings) -> None:
    service = service_of(client)
    assert service.intake is not None
    service.intake.max_disk_bytes = 20_000
    big = npy_bytes([0.0] * 6000)  # 24 kB: the announced size is over the limit
    r = client.post(JOBS, files={"files": ("big.npy", big)}, data={"task": "addone"})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "overloaded"
    assert "storage is full" in r.json()["error"]["message"]
    assert "retry-after" in r.headers
    # a small zip passes the announced size, then unpacks over the limit: refused and removed
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("case/big.npy", big)
    assert len(buf.getvalue()) < 2_000
    r = client.post(JOBS, files={"files": ("case.zip", buf.getvalue())}, data={"task": "addone"})
    assert r.status_code == 503
    assert "storage is full" in r.json()["error"]["message"]
    assert job_folders(settings) == set()
    # submit_job checks the sizes it received too (a chunked body announces none)
    upload = UploadFile(io.BytesIO(big), filename="big.npy", size=len(big))
    with pytest.raises(ServiceError, match="storage is full"):
        client.portal.call(functools.partial(service.submit_job, "addone", [upload], {}, explain=False))  # type: ignore[union-attr]
    assert job_folders(settings) == set()
    assert submit(client)["id"] in job_folders(settings)  # a small one still fits


def test_too_many_inputs_in_a_job_is_413_and_nothing_stays(client: TestClient, settings: Settings) -> None:
    service = service_of(client)
    assert service.intake is not None
    service.intake.max_items = 2
    files = [("files", (f"v{i}.npy", npy_bytes([i]))) for i in range(3)]
    r = client.post(JOBS, files=files, data={"task": "addone"})
    assert r.status_code == 413
    assert r.json()["error"]["message"] == "3 inputs in one job; the limit is 2 (split the upload)"
    assert job_folders(settings) == set()
    r = client.post(JOBS, files=files[:2], data={"task": "addone"})
    assert r.status_code == 202


def test_a_queued_job_over_a_lowered_item_limit_fails_when_it_runs(
    start_client: Callable[..., TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0.3")
    client = start_client(settings)
    first = submit(client)
    wait_job(client, first["id"], states=("running",))
    r = client.post(JOBS, files=[("files", (f"v{i}.npy", npy_bytes([i]))) for i in range(3)], data={"task": "addone"})
    assert r.status_code == 202
    service = service_of(client)
    service.settings = service.settings.model_copy(update={"max_job_items": 2})
    done = wait_job(client, r.json()["id"])
    assert done["state"] == "failed"
    assert done["error"] == "3 inputs in one job; the limit is 2"
    assert not (Path(settings.data_dir) / "jobs" / done["id"] / "input").exists()


# -- the worker survives database and disk errors --------------------------------------------------------------
def test_a_locked_database_is_retried(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    store = service_of(client).job_store()
    start, calls = flaky(store.start, 2, sqlite3.OperationalError("database is locked"))
    monkeypatch.setattr(store, "start", start)
    done = wait_job(client, submit(client)["id"])
    assert done["state"] == "succeeded"
    assert done["attempts"] == 1
    assert calls[0] == 3


def test_a_write_that_keeps_failing_fails_the_job_and_the_worker_goes_on(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = service_of(client).job_store()
    real_update = store.update

    def progress_fails(job_id: str, **fields: Any) -> None:
        if set(fields) == {"progress"}:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        real_update(job_id, **fields)

    monkeypatch.setattr(store, "update", progress_fails)
    done = wait_job(client, submit(client)["id"])
    assert done["state"] == "failed"
    assert done["error"] == (
        "the server's job database failed (OperationalError: attempt to write a readonly database)"
    )
    assert not (Path(settings.data_dir) / "jobs" / done["id"] / "input").exists()
    monkeypatch.undo()
    assert wait_job(client, submit(client)["id"])["state"] == "succeeded"
    assert client.get("/readyz").status_code == 200


def test_an_outcome_that_cannot_be_recorded_leaves_the_job_to_recovery(
    start_client: Callable[..., TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = start_client(settings)
    store = service_of(client).job_store()
    finish, calls = flaky(store.finish, 1000, sqlite3.OperationalError("disk I/O error"))
    monkeypatch.setattr(store, "finish", finish)
    stuck = submit(client)
    deadline = time.monotonic() + 10
    while calls[0] < 8:  # the success, then the failure: each tried four times
        assert time.monotonic() < deadline, calls
        time.sleep(0.02)
    assert client.get(f"{JOBS}/{stuck['id']}").json()["state"] == "running"
    assert (Path(settings.data_dir) / "jobs" / stuck["id"] / "input").is_dir()  # kept for the next start
    monkeypatch.undo()
    assert wait_job(client, submit(client)["id"])["state"] == "succeeded"
    assert service_of(client).worker.running  # type: ignore[union-attr]
    client.__exit__(None, None, None)
    client = start_client(settings)
    done = wait_job(client, stuck["id"])
    assert done["state"] == "succeeded"
    assert done["attempts"] == 2


def test_a_full_disk_fails_the_job_without_a_path(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.common.predict import Report

    def no_space(self: Report, out_dir: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "report.json"))

    monkeypatch.setattr(Report, "write", no_space)
    done = wait_job(client, submit(client)["id"])
    assert done["state"] == "failed"
    assert done["error"] == "the server's storage failed (No space left on device)"
    monkeypatch.undo()
    assert wait_job(client, submit(client)["id"])["state"] == "succeeded"


def test_a_crashing_job_runner_never_ends_the_worker(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = service_of(client).worker
    assert worker is not None

    async def crash(rec: Any) -> None:
        raise KeyError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(worker, "run_job", crash)
        done = wait_job(client, submit(client)["id"])
    assert done["state"] == "failed"
    assert done["error"] == "internal error (KeyError)"
    assert wait_job(client, submit(client)["id"])["state"] == "succeeded"
    assert worker.running


def test_a_job_the_worker_cannot_read_is_failed_and_the_worker_goes_on(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = service_of(client).job_store()
    real_get = store.get
    failures = [0]

    def unreadable_in_the_worker(job_id: str) -> Any:
        task = asyncio.current_task()
        if task is not None and task.get_name().startswith("job-worker") and failures[0] < 4:
            failures[0] += 1
            raise OSError(errno.EIO, "Input/output error")
        return real_get(job_id)

    monkeypatch.setattr(store, "get", unreadable_in_the_worker)
    done = wait_job(client, submit(client)["id"])
    assert failures[0] == 4
    assert done["state"] == "failed"
    assert done["error"] == "the server's storage failed (Input/output error)"
    assert wait_job(client, submit(client)["id"])["state"] == "succeeded"


# -- readiness ---------------------------------------------------------------------------------------------------
def test_readyz_is_503_when_the_worker_stopped(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert body["jobs"] == {"state": "running"}
    worker = service_of(client).worker
    assert worker is not None

    async def kill() -> None:
        worker._tasks[0].cancel()
        await asyncio.sleep(0)

    client.portal.call(kill)  # type: ignore[union-attr]
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["jobs"] == {"state": "stopped"}
    assert r.json()["models"]["addone"]["state"] == "ready"


def test_readyz_and_jobs_show_a_load_error_without_server_paths(
    start_client: Callable[..., TestClient], settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoints = tmp_path / "secret-checkpoints"
    serve_testkit.install(checkpoints)
    settings = settings.model_copy(update={"checkpoints": checkpoints})
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0.3")
    client = start_client(settings)
    job = submit(client)
    wait_job(client, job["id"], states=("running",))
    client.__exit__(None, None, None)  # the job is queued again at the next start...
    (checkpoints / "addone.pt").write_bytes(b"not a checkpoint")  # ...whose model cannot load
    client = start_client(settings, wait_ready=False)
    deadline = time.monotonic() + 30
    while (r := client.get("/readyz")).json()["models"]["addone"]["state"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert r.status_code == 503
    error = r.json()["models"]["addone"]["error"]
    assert error.startswith("CheckpointError: addone.pt: not a readable medinfer checkpoint")
    done = wait_job(client, job["id"])
    assert done["state"] == "failed"
    assert done["error"].startswith("model 'addone' failed to load: CheckpointError: addone.pt:")
    r = client.post(JOBS, files={"files": ("a.npy", npy_bytes([1]))}, data={"task": "addone"})
    assert r.status_code == 503
    assert "addone.pt: not a readable" in r.json()["error"]["message"]
    for text in (error, done["error"], r.text, str(row(settings, job["id"])["error"])):
        assert str(tmp_path) not in text
        assert "secret-checkpoints" not in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "FileNotFoundError: [Errno 2] No such file: '/srv/ck/brats.pt'",
            "FileNotFoundError: [Errno 2] No such file: 'brats.pt'",
        ),
        ("/home/u/.cache/medinfer/x.pt: bad", "x.pt: bad"),
        ("~/.cache/medinfer/checkpoints/ecg.pt is missing", "ecg.pt is missing"),
        ("case/t1.nii: expected .npy/.csv, got 1/2 of it", "case/t1.nii: expected .npy/.csv, got 1/2 of it"),
        ("see https://example.org/docs/page", "see https://example.org/docs/page"),
        ("not a folder: /data/jobs/", "not a folder: jobs"),
    ],
)
def test_redact_paths(text: str, expected: str) -> None:
    assert redact_paths(text) == expected


# -- expiry, sweep, lock -----------------------------------------------------------------------------------------
def test_expiry_drops_result_and_error(start_client: Callable[..., TestClient], settings: Settings) -> None:
    settings = settings.model_copy(update={"result_ttl_s": 0.3, "cleanup_interval_s": 0.1})
    client = start_client(settings)
    failed = client.post(JOBS, files={"files": ("bad.npy", b"not numpy")}, data={"task": "addone"}).json()
    assert wait_job(client, failed["id"])["error"]
    ok = submit(client)
    wait_job(client, ok["id"])
    for job_id in (failed["id"], ok["id"]):
        expired = wait_job(client, job_id, states=("expired",), timeout=10)
        assert expired["error"] is None
        stored = row(settings, job_id)
        assert stored["error"] is None
        assert stored["result"] is None
        assert not (Path(settings.data_dir) / "jobs" / job_id).exists()


def test_startup_sweeps_what_no_job_owns(start_client: Callable[..., TestClient], settings: Settings) -> None:
    client = start_client(settings)
    done = wait_job(client, submit(client)["id"])
    gone = wait_job(client, submit(client)["id"])
    client.__exit__(None, None, None)
    data = Path(settings.data_dir)
    orphan = data / "jobs" / "0123456789abcdef0123456789abcdef" / "input"  # an upload cut off by a kill
    orphan.mkdir(parents=True)
    (orphan / "scan.npy").write_bytes(npy_bytes([1]))
    (data / "jobs" / "stray.tmp").write_bytes(b"x")
    leftover = data / "jobs" / done["id"] / "input"  # killed between recording the outcome and the cleanup
    leftover.mkdir()
    (leftover / "a.npy").write_bytes(npy_bytes([1]))
    with sqlite3.connect(data / "jobs.sqlite3") as conn:  # expired by an older version: folder and error kept
        conn.execute("UPDATE jobs SET state = 'expired', error = 'old reason' WHERE id = ?", (gone["id"],))
    (data / "tmp" / "upload-dead").mkdir(parents=True)
    client = start_client(settings)
    assert job_folders(settings) == {done["id"]}
    assert not leftover.exists()
    assert files_served(client, done["id"])
    assert row(settings, gone["id"])["error"] is None
    assert list((data / "tmp").iterdir()) == []


def test_a_second_server_on_the_same_data_folder_is_refused(
    start_client: Callable[..., TestClient], settings: Settings
) -> None:
    first = start_client(settings)
    done = wait_job(first, submit(first)["id"])
    data = Path(settings.data_dir)
    uploading = data / "jobs" / "fedcba9876543210fedcba9876543210" / "input"  # the first's upload in progress
    uploading.mkdir(parents=True)
    (data / "tmp" / "upload-live").mkdir()
    with pytest.raises(DataDirInUse, match="in use by another medinfer server"):
        start_client(settings)
    assert uploading.is_dir()
    assert (data / "tmp" / "upload-live").is_dir()
    assert files_served(first, done["id"])
    assert wait_job(first, submit(first)["id"])["state"] == "succeeded"  # the first still serves
    first.__exit__(None, None, None)
    second = start_client(settings)  # released at shutdown: the next one starts (and sweeps)
    assert not uploading.parent.exists()
    assert second.get(f"{JOBS}/{done['id']}").json()["state"] == "succeeded"


def test_the_lock_names_its_owner_and_is_released(tmp_path: Path) -> None:
    one, two = DataDirLock(tmp_path / "data"), DataDirLock(tmp_path / "data")
    one.acquire()
    with pytest.raises(DataDirInUse, match=r"pid \d+"):
        two.acquire()
    assert not two.held
    one.release()
    two.acquire()
    assert two.held
    two.release()


def test_store_keeps_no_file_names_in_options(client: TestClient, settings: Settings) -> None:
    r = client.post(JOBS, files={"files": ("smith_john.npy", npy_bytes([1]))}, data={"task": "addone", "explain": "1"})
    job_id = r.json()["id"]
    wait_job(client, job_id)
    assert json.loads(row(settings, job_id)["options"]) == {"task_options": {}, "explain": True}


def test_a_worker_stops_even_when_its_job_swallows_the_cancellation(tmp_path: Path) -> None:
    """Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives as its work completes; the
    worker must end on ``stop()`` all the same rather than wait for the next job forever."""
    from app.jobs import JobStore, JobWorker

    async def scenario() -> bool:
        store = JobStore(tmp_path)
        store.create("j1", "addone")
        started = asyncio.Event()

        async def swallowing(rec: Any) -> None:
            started.set()
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                return  # what a library racing the cancellation does

        worker = JobWorker(store, swallowing, workers=1, ttl_s=3600, cleanup_interval_s=3600)
        worker.start(["j1"])
        await started.wait()
        try:
            await asyncio.wait_for(worker.stop(), 5)
            return True
        except TimeoutError:
            return False
        finally:
            store.close()

    assert asyncio.run(scenario()), "the worker kept waiting for jobs after stop()"
