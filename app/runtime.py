"""Loaded models: one :class:`ModelRuntime` per served task, its batcher, its device thread and its work ledger.

The pipeline of one input is the CLI's: ``prepare`` (a decode thread) → ``run`` in a batch (the model's device
thread, through the :class:`~app.batching.DynamicBatcher`) → ``finish`` (a decode thread). Nothing here knows
any task: everything goes through :class:`~pipelines.common.task.Task` and ``Predictor``.

Backpressure: every input holds a :class:`~app.batching.Claim` on its model's
:class:`~app.batching.WorkLedger` from admission until its work has really ended, decoding runs in the
service's bounded :class:`~app.batching.FairPool`, and an input gets ``item_timeout_s`` from the start of its
decoding to the end of its finishing (a thread cannot be stopped: one that outlives the limit keeps its
claim, and its decode thread, until it returns).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from app.batching import BatchStats, Claim, DynamicBatcher, FairPool, WorkLedger
from app.errors import QueueFullError, ServiceError
from app.metrics import Metrics
from app.settings import Settings
from app.uploads import redact_paths, scrub
from pipelines.common.checkpoint import Checkpoint, installed_checkpoint, load_checkpoint
from pipelines.common.config import TaskOptions
from pipelines.common.device import resolve_device
from pipelines.common.errors import InputError
from pipelines.common.predict import ItemResult, usable_cores
from pipelines.common.task import InputItem, ItemOutput, PredictOptions, Predictor, Prepared, Task, get_task

logger = logging.getLogger(__name__)

T = TypeVar("T")
MB = 1024 * 1024
#: seconds between tries of a job's input for a place in a full queue
SLOT_POLL_S = 0.05


def torch_threads(settings: Settings) -> int:
    """torch's intra-op threads of a forward pass: ``torch_threads``; when it is 0, ``OMP_NUM_THREADS`` if set,
    else the usable cores left beside the ``decode_workers`` (at least one).

    Leaving the decode threads their cores matters on a small machine: OpenMP threads spin-wait for each other
    at every operation, so an intra-op thread whose core a decode thread holds stalls the whole forward pass
    (on 2 cores, 2 torch threads beside busy decode threads made a batch's forward pass up to 100× slower than
    alone; ``benchmarks/serve_load.py`` measures it).
    """
    if settings.torch_threads:
        return settings.torch_threads
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    return max(1, usable_cores() - settings.decode_workers)


def set_thread_budgets(settings: Settings) -> dict[str, Any]:
    """Set the process's thread budgets once, at start-up; return them as ``/readyz`` shows them.

    torch's intra-op threads (:func:`torch_threads`) run the forward passes: OpenMP keeps that number per thread
    (a thread that ran torch before keeps its own), so each model's device thread sets it again when it loads
    the model (:meth:`ModelRuntime._load_sync`). NumPy's and SciPy's BLAS get ``blas_threads`` (default 1), so
    that each decode thread is one core rather than starting a BLAS pool of its own. Both are process-wide (the
    last app started in a process sets them); torch's inter-op pool is left as it is (it can only be set before
    torch's first parallel work).
    """
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    cores = usable_cores()
    torch.set_num_threads(torch_threads(settings))
    threadpool_limits(limits=settings.blas_threads, user_api="blas")
    sys.setswitchinterval(settings.switch_interval_ms / 1000.0)
    blas = {f"{i['prefix']}:{Path(i['filepath']).name}": int(i["num_threads"]) for i in threadpool_info()}
    blas = {k: v for k, v in blas.items() if "blas" in k}
    return {
        "cpu_count": cores,
        "torch_intra_op": torch_threads(settings),
        "decode_workers": settings.decode_workers,
        "blas": blas,
        "switch_interval_ms": round(sys.getswitchinterval() * 1000.0, 3),
    }


class DeviceThreads:
    """The service's threads: one single-thread executor per (device, model), and the shared decode pool.

    Each model runs its batches in a thread of its own, so one model's long batch (a volume) never queues
    another model's (a signal record): on a GPU both threads launch kernels that the device interleaves, on the
    CPU they share the cores. Each device thread runs its batches with ``torch_threads`` intra-op threads
    (:func:`set_thread_budgets`): batches of two models running at once time-share the cores (each slower,
    neither waiting for the other to end); serving several models on a CPU, set ``torch_threads`` to the cores
    divided by the models that run at once.
    """

    def __init__(self) -> None:
        self._executors: dict[tuple[str, str], ThreadPoolExecutor] = {}
        self._pool: FairPool | None = None

    def get(self, device: str, model: str = "") -> ThreadPoolExecutor:
        """The executor of ``model`` on ``device`` (created on first use)."""
        key = (device, model)
        if key not in self._executors:
            prefix = f"torch-{device}-{model}" if model else f"torch-{device}"
            self._executors[key] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=prefix)
        return self._executors[key]

    def decode_pool(self, workers: int) -> FairPool:
        """The decode pool shared by every model (created on first use with ``workers`` threads)."""
        if self._pool is None:
            self._pool = FairPool(workers, name="decode")
        return self._pool

    def shutdown(self) -> None:
        for ex in self._executors.values():
            ex.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


@dataclass
class Outcome:
    """One input's result; ``failure`` is ``None``, ``input`` (the input's fault), ``timeout`` or ``internal``."""

    result: ItemResult
    failure: str | None = None


@dataclass(frozen=True)
class ServedItem(InputItem):
    """An input of an upload, named without its file names.

    Args:
        ref: its upload reference (``files[0]``, ``files[1]#2``: :class:`~app.uploads.UploadRefs`), shown as the
            result's ``input`` and in its messages; ``name`` is opaque (``input-000``): its files are named so.
        sources: the upload reference of each of its paths, by role.
        size: bytes of its files (its share of the model's work until it is decoded).
        redact: hides server folders and the upload's names in message text.
    """

    ref: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    size: int = 0
    redact: Callable[[str], str] | None = field(default=None, compare=False, repr=False)


def failure_error(failures: list[Outcome]) -> ServiceError:
    """The answer to a request whose inputs ``failures`` failed: 400 when they failed for their own reasons,
    504 when some timed out (and none failed inside the service), else 500."""
    message = "; ".join(o.result.error or "" for o in failures)
    if all(o.failure == "input" for o in failures):
        return ServiceError(400, message)
    if all(o.failure in ("input", "timeout") for o in failures):
        return ServiceError(504, message, "timeout")
    return ServiceError(500, "inference failed", "internal")


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def files_size(paths: Any) -> int:
    """Bytes of the files at ``paths`` (folders walked); unreadable entries count nothing."""
    total = 0
    for p in paths:
        try:
            if p.is_dir():
                total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            else:
                total += p.stat().st_size
        except OSError:
            continue
    return total


def data_nbytes(data: Any) -> int:
    """Bytes of the arrays and tensors in ``data`` (nested mappings and sequences walked)."""
    nbytes = getattr(data, "nbytes", None)
    if isinstance(nbytes, int):  # numpy arrays and torch tensors both have it
        return nbytes
    if isinstance(data, dict):
        return sum(data_nbytes(v) for v in data.values())
    if isinstance(data, list | tuple):
        return sum(data_nbytes(v) for v in data)
    return 0


def _role_of(item: InputItem, path: str) -> str | None:
    """The role of ``item`` that ``path`` is (or is inside)."""
    try:
        target = Path(path).resolve()
    except (OSError, ValueError):
        return None
    for role, p in item.paths.items():
        root = p.resolve()
        if target == root or root in target.parents:
            return role
    return None


class ModelRuntime:
    """A served task: its checkpoint, its predictor once loaded, its batcher and its state.

    Args:
        task: the registered task.
        checkpoint_path: its checkpoint file (``None`` when there is none: the runtime is ``failed``).
        settings: service settings (device, batching, the task's default options).
        threads: the service's threads (this model's device thread, the decode pool).
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
        # why the model is not served, path-free (server folders cut to file names): /readyz and 503s show it
        self.error: str | None = None if checkpoint_path else "no checkpoint installed"
        self.checkpoint: Checkpoint | None = None
        self.predictor: Predictor | None = None
        self.batcher: DynamicBatcher[Prepared, Any] | None = None
        self.device: str | None = None
        self.torch_threads: int | None = None  # as its device thread has it, once loaded
        try:
            self.default_options: TaskOptions = served_options(task, settings)
        except ValueError as exc:  # checked by ``discover_models`` first; here it fails this model only
            self.default_options, self.state, self.error = task.options_model(), "failed", redact_paths(str(exc))
        self.pool = threads.decode_pool(settings.decode_workers)
        self.ledger = WorkLedger(
            self.name,
            max_items=settings.max_queue,
            max_bytes=max(1, int(settings.max_queue_mb * MB)),
            retry_after_s=settings.retry_after_s,
            max_retry_after_s=settings.retry_after_max_s,
            batch_size=settings.max_batch_size,
        )
        self._ready = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def version(self) -> str:
        return self.checkpoint.version if self.checkpoint else "unknown"

    @property
    def max_batch_size(self) -> int:
        """The most inputs of one forward pass once loaded (0 before)."""
        return self.batcher.max_batch_size if self.batcher is not None else 0

    @property
    def model_info(self) -> dict[str, Any]:
        """Version and provenance of the loaded model (every response and report carries it)."""
        return self.checkpoint.model_info() if self.checkpoint else {}

    # -- loading ---------------------------------------------------------------------------------
    async def load(self) -> None:
        """Load the checkpoint and predictor in the device thread, warm up, then start the batcher."""
        if self.checkpoint_path is None:
            self._ready.set()
            return
        try:
            self.device = resolve_device(self.settings.device)
            executor = self.threads.get(self.device, self.name)  # its own: no model waits for another's batch
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
                on_batch=self._observe_batch,
                max_queue_cost=self.ledger.max_bytes,
                retry_after=self.ledger.retry_after,
            )
            self.ledger.batch_size = self.batcher.max_batch_size
            self.batcher.start()
            self.state = "ready"
            logger.info("%s: ready on %s (batch up to %d)", self.name, self.device, self.batcher.max_batch_size)
        except Exception as exc:  # any load failure leaves this model failed and the others serving
            self.state = "failed"
            logger.error("%s: failed to load: %s: %s", self.name, type(exc).__name__, exc)
            self.error = redact_paths(f"{type(exc).__name__}: {exc}")  # shown by /readyz and 503s
        finally:
            self._ready.set()

    def _observe_batch(self, stats: BatchStats, queue_times: list[float]) -> None:
        self.ledger.observe_batch(stats.compute_s, stats.batch_size)
        self.metrics.observe_batch(self.name, stats.compute_s, stats.batch_size, queue_times)

    def _load_sync(self) -> None:
        """Load the checkpoint and build the predictor once (its weights are loaded once)."""
        assert self.checkpoint_path is not None
        assert self.device is not None
        import torch

        torch.set_num_threads(torch_threads(self.settings))  # this device thread's own (see set_thread_budgets)
        self.torch_threads = torch.get_num_threads()
        self.checkpoint = load_checkpoint(self.checkpoint_path, task=self.name)
        options = PredictOptions(
            device=self.device,
            batch_size=self.settings.max_batch_size,
            amp=self.settings.amp,
            task=self.default_options,
            defer_pictures=True,  # drawn when a link is first fetched (Service.draw), not while answering
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

    # -- admission and decoding ------------------------------------------------------------------
    def admit(self, nbytes: int) -> Claim:
        """Admit a request whose body is not read yet: one item and its declared size, on the model's ledger.

        Raises:
            QueueFullError: the model's outstanding work is at its bound (503 with a ``Retry-After`` that grows
                with it).
        """
        return self.ledger.claim(1, max(0, int(nbytes)))

    async def in_pool(
        self,
        fn: Callable[..., T],
        *args: Any,
        claim: Claim | None = None,
        urgent: bool = False,
        deadline: float | None = None,
        stage: str | None = None,
    ) -> T:
        """Run ``fn(*args)`` in the decode pool; ``claim`` (if any) is held until the call has really ended.

        Args:
            fn: the call.
            args: its arguments.
            claim: the work it is done for, held by the call even after this coroutine was cancelled.
            urgent: ahead of every waiting call (``finish``).
            deadline: ``time.monotonic()`` by which it must have returned.
            stage: record the call's time in the thread as this stage (``medinfer_stage_seconds``; every call's
                wait for a thread is ``decode_wait``).

        Raises:
            TimeoutError: past ``deadline`` (a running call runs on, holding its claim and its thread).
        """
        return (await self._in_pool(fn, *args, claim=claim, urgent=urgent, deadline=deadline, stage=stage))[0]

    def _timed(self, fn: Callable[..., T], stage: str) -> Callable[..., T]:
        """``fn`` recording its time as ``stage`` of this model (whether it returns or raises)."""

        def timed(*args: Any) -> T:
            t0 = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.metrics.stage(self.name, stage, time.perf_counter() - t0)

        return timed

    async def _in_pool(
        self,
        fn: Callable[..., T],
        *args: Any,
        claim: Claim | None,
        urgent: bool = False,
        deadline: float | None = None,
        limit: float | None = None,
        stage: str | None = None,
    ) -> tuple[T, float | None]:
        """:meth:`in_pool`; with ``limit`` instead of a deadline, the deadline is ``limit`` seconds after the
        call starts running (waiting for a free thread does not count). Returns the result and the deadline."""
        loop = asyncio.get_running_loop()
        started: asyncio.Future[float] = loop.create_future()
        submitted = time.monotonic()
        if stage is not None:
            fn = self._timed(fn, stage)

        def on_start() -> None:  # in the worker thread
            t = time.monotonic()
            self.metrics.stage(self.name, "decode_wait", t - submitted)

            def mark() -> None:
                if not started.done():
                    started.set_result(t)

            try:
                loop.call_soon_threadsafe(mark)
            except RuntimeError:  # the loop has closed: nobody waits any more
                pass

        if claim is not None:
            claim.hold()
        try:
            cfut = self.pool.submit(self.name, fn, *args, urgent=urgent, on_start=on_start)
        except BaseException:
            if claim is not None:
                claim.let_go()
            raise
        if claim is not None:
            held = claim
            cfut.add_done_callback(lambda _: held.let_go())  # when the thread is done, or the call dropped
        fut = asyncio.wrap_future(cfut)
        try:
            if deadline is None and limit is not None:
                pending: set[asyncio.Future[Any]] = {fut, started}
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                deadline = (started.result() if started.done() else time.monotonic()) + limit
            if deadline is None:
                return await fut, None
            async with asyncio.timeout_at(_loop_time(deadline)):  # not wait_for: see _predict
                return await fut, deadline
        finally:
            fut.cancel()  # nothing when done; a call not started yet is dropped; a running one runs on
            started.cancel()

    async def _claim_item(self, item: ServedItem, *, wait_for_slot: bool) -> Claim:
        """A claim for one input not admitted with its request (a job's): wait for room, or raise."""
        while True:
            try:
                return self.ledger.claim(1, item.size)
            except QueueFullError:
                if not wait_for_slot:
                    raise
            await asyncio.sleep(SLOT_POLL_S)

    async def _batch(self, prepared: Prepared, claim: Claim, *, wait_for_slot: bool) -> tuple[Any, BatchStats]:
        """Run one prepared input in a batch; ``claim`` is held until its batch has ended."""
        assert self.batcher is not None
        while True:
            claim.hold()  # the batcher lets go of it exactly once, whatever happens
            try:
                return await self.batcher.submit_with_stats(prepared, cost=claim.nbytes, on_release=claim.let_go)
            except QueueFullError:
                if not wait_for_slot:
                    raise
            await asyncio.sleep(SLOT_POLL_S)

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

    async def predict_item(
        self,
        item: ServedItem,
        out_dir: Path | None,
        upload_dir: Path | None,
        *,
        wait_for_slot: bool,
        claim: Claim | None = None,
    ) -> Outcome:
        """Prepare, run (batched) and finish one input; errors become this input's own outcome.

        The input is shown by its upload reference and its messages are redacted. It gets ``item_timeout_s``
        from the start of its decoding to the end of its finishing, else a ``timeout`` outcome.

        Args:
            item: the grouped input (with its request's task options), as ``Service._collect`` makes it.
            out_dir: where ``finish`` writes files; ``None``: answer from memory, for an input whose
                ``Predictor.needs_files`` is false (a file is never written for it).
            upload_dir: the private upload folder (hidden from messages); ``None`` for an input without files.
            wait_for_slot: on a full queue, wait and retry (jobs) instead of raising (requests).
            claim: the input's share of the model's work, claimed (and let go of) by the caller; every thread
                and batch working for the input holds it as well until it returns. ``None``: claimed here (and
                let go of here).

        Raises:
            QueueFullError: the queue is full and ``wait_for_slot`` is false.
        """
        assert self.predictor is not None, f"{self.name} is not loaded"
        if claim is not None:
            return await self._predict(item, out_dir, upload_dir, claim, wait_for_slot=wait_for_slot)
        own = await self._claim_item(item, wait_for_slot=wait_for_slot)
        try:
            return await self._predict(item, out_dir, upload_dir, own, wait_for_slot=wait_for_slot)
        finally:
            own.let_go()

    async def predict_request(
        self, items: list[ServedItem], claims: list[Claim], out_dir: Path | None, upload_dir: Path | None
    ) -> list[Outcome]:
        """The inputs of one synchronous request, each with its claim, at once (:meth:`predict_item`).

        A full queue (or a disconnect) for one input ends the request: its other inputs are cancelled too, and
        the error propagates.

        Raises:
            QueueFullError: the queue is full for one of them.
        """
        tasks = [
            asyncio.ensure_future(self.predict_item(it, out_dir, upload_dir, wait_for_slot=False, claim=c))
            for it, c in zip(items, claims, strict=True)
        ]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _predict(
        self, item: ServedItem, out_dir: Path | None, upload_dir: Path | None, claim: Claim, *, wait_for_slot: bool
    ) -> Outcome:
        assert self.predictor is not None
        predictor = self.predictor
        limit = self.settings.item_timeout_s
        ref, sources = item.ref or item.name, item.sources
        redact = item.redact or (lambda text: scrub(text, *(d for d in (upload_dir, out_dir) if d is not None)))

        t0 = time.perf_counter()

        def failed(exc: BaseException | None, kind: str) -> Outcome:
            if kind == "internal":
                assert exc is not None
                # the traceback helps whoever runs the server; its data folders and input names do not
                trace = redact("".join(traceback.format_exception(exc)))
                logger.error("%s: inference failed for %s (%s)\n%s", self.name, ref, type(exc).__name__, trace)
                message = f"{ref}: inference failed ({type(exc).__name__})"
            elif kind == "timeout":
                message = f"{ref}: timed out after {limit:g} s"
            elif isinstance(exc, InputError):
                role = _role_of(item, exc.path) if len(item.paths) > 1 else None
                message = f"{ref} ({role}): {redact(exc.problem)}" if role else f"{ref}: {redact(exc.problem)}"
            else:
                message = f"{ref}: {redact(str(exc))}"
            self.metrics.item_failures.labels(self.name, kind).inc()
            seconds = time.perf_counter() - t0
            result = ItemResult(ref, "error", error=message, seconds=seconds, name=item.name, source=sources)
            return Outcome(result, kind)

        try:
            prepared, deadline = await self._in_pool(predictor.prepare, item, claim=claim, limit=limit, stage="prepare")
        except TimeoutError:
            return failed(None, "timeout")
        except (InputError, ValueError) as exc:
            return failed(exc, "input")
        except Exception as exc:  # a reader crashing on a hostile file is still that file's problem
            logger.warning("%s: prepare of %s raised %s", self.name, ref, type(exc).__name__)
            return failed(InputError(ref, f"cannot be read ({type(exc).__name__})"), "input")
        assert deadline is not None
        nbytes = data_nbytes(prepared.data)
        if nbytes:
            claim.resize(nbytes)  # from now on it weighs what it decoded to
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that arrives as
            # the awaited work completes, and a cancelled job worker would then carry on
            async with asyncio.timeout_at(_loop_time(deadline)):
                raw, stats = await self._batch(prepared, claim, wait_for_slot=wait_for_slot)
        except TimeoutError:
            return failed(None, "timeout")
        except QueueFullError:
            raise
        except (InputError, ValueError) as exc:
            return failed(exc, "input")
        except Exception as exc:
            return failed(exc, "internal")
        try:
            output: ItemOutput
            if out_dir is None:
                # a result without files only builds its JSON (Predictor.needs_files): cheaper here than a thread hop
                output = self._timed(predictor.finish, "finish")(prepared, raw, None)
            else:
                output = await self.in_pool(
                    predictor.finish,
                    prepared,
                    raw,
                    out_dir,
                    claim=claim,
                    urgent=True,
                    deadline=deadline,
                    stage="finish",
                )
        except TimeoutError:
            return failed(None, "timeout")
        except (InputError, ValueError) as exc:
            return failed(exc, "input")
        except Exception as exc:
            return failed(exc, "internal")
        timings = {**prepared.timings, "queue": stats.queue_s, "infer": prepared.timings.get("infer", stats.compute_s)}
        timings["batch_size"] = float(stats.batch_size)
        seconds = time.perf_counter() - t0
        result = ItemResult(
            ref,
            "ok",
            outputs=output.data,
            seconds=seconds,
            timings=timings,
            files=output.files,
            name=item.name,
            source=sources,
        )
        # an "ok" result whose outputs are not finite was turned into this input's error by ItemResult
        return Outcome(result, "input" if result.status == "error" else None)


def _loop_time(deadline: float) -> float:
    """A ``time.monotonic()`` deadline on the running loop's clock (for ``asyncio.timeout_at``)."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


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
