"""Fixtures of the service tests: the analytic task, its checkpoint, settings and a live app client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serve_testkit
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings


@pytest.fixture(scope="session")
def checkpoints_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Installed checkpoints: the analytic task's (real tasks' tests add theirs to their own folders)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    serve_testkit.install(folder)
    return folder


@pytest.fixture
def settings(tmp_path: Path, checkpoints_dir: Path) -> Settings:
    """Small limits so that the size tests are cheap."""
    return Settings(
        checkpoints=checkpoints_dir,
        data_dir=tmp_path / "data",
        tasks="addone",
        device="cpu",
        max_batch_size=4,
        max_batch_delay_ms=5,
        max_upload_mb=2,
        max_unpacked_mb=4,
        max_archive_members=50,
    )


def started_client(settings: Settings, *, wait_ready: bool = True, headers: dict[str, str] | None = None):
    """A ``TestClient`` context of the real app (lifespan run), waiting until ``/readyz`` is 200."""
    client = TestClient(create_app(settings), headers=headers)
    client.__enter__()
    if wait_ready:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            if time.monotonic() > deadline:
                client.__exit__(None, None, None)
                raise RuntimeError(f"service not ready: {client.get('/readyz').json()}")
            time.sleep(0.02)
    return client


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A client of the real app, started and ready."""
    c = started_client(settings)
    try:
        yield c
    finally:
        c.__exit__(None, None, None)
