"""ECG fixtures: one synthetic PTB-XL tree and one tiny trained run, shared by the slow tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ecg_synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 synthetic PTB-XL records through the CLI (folds 1-10, both rates)."""
    from typer.testing import CliRunner

    from app.cli import app

    out = tmp_path_factory.mktemp("ecg_data") / "ptbxl"
    res = CliRunner().invoke(app, ["synth", "ecg", "-o", str(out), "--n", "300", "--seed", "0"])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def ecg_tiny_run(ecg_synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole stage sequence with the tiny preset, through the CLI."""
    from typer.testing import CliRunner

    from app.cli import app

    run = tmp_path_factory.mktemp("ecg_run") / "run"
    res = CliRunner().invoke(
        app, ["train", "ecg", "--data", str(ecg_synth_data), "-o", str(run), "--preset", "tiny", "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    return run
