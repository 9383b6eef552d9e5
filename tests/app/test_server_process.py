"""The real server under uvicorn on a loopback port: predict, a job, SIGKILL mid-job, restart, no job lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import serve_testkit
from serve_testkit import npy_bytes
from typer.testing import CliRunner

from app.cli import app as cli

KIT = str(Path(serve_testkit.__file__).resolve().parent)
# the analytic task lives in the tests: register it, then run the real CLI entry point
LAUNCH = (
    f"import sys; sys.path.insert(0, {KIT!r}); import serve_testkit; serve_testkit.register(); "
    "from app.cli import main; main()"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``medinfer serve`` as a subprocess on 127.0.0.1."""

    def __init__(self, checkpoints: Path, data_dir: Path, log: Path, delay_s: float) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "MEDINFER_TASKS": "addone", "MEDINFER_TEST_DELAY_S": str(delay_s)}
        # outstanding work counts the running input too: one running, one slot for a waiting request
        env.update({"MEDINFER_MAX_QUEUE": "2", "MEDINFER_MAX_BATCH_SIZE": "1"})
        env.pop("MEDINFER_API_KEYS", None)
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "serve", "--host", "127.0.0.1", "--port", str(self.port),
             "--checkpoints", str(checkpoints), "--data-dir", str(data_dir), "--device", "cpu"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server never became ready")

    def get(self, path: str) -> Any:
        return httpx.get(self.base + path, timeout=30)

    def post(self, path: str, **kwargs: Any) -> Any:
        return httpx.post(self.base + path, timeout=30, **kwargs)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def assert_disconnect_frees_the_slot(server: Server) -> None:
    """With one batch running and the one queue slot taken by a client that gives up, a new request gets in."""
    import threading

    url = server.base + "/api/v1/models/addone/predict"
    results: dict[str, Any] = {}

    def running() -> None:
        results["running"] = httpx.post(url, files={"files": ("r.npy", npy_bytes([1]))}, timeout=30).status_code

    t = threading.Thread(target=running)
    t.start()
    time.sleep(0.4)  # now in the device thread
    with pytest.raises(httpx.ReadTimeout):  # queued, then the client hangs up
        httpx.post(url, files={"files": ("q.npy", npy_bytes([2]))}, timeout=0.4)
    while 'medinfer_queue_depth{task="addone"} 0.0' not in server.get("/metrics").text:
        # freed while the first batch still runs: it did not just move on to the device
        assert "running" not in results, "the disconnected request kept its queue slot"
        time.sleep(0.05)
    assert "running" not in results
    late = server.post("/api/v1/models/addone/predict", files={"files": ("l.npy", npy_bytes([3]))})
    assert late.status_code == 200, late.text
    t.join(30)
    assert results["running"] == 200


@pytest.mark.slow
def test_sigkill_mid_job_loses_no_job(checkpoints_dir: Path, tmp_path: Path) -> None:
    data_dir, log = tmp_path / "data", tmp_path / "server.log"
    server = Server(checkpoints_dir, data_dir, log, delay_s=3.0)
    try:
        server.wait_ready()
        r = server.post("/api/v1/models/addone/predict", files={"files": ("a.npy", npy_bytes([1, 2]))})
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["outputs"]["values"] == [2.0, 3.0]
        assert_disconnect_frees_the_slot(server)
        r = server.post("/api/v1/jobs", files={"files": ("j.npy", npy_bytes([41]))}, data={"task": "addone"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        deadline = time.monotonic() + 30
        while server.get(f"/api/v1/jobs/{job_id}").json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.kill()  # mid-job, no chance to clean up

    server = Server(checkpoints_dir, data_dir, log, delay_s=0)
    try:
        server.wait_ready()
        deadline = time.monotonic() + 60
        while (job := server.get(f"/api/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["state"] == "succeeded" or job["error"], job  # finished, or failed with a reason
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 2, job
        result = server.get(f"/api/v1/jobs/{job_id}/result").json()
        assert result["results"][0]["outputs"]["values"] == [42.0]
    finally:
        server.stop()
    text = log.read_text(errors="replace")
    assert "queued again" in text  # the recovery was logged
    assert "Traceback" not in text


def test_serve_refuses_beyond_loopback_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDINFER_API_KEYS", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0" in result.output


def test_serve_rejects_an_unknown_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDINFER_TASKS", "nosuchtask")
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 2
    assert "unknown task 'nosuchtask'" in result.output
