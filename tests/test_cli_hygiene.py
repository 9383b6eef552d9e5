"""CLI hygiene: an unknown task, option or option value fails at once (exit 2, before torch is imported) naming what
exists; help texts are whole at any width and list the tasks that exist. The task catalog the CLI asks (which tasks
exist, their options models) imports nothing heavy, agrees with the task registry and knows the tasks registered at
run time and the task packages dropped in."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from medinfer_testlib import cli_probe, run_python
from typer.testing import CliRunner

import pipelines
from app.cli import _check_task, _check_task_args, app
from pipelines.common import catalog
from pipelines.common import task as task_registry
from pipelines.common.task import get_task, list_tasks

HEAVY = ("torch", "monai")


def _probe(args: list[str], plugins: tuple[Path, ...] = ()) -> tuple[dict, str]:
    return cli_probe(args, HEAVY, plugins)


TASKS = "(tasks: brats, breakhis, ecg, prostate)"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["predict", "nosuch", "x", "-o", "y"], f"error: unknown task 'nosuch' {TASKS}"),
        (["train", "nosuch", "--data", "d", "-o", "r"], f"error: unknown task 'nosuch' {TASKS}"),
        (["synth", "ecgg", "-o", "y"], f"error: unknown task 'ecgg'; did you mean ecg? {TASKS}"),
        (["evaluate", "bratz", "--data", "d"], f"error: unknown task 'bratz'; did you mean brats? {TASKS}"),
        (
            ["train", "brats", "--data", "d", "-o", "r", "--bogus-flag"],
            "error: unknown option --bogus-flag for task brats (its options: --all-cases, --no-all-cases)",
        ),
        (
            ["predict", "ecg", "--nope", "x", "-o", "y"],
            "error: unknown option --nope for task ecg; did you mean --no-pictures? (its options: --sampling-rate, "
            "--signal-unit, --explain-labels, --pictures, --no-pictures)",
        ),
        (
            ["evaluate", "prostate", "--data", "d", "--all-cases"],
            "error: unknown option --all-cases for task prostate (its options: --tta, --no-tta, --overlap, "
            "--sw-batch-size, --overlay, --no-overlay, --dicom-seg, --no-dicom-seg, --largest-component, "
            "--no-largest-component)",
        ),
        (
            ["train", "breakhis", "--data", "d", "-o", "r", "--target", "tumour"],
            "error: task breakhis: option 'target': Input should be 'binary' or 'subtype' (got 'tumour')",
        ),
        (
            ["predict", "ecg", "x", "-o", "y", "--sampling-rate", "360.0001"],
            "error: task ecg: option 'sampling_rate': Value error, sampling rate 360.0001 Hz converts to 100 Hz only "
            "approximately (polyphase factors 1000000/3600001, limit 10000), which would stretch time; give the "
            "exact rate (e.g. 360 rather than 360.0001) (got '360.0001')",
        ),
        (
            ["predict", "brats", "x", "-o", "y", "--option", "bogus=1"],
            "error: unknown option --bogus for task brats (its options: --tta, --no-tta, --overlap, --sw-batch-size, "
            "--overlay, --no-overlay, --dicom-seg, --no-dicom-seg, --labels)",
        ),
        (["predict", "ecg", "-o", "y", "--sampling-rate", "100"], "error: no inputs given"),
        (["train", "ecg", "--data", "d", "-o", "r", "stray"], "error: unexpected argument(s): stray"),
    ],
)
def test_unknown_task_or_option_fails_before_heavy_imports(args: list[str], message: str) -> None:
    out, stderr = _probe(args)
    assert out["code"] == 2
    assert out["imported"] == []
    assert message in stderr.splitlines()


# a task of its own, for the registered-at-run-time and dropped-in cases; the CLI's early checks never run it
PLUGIN_TASK = """
from pydantic import Field

from pipelines.common.config import TaskOptions
from pipelines.common.task import Task, register_task


class PluginOptions(TaskOptions):
    gain: float = Field(1.0, gt=0, description="Gain.")
    clamp: bool = Field(False, description="Clamp.")


class PluginTrainOptions(TaskOptions):
    rounds: int = Field(1, ge=1, description="Rounds.")


class PluginTask(Task):
    name = "NAME"
    title = "a plug-in task of the CLI tests"
    options_model = PluginOptions
    train_options_model = PluginTrainOptions
    contract = None

    def _unused(self, *args, **kwargs):
        raise AssertionError("the CLI's early checks never run a task")

    generate = evaluate = collect_inputs = load_predictor = example_inputs = _unused


register_task(PluginTask())
"""
PLUGIN_FLAGS = "--gain, --clamp, --no-clamp"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task registry, restored after the test (the tasks a test registers are gone again). Every task on disk
    is registered first: a task module imported during the test would not register its task again."""
    list_tasks()
    monkeypatch.setattr(task_registry, "_TASKS", dict(task_registry._TASKS))
    monkeypatch.setattr(task_registry, "_discovered", task_registry._discovered)


def _plugin_file(folder: Path, name: str, file: str = "plugin_task.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file
    path.write_text(PLUGIN_TASK.replace("NAME", name), encoding="utf-8")
    return path


def _run_file(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(f"_plugin_{path.parent.name}", path)
    assert spec is not None
    assert spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_catalog_and_options_modules_import_nothing_heavy() -> None:
    """The catalog and every task's options module: pydantic and the standard library only (no torch, MONAI, numpy,
    SciPy or ``models``), and not the task registry's module either."""
    code = (
        "import json, sys\n"
        "from pipelines.common import catalog\n"
        "models = {name: [m.__name__ for m in catalog.options_models(name)] for name in catalog.task_names()}\n"
        "heavy = ('torch', 'monai', 'numpy', 'scipy', 'pandas', 'models', 'pipelines.common.task')\n"
        "print(json.dumps({'models': models, 'loaded': [m for m in heavy if m in sys.modules]}))\n"
    )
    res = run_python("-c", code)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert sorted(out["models"]) == list_tasks()
    assert out["models"]["brats"] == ["BratsOptions", "BratsTrainOptions"]


def test_an_unknown_task_s_suggestions_load_no_task() -> None:
    """``get_task`` suggests close names from the catalog, without importing a task module (nor torch)."""
    code = (
        "import sys\n"
        "from pipelines.common.task import get_task\n"
        "try:\n"
        "    get_task('prostat')\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
        "print(sorted(m for m in sys.modules if m.endswith('.task') or m in ('torch', 'monai')))\n"
    )
    res = run_python("-c", code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["unknown task 'prostat'; did you mean prostate?", "['pipelines.common.task']"]


def test_catalog_agrees_with_the_registry() -> None:
    """The catalog's task names are the registry's tasks, and its options models are each task's own."""
    assert catalog.task_names() == list_tasks()
    for name in list_tasks():
        task = get_task(name)
        assert catalog.options_models(name) == (task.options_model, task.train_options_model)
    with pytest.raises(LookupError, match="unknown task 'nosuch'"):
        catalog.options_models("nosuch")


@pytest.mark.usefixtures("registry")
def test_a_task_registered_at_run_time_is_known_with_its_flags(tmp_path: Path) -> None:
    assert "plugin" not in catalog.task_names()
    with pytest.raises(typer.Exit):
        _check_task("plugin")
    _run_file(_plugin_file(tmp_path, "plugin"))
    assert "plugin" in catalog.task_names()
    _check_task("plugin")
    assert _check_task_args("plugin", ["--gain", "2", "in.npy", "--no-clamp"]) == ["in.npy"]
    assert _check_task_args("plugin", ["--rounds", "3"], train=True) == []
    with pytest.raises(typer.Exit) as bad:
        _check_task_args("plugin", ["--rounds", "3"])
    assert bad.value.exit_code == 2
    result = CliRunner().invoke(app, ["predict", "plugin", "x", "-o", str(tmp_path / "out"), "--bogus"])
    assert result.exit_code == 2
    assert f"unknown option --bogus for task plugin (its options: {PLUGIN_FLAGS})" in result.output
    result = CliRunner().invoke(app, ["predict", "plugin", "x", "-o", str(tmp_path / "out"), "--gain", "-1"])
    assert result.exit_code == 2
    assert "task plugin: option 'gain': Input should be greater than 0" in result.output


def test_a_registered_task_s_flags_are_checked_before_heavy_imports(tmp_path: Path) -> None:
    plugin = _plugin_file(tmp_path, "plugin")
    out, stderr = _probe(["train", "plugin", "--data", "d", "-o", "r", "--gain", "2"], (plugin,))
    assert out["code"] == 2
    assert out["imported"] == []
    assert "error: unknown option --gain for task plugin (its options: --rounds)" in stderr.splitlines()


@pytest.fixture
def dropped_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: None) -> Iterator[Path]:
    """A folder searched for task packages beside ``pipelines``'s own (a task package dropped in); its modules are
    forgotten after the test."""
    folder = tmp_path / "more_pipelines"
    folder.mkdir()
    monkeypatch.setattr(pipelines, "__path__", [*pipelines.__path__, str(folder)])
    yield folder
    for name in [m for m in sys.modules if m.startswith("pipelines.dropin")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def test_a_dropped_in_task_package_is_found_by_one_rule(dropped_in: Path) -> None:
    """A package with a ``task`` module is a task for the catalog, ``get_task`` and ``list_tasks`` alike; without an
    ``options`` module its options models are read from the task, which is then loaded."""
    _plugin_file(dropped_in / "dropin_one", "dropin_one", file="task.py")
    (dropped_in / "dropin_one" / "__init__.py").write_text("", encoding="utf-8")
    (dropped_in / "dropin_none").mkdir()
    (dropped_in / "dropin_none" / "__init__.py").write_text("", encoding="utf-8")
    importlib.invalidate_caches()
    assert "dropin_one" in catalog.task_packages()
    assert "dropin_none" not in catalog.task_packages(), "a package without a task module is no task"
    assert "pipelines.dropin_one.task" not in sys.modules, "finding a task imports nothing"
    predict_model, train_model = catalog.options_models("dropin_one")
    assert "pipelines.dropin_one.task" in sys.modules
    assert (predict_model.__name__, train_model.__name__) == ("PluginOptions", "PluginTrainOptions")
    assert get_task("dropin_one").options_model is predict_model
    assert "dropin_one" in list_tasks()


def test_an_options_module_must_name_both_models(dropped_in: Path) -> None:
    package = dropped_in / "dropin_two"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "task.py").write_text("raise AssertionError('the task module is not imported')\n", encoding="utf-8")
    (package / "options.py").write_text(
        "from pipelines.common.config import TaskOptions\n\noptions_model = TaskOptions\n", encoding="utf-8"
    )
    importlib.invalidate_caches()
    with pytest.raises(AttributeError, match=r"options\.py: .*\(missing: train_options_model\)"):
        catalog.options_models("dropin_two")


def test_valid_flags_and_values_pass_the_early_check(tmp_path: Path) -> None:
    """Valid flags and values get past the early check to the task, which loads and then wants its checkpoint."""
    result = CliRunner().invoke(
        app,
        ["predict", "brats", "x", "-o", str(tmp_path), "--overlap", "0.25", "--no-tta", "--checkpoint", "none.pt"],
    )
    assert result.exit_code == 2
    assert "none.pt" in result.output  # the checkpoint's message: past every option check


def _command(path: list[str]) -> Any:
    """The click command of ``medinfer PATH...`` (typer ships its own click: duck-typed)."""
    cmd: Any = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _commands() -> list[list[str]]:
    return [[], *([name] for name in _command([]).commands)]


def _squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("columns", ["80", "200"])
@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "medinfer")
def test_help_is_whole_at_any_width(command: list[str], columns: str) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    text = _squeeze(result.output)
    params = _command(command).params
    assert params
    for param in params:
        help_text = getattr(param, "help", None)
        for flag in [*param.opts, *param.secondary_opts] if param.param_type_name == "option" else []:
            assert flag in result.output, f"{flag} missing from {command} --help"
        if help_text:
            assert _squeeze(help_text) in text, f"help of {param.name} cut in {command} --help"


def test_help_lists_the_tasks_that_exist() -> None:
    main = CliRunner().invoke(app, ["--help"]).output
    assert f"one per task: {', '.join(list_tasks())}." in " ".join(main.split())
    assert "four" not in main.lower()
    for command in ("train", "predict", "evaluate"):
        text = CliRunner().invoke(app, [command, "--help"]).output
        assert f"Task: {', '.join(list_tasks())}." in " ".join(text.split())
        train = command == "train"
        for name in list_tasks():
            model = get_task(name).train_options_model if train else get_task(name).options_model
            for field in model.model_fields:
                assert f"--{field.replace('_', '-')}" in text, f"{name}'s {field} missing from {command} --help"
