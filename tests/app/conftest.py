"""Fixtures of the service tests: the analytic task, its checkpoint, settings and a live app client."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings

# the suite runs with --import-mode=importlib: make the helper module beside this file importable
sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_testkit  # noqa: E402
from serve_testkit import started_client  # noqa: E402


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


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A client of the real app, started and ready."""
    c = started_client(settings)
    try:
        yield c
    finally:
        c.__exit__(None, None, None)


@pytest.fixture
def start_client() -> Iterator[Callable[..., TestClient]]:
    """Factory of started clients (``started_client``); every one still open is closed at teardown."""
    opened: list[TestClient] = []

    def factory(settings: Settings, **kwargs: object) -> TestClient:
        c = started_client(settings, **kwargs)  # type: ignore[arg-type]
        opened.append(c)
        return c

    yield factory
    for c in opened:
        try:
            c.__exit__(None, None, None)
        except RuntimeError:
            pass
