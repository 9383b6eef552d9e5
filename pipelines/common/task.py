"""The Task interface: everything task-specific lives behind it, and both faces (CLI, service) use only it.

A task module ``pipelines/<name>/task.py`` defines a :class:`Task` subclass and registers an instance with
:func:`register_task`. :func:`get_task` and :func:`list_tasks` discover task packages under ``pipelines``
(any sub-package with a ``task`` module), so adding a task never touches ``app/``.
"""

from __future__ import annotations

import abc
import difflib
import importlib
import importlib.util
import pkgutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.common.checkpoint import Checkpoint


@dataclass(frozen=True)
class InputContract:
    """What a task accepts, as shown by ``medinfer models`` and ``GET /api/v1/models``.

    Args:
        description: one line on what an input is.
        channels: modality or lead names in model order.
        formats: accepted file formats.
        label_names: names of the outputs.
        sampling_rate_hz: the model's rate for signals (``None`` for images).
        notes: anything else a user must know (orientation, spacing, units).
    """

    description: str
    channels: tuple[str, ...]
    formats: tuple[str, ...]
    label_names: tuple[str, ...]
    sampling_rate_hz: float | None = None
    notes: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InputItem:
    """One unit of prediction (a case, a record, an image) as grouped from user paths.

    Args:
        name: display name, used for output file names (no patient identifiers).
        paths: the files that make it up, by role (``{"t1": ..., "flair": ...}`` or ``{"record": ...}``).
        explain: also explain this item (per-request switch for the service; ORed with the options').
    """

    name: str
    paths: dict[str, Path]
    explain: bool = False


@dataclass(frozen=True)
class PredictOptions:
    """Inference options common to every task; a task ignores the ones that do not apply to it.

    Args:
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        batch_size: inputs per forward pass (signals, images) or sliding-window batch (volumes).
        amp: mixed precision on CUDA (never on CPU).
        explain: also write the task's explanation.
        tta: mirror test-time augmentation (volumes).
        labels: output label convention when a task has several (``brats2018``, ``brats2023``).
        overlay: also write a preview PNG.
        overlap: sliding-window overlap (volumes).
        sampling_rate: rate in Hz for signal files that do not carry one (CSV/NPY).
    """

    device: str = "auto"
    batch_size: int = 1
    amp: bool = True
    explain: bool = False
    tta: bool = False
    labels: str | None = None
    overlay: bool = False
    overlap: float = 0.5
    sampling_rate: float | None = None


@dataclass
class TrainOptions:
    """Options of ``medinfer train`` (the typed per-task config is built from these by the task)."""

    data_dir: Path
    out_dir: Path
    preset: str = "full"
    config_path: Path | None = None
    epochs: int | None = None
    device: str = "auto"
    seed: int = 0
    stage: str | None = None


@dataclass
class Prepared:
    """An input read and preprocessed, ready for the forward pass.

    ``data`` is whatever the predictor's ``run`` consumes; ``context`` is what ``finish`` needs to map the
    result back to the input's space (geometry, original header, label convention...).
    """

    item: InputItem
    data: Any
    context: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class Predictor(abc.ABC):
    """A loaded model ready to predict. Offline CLI and service call the same three steps.

    ``prepare`` reads and preprocesses one input (raising :class:`~pipelines.common.errors.InputError`),
    ``run`` does the forward pass on a batch of prepared inputs (volume tasks set ``max_batch = 1`` and batch
    at the sliding-window level), ``finish`` maps a raw output back to the input's space and writes results.
    """

    #: the most prepared inputs ``run`` takes at once
    max_batch: int = 1

    def __init__(self, checkpoint: Checkpoint, options: PredictOptions) -> None:
        import torch

        self.checkpoint = checkpoint
        self.options = options
        self.device = torch.device(resolve_device(options.device))
        self.model = checkpoint.build_model(self.device)

    def move_to(self, device: str) -> None:
        """Move the model (e.g. to ``cpu`` after CUDA ran out of memory)."""
        import torch

        self.device = torch.device(device)
        self.model.to(self.device)

    def wants_explanation(self, item: InputItem) -> bool:
        """Whether to explain this item (the run's option or the item's own switch)."""
        return self.options.explain or item.explain

    @abc.abstractmethod
    def prepare(self, item: InputItem) -> Prepared:
        """Read and preprocess one input."""

    @abc.abstractmethod
    def run(self, batch: Sequence[Prepared]) -> list[Any]:
        """Forward pass on prepared inputs; one raw output per input, in order."""

    @abc.abstractmethod
    def finish(self, prepared: Prepared, raw: Any, out_dir: Path) -> dict[str, Any]:
        """Post-process one output into the input's space, write files under ``out_dir``, return the result."""

    def warmup(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Run one synthetic input through the model (the service's readiness check)."""


class Task(abc.ABC):
    """One published method: its contract and every step from synthetic data to explanation."""

    name: str = ""
    title: str = ""
    data_card: str = ""
    default_model: str = ""

    @property
    @abc.abstractmethod
    def contract(self) -> InputContract:
        """The input contract."""

    @abc.abstractmethod
    def synth(self, out_dir: Path, n: int, seed: int, dicom: bool = False, variant: str | None = None) -> Path:
        """Write a synthetic dataset in the real dataset's on-disk layout; return its root."""

    @abc.abstractmethod
    def train(self, options: TrainOptions) -> Path:
        """Train, write best/last checkpoints, metrics.json, a curve PNG and a model card; return the run dir."""

    @abc.abstractmethod
    def evaluate(self, data_dir: Path, checkpoint: Checkpoint, out_dir: Path, options: PredictOptions) -> dict:
        """Evaluate on a labelled dataset; write per-case CSV and summary JSON; return the summary."""

    @abc.abstractmethod
    def collect_inputs(self, inputs: Sequence[str]) -> list[InputItem]:
        """Group user-given paths (files, folders, globs, ``role=path``) into prediction items.

        Raises:
            InputError: for a path that does not exist or cannot be grouped.
        """

    @abc.abstractmethod
    def load_predictor(self, checkpoint: Checkpoint, options: PredictOptions) -> Predictor:
        """Build a predictor from a checkpoint of this task."""

    def demo_synth_n(self) -> int:
        """How many synthetic inputs ``medinfer demo`` makes for this task."""
        return 8

    @abc.abstractmethod
    def demo_inputs(self, data_dir: Path) -> list[str]:
        """Inputs of a synthetic dataset that ``medinfer demo`` predicts on (held-out ones)."""

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for ``medinfer models`` and the service."""
        return {
            "task": self.name,
            "title": self.title,
            "default_model": self.default_model,
            "data_card": self.data_card,
            "contract": self.contract.to_dict(),
        }


_TASKS: dict[str, Task] = {}
_discovered = False


def register_task(task: Task) -> Task:
    """Register a task instance under its name."""
    if not task.name:
        raise ValueError("a task needs a name")
    if task.name in _TASKS and type(_TASKS[task.name]) is not type(task):
        raise ValueError(f"task {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    import pipelines

    for info in pkgutil.iter_modules(pipelines.__path__):
        if info.ispkg and info.name != "common":
            module = f"pipelines.{info.name}.task"
            if importlib.util.find_spec(module) is not None:
                importlib.import_module(module)
    _discovered = True


def list_tasks() -> list[str]:
    """Registered task names, sorted."""
    _discover()
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The registered task called ``name``.

    Raises:
        ValueError: unknown task (with close suggestions).
    """
    _discover()
    if name not in _TASKS:
        close = difflib.get_close_matches(name, list(_TASKS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known tasks: {', '.join(sorted(_TASKS))}"
        raise ValueError(f"unknown task {name!r}{hint}")
    return _TASKS[name]


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; anything else is checked and returned."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], got {device!r}")
    return device


def expand_paths(inputs: Sequence[str]) -> list[Path]:
    """Expand globs; keep non-matching literal paths so their absence is reported by name."""
    import glob

    out: list[Path] = []
    for raw in inputs:
        if any(ch in raw for ch in "*?["):
            matches = sorted(glob.glob(str(Path(raw).expanduser()), recursive=True))
            out.extend(Path(m) for m in matches)
        else:
            out.append(Path(raw).expanduser())
    return out
