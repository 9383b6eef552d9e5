"""Shared fixtures: an isolated checkpoints folder, synthetic brats data and one tiny trained brats run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# shared helpers (tests/lib/medinfer_testlib.py) importable from every test module under --import-mode=importlib;
# a folder of its own, so that tests/models never shadows the models package
sys.path.append(str(Path(__file__).resolve().parent / "lib"))


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True, scope="session")
def _isolated_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Never read or write the user's ~/.cache/medinfer during tests."""
    os.environ["MEDINFER_CHECKPOINTS"] = str(tmp_path_factory.mktemp("installed_checkpoints"))


@pytest.fixture(scope="session")
def brats_train_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight synthetic brats cases (2018 naming)."""
    from pipelines.common.task import get_task

    return get_task("brats").synth(tmp_path_factory.mktemp("brats_train"), n=8, seed=0)


@pytest.fixture(scope="session")
def brats_heldout_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three held-out synthetic brats cases (different seed, with DICOM series)."""
    from pipelines.common.task import get_task

    return get_task("brats").synth(tmp_path_factory.mktemp("brats_heldout"), n=3, seed=101, dicom=True)


@pytest.fixture(scope="session")
def brats_tiny_run(brats_train_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny-preset brats run trained through the CLI on the eight synthetic cases (about a minute)."""
    from typer.testing import CliRunner

    from app.cli import app

    run = tmp_path_factory.mktemp("brats_run") / "run"
    result = CliRunner().invoke(
        app, ["train", "brats", "--data", str(brats_train_data), "-o", str(run), "--preset", "tiny", "--epochs", "40"]
    )
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="session")
def brats_random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny brats checkpoint: enough for geometry and I/O tests."""
    from pipelines.common.checkpoint import save_checkpoint
    from pipelines.common.task import get_task

    ckpt = get_task("brats").untrained_checkpoint("tiny")
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("brats_random") / "random.pt")


@pytest.fixture(scope="session")
def breakhis_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic BreaKHis tree: four patients per subtype (two train, one validation, one test in the tiny
    preset's patient-wise split), two images per magnification: 256 images."""
    from pipelines.common.task import get_task

    return get_task("breakhis").synth(tmp_path_factory.mktemp("breakhis") / "data", n=4, seed=0)
