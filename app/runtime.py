"""Loaded models: one :class:`ModelRuntime` per served task, its batcher and its device thread.

The pipeline of one input is the CLI's: ``prepare`` (a worker thread) → ``run`` in a batch (the device
thread, through the :class:`~app.batching.DynamicBatcher`) → ``finish`` (a worker thread). Nothing here
knows any task: everything goes through :class:`~pipelines.common.task.Task` and ``Predictor``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool

from app.batching import DynamicBatcher
from app.errors import QueueFullError
from app.metrics import Metrics
from app.settings import Settings
from app.uploads import scrub
from pipelines.common.checkpoint import Checkpoint, installed_checkpoint, load_checkpoint
from pipelines.common.config import TaskOptions
from pipelines.common.device import resolve_device
from pipelines.common.errors import InputError
from pipelines.common.predict import ItemResult
from pipelines.common.task import InputItem, PredictOptions, Predictor, Prepared, Task, get_task

logger = logging.getLogger(__name__)


class DeviceThreads:
    """One single-thread executor per device: torch work for a device runs there, one batch at a time."""

    def __init__(self) -> None:
        self._executors: dict[str, ThreadPoolExecutor] = {}

    def get(self, device: str) -> ThreadPoolExecutor:
        if device not in self._executors:
            self._executors[device] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"torch-{device}")
        return self._executors[device]

    def shutdown(self) -> None:
        for ex in self._executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()


@dataclass
class Outcome:
    """One input's result; ``failure`` is ``None``, ``input`` (the input's fault) or ``internal``."""

    result: ItemResult
    failure: str | None = None


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def describe_item(item: InputItem, upload_dir: Path) -> str:
    """A display name for an input without server paths."""
    if len(item.paths) == 1:
        return scrub(str(next(iter(item.paths.values()))), upload_dir)
    return item.name


class ModelRuntime:
    """A served task: its checkpoint, its predictor once loaded, its batcher and its state.

    Args:
        task: the registered task.
        checkpoint_path: its checkpoint file (``None`` when there is none: the runtime is ``failed``).
        settings: service settings (device, batching, the task's default options).
        threads: the device threads shared by every model.
        metrics: where batches are recorded.
    """

    def __init__(
        self, task: Task, checkpoint_path: Path | None, settings: Settings, threads: DeviceThreads, metrics: Metrics
    ) -> None:
        self.task = task
        self.name = task.name
        self.checkpoint_path = checkpoint_path
        self.settings = settings
        self.threads = threads
        self.metrics = metrics
        self.state = "loading" if checkpoint_path else "failed"
        self.error: str | None = None if checkpoint_path else "no checkpoint installed"
        self.checkpoint: Checkpoint | None = None
        self.predictor: Predictor | None = None
        self.batcher: DynamicBatcher[Prepared, Any] | None = None
        self.device: str | None = None
        try:
            self.default_options: TaskOptions = served_options(task, settings)
        except ValueError as exc:  # checked by ``discover_models`` first; here it fails this model only
            self.default_options, self.state, self.error = task.options_model(), "failed", str(exc)
        self._ready = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def version(self) -> str:
        return self.checkpoint.version if self.checkpoint else "unknown"

    # -- loading ---------------------------------------------------------------------------------
    async def load(self) -> None:
        """Load the checkpoint and predictor in the device thread, warm up, then start the batcher."""
        if self.checkpoint_path is None:
            self._ready.set()
            return
        try:
            self.device = resolve_device(self.settings.device)
            executor = self.threads.get(self.device)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(executor, self._load_sync)
            if self.settings.warmup:
                self.state = "warming"
                assert self.predictor is not None
                await loop.run_in_executor(executor, self.predictor.warmup)
            assert self.predictor is not None
            self.batcher = DynamicBatcher(
                self._run_batch,
                max_batch_size=max(1, min(self.settings.max_batch_size, int(self.predictor.max_batch))),
                max_batch_delay_ms=self.settings.max_batch_delay_ms,
                max_queue=self.settings.max_queue,
                executor=executor,
                name=self.name,
                retry_after_s=self.settings.retry_after_s,
                on_batch=lambda stats, queue: self.metrics.observe_batch(
                    self.name, stats.compute_s, stats.batch_size, queue
                ),
            )
            self.batcher.start()
            self.state = "ready"
            logger.info("%s: ready on %s (batch up to %d)", self.name, self.device, self.batcher.max_batch_size)
        except Exception as exc:  # any load failure leaves this model failed and the others serving
            self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            logger.error("%s: failed to load: %s", self.name, self.error)
        finally:
            self._ready.set()

    def _load_sync(self) -> None:
        """Load the checkpoint and build the predictor once (its weights are loaded once)."""
        assert self.checkpoint_path is not None
        assert self.device is not None
        self.checkpoint = load_checkpoint(self.checkpoint_path, task=self.name)
        options = PredictOptions(
            device=self.device,
            batch_size=self.settings.max_batch_size,
            amp=self.settings.amp,
            task=self.default_options,
        )
        self.predictor = self.task.load_predictor(self.checkpoint, options)

    def request_options(self, values: dict[str, Any]) -> TaskOptions:
        """The task options of one request: the served defaults updated by the request's values.

        Raises:
            ConfigError: an unknown option or an invalid value (named).
        """
        return self.default_options.updated(values, "options") if values else self.default_options

    async def wait_loaded(self) -> None:
        await self._ready.wait()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    # -- inference -------------------------------------------------------------------------------
    def _run_batch(self, batch: list[Prepared]) -> list[Any]:
        """The batch function (device thread); on CUDA out-of-memory, retry the batch on the CPU."""
        assert self.predictor is not None
        predictor = self.predictor
        try:
            return predictor.run(batch)
        except Exception as exc:
            if predictor.device.type != "cuda" or not _is_cuda_oom(exc):
                raise
            import torch

            original = str(predictor.device)
            logger.warning("%s: CUDA out of memory on a batch of %d; retrying it on the CPU", self.name, len(batch))
            torch.cuda.empty_cache()
            predictor.move_to("cpu")
            try:
                return predictor.run(batch)
            finally:
                predictor.move_to(original)
                torch.cuda.empty_cache()

    async def predict_item(self, item: InputItem, out_dir: Path, upload_dir: Path, *, wait_for_slot: bool) -> Outcome:
        """Prepare, run (batched) and finish one input; errors become this input's own outcome.

        Args:
            item: the grouped input (with its request's task options).
            out_dir: where ``finish`` writes files.
            upload_dir: the private upload folder (hidden from messages).
            wait_for_slot: on a full queue, wait and retry (jobs) instead of raising (requests).

        Raises:
            QueueFullError: the queue is full and ``wait_for_slot`` is false.
        """
        assert self.batcher is not None
        assert self.predictor is not None
        predictor = self.predictor
        label = describe_item(item, upload_dir)
        t0 = time.perf_counter()

        def failed(exc: BaseException, kind: str) -> Outcome:
            if kind == "internal":
                logger.error("%s: inference failed: %s", self.name, type(exc).__name__, exc_info=exc)
                message = f"{label}: inference failed ({type(exc).__name__})"
            else:
                message = scrub(str(exc), upload_dir, out_dir)
            self.metrics.item_failures.labels(self.name, kind).inc()
            return Outcome(ItemResult(label, "error", error=message, seconds=time.perf_counter() - t0), kind)

        try:
            prepared = await run_in_threadpool(predictor.prepare, item)
        except (InputError, ValueError) as exc:
            return failed(exc, "input")
        except Exception as exc:  # a reader crashing on a hostile file is still that file's problem
            logger.warning("%s: prepare raised %s", self.name, type(exc).__name__)
            return failed(InputError(label, f"cannot be read ({type(exc).__name__})"), "input")
        while True:
            try:
                raw, stats = await self.batcher.submit_with_stats(prepared)
                break
            except QueueFullError:
                if not wait_for_slot:
                    raise
                await asyncio.sleep(0.05)
            except (InputError, ValueError) as exc:
                return failed(exc, "input")
            except Exception as exc:
                return failed(exc, "internal")
        try:
            output = await run_in_threadpool(predictor.finish, prepared, raw, out_dir)
        except (InputError, ValueError) as exc:
            return failed(exc, "input")
        except Exception as exc:
            return failed(exc, "internal")
        timings = {**prepared.timings, "queue": stats.queue_s, "infer": prepared.timings.get("infer", stats.compute_s)}
        timings["batch_size"] = float(stats.batch_size)
        seconds = time.perf_counter() - t0
        result = ItemResult(label, "ok", outputs=output.data, seconds=seconds, timings=timings, files=output.files)
        return Outcome(result)


def served_options(task: Task, settings: Settings) -> TaskOptions:
    """A task's default options in the service (``MEDINFER_TASK_OPTIONS``, validated by the task's model).

    Raises:
        ConfigError: an unknown option or invalid value, named.
    """
    return task.parse_options(settings.task_options.get(task.name, {}), f"MEDINFER_TASK_OPTIONS[{task.name}]")


def discover_models(settings: Settings) -> list[tuple[Task, Path | None]]:
    """The tasks to serve with their checkpoints: the named ones, or every registered task with a checkpoint.

    Raises:
        ValueError: a named task is not registered, or the task options in the settings are invalid.
    """
    from pipelines.common.task import list_tasks

    for name in settings.task_options:
        task = get_task(name)  # an unknown task name in the options is an error too
        served_options(task, settings)
    names = settings.task_names
    out: list[tuple[Task, Path | None]] = []
    if names:
        for name in names:
            out.append((get_task(name), installed_checkpoint(name, settings.checkpoints)))
        return out
    for name in list_tasks():
        ckpt = installed_checkpoint(name, settings.checkpoints)
        if ckpt is not None:
            out.append((get_task(name), ckpt))
    return out
