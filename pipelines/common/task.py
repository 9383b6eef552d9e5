"""The Task interface: everything task-specific lives behind it, and both faces (CLI, service) use only it.

A task module ``pipelines/<name>/task.py`` defines a :class:`Task` subclass and registers an instance with
:func:`register_task`; its options models live beside it in ``pipelines/<name>/options.py`` (torch-free).
:func:`get_task` and :func:`list_tasks` find task packages by the rule of :mod:`pipelines.common.catalog` (any
sub-package of ``pipelines`` with a ``task`` module), so adding a task never touches ``app/``.

The typed contracts between a task and the faces:

- :class:`InputContract` and its :class:`OutputHead`\\ s: what a task accepts and the labels of each head;
- a task's options model (a :class:`~pipelines.common.config.TaskOptions`), carried by each :class:`InputItem`
  and :class:`Prepared`, so that one loaded model serves requests with different options;
- :class:`ItemOutput`: what ``finish`` returns: the JSON data and the files written, by role.
"""

from __future__ import annotations

import abc
import difflib
import importlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pipelines.common import catalog
from pipelines.common.config import TaskConfig, TaskOptions
from pipelines.common.device import resolve_device
from pipelines.common.errors import InputError

if TYPE_CHECKING:
    from pipelines.common.checkpoint import Checkpoint

__all__ = [
    "Collected",
    "InputContract",
    "InputItem",
    "ItemOutput",
    "OutputFile",
    "OutputHead",
    "PredictOptions",
    "Predictor",
    "Prepared",
    "Task",
    "TaskOptions",
    "TensorSpec",
    "TrainOptions",
    "expand_paths",
    "get_task",
    "list_tasks",
    "register_task",
    "registered_tasks",
    "resolve_device",
]


@dataclass(frozen=True)
class OutputHead:
    """One output head of a task's model and the names of its outputs.

    Args:
        name: head name (``regions``, ``statements``, ``subtype``, ``path_a``...).
        labels: output names in order (classes, regions or zones).
        activation: how logits become probabilities: ``sigmoid`` (multi-label), ``softmax`` (one class),
            or a task's own (``multilevel``).
    """

    name: str
    labels: tuple[str, ...]
    activation: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "labels": list(self.labels), "activation": self.activation}


#: the Open Inference Protocol's tensor datatypes and the NumPy dtype (little-endian) each is read as
TENSOR_DTYPES: dict[str, str] = {
    "BOOL": "|b1",
    "UINT8": "|u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "|i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


@dataclass(frozen=True)
class TensorSpec:
    """The input a task takes in memory rather than as files: one tensor of the Open Inference Protocol.

    Each element of a batch of such tensors becomes one :class:`InputItem` whose ``data`` is the array (of
    ``shape``, in one of ``datatypes``) and whose ``paths`` are empty; the task's ``read`` then preprocesses it
    exactly as it does the same input read from a file.

    Args:
        name: the tensor's name (``signal``, ``image``).
        datatypes: the protocol datatypes accepted (keys of ``TENSOR_DTYPES``); the first is the one the model
            metadata states.
        shape: one input's shape, ``-1`` for a dimension of any size (a batch adds a leading dimension).
        parameters: what a client must know to build it (units, channel order), as protocol parameters
            (string, number or boolean values).
        required_options: task options a request must give with the tensor (a signal's ``sampling_rate``).

    Raises:
        ValueError: an unknown datatype, no datatype, an empty shape or a dimension below -1.
    """

    name: str
    datatypes: tuple[str, ...]
    shape: tuple[int, ...]
    parameters: dict[str, str | int | float | bool] = field(default_factory=dict, hash=False)
    required_options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [d for d in self.datatypes if d not in TENSOR_DTYPES]
        if not self.datatypes or unknown:
            raise ValueError(f"tensor {self.name!r}: datatypes must be among {', '.join(TENSOR_DTYPES)}, got {unknown}")
        if not self.shape or any(int(d) < -1 or int(d) == 0 for d in self.shape):
            raise ValueError(f"tensor {self.name!r}: shape needs dimensions > 0 or -1, got {list(self.shape)}")

    @property
    def datatype(self) -> str:
        """The datatype the model metadata states."""
        return self.datatypes[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "datatypes": list(self.datatypes),
            "shape": list(self.shape),
            "parameters": dict(self.parameters),
            "required_options": list(self.required_options),
        }


@dataclass(frozen=True)
class InputContract:
    """What a task accepts and returns, as shown by ``medinfer models`` and ``GET /api/v1/models``.

    Args:
        description: one line on what an input is.
        kind: ``volume`` (3D image with geometry), ``signal`` or ``image`` (2D).
        channels: modality or lead names in model order.
        formats: accepted file formats.
        heads: the model's output heads with their labels.
        notes: anything else a user must know (orientation, spacing, units, rates).
        tensor: the input as an in-memory tensor (the Open Inference Protocol), for a task whose ``read`` takes
            ``InputItem.data``; ``None``: files only (volumes, whose geometry comes with their files).
    """

    description: str
    kind: str
    channels: tuple[str, ...]
    formats: tuple[str, ...]
    heads: tuple[OutputHead, ...]
    notes: str = ""
    tensor: TensorSpec | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["heads"] = [h.to_dict() for h in self.heads]
        out["tensor"] = self.tensor.to_dict() if self.tensor is not None else None
        return out


@dataclass(frozen=True)
class InputItem:
    """One unit of prediction (a case, a record, an image) as grouped from user paths.

    Args:
        name: display name, used for output file names (no patient identifiers).
        paths: the files that make it up, by role (``{"t1": ..., "flair": ...}`` or ``{"record": ...}``).
        explain: also explain this item (per-request switch for the service; ORed with the run's).
        options: this item's task options (per request in the service); ``None``: the predictor's.
        data: an input given in memory rather than as files (a tensor of the Open Inference Protocol: an ECG
            signal, an image); ``paths`` is then empty. Only tasks whose ``InputContract.tensor`` is set take one.
    """

    name: str
    paths: dict[str, Path]
    explain: bool = False
    options: TaskOptions | None = None
    data: Any = field(default=None, compare=False, repr=False)


@dataclass
class Collected:
    """What ``collect_inputs`` grouped: prediction items, and the paths that could not be used, as errors."""

    items: list[InputItem] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items) + len(self.errors)


@dataclass(frozen=True)
class PredictOptions:
    """Inference options of every task; a task's own options are the typed ``task`` model.

    Args:
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        batch_size: inputs per forward pass (a task that takes one input at a time ignores it).
        amp: mixed precision on CUDA (never on CPU).
        explain: also write the task's explanation.
        task: the task's options (``None``: the task's defaults).
        defer_pictures: leave the explanation pictures a task can draw later undrawn (recorded as ``deferred``
            files, drawn by :meth:`Predictor.draw` when asked for: the service, when a link is first fetched).
    """

    device: str = "auto"
    batch_size: int = 1
    amp: bool = True
    explain: bool = False
    task: TaskOptions | None = None
    defer_pictures: bool = False


@dataclass(frozen=True)
class TrainOptions:
    """Options of ``medinfer train``; the typed config is built from ``preset``, ``config_path`` and ``epochs``.

    Args:
        data_dir: dataset root in the real layout.
        out_dir: run folder.
        preset: ``full`` (published recipe) or another preset of the task's config.
        config_path: YAML of config overrides.
        epochs: epochs (per stage) override.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        seed: random seed.
        task: the task's training options (``None``: defaults).
        provenance: extra provenance fields the checkpoint records (``medinfer demo`` marks its models with
            ``trained_by``).
        quiet: show no progress while training (else a bar per stage on a terminal, one plain line per stage
            and per epoch elsewhere: :class:`~pipelines.common.trainer.TrainProgress`).
    """

    data_dir: Path
    out_dir: Path
    preset: str = "full"
    config_path: Path | None = None
    epochs: int | None = None
    device: str = "auto"
    seed: int = 0
    task: TaskOptions | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    quiet: bool = False


@dataclass
class Prepared:
    """An input read and preprocessed, ready for the forward pass.

    ``data`` is whatever the predictor's ``run`` consumes; ``context`` is what ``finish`` needs to map the
    result back to the input's space (geometry, original header, label convention...); ``options`` are the
    task options this input is predicted with.
    """

    item: InputItem
    data: Any
    context: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    options: Any = None


@dataclass(frozen=True)
class OutputFile:
    """A file ``finish`` wrote: its role (``segmentation``, ``probabilities``, ``overlay``, ``explanation``,
    ``result``...) and its path relative to the output folder (POSIX separators)."""

    role: str
    path: str
    #: not written yet: drawn when first asked for (:meth:`Predictor.draw`)
    deferred: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "path": self.path, **({"deferred": True} if self.deferred else {})}


@dataclass
class ItemOutput:
    """The typed result of ``finish``: JSON data (what the per-input JSON file holds) and the files written."""

    data: dict[str, Any]
    files: list[OutputFile] = field(default_factory=list)

    def add(self, role: str, path: Path, out_dir: Path, *, deferred: bool = False) -> str:
        """Record a written file (or, ``deferred``, one :meth:`Predictor.draw` makes on request); return its name
        relative to ``out_dir``."""
        rel = Path(path).relative_to(out_dir).as_posix()
        self.files.append(OutputFile(role, rel, deferred))
        return rel


OptionsT = TypeVar("OptionsT", bound=TaskOptions)


class Predictor(abc.ABC, Generic[OptionsT]):
    """A loaded model ready to predict. Offline CLI and service call the same three steps.

    ``prepare`` reads and preprocesses one input (raising :class:`~pipelines.common.errors.InputError`),
    ``run`` does the forward pass on a batch of prepared inputs (volume tasks set ``max_batch = 1`` and batch
    at the sliding-window level), ``finish`` maps a raw output back to the input's space, writes files and
    returns an :class:`ItemOutput`. Each input carries its own task options (``Prepared.options``).
    """

    #: the most prepared inputs ``run`` takes at once
    max_batch: int = 1
    #: batches ``medinfer predict`` reads and preprocesses ahead of the forward pass (``run_predictions``); 0 runs
    #: the steps one after the other, which is faster where a small network's forward pass would wait for the
    #: interpreter lock at every operation while a reading thread holds it
    prefetch: ClassVar[int] = 2
    #: the task's options model
    options_model: ClassVar[type[TaskOptions]] = TaskOptions

    def __init__(self, checkpoint: Checkpoint, options: PredictOptions) -> None:
        import torch

        self.checkpoint = checkpoint
        self.options = options
        self.task_options: OptionsT = options.task if options.task is not None else self.options_model()  # type: ignore[assignment]
        if not isinstance(self.task_options, self.options_model):
            raise TypeError(f"task options must be {self.options_model.__name__}, got {type(options.task).__name__}")
        self.device = torch.device(resolve_device(options.device))
        self.model = checkpoint.build_model(self.device)

    def move_to(self, device: str) -> None:
        """Move the model (e.g. to ``cpu`` after CUDA ran out of memory)."""
        import torch

        self.device = torch.device(device)
        self.model.to(self.device)

    def item_options(self, item: InputItem) -> OptionsT:
        """The task options of one input (its own, else the predictor's)."""
        return item.options if item.options is not None else self.task_options  # type: ignore[return-value]

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
    def finish(self, prepared: Prepared, raw: Any, out_dir: Path | None) -> ItemOutput:
        """Post-process one output into the input's space, write files under ``out_dir``, return the result.

        ``out_dir`` is ``None`` only for an input whose :meth:`needs_files` is false: the result is answered from
        memory (the service's synchronous predictions) and nothing is written.
        """

    def needs_files(self, item: InputItem) -> bool:
        """Whether :meth:`finish` of ``item`` must write files (a mask, a picture): then it gets an ``out_dir``.

        Tasks whose whole result fits in the result's JSON say ``False`` for a plain prediction, so that the
        service answers it from memory without a result folder, report or CSV. ``finish`` without an ``out_dir``
        runs in the service's event loop: it must only build the result (no file, no long computation).
        """
        return True

    def draw(self, out_dir: Path, rel: str) -> Path | None:
        """Draw the deferred file ``rel`` (relative to ``out_dir``) of a finished result, from what its ``finish``
        wrote there; ``None`` when it is no deferred file of this task (the default: a task that defers none)."""
        return None

    def warmup(self) -> None:
        """Run one synthetic input through the model (the service's readiness check)."""


class Task(abc.ABC):
    """One published method: its contract and every step from synthetic data to explanation.

    Class attributes a task sets: ``name``, ``title``, ``data_card`` (file under ``data_cards/``),
    ``default_model`` (registry name), ``options_model`` (inference options), ``train_options_model``
    (training flags beyond the config; both from the task's torch-free ``options`` module), ``config_class``
    (its :class:`TaskConfig`) and ``run_class`` (its :class:`~pipelines.common.trainer.TrainingRun`).
    """

    name: str = ""
    title: str = ""
    data_card: str = ""
    default_model: str = ""
    options_model: ClassVar[type[TaskOptions]] = TaskOptions
    train_options_model: ClassVar[type[TaskOptions]] = TaskOptions
    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    run_class: ClassVar[type[Any]]
    #: task options ``medinfer demo`` predicts with
    demo_options: ClassVar[dict[str, Any]] = {}

    @property
    @abc.abstractmethod
    def contract(self) -> InputContract:
        """The input contract."""

    @abc.abstractmethod
    def generate(self, out_dir: Path, n: int, seed: int, dicom: bool, variant: str | None) -> tuple[Path, dict]:
        """Write a synthetic dataset in the real dataset's layout; return its root and facts for the marker."""

    def synth(self, out_dir: Path, n: int, seed: int, dicom: bool = False, variant: str | None = None) -> Path:
        """Write a synthetic dataset in the real dataset's on-disk layout, marked as synthetic; return its root.

        Raises:
            ValueError: an unknown variant or invalid size.
        """
        from pipelines.common.synthetic import mark_synthetic

        root, facts = self.generate(Path(out_dir), n, seed, dicom, variant)
        mark_synthetic(root, {"task": self.name, "n": n, "seed": seed, "dicom": dicom, **facts})
        return root

    def make_run(self, options: TrainOptions) -> Any:
        """The training run of ``options`` (config from the preset, YAML and epochs).

        Raises:
            ConfigError: unknown preset, keys or invalid values.
        """
        config = self.config_class.load(options.preset, options.config_path, options.epochs)
        return self.run_class(self, config, options)

    def train(self, options: TrainOptions) -> Path:
        """Train, write best/last checkpoints, metrics.json, a curve PNG and a model card; return the run dir."""
        return Path(self.make_run(options).run())

    def untrained_checkpoint(self, preset: str = "tiny", seed: int = 0) -> Checkpoint:
        """A randomly initialised checkpoint of ``preset``: for tests, the battery and speed benchmarks only."""
        run = self.make_run(
            TrainOptions(data_dir=Path("untrained"), out_dir=Path("untrained"), preset=preset, seed=seed)
        )
        return run.untrained_checkpoint()

    @abc.abstractmethod
    def evaluate(self, data_dir: Path, checkpoint: Checkpoint, out_dir: Path, options: PredictOptions) -> dict:
        """Evaluate on a labelled dataset; write per-case CSV and summary JSON; return the summary."""

    @abc.abstractmethod
    def collect_inputs(self, inputs: Sequence[str]) -> Collected:
        """Group user-given paths (files, folders, globs, ``role=path``) into prediction items.

        A path that does not exist or cannot be grouped comes back in ``errors``, naming it.
        """

    @abc.abstractmethod
    def load_predictor(self, checkpoint: Checkpoint, options: PredictOptions) -> Predictor:
        """Build a predictor from a checkpoint of this task."""

    def demo_synth_n(self) -> int:
        """How many synthetic inputs ``medinfer demo`` makes for this task."""
        return 8

    @abc.abstractmethod
    def example_inputs(self, root: Path, n: int, seed: int) -> list[str]:
        """Write ``n`` synthetic inputs under ``root`` in the task's input formats; return what to pass to predict.

        The demo predicts on them (held out from its training data) and the test battery runs every task
        through the CLI and the service with them.
        """

    def demo_inputs(self, data_dir: Path) -> list[str]:
        """Held-out synthetic inputs ``medinfer demo`` predicts on (beside its training data)."""
        return self.example_inputs(Path(data_dir).parent / f"{self.name}_heldout", 2, seed=1000)

    # -- options -------------------------------------------------------------------------------------------
    def parse_options(self, values: dict[str, Any], source: str = "") -> TaskOptions:
        """This task's inference options from a mapping (flags, a form field, settings).

        Raises:
            ConfigError: an unknown option or invalid value, named.
        """
        return self.options_model.parse(values, source)

    def parse_train_options(self, values: dict[str, Any], source: str = "") -> TaskOptions:
        """This task's training options from a mapping."""
        return self.train_options_model.parse(values, source)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for ``medinfer models`` and the service."""
        return {
            "task": self.name,
            "title": self.title,
            "default_model": self.default_model,
            "data_card": self.data_card,
            "contract": self.contract.to_dict(),
            "options": self.options_model.model_json_schema(),
            "train_options": self.train_options_model.model_json_schema(),
            "presets": list(self.config_class.preset_names()),
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


def registered_tasks() -> dict[str, Task]:
    """The tasks registered so far, by name, without discovering any (:mod:`pipelines.common.catalog` reads it)."""
    return dict(_TASKS)


def _discover() -> None:
    """Import every task module on disk (each registers its task)."""
    global _discovered
    if _discovered:
        return
    for name in catalog.task_packages():
        importlib.import_module(catalog.task_module(name))
    _discovered = True


def list_tasks() -> list[str]:
    """Every task, sorted: the task modules on disk (all imported) and the tasks registered at run time."""
    _discover()
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The registered task called ``name``.

    A task ``name`` not registered yet lives in ``pipelines/<name>/task.py``: that module alone is imported (a
    prediction of one task does not load the others' modules and what they import).

    Raises:
        ValueError: unknown task (with close suggestions, found without importing any task).
    """
    if name not in _TASKS and name in catalog.task_packages():
        importlib.import_module(catalog.task_module(name))
    if name not in _TASKS:
        known = catalog.task_names()
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known tasks: {', '.join(known)}"
        raise ValueError(f"unknown task {name!r}{hint}")
    return _TASKS[name]


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
