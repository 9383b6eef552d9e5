"""``medinfer serve --ray``: the service on a local Ray Serve instance answers as the single-process service does.

The test-only ``addone`` task reaches the Ray workers through a worker setup hook (``serve_testkit.register`` on
``PYTHONPATH``); ``MEDINFER_TEST_DELAY_S`` slows the replicas' batches (only theirs: it is set in the workers'
environment), so that concurrent requests batch together and fill the deployment's queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray import serve
from ray.serve.exceptions import BackPressureError
from serve_testkit import AddOneTask, npy_bytes, started_client
from typer.testing import CliRunner

from app import cli
from app.batching import WorkLedger
from app.errors import QueueFullError
from app.metrics import Metrics
from app.ray_serve import (
    APP_NAME,
    Forwarded,
    RayModelRuntime,
    RemoteFailure,
    RemoteModelError,
    TaskModel,
    build_app,
    deployment_options,
    forward_payload,
    local_error,
    portable_error,
)
from app.runtime import DeviceThreads, ServedItem
from app.settings import Settings
from pipelines.common.checkpoint import load_checkpoint
from pipelines.common.errors import InputError
from pipelines.common.task import Prepared

KEY = "k" * 24
AUTH = {"Authorization": f"Bearer {KEY}"}
PREDICT = "/api/v1/models/addone/predict"
DELAY_S = 0.3  # each replica batch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(checkpoints: Path, data_dir: Path, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "checkpoints": checkpoints,
        "data_dir": data_dir,
        "tasks": "addone",
        "device": "cpu",
        "api_keys": KEY,
        "max_batch_size": 2,
        "max_batch_delay_ms": 100,
        "decode_workers": 2,
    }
    values.update(kw)
    return Settings(**values)


@pytest.fixture(scope="module")
def ray_serve_url(checkpoints_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:
    """The addone service on a local Ray Serve (2 CPUs): its base URL and settings."""
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        runtime_env={
            "worker_process_setup_hook": "serve_testkit.register",
            "env_vars": {"PYTHONPATH": path, "MEDINFER_TEST_DELAY_S": str(DELAY_S)},
        },
    )
    try:
        port = _free_port()
        settings = _settings(checkpoints_dir, tmp_path_factory.mktemp("ray_data"), port=port, ray_max_queued_requests=2)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(f"{url}/readyz").text
            time.sleep(0.1)
        yield url, settings
    finally:
        serve.shutdown()
        ray.shutdown()


def _comparable(body: dict[str, Any]) -> dict[str, Any]:
    """A prediction without what differs from run to run (times, record ids and links)."""
    results = [{k: v for k, v in r.items() if k not in ("seconds", "timings", "files")} for r in body["results"]]
    return {"task": body["task"], "version": body["checkpoint_version"], "model": body["model"], "results": results}


@pytest.mark.slow
def test_ray_serve_answers_as_the_single_process_service(
    ray_serve_url: tuple[str, Settings], checkpoints_dir: Path, tmp_path: Path
) -> None:
    url, _ = ray_serve_url
    ready = httpx.get(f"{url}/readyz").json()
    assert ready["ready"] is True
    assert ready["models"]["addone"]["state"] == "ready"
    assert ready["models"]["addone"]["device"] == "cpu"

    files = [("files", ("a.npy", npy_bytes([1, 2, 3]))), ("files", ("b.npy", npy_bytes([13, 0])))]
    assert httpx.post(f"{url}{PREDICT}", files=files).status_code == 401  # the API keys hold behind the proxy
    remote = httpx.post(f"{url}{PREDICT}", files=files, headers=AUTH, timeout=60)
    local_client = started_client(_settings(checkpoints_dir, tmp_path / "local"), headers=AUTH)
    try:
        local = local_client.post(PREDICT, files=files)
        listing = local_client.get("/api/v1/models/addone").json()
        assert local_client.app.state.service.runtimes["addone"].max_batch_size == listing["max_batch_size"] == 2
    finally:
        local_client.__exit__(None, None, None)
    assert remote.status_code == local.status_code == 200
    assert _comparable(remote.json()) == _comparable(local.json())
    by_ref = {r["input"]: r for r in remote.json()["results"]}
    assert by_ref["files[0]"]["outputs"]["values"] == [2.0, 3.0, 4.0]
    # the unlucky input failed alone in the replica (its batch re-run one by one), with the same message
    assert by_ref["files[1]"]["status"] == "error"
    assert "unlucky input" in by_ref["files[1]"]["error"]

    # a written file is served by the ingress (finish ran there, in its data folder)
    explained = httpx.post(f"{url}/api/v1/models/addone/explain", files=[files[0]], headers=AUTH, timeout=60).json()
    links = {f["role"]: f["url"] for f in explained["results"][0]["files"]}
    assert httpx.get(f"{url}{links['explanation']}", headers=AUTH).json() == {"saliency": [1.0, 1.0, 1.0]}
    remote_listing = httpx.get(f"{url}/api/v1/models/addone", headers=AUTH).json()
    assert remote_listing["checkpoint_version"] == listing["checkpoint_version"]


@pytest.mark.slow
def test_ray_serve_batches_and_answers_a_full_queue_with_503(ray_serve_url: tuple[str, Settings]) -> None:
    url, _ = ray_serve_url

    async def burst(n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as client:
            calls = [client.post(PREDICT, files={"files": ("v.npy", npy_bytes([float(i)]))}) for i in range(n)]
            return list(await asyncio.gather(*calls))

    # 2 batches of 2 running or filling, 2 waiting: of 16 at once, some are refused
    responses = asyncio.run(burst(16))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes
    assert 503 in codes
    assert set(codes) == {200, 503}, [r.text for r in responses if r.status_code not in (200, 503)]
    refused = next(r for r in responses if r.status_code == 503)
    assert int(refused.headers["Retry-After"]) >= 1
    body = refused.json()
    assert body["error"]["code"] == "overloaded"
    assert "model replica is busy" in body["error"]["message"]
    ok = [r.json()["results"][0] for r in responses if r.status_code == 200]
    assert all(r["status"] == "ok" for r in ok)
    assert max(r["timings"]["batch_size"] for r in ok) == 2.0  # Ray Serve's batching put two inputs in one pass
    metrics = httpx.get(f"{url}/metrics").text  # the ingress records the replicas' batches
    batches = re.search(r'^medinfer_batch_size_count\{task="addone"\} (\S+)$', metrics, re.MULTILINE)
    assert batches is not None
    assert float(batches.group(1)) >= 1
    assert re.search(r'^medinfer_stage_seconds_count\{stage="forward",task="addone"\} \S+$', metrics, re.MULTILINE)


# -- without a cluster -------------------------------------------------------------------------------------------
def test_deployment_options_follow_the_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        ray_replicas={"ecg": 3},
        ray_gpus_per_replica=0.5,
        ray_cpus_per_replica=2,
        ray_max_queued_requests=16,
        max_batch_size=4,
    )
    ecg = deployment_options(settings, "ecg")
    assert ecg == {
        "name": "model-ecg",
        "num_replicas": 3,
        "max_ongoing_requests": 8,
        "max_queued_requests": 16,
        "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 0.5},
    }
    assert deployment_options(settings, "brats")["num_replicas"] == 1


def test_replicas_of_a_task_not_served_are_refused(checkpoints_dir: Path, tmp_path: Path) -> None:
    settings = _settings(checkpoints_dir, tmp_path, ray_replicas={"ecgg": 2})
    with pytest.raises(ValueError, match="MEDINFER_RAY_REPLICAS names ecgg, not served"):
        build_app(settings)
    with pytest.raises(ValueError, match="at least 1 replica"):
        Settings(ray_replicas={"ecg": 0})
    with pytest.raises(ValueError, match="Ray Serve has no 0"):
        Settings(ray_max_queued_requests=0)


def test_remote_failures_keep_their_kind() -> None:
    back = local_error(portable_error(InputError("/up/x.npy", "is empty")))
    assert isinstance(back, InputError)
    assert (back.path, back.problem) == ("/up/x.npy", "is empty")
    value = local_error(portable_error(ValueError("bad shape")))
    assert type(value) is ValueError
    assert str(value) == "bad shape"
    try:
        raise KeyError("weights")
    except KeyError as exc:
        internal = local_error(portable_error(exc))
    assert type(internal).__name__ == "KeyError"  # the message names the type as the single process does
    assert not isinstance(internal, ValueError)
    assert "in the model replica" in str(internal)
    assert "Traceback" in str(internal)


def test_forward_payload_leaves_the_redaction_and_context_behind() -> None:
    item = ServedItem(name="input-000", paths={"x": Path("/tmp/u/a.npy")}, ref="files[0]", redact=lambda s: s)
    prepared = Prepared(item, [1.0], {"ref": "big"}, {"read": 0.1}, None)
    payload = forward_payload(prepared)
    assert isinstance(payload.item, ServedItem)
    assert payload.item.redact is None
    assert payload.item.name == "input-000"
    assert payload.context == {}
    assert payload.timings == {"read": 0.1}
    assert payload.data == [1.0]


class _Method:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.calls = 0

    async def remote(self, *args: Any) -> Any:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


class _Handle:
    def __init__(self, answers: list[Any], info: dict[str, Any] | None = None) -> None:
        self.forward = _Method(answers)
        self.info = _Method([info])


def _runtime(tmp_path: Path, handle: _Handle) -> RayModelRuntime:
    settings = Settings(data_dir=tmp_path, ray_max_queued_requests=4, retry_after_s=2)
    return RayModelRuntime(AddOneTask(), tmp_path / "x.pt", settings, DeviceThreads(), Metrics(), handle=handle)


def test_back_pressure_is_a_queue_full_error_for_a_request_and_a_wait_for_a_job(tmp_path: Path) -> None:
    item = ServedItem(name="input-000", paths={}, ref="files[0]")
    prepared = Prepared(item, [1.0], {}, {}, None)
    ledger = WorkLedger("addone", max_items=4, max_bytes=1 << 20)

    full = BackPressureError(num_queued_requests=4, max_queued_requests=4)
    rt = _runtime(tmp_path, _Handle([full]))
    claim = ledger.claim(1, 0)
    with pytest.raises(QueueFullError) as refused:
        asyncio.run(rt._batch(prepared, claim, wait_for_slot=False))
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "2"}
    assert "4 input(s) already wait" in refused.value.message
    claim.let_go()
    assert ledger.items == 0  # the claim was held for the call and let go of with it

    answer = Forwarded(raw="out", timings={"infer": 0.5}, compute_s=0.2, batch_size=2)
    handle = _Handle([full, full, answer])
    rt = _runtime(tmp_path, handle)
    raw, stats = asyncio.run(rt._batch(prepared, ledger.claim(1, 0), wait_for_slot=True))
    assert handle.forward.calls == 3  # a job's input waited for room
    assert raw == "out"
    assert (stats.queue_s, stats.compute_s, stats.batch_size) == (0.0, 0.2, 2)  # no time beside the forward pass
    assert prepared.timings == {"infer": 0.5}

    # an error raised by the call itself is Ray's, never the input's fault (a ValueError would read as a 400)
    rt = _runtime(tmp_path, _Handle([ValueError("zip() argument 2 is shorter")]))
    with pytest.raises(RemoteModelError, match="model deployment failed") as broken:
        asyncio.run(rt._batch(prepared, ledger.claim(1, 0), wait_for_slot=False))
    assert not isinstance(broken.value, ValueError)

    failed = Forwarded(failure=RemoteFailure("input", "InputError", "unlucky input", "input-000"))
    rt = _runtime(tmp_path, _Handle([failed]))
    with pytest.raises(InputError, match="unlucky input"):
        asyncio.run(rt._batch(prepared, ledger.claim(1, 0), wait_for_slot=False))


def test_cli_serve_ray_runs_the_ray_server(monkeypatch: pytest.MonkeyPatch, checkpoints_dir: Path, tmp_path: Path):
    import app.ray_serve

    seen: dict[str, Any] = {}

    def fake(settings: Settings, *, address: str | None = None, echo: Any = None) -> None:
        seen.update(settings=settings, address=address)

    monkeypatch.setattr(app.ray_serve, "serve_forever", fake)
    monkeypatch.setenv("MEDINFER_TASKS", "addone")
    args = ["serve", "--ray", "--ray-address", "head:6379", "--checkpoints", str(checkpoints_dir)]
    result = CliRunner().invoke(cli.app, [*args, "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen["address"] == "head:6379"
    assert seen["settings"].data_dir == tmp_path

    result = CliRunner().invoke(cli.app, ["serve", "--ray-address", "head:6379", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "--ray-address needs --ray" in result.output


def test_the_ingress_runtime_reports_the_replicas_model(checkpoints_dir: Path, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, device="cpu")
    ckpt = checkpoints_dir / "addone.pt"

    def runtime(info: dict[str, Any]) -> RayModelRuntime:
        handle = _Handle([], info)
        rt = RayModelRuntime(AddOneTask(), ckpt, settings, DeviceThreads(), Metrics(), handle=handle)
        asyncio.run(rt.load())
        return rt

    ok = {"state": "ready", "error": None, "device": "cuda:0", "torch_threads": 3, "max_batch_size": 4}
    rt = runtime({**ok, "version": load_checkpoint(ckpt, task="addone").version})
    assert (rt.state, rt.device, rt.torch_threads, rt.max_batch_size) == ("ready", "cuda:0", 3, 4)
    assert rt.predictor is not None
    assert str(rt.predictor.device) == "cpu"  # the ingress's copy, for prepare and finish

    other = runtime({**ok, "version": "0123abcd"})
    assert other.state == "failed"
    assert other.error is not None
    assert "serves checkpoint 0123abcd" in other.error

    broken = runtime({**ok, "state": "failed", "error": "CheckpointError: addone.pt: not a checkpoint", "version": "x"})
    assert broken.state == "failed"
    assert (
        broken.error
        == "RuntimeError: its model deployment failed to load: CheckpointError: addone.pt: not a checkpoint"
    )


def test_a_replica_that_cannot_load_reports_why(tmp_path: Path) -> None:
    bad = tmp_path / "addone.pt"
    bad.write_bytes(b"not a checkpoint")
    model = TaskModel("addone", str(bad), Settings(data_dir=tmp_path, device="cpu"))
    info = model.info()
    assert info["state"] == "failed"
    assert str(tmp_path) not in info["error"]  # server folders are cut from the reason
    assert "addone.pt" in info["error"]
    (answer,) = model._run_each([Prepared(ServedItem(name="input-000", paths={}), [1.0])])
    assert isinstance(answer, RuntimeError)
