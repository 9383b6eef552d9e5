"""Asynchronous jobs: submit, poll, result and files, failure reasons, restart recovery, expiry."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_testkit import JOBS, npy_bytes, wait_job

from app.settings import Settings


def submit(client: TestClient, files: list[tuple[str, Any]], **data: Any) -> dict[str, Any]:
    r = client.post(JOBS, files=files, data={"task": "addone", **data})
    assert r.status_code == 202, r.text
    return r.json()


def test_job_lifecycle(client: TestClient) -> None:
    job = submit(client, [("files", ("a.npy", npy_bytes([1, 2]))), ("files", ("b.npy", npy_bytes([5])))], explain="1")
    assert job["state"] in ("queued", "running", "succeeded")
    assert job["links"]["self"] == f"{JOBS}/{job['id']}"
    done = wait_job(client, job["id"])
    assert done["state"] == "succeeded", done
    assert done["progress"] == 1.0
    assert done["attempts"] == 1
    assert done["expires_at"] > done["finished_at"]
    result = client.get(done["links"]["result"]).json()
    values = {r["input"]: r["outputs"]["values"] for r in result["results"]}
    assert values == {"files[0]": [2.0, 3.0], "files[1]": [6.0]}  # uploads by position, in upload order
    roles = {f["role"]: f["url"] for f in result["results"][0]["files"]}
    assert roles["explanation"].endswith("input-000_explanation.json")
    names = {f["name"] for f in result["files"]}
    assert {"input-000_out.npy", "input-001_out.npy", "input-000_explanation.json", "report.json"} <= names
    assert "report.csv" in names
    mask = client.get(next(f["url"] for f in result["results"][1]["files"] if f["role"] == "mask"))
    assert np.load(io.BytesIO(mask.content)).tolist() == [6.0]
    report = client.get(f"{JOBS}/{job['id']}/files/report.json").json()
    assert report["counts"] == {"ok": 2, "error": 0, "skipped": 0}
    metrics = client.get("/metrics").text
    assert 'medinfer_jobs{state="succeeded"} 1.0' in metrics


def test_job_with_only_bad_inputs_fails_with_the_reason(client: TestClient) -> None:
    job = submit(client, [("files", ("bad.npy", b"not numpy at all"))])
    done = wait_job(client, job["id"])
    assert done["state"] == "failed"
    assert "files[0]" in done["error"]
    assert "readable array" in done["error"]
    result = client.get(f"{JOBS}/{job['id']}/result").json()
    assert result["results"][0]["status"] == "error"


def test_job_with_no_usable_input_fails(client: TestClient) -> None:
    job = submit(client, [("files", ("notes.txt", b"hello"))])
    done = wait_job(client, job["id"])
    assert done["state"] == "failed"
    assert "files[0]: has an unsupported format" in done["error"]


def test_job_errors(client: TestClient) -> None:
    assert client.get(f"{JOBS}/deadbeef").status_code == 404
    assert client.get(f"{JOBS}/deadbeef/result").json()["error"]["code"] == "not_found"
    assert client.get(f"{JOBS}/..%2F..%2Fetc/result").status_code == 404
    r = client.post(JOBS, files={"files": ("a.npy", npy_bytes([1]))}, data={"task": "nosuch"})
    assert r.status_code == 404
    r = client.post(JOBS, files={"files": ("a.npy", npy_bytes([1]))})
    assert r.status_code == 422
    assert "task" in r.json()["error"]["message"]
    job = submit(client, [("files", ("a.npy", npy_bytes([1])))])
    wait_job(client, job["id"])
    for path in ("../../jobs.sqlite3", "..%2F..%2Fjobs.sqlite3", "nope.npy"):
        r = client.get(f"{JOBS}/{job['id']}/files/{path}")
        assert r.status_code == 404, path


def test_result_of_an_unfinished_job_is_404(
    start_client: Callable[..., TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0.5")
    client = start_client(settings)
    try:
        job = submit(client, [("files", ("a.npy", npy_bytes([1])))])
        wait_job(client, job["id"], states=("running",))
        r = client.get(f"{JOBS}/{job['id']}/result")
        assert r.status_code == 404
        assert "no result yet" in r.json()["error"]["message"]
    finally:
        client.__exit__(None, None, None)


def test_restart_requeues_an_interrupted_job(
    start_client: Callable[..., TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0.3")
    client = start_client(settings)
    job = submit(client, [("files", ("a.npy", npy_bytes([7])))])
    wait_job(client, job["id"], states=("running",))
    client.__exit__(None, None, None)  # shutdown mid-job: the row stays "running"
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0")
    client = start_client(settings)
    try:
        done = wait_job(client, job["id"])
        assert done["state"] == "succeeded"
        assert done["attempts"] == 2
        assert client.get(f"{JOBS}/{job['id']}/result").json()["results"][0]["outputs"]["values"] == [8.0]
    finally:
        client.__exit__(None, None, None)


def test_restart_fails_a_job_that_keeps_dying(
    start_client: Callable[..., TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"job_max_attempts": 1})
    monkeypatch.setenv("MEDINFER_TEST_DELAY_S", "0.3")
    client = start_client(settings)
    job = submit(client, [("files", ("a.npy", npy_bytes([7])))])
    wait_job(client, job["id"], states=("running",))
    client.__exit__(None, None, None)
    client = start_client(settings)
    try:
        done = client.get(f"{JOBS}/{job['id']}").json()
        assert done["state"] == "failed"
        assert "server stopped while running this job" in done["error"]
    finally:
        client.__exit__(None, None, None)


def test_old_results_expire(start_client: Callable[..., TestClient], settings: Settings) -> None:
    settings = settings.model_copy(update={"result_ttl_s": 0.3, "cleanup_interval_s": 0.1})
    client = start_client(settings)
    try:
        job = submit(client, [("files", ("a.npy", npy_bytes([1])))])
        wait_job(client, job["id"])
        assert client.get(f"{JOBS}/{job['id']}/files/input-000_out.npy").status_code == 200
        expired = wait_job(client, job["id"], states=("expired",), timeout=10)
        assert expired["state"] == "expired"
        r = client.get(f"{JOBS}/{job['id']}/result")
        assert r.status_code == 404
        assert "expired" in r.json()["error"]["message"]
        assert client.get(f"{JOBS}/{job['id']}/files/input-000_out.npy").status_code == 404
        assert not (Path(settings.data_dir) / "jobs" / job["id"]).exists()
    finally:
        client.__exit__(None, None, None)


def test_store_is_sqlite_under_the_data_dir(client: TestClient, settings: Settings) -> None:
    job = submit(client, [("files", ("a.npy", npy_bytes([1])))])
    wait_job(client, job["id"])
    with sqlite3.connect(Path(settings.data_dir) / "jobs.sqlite3") as conn:
        (state,) = conn.execute("SELECT state FROM jobs WHERE id = ?", (job["id"],)).fetchone()
    assert state == "succeeded"
    # the upload was removed once the job ended; only outputs remain
    assert not (Path(settings.data_dir) / "jobs" / job["id"] / "input").exists()
