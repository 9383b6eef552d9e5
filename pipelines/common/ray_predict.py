"""Batch prediction on a Ray cluster (Ray Data): ``medinfer predict TASK ... --ray``.

The three steps of a :class:`~pipelines.common.task.Predictor`, as :func:`~pipelines.common.predict.run_predictions`
runs them, spread over a cluster, for every task through the Task interface (no task has Ray code of its own):

1. the inputs, named as ``run_predictions`` names them (:func:`~pipelines.common.predict.unique_names`), are cut into
   the same batches (``predictor.max_batch`` inputs each) and become a Ray dataset of one row per batch;
2. reading and preprocessing (``prepare``) run as Ray tasks, a batch per task, spread over the cluster's CPUs (each
   worker process loads the predictor once, on the CPU, and keeps it for the next tasks);
3. the forward pass (``run``) runs in a pool of Ray actors (``map_batches`` with a callable class: one model load per
   actor, ``num_gpus`` GPUs each), one batch of the task's batch size per call;
4. ``finish`` (post-processing, writing the outputs, the CSV rows) runs in the driver, batch by batch in input order,
   while the cluster prepares and runs the next batches.

A row is a whole batch, not one input, so that every forward pass holds exactly the inputs it holds without Ray:
results do not depend on how Ray cuts its blocks. Finishing in the driver, in order, keeps every file byte for byte
what the single-process run writes (a classifier's ``predictions.csv`` is appended row by row in input order), and
writes nothing for the inputs an earlier failure stops (``skipped`` without ``--continue-on-error``); the outputs
are written on the driver's machine, so only the inputs must be readable by the workers (at the same paths: shared
storage). Per-input failures are the same error results with the same messages, and an exception other than
:class:`~pipelines.common.errors.InputError` propagates where the single-process run raises it.

Ray starts a worker with one thread per CPU it holds; torch's results on the CPU change in their last digits with
its number of threads (convolutions and reductions split the work differently: 19 of 500 ECG records differed at
the 6th decimal, 1 thread against 2). So the workers take the driver's torch thread count, which is what the
single-process run on the driver's machine uses: the same results, at the cost of more threads than Ray counts
(each task and actor holds one CPU). A volume's ``Prepared`` carries MONAI's trace of its preprocessing, which names
the transform objects of the process that applied them: :func:`release_traces` lets the driver's own (equal)
preprocessing invert it.

What travels between the stages is pickled by this module (an input's ``Prepared`` holds arrays or MONAI
``MetaTensor``s with their geometry and transform trace; every task's pickles), never converted by Arrow, so the
data are exactly what ``prepare`` made. Ray is an optional extra: this module imports it only when a run starts.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.common.errors import InputError
from pipelines.common.predict import (
    RESERVED_NAMES,
    ItemResult,
    Report,
    _prepare_one,
    _Ready,
    _result,
    finish_batch,
    run_batch,
    unique_names,
)
from pipelines.common.task import Collected, InputItem, PredictOptions, Predictor, Prepared, get_task

logger = logging.getLogger(__name__)

#: what to install when Ray is missing
INSTALL_HINT = "pip install 'medinfer[distributed]'"
#: the result of an input that an earlier failure kept from running (as ``run_predictions`` says it)
SKIPPED = "stopped after an earlier failure"


class RayUnavailable(RuntimeError):
    """Ray (with Ray Data) is not installed, or the Ray cluster cannot be reached."""


def require_ray() -> Any:
    """The ``ray`` module with Ray Data.

    Raises:
        RayUnavailable: Ray or Ray Data is not installed; the message names the extra to install.
    """
    try:
        import ray
        import ray.data  # Ray Data is an extra of Ray's own
    except ImportError as exc:
        raise RayUnavailable(f"--ray needs Ray with Ray Data, which is not installed ({exc}): {INSTALL_HINT}") from exc
    return ray


@contextmanager
def ray_session(address: str | None = None) -> Iterator[Any]:
    """Connect to a Ray cluster for the duration of a run; yields the ``ray`` module.

    Args:
        address: the head node (``HOST:6379``, ``ray://HOST:10001`` or ``auto``); ``None``: the cluster named by
            ``RAY_ADDRESS``, else a local instance started for this run (on this machine's cores and GPUs).

    A Ray already initialised in this process (a test's, a notebook's) is used as it is and left running; one this
    function started or connected to is shut down after the run.

    Raises:
        RayUnavailable: Ray is not installed, or the cluster cannot be reached.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:  # what ray.init raises for a cluster it cannot reach
        where = f"at {address}" if address else "(local, or $RAY_ADDRESS)"
        raise RayUnavailable(f"cannot connect to the Ray cluster {where}: {exc}") from exc
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class WorkerSpec:
    """What a Ray worker needs to load the predictor: the task, the checkpoint (in Ray's object store, loaded once
    per worker process) and the predict options. ``key`` tells one run's predictors from another's in a worker
    process that outlives a run."""

    task: str
    checkpoint: Any  # a ray.ObjectRef of the Checkpoint
    options: PredictOptions
    #: torch's intra-op threads in the workers: the driver's (see :func:`run_predictions_ray`)
    torch_threads: int | None = None
    key: str = field(default_factory=lambda: uuid.uuid4().hex)

    def load(self, device: str) -> Predictor:
        """The task's predictor on ``device`` (one model load), in a process with ``torch_threads`` threads."""
        import ray
        import torch

        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        checkpoint = ray.get(self.checkpoint)
        return get_task(self.task).load_predictor(checkpoint, dataclasses.replace(self.options, device=device))


class RemoteError(RuntimeError):
    """An exception raised in a Ray worker that could not travel back as itself; the message holds its traceback."""


@dataclass
class _Batch:
    """One batch as it travels between the stages (pickled into the row's ``blob``).

    ``fatal`` is an exception other than ``InputError`` that ``prepare`` (``stage == "prepare"``) or ``run`` raised:
    the driver raises it where the single-process run would. Times are wall-clock (``time.time()``), so that the
    driver can compare those of different machines.
    """

    items: list[InputItem]
    readies: list[_Ready] = field(default_factory=list)
    raws: list[Any] = field(default_factory=list)
    run_error: str | None = None
    run_s: float = 0.0
    t_run: float = 0.0
    fatal: BaseException | None = None
    fatal_stage: str = ""
    #: the process of each stage (``prepare``, ``run``) as ``host:pid``, and the model's torch threads
    #: (``run_threads``): where the batch went (logs, tests)
    workers: dict[str, str] = field(default_factory=dict)


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a :class:`RemoteError` with its type, message and traceback."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        text = "".join(traceback.format_exception(exc)).rstrip()
        return RemoteError(f"{type(exc).__name__} in a Ray worker: {exc}\n{text}")
    return exc


def _to_cpu(value: Any) -> Any:
    """``run``'s output with every torch tensor on the CPU (the driver may have no GPU)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _process() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def release_traces(value: Any) -> Any:
    """Let this process invert the MONAI transforms another process applied (in place; returns ``value``).

    A MONAI ``MetaTensor`` records each invertible transform applied to it with the ``id()`` of the transform
    object, and ``inverse`` refuses an entry of another object: a volume prepared by a Ray task could not be mapped
    back to its input's grid by the driver's own (equal) preprocessing. Each entry's id becomes ``TraceKeys.NONE``,
    MONAI's own way to skip that check; the entries' class names and parameters are kept and still drive the inverse.
    Walks dicts, lists, tuples and the ``data`` and ``context`` of a :class:`Prepared`.
    """
    from monai.data import MetaTensor
    from monai.utils import TraceKeys

    def release(entry: Any) -> None:
        if isinstance(entry, dict):
            if TraceKeys.ID in entry:
                entry[TraceKeys.ID] = TraceKeys.NONE
            for v in entry.values():
                release(v)
        elif isinstance(entry, list | tuple):
            for v in entry:
                release(v)

    def walk(obj: Any) -> None:
        if isinstance(obj, MetaTensor):
            release(obj.applied_operations)
            release(obj.pending_operations)
        elif isinstance(obj, Prepared):
            walk(obj.data)
            walk(obj.context)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v)

    walk(value)
    return value


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _pack(batch: _Batch) -> bytes:
    return pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)


def _unpack(blob: Any) -> _Batch:
    batch = pickle.loads(bytes(blob))
    if not isinstance(batch, _Batch):
        raise TypeError(f"expected a pickled batch, got {type(batch).__name__}")
    return batch


#: the CPU predictor of each run, per worker process (prepare tasks reuse the process's; one run at a time is usual)
_PREPARERS: dict[str, Predictor] = {}


def _preparer(spec: WorkerSpec) -> Predictor:
    predictor = _PREPARERS.get(spec.key)
    if predictor is None:
        _PREPARERS.clear()  # a finished run's predictor
        predictor = _PREPARERS[spec.key] = spec.load("cpu")
    return predictor


def prepare_stage(row: dict[str, Any], spec: WorkerSpec) -> dict[str, Any]:
    """The Ray task of one batch: ``prepare`` each input in order, as the single-process run does (an
    ``InputError`` is that input's error result; another exception stops the batch and travels to the driver)."""
    batch = _unpack(row["blob"])
    batch.workers["prepare"] = _process()
    try:
        predictor = _preparer(spec)
    except Exception as exc:  # the driver raises it
        batch.fatal, batch.fatal_stage = _portable(exc), "prepare"
        return {"k": row["k"], "blob": _pack(batch)}
    for item in batch.items:
        try:
            ready = _prepare_one(predictor, item)
        except Exception as exc:
            batch.fatal, batch.fatal_stage = _portable(exc), "prepare"
            break
        ready.done = time.time()  # on the wall clock, as the actor's t_run
        batch.readies.append(ready)
    return {"k": row["k"], "blob": _pack(batch)}


class ModelWorker:
    """The Ray actor that runs the model: loads the predictor once, then runs one batch per call.

    Args:
        spec: the run's predictor.
        device: the actor's device (``cuda`` where it holds GPUs, else ``cpu``).
    """

    def __init__(self, spec: WorkerSpec, device: str) -> None:
        self.predictor = spec.load(device)

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blobs = [_pack(self.run(_unpack(blob))) for blob in rows["blob"]]
        return {"k": np.asarray(rows["k"]), "blob": np.asarray(blobs, dtype=object)}

    def run(self, batch: _Batch) -> _Batch:
        """``run`` on the batch's prepared inputs, as :class:`~pipelines.common.predict._Pipeline` does."""
        batch.t_run = time.time()
        batch.workers["run"] = _process()
        batch.workers["run_threads"] = str(_torch_threads())
        if batch.fatal is not None:
            return batch
        prepared = [r.outcome for r in batch.readies if isinstance(r.outcome, Prepared)]
        batch.raws = [None] * len(prepared)
        t0 = time.perf_counter()
        if prepared:
            try:
                batch.raws = [_to_cpu(raw) for raw in run_batch(self.predictor, prepared)]
            except InputError as exc:
                batch.run_error = str(exc)
            except Exception as exc:
                batch.fatal, batch.fatal_stage = _portable(exc), "run"
        batch.run_s = time.perf_counter() - t0
        return batch


def default_workers(ray: Any, num_gpus_per_worker: float) -> int:
    """Model actors when none are asked for: as many as the cluster's GPUs hold (``num_gpus_per_worker`` each), else
    one (on CPUs, one actor leaves the other cores to reading; pass ``workers`` for more)."""
    if num_gpus_per_worker > 0:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        return max(1, int(gpus // num_gpus_per_worker))
    return 1


def worker_device(device: str, num_gpus_per_worker: float) -> str:
    """The model actors' device from ``--device`` and the GPUs each actor holds.

    Raises:
        ValueError: a CUDA device without GPUs per actor, or GPUs per actor with ``--device cpu``.
    """
    if num_gpus_per_worker < 0:
        raise ValueError(f"--num-gpus-per-worker must be 0 or more, got {num_gpus_per_worker:g}")
    if num_gpus_per_worker == 0:
        if device.startswith("cuda"):
            raise ValueError(
                f"--device {device} with --ray needs --num-gpus-per-worker above 0: Ray gives an actor only the "
                "GPUs it asks for"
            )
        return "cpu"
    if device == "cpu":
        raise ValueError("--num-gpus-per-worker with --device cpu: the actors would hold GPUs they do not use")
    return "cuda" if device == "auto" else device


def run_predictions_ray(
    predictor: Predictor,
    items: Collected | Sequence[InputItem],
    out_dir: Path,
    *,
    task: str,
    continue_on_error: bool = False,
    progress: Callable[[int], None] | None = None,
    started_at: float | None = None,
    device: str = "auto",
    num_gpus_per_worker: float = 0.0,
    workers: int | None = None,
) -> Report:
    """:func:`~pipelines.common.predict.run_predictions` on the Ray cluster this process is connected to
    (:func:`ray_session`): the same results, files and report (timings aside).

    Args:
        predictor: the driver's predictor (on the CPU is enough): it finishes and writes; its checkpoint and options
            are the workers'.
        items: grouped inputs (a :class:`Collected`, or items only).
        out_dir: where results and the reports go (on the driver's machine).
        task: task name (the workers load this task's predictor) and the report's.
        continue_on_error: keep going after a failed input; without it, the inputs after the batch of the first
            failure are ``skipped`` (the cluster may have read and run some of them already: nothing of theirs is
            written).
        progress: called with the number of inputs just completed.
        started_at: wall-clock time the process started (the report's ``startup_s``).
        device: ``--device`` (the model actors': see :func:`worker_device`).
        num_gpus_per_worker: GPUs each model actor holds (fractions share a GPU).
        workers: model actors (default :func:`default_workers`).

    Raises:
        ValueError: ``workers`` below 1, or ``device`` and ``num_gpus_per_worker`` at odds.
        RayUnavailable: Ray is not installed.
    """
    actor_device = worker_device(device, num_gpus_per_worker)
    if workers is not None and workers < 1:
        raise ValueError(f"--ray-workers must be 1 or more, got {workers}")
    out_dir.mkdir(parents=True, exist_ok=True)
    collected = items if isinstance(items, Collected) else Collected(list(items))
    pending = unique_names(collected.items, RESERVED_NAMES)
    size = max(1, int(predictor.max_batch))
    chunks = [pending[i : i + size] for i in range(0, len(pending), size)]
    results = [ItemResult(exc.path, "error", error=str(exc)) for exc in collected.errors]
    stop = bool(results) and not continue_on_error
    if collected.errors and progress is not None:
        progress(len(collected.errors))
    first_prepare_at: float | None = None
    done = 0
    if chunks and not stop:
        ray = require_ray()
        import torch

        spec = WorkerSpec(task, ray.put(predictor.checkpoint), predictor.options, torch.get_num_threads())
        rows = _stream(ray, spec, chunks, actor_device, num_gpus_per_worker, workers)
        try:
            for row in rows:
                k, batch = int(row["k"]), _unpack(row["blob"])
                if k != done:
                    raise RuntimeError(f"Ray returned batch {k} where batch {done} was due (order not preserved)")
                done += 1
                if first_prepare_at is None and batch.readies:
                    first_prepare_at = min(r.started_at for r in batch.readies)
                if batch.fatal is not None:  # where the single-process run raises it
                    raise batch.fatal
                release_traces([r.outcome for r in batch.readies])  # prepared in another process
                chunk_results = finish_batch(
                    predictor, out_dir, batch.readies, batch.raws, batch.run_error, batch.run_s, batch.t_run
                )
                for res in chunk_results:
                    if res.status == "error":
                        logger.info("input failed: %s", res.error)
                        stop = stop or not continue_on_error
                    results.append(res)
                if progress is not None:
                    progress(len(batch.items))
                if stop:
                    break
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                close()  # stops what Ray still runs for the batches left
    for chunk in chunks[done:]:
        results.extend(_result(it, "skipped", error=SKIPPED) for it in chunk)
    startup = None
    if started_at is not None and first_prepare_at is not None:
        startup = max(0.0, first_prepare_at - started_at)
    report = Report(
        task=task,
        checkpoint=str(predictor.checkpoint.path or ""),
        results=results,
        startup_s=startup,
        model=predictor.checkpoint.model_info(),
    )
    report.write(out_dir)
    return report


def pool_sizes(ray: Any, num_gpus_per_worker: float, workers: int | None) -> tuple[int, int]:
    """How many model actors run, and how many prepare tasks at most at once.

    Actors: ``workers``, else :func:`default_workers`. Each holds one CPU beside its GPUs, so they must leave the
    cluster a CPU to read on. Prepare tasks: one per CPU of the cluster (Ray runs as many as the CPUs the actors
    leave). The two sizes always differ, which keeps the stages apart: Ray Data fuses a task stage into the actor
    stage after it when their pool sizes and resources match, which would read the inputs inside the model actors,
    one after the other with the forward pass.

    Raises:
        ValueError: the actors would hold every CPU of the cluster.
    """
    actors = workers or default_workers(ray, num_gpus_per_worker)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if actors >= cpus:
        raise ValueError(
            f"{actors} model actor(s) would hold all {cpus} CPU(s) of the Ray cluster (one each), leaving none to "
            "read the inputs: pass a smaller --ray-workers or add nodes"
        )
    return actors, cpus


def build_dataset(
    ray: Any,
    spec: WorkerSpec,
    chunks: list[list[InputItem]],
    device: str,
    num_gpus_per_worker: float,
    workers: int | None,
) -> Any:
    """The run as a Ray dataset of one row per batch (``k``, its index; ``blob``, the pickled batch): prepare tasks,
    then the model actors. Lazy: nothing runs until it is iterated.

    Raises:
        ValueError: the actors would hold every CPU of the cluster (:func:`pool_sizes`).
    """
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    actors, readers = pool_sizes(ray, num_gpus_per_worker, workers)
    rows = [{"k": k, "blob": _pack(_Batch(list(chunk)))} for k, chunk in enumerate(chunks)]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map(prepare_stage, fn_kwargs={"spec": spec}, compute=TaskPoolStrategy(size=readers), num_cpus=1)
    return ds.map_batches(
        ModelWorker,
        fn_constructor_kwargs={"spec": spec, "device": device},
        batch_size=1,  # one row is one batch of the task's batch size
        batch_format="numpy",
        compute=ActorPoolStrategy(size=actors),
        num_cpus=1,
        num_gpus=num_gpus_per_worker or None,
    )


def _stream(
    ray: Any,
    spec: WorkerSpec,
    chunks: list[list[InputItem]],
    device: str,
    num_gpus_per_worker: float,
    workers: int | None,
) -> Iterator[dict[str, Any]]:
    """The dataset's rows in batch order, as they are done (Ray streams: later batches are read and run meanwhile)."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True  # the driver finishes in input order
    context.enable_progress_bars = False  # the CLI has its own
    try:
        ds = build_dataset(ray, spec, chunks, device, num_gpus_per_worker, workers)
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved
    return ds.iter_rows()
