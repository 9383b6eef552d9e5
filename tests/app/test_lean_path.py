"""What a prediction costs the service beside the model: per-stage histograms, thread budgets, work done once."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import serve_testkit
from fastapi.testclient import TestClient
from serve_testkit import JOBS, npy_bytes, wait_job

from app.jobs import JobStore
from app.settings import Settings

PREDICT = "/api/v1/models/addone/predict"
STAGES = ("parse", "store", "group", "decode_wait", "prepare", "queue", "forward", "finish")


def stage_counts(metrics: str, task: str) -> dict[str, float]:
    """``medinfer_stage_seconds_count`` of each stage of ``task``."""
    pattern = rf'medinfer_stage_seconds_count{{stage="(\w+)",task="{task}"}} ([0-9.e+]+)'
    return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, metrics)}


def test_every_stage_of_a_prediction_is_a_histogram(client: TestClient) -> None:
    before = stage_counts(client.get("/metrics").text, "addone")
    files = [("files", (f"v{i}.npy", npy_bytes([i]))) for i in range(3)]
    r = client.post(PREDICT, files=files)
    assert r.status_code == 200, r.text
    after = stage_counts(client.get("/metrics").text, "addone")
    grew = {stage: after.get(stage, 0.0) - before.get(stage, 0.0) for stage in STAGES}
    # one request: its body parsed, stored and grouped once; three inputs each prepared, queued and finished
    assert grew["parse"] == 1
    assert grew["store"] == 1
    assert grew["group"] == 1
    assert grew["prepare"] == 3
    assert grew["queue"] == 3
    assert grew["finish"] == 3
    assert grew["decode_wait"] == 1 + 3 + 3  # grouping, and each input's prepare and finish
    assert 1 <= grew["forward"] <= 3  # one per batch


@pytest.fixture
def restore_torch_threads() -> Iterator[None]:
    import torch
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    with threadpool_limits(limits=None):  # restores the BLAS limits on exit
        yield
    torch.set_num_threads(n)


@pytest.mark.usefixtures("restore_torch_threads")
def test_readyz_shows_the_thread_budgets_set_at_start(
    start_client: Callable[..., TestClient], settings: Settings
) -> None:
    from threadpoolctl import threadpool_info

    client = start_client(settings.model_copy(update={"torch_threads": 1, "decode_workers": 3}))
    body = client.get("/readyz").json()
    threads = body["threads"]
    assert threads["torch_intra_op"] == 1
    assert body["models"]["addone"]["torch_threads"] == 1  # as measured in the model's device thread
    assert threads["decode_workers"] == 3
    assert threads["cpu_count"] >= 1
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    assert blas, "numpy's BLAS is loaded"
    assert all(i["num_threads"] == 1 for i in blas)  # the default blas_threads
    assert sorted(threads["blas"].values()) == [1] * len(threads["blas"])


@pytest.mark.usefixtures("restore_torch_threads")
def test_torch_threads_zero_leaves_the_decode_threads_their_cores(
    start_client: Callable[..., TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import app.runtime

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(app.runtime, "usable_cores", lambda: 8)
    client = start_client(settings.model_copy(update={"torch_threads": 0, "decode_workers": 3}))
    body = client.get("/readyz").json()
    assert body["threads"]["torch_intra_op"] == 5 == body["models"]["addone"]["torch_threads"]
    assert body["threads"]["cpu_count"] == 8


@pytest.mark.parametrize(("cores", "omp", "expected"), [(2, None, 1), (1, None, 1), (16, None, 14), (2, "2", 2)])
def test_the_default_torch_threads(monkeypatch: pytest.MonkeyPatch, cores: int, omp: str | None, expected: int) -> None:
    """0 means OMP_NUM_THREADS when the environment sets it, else the cores beside 2 decode workers (at least 1)."""
    import app.runtime

    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    monkeypatch.setattr(app.runtime, "usable_cores", lambda: cores)
    assert app.runtime.torch_threads(Settings(torch_threads=0, decode_workers=2)) == expected
    assert app.runtime.torch_threads(Settings(torch_threads=3, decode_workers=2)) == 3


def test_a_job_is_grouped_once_and_its_storage_walked_once(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {"group": 0, "walk": 0}
    task_class = serve_testkit.AddOneTask
    original_collect = task_class.collect_inputs
    original_usage = JobStore.disk_usage

    def counting_collect(self: Any, inputs: Any) -> Any:
        calls["group"] += 1
        return original_collect(self, inputs)

    def counting_usage(self: JobStore) -> int:
        calls["walk"] += 1
        return original_usage(self)

    monkeypatch.setattr(task_class, "collect_inputs", counting_collect)
    monkeypatch.setattr(JobStore, "disk_usage", counting_usage)
    files = [("files", (f"v{i}.npy", npy_bytes([i]))) for i in range(3)]
    r = client.post(JOBS, files=files, data={"task": "addone"})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded", job
    assert calls == {"group": 1, "walk": 1}
    result = client.get(f"{JOBS}/{job['id']}/result").json()
    assert [res["status"] for res in result["results"]] == ["ok"] * 3


def test_a_job_recovered_without_its_grouping_groups_again(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grouping made at submission lives in memory: a job without one (after a restart) is grouped anew."""
    service = client.app.state.service  # type: ignore[attr-defined]
    monkeypatch.setattr(service, "_grouped", _Forgetful())
    files = [("files", (f"v{i}.npy", npy_bytes([i]))) for i in range(2)]
    r = client.post(JOBS, files=files, data={"task": "addone"})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "succeeded", job
    result = client.get(f"{JOBS}/{job['id']}/result").json()
    assert [res["outputs"]["values"] for res in result["results"]] == [[1.0], [2.0]]


class _Forgetful(dict):  # type: ignore[type-arg]
    """A mapping that keeps nothing (as after a restart)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        return None
