"""Where tasks live and which options each takes, known without importing a task (so without torch).

A task ``name`` is a package ``pipelines/<name>/`` holding

- ``task.py``: defines the :class:`~pipelines.common.task.Task` and registers it (it imports torch, MONAI and the
  task's network: it is only imported to run the task);
- ``options.py``: the task's options models, as ``options_model`` (``medinfer predict``/``evaluate`` flags and
  the service's ``options`` field) and ``train_options_model`` (``medinfer train`` flags beyond the config). It
  imports pydantic and torch-free modules only, so that the CLI refuses an unknown flag at once.

A task registered at run time (:func:`~pipelines.common.task.register_task`: the tests' analytic task, a
plug-in) is known too, once registered, with the options models it declares. This module never imports
``pipelines.common.task`` (which imports the task interface's dependencies): it reads the registry only where that
module is already loaded, since nothing can have been registered otherwise.

:func:`~pipelines.common.task.list_tasks` and :func:`~pipelines.common.task.get_task` find task modules by the
same rule (:func:`task_packages`), so one place says where tasks live.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.common.config import TaskOptions

__all__ = ["OPTIONS_MODULE", "TASK_MODULE", "options_models", "task_module", "task_names", "task_packages"]

#: the module of a task package that defines and registers the task
TASK_MODULE = "task"
#: the module of a task package that defines its options models (torch-free)
OPTIONS_MODULE = "options"
#: the package whose sub-packages are tasks
_PACKAGE = __name__.rsplit(".", 2)[0]
#: the module holding the task registry (read, never imported, here)
_REGISTRY = f"{_PACKAGE}.common.task"


def task_module(name: str) -> str:
    """The module that defines and registers task ``name`` (``pipelines.<name>.task``)."""
    return f"{_PACKAGE}.{name}.{TASK_MODULE}"


def task_packages() -> list[str]:
    """The tasks found on disk, sorted: each sub-package of ``pipelines`` (but ``common``) with a ``task`` module.

    Nothing is imported: the package folders are listed by their finders.
    """
    package = importlib.import_module(_PACKAGE)
    names = set()
    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg or info.name == "common" or not info.name.isidentifier():
            continue
        spec = info.module_finder.find_spec(f"{_PACKAGE}.{info.name}", None)
        locations = spec.submodule_search_locations if spec is not None else None
        if locations and any(sub.name == TASK_MODULE for sub in pkgutil.iter_modules(locations)):
            names.add(info.name)
    return sorted(names)


def _registered() -> dict[str, Any]:
    """The tasks registered so far (none when the registry's module is not loaded: nothing can be registered)."""
    module = sys.modules.get(_REGISTRY)
    registered = getattr(module, "registered_tasks", None)
    return registered() if registered is not None else {}


def task_names() -> list[str]:
    """Every task, sorted: those found on disk (:func:`task_packages`) and those registered at run time."""
    return sorted({*task_packages(), *_registered()})


def options_models(name: str) -> tuple[type[TaskOptions], type[TaskOptions]]:
    """Task ``name``'s options models ``(predict/evaluate options, train options)``.

    A registered task answers with its own class attributes; a task on disk with its ``options`` module, which alone
    is imported (no torch). A task package without one is loaded to read them from its task (slow, but right).

    Raises:
        LookupError: ``name`` is no task (see :func:`task_names`).
        AttributeError: the task's ``options`` module lacks ``options_model`` or ``train_options_model``.
    """
    task = _registered().get(name)
    if task is not None:
        return task.options_model, task.train_options_model
    if name not in task_packages():
        raise LookupError(f"unknown task {name!r}")
    module_name = f"{_PACKAGE}.{name}.{OPTIONS_MODULE}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        from pipelines.common.task import get_task

        loaded = get_task(name)
        return loaded.options_model, loaded.train_options_model
    missing = [attr for attr in ("options_model", "train_options_model") if not hasattr(module, attr)]
    if missing:
        raise AttributeError(
            f"{module.__file__}: a task's options module defines options_model and train_options_model "
            f"(missing: {', '.join(missing)})"
        )
    return module.options_model, module.train_options_model
