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
import serve_testkit
from serve_testkit import started_client


@pytest.fixture(autouse=True, scope="module")
def _analytic_task() -> Iterator[None]:
    """The test-only ``addone`` task is registered while a service test module runs, and only then."""
    serve_testkit.register()
    yield
    serve_testkit.unregister()


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


def _tiny_checkpoints(name: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a tiny trained checkpoint of a real task (skips when the task has not landed).

    It is the task's own ``train`` with the tiny preset for one epoch on four synthetic inputs: a real
    trained checkpoint in seconds.
    """
    from pipelines.common.checkpoint import install_checkpoint
    from pipelines.common.task import TrainOptions, get_task, list_tasks

    if name not in list_tasks():
        pytest.skip(f"task {name!r} has not landed")
    task = get_task(name)
    work = tmp_path_factory.mktemp(f"{name}_serve")
    data = task.synth(work / "data", n=4, seed=0)
    run = task.train(TrainOptions(data_dir=data, out_dir=work / "run", preset="tiny", epochs=1, device="cpu"))
    folder = work / "checkpoints"
    install_checkpoint(run, name, folder)
    return folder


@pytest.fixture(scope="session")
def brats_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Installed tiny brats checkpoint."""
    return _tiny_checkpoints("brats", tmp_path_factory)


@pytest.fixture(scope="session")
def ecg_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Installed tiny ecg checkpoint."""
    return _tiny_checkpoints("ecg", tmp_path_factory)


def real_settings(task: str, checkpoints: Path, data_dir: Path, **kw: object) -> Settings:
    """Settings serving one real task on the CPU."""
    base: dict[str, object] = {
        "checkpoints": checkpoints,
        "data_dir": data_dir,
        "tasks": task,
        "device": "cpu",
        "max_batch_delay_ms": 5,
        "sw_batch_size": 2,
        "max_upload_mb": 64,
        "max_unpacked_mb": 128,
    }
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def brats_client(brats_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A ready app serving the tiny brats checkpoint (one per test module)."""
    c = started_client(real_settings("brats", brats_checkpoints, tmp_path_factory.mktemp("brats_data")))
    yield c
    c.__exit__(None, None, None)


@pytest.fixture(scope="module")
def ecg_client(ecg_checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """A ready app serving the tiny ecg checkpoint (one per test module)."""
    c = started_client(real_settings("ecg", ecg_checkpoints, tmp_path_factory.mktemp("ecg_data")))
    yield c
    c.__exit__(None, None, None)
