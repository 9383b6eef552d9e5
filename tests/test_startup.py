"""The CLI answers help, version and usage errors without importing the heavy libraries, and knows when the process
started (``report.json``'s ``startup_s``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from medinfer_testlib import cli_probe, run_python

HEAVY = ("torch", "monai", "scipy", "pandas", "wfdb", "pydicom", "matplotlib", "nibabel", "SimpleITK", "sklearn")


def _python(*args: str) -> str:
    """The standard output of a fresh interpreter run in the repository with ``args`` (which must succeed)."""
    res = run_python(*args)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _probe(args: list[str]) -> dict:
    return cli_probe(args, HEAVY)[0]


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["--help"], 0),
        (["--version"], 0),
        (["predict", "--help"], 0),
        (["train", "--help"], 0),
        (["models", "--no-such-option"], 2),
        (["no-such-command"], 2),
        (["predict", "ecg", "in.hea"], 2),  # no -o: a usage error before any task is loaded
        (["predict", "ecg", "in.hea", "-o", "out", "--prefetch", "-1"], 2),
    ],
)
def test_light_commands_import_nothing_heavy(args: list[str], code: int) -> None:
    out = _probe(args)
    assert out["code"] == code
    assert out["imported"] == []


def test_version_is_the_installed_one() -> None:
    from importlib.metadata import version

    stdout = _python("-m", "app.cli", "--version")
    assert stdout.strip() == f"medinfer {version('medinfer')}"


def test_process_start_is_before_the_cli_was_imported() -> None:
    """The start is the process's own (not when ``app.cli`` was imported): a sleep before the import counts where
    the OS tells the start (Linux); elsewhere it is the import."""
    code = (
        "import time; time.sleep(0.5); t = time.time(); from app.cli import process_started_at; "
        "print(t - process_started_at())"
    )
    stdout = _python("-c", code)
    before_import = float(stdout)
    if Path("/proc/self/stat").is_file():
        assert 0.45 <= before_import < 60.0
    else:
        assert before_import <= 0.0


def test_a_task_is_found_without_importing_the_others() -> None:
    """``get_task("ecg")`` imports the ecg task module only; an unknown name still lists every task."""
    code = (
        "import sys\n"
        "from pipelines.common.task import get_task\n"
        "get_task('ecg')\n"
        "print(sorted(m for m in sys.modules if m.startswith('pipelines.') and m.endswith('.task')))\n"
        "try:\n"
        "    get_task('ecgg')\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    stdout = _python("-c", code)
    loaded, message = stdout.strip().splitlines()[-2:]
    assert loaded == "['pipelines.common.task', 'pipelines.ecg.task']"
    assert message == "unknown task 'ecgg'; did you mean ecg?"
