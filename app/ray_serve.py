"""``medinfer serve --ray``: the service on Ray Serve.

The application is two kinds of deployment:

- **the ingress** (one replica, pinned to the node ``medinfer serve --ray`` runs on): the FastAPI app of
  :func:`app.main.create_app` as it is, behind Ray Serve's HTTP proxy: the same endpoints, schemas, API keys,
  loopback rule, errors, job store and worker. Its :class:`~app.service.Service` makes a
  :class:`RayModelRuntime` per task, so every input still takes the single-process path (admission on the
  model's ledger, ``prepare`` in the decode pool, the item time limit, ``finish``, per-input errors): only the
  forward pass goes elsewhere.
- **one model deployment per task** (:class:`TaskModel`; ``MEDINFER_RAY_REPLICAS`` replicas, each reserving
  ``MEDINFER_RAY_GPUS_PER_REPLICA`` GPUs): the model, loaded and warmed once per replica, running the forward
  passes in batches made by Ray Serve's ``@serve.batch`` (``MEDINFER_MAX_BATCH_SIZE`` capped by the model,
  ``MEDINFER_MAX_BATCH_DELAY_MS``) in place of the in-process :class:`~app.batching.DynamicBatcher`.

``prepare`` and ``finish`` stay in the ingress. Uploads and results then never leave the ingress's node: the files
``finish`` writes land in the ingress's ``data_dir``, where the routes serve them from, with no shared storage,
and only tensors travel to and from the replicas. The price: decoding runs on the ingress's node
(``MEDINFER_DECODE_WORKERS`` threads), and the ingress holds a CPU copy of each model for ``finish`` (explanations
read the model's prototypes, labels and heads).

Backpressure: each model deployment has Ray Serve's ``max_queued_requests`` (``MEDINFER_RAY_MAX_QUEUED_REQUESTS``);
its :class:`~ray.serve.exceptions.BackPressureError` is the model's queue-full 503 with ``Retry-After``
(:class:`~app.errors.QueueFullError`, the same error JSON as the single-process service), and a job's input waits
for room instead, as it does there. The ingress's own per-model ledger (``MEDINFER_MAX_QUEUE``) still applies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.exceptions import BackPressureError

from app.batching import BatchStats, Claim
from app.errors import QueueFullError
from app.metrics import Metrics
from app.runtime import SLOT_POLL_S, DeviceThreads, ModelRuntime, ServedItem, discover_models
from app.settings import Settings
from app.uploads import redact_paths
from pipelines.common.device import resolve_device
from pipelines.common.errors import InputError
from pipelines.common.task import Prepared, Task, get_task

logger = logging.getLogger(__name__)

#: the Ray Serve application's name
APP_NAME = "medinfer"
#: the ingress deployment's name
INGRESS_NAME = "medinfer-ingress"
#: requests the ingress replica takes at once: it bounds its work itself (ledgers, decode pool, job queue), and
#: a job's long wait or a result download must not hold a prediction back in the proxy
INGRESS_MAX_ONGOING = 1000


def model_deployment_name(task: str) -> str:
    """The name of ``task``'s model deployment."""
    return f"model-{task}"


# -- what crosses between the ingress and a model replica ------------------------------------------------------
@dataclass(frozen=True)
class RemoteFailure:
    """An exception of a model replica in a form that survives pickling (``InputError`` takes two arguments and
    would not be rebuilt from its message).

    Args:
        kind: ``input`` (an :class:`~pipelines.common.errors.InputError`), ``value`` (a ``ValueError``: the
            input's fault too) or ``other`` (an internal failure).
        type_name: the exception's class name (messages name it as the single-process service does).
        message: its text; for ``input``, the problem alone.
        path: the path an ``InputError`` named.
        trace: the replica's traceback (logged by the ingress, never returned).
    """

    kind: str
    type_name: str
    message: str
    path: str = ""
    trace: str = ""


class RemoteModelError(Exception):
    """An internal failure of a model replica, re-raised in the ingress (under the remote exception's name)."""


@functools.cache
def _remote_error_class(type_name: str) -> type[RemoteModelError]:
    return type(type_name, (RemoteModelError,), {"__module__": __name__})


def portable_error(exc: BaseException) -> RemoteFailure:
    """``exc`` as a :class:`RemoteFailure`."""
    name = type(exc).__name__
    if isinstance(exc, InputError):
        return RemoteFailure("input", name, exc.problem, exc.path)
    if isinstance(exc, ValueError):
        return RemoteFailure("value", name, str(exc))
    return RemoteFailure("other", name, str(exc), trace="".join(traceback.format_exception(exc)))


def local_error(failure: RemoteFailure) -> Exception:
    """The exception a :class:`RemoteFailure` stands for, as the ingress's runtime classifies it: an
    ``InputError`` or ``ValueError`` is the input's fault, anything else an internal failure."""
    if failure.kind == "input":
        return InputError(failure.path, failure.message)
    if failure.kind == "value":
        return ValueError(failure.message)
    remote = failure.trace or f"{failure.type_name}: {failure.message}"
    return _remote_error_class(failure.type_name)(f"in the model replica:\n{remote}")


def forward_payload(prepared: Prepared) -> Prepared:
    """What a model replica needs of a prepared input for ``Predictor.run``: the item (without its redaction
    function and in-memory copy), the decoded data, its timings and options. ``context`` stays in the ingress: it
    is what ``finish`` needs (the task contract), and can be large (a volume's reference image)."""
    item = prepared.item
    if isinstance(item, ServedItem):
        item = dataclasses.replace(item, redact=None, data=None)
    elif item.data is not None:
        item = dataclasses.replace(item, data=None)
    return Prepared(item, prepared.data, {}, dict(prepared.timings), prepared.options)


def to_cpu(value: Any) -> Any:
    """``value`` with every torch tensor in it (nested dicts, lists, tuples) moved to the CPU, so that an ingress
    without a GPU can unpickle a replica's output."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    return value


@dataclass
class Forwarded:
    """A model replica's answer for one input: its raw output or its failure, the timings ``run`` recorded, and
    its batch's statistics (``first``: this input is its batch's first, which the ingress records as the batch)."""

    raw: Any = None
    failure: RemoteFailure | None = None
    timings: dict[str, float] = field(default_factory=dict)
    compute_s: float = 0.0
    batch_size: int = 1
    first: bool = True


# -- the model deployment --------------------------------------------------------------------------------------
class TaskModel:
    """A task's model in a Ray Serve replica: loaded and warmed once, forward passes in Ray Serve batches.

    The model runs in one thread of its own (torch's per-thread settings hold there, the replica's event loop is
    never blocked). A load failure does not fail the replica: :meth:`info` reports it, so that ``/readyz``
    shows the model failed with its reason while the other tasks serve, as in the single-process service.

    Args:
        task: the task's name (registered in the replica's process).
        checkpoint: its checkpoint file (on the replica's node).
        settings: the service settings.
    """

    def __init__(self, task: str, checkpoint: str, settings: Settings) -> None:
        self.name = task
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"torch-{task}")
        # the single-process runtime's loading and forward pass (torch threads, checkpoint check, CUDA OOM retry)
        self.runtime = ModelRuntime(get_task(task), Path(checkpoint), settings, DeviceThreads(), Metrics())
        self.executor.submit(self._load).result()
        self.max_batch_size = 1
        if self.runtime.predictor is not None:
            self.max_batch_size = max(1, min(settings.max_batch_size, int(self.runtime.predictor.max_batch)))
        batching: Any = self._forward_batch  # serve.batch's wrapper, with its setters
        batching.set_max_batch_size(self.max_batch_size)
        batching.set_batch_wait_timeout_s(settings.max_batch_delay_ms / 1000.0)

    def _load(self) -> None:
        rt = self.runtime
        try:
            rt.device = resolve_device(self.settings.device)
            rt._load_sync()
            if self.settings.warmup:
                assert rt.predictor is not None
                rt.predictor.warmup()
            rt.state = "ready"
            logger.info("%s: ready on %s", self.name, rt.device)
        except Exception as exc:  # reported by info(); the ingress shows the model failed
            rt.state = "failed"
            rt.predictor = None
            rt.error = redact_paths(f"{type(exc).__name__}: {exc}")
            logger.error("%s: failed to load: %s", self.name, rt.error)

    def info(self) -> dict[str, Any]:
        """The replica's model: ``state`` (``ready``/``failed``), ``error``, ``device``, ``torch_threads``,
        ``version`` and ``max_batch_size``."""
        rt = self.runtime
        return {
            "state": rt.state,
            "error": rt.error,
            "device": rt.device,
            "torch_threads": rt.torch_threads,
            "version": rt.version,
            "max_batch_size": self.max_batch_size,
        }

    async def forward(self, prepared: Prepared) -> Forwarded:
        """The forward pass of one prepared input, in a batch with whatever else arrives meanwhile."""
        answer: Forwarded = await self._forward_batch(prepared)
        return answer

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # set per replica from the settings in __init__
    async def _forward_batch(self, batch: list[Prepared]) -> list[Forwarded]:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.executor, self._run_each, batch)
        compute = time.perf_counter() - started
        out = []
        for i, (prepared, result) in enumerate(zip(batch, results, strict=True)):
            reply = Forwarded(timings=prepared.timings, compute_s=compute, batch_size=len(batch), first=i == 0)
            if isinstance(result, BaseException):
                reply.failure = portable_error(result)
            else:
                reply.raw = result
            out.append(reply)
        return out

    def _run_each(self, batch: list[Prepared]) -> list[Any]:
        """Run the batch (the model's thread); if it fails as a whole, each input alone, so that one bad input
        does not fail its neighbours (as the in-process batcher does). An exception stands for its input's
        failure."""
        if self.runtime.predictor is None:
            return [RuntimeError(f"{self.name}: {self.runtime.error}") for _ in batch]
        try:
            results = list(self.runtime._run_batch(batch))
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name}: batch function returned {len(results)} results for {len(batch)}")
            return [to_cpu(r) for r in results]
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            logger.warning(
                "%s: batch of %d failed (%s); retrying one by one", self.name, len(batch), type(exc).__name__
            )
        out: list[Any] = []
        for prepared in batch:
            try:
                (result,) = list(self.runtime._run_batch([prepared]))
                out.append(to_cpu(result))
            except Exception as exc:
                out.append(exc)
        return out


# -- the ingress's runtime -------------------------------------------------------------------------------------
class RayModelRuntime(ModelRuntime):
    """A served task whose forward pass runs in its model deployment (through ``handle``); everything else (the
    ledger, ``prepare`` and ``finish`` in the decode pool, time limits, per-input errors) is the single-process
    runtime's.

    Args:
        task, checkpoint_path, settings, threads, metrics: as :class:`~app.runtime.ModelRuntime`.
        handle: the task's model deployment (``None`` when the task has no checkpoint: the runtime is failed).
    """

    def __init__(
        self,
        task: Task,
        checkpoint_path: Path | None,
        settings: Settings,
        threads: DeviceThreads,
        metrics: Metrics,
        *,
        handle: Any = None,
    ) -> None:
        super().__init__(task, checkpoint_path, settings, threads, metrics)
        self.handle = handle
        self._max_batch_size = 0

    @property
    def max_batch_size(self) -> int:
        return self._max_batch_size

    async def load(self) -> None:
        """Ask the model deployment for its state (waiting for a replica), then load a CPU copy of the predictor
        here for ``prepare`` and ``finish`` (no warm-up: the replicas warmed theirs)."""
        if self.checkpoint_path is None or self.handle is None:
            self._ready.set()
            return
        try:
            info = await self.handle.info.remote()
            if info["state"] != "ready":
                raise RuntimeError(f"its model deployment failed to load: {info['error']}")
            self.device = "cpu"
            executor = self.threads.get(self.device, self.name)
            await asyncio.get_running_loop().run_in_executor(executor, self._load_sync)
            if info["version"] != self.version:
                raise RuntimeError(
                    f"the model deployment serves checkpoint {info['version']} and the ingress has {self.version}: "
                    "every node needs the same checkpoints folder"
                )
            self.device, self.torch_threads = info["device"], info["torch_threads"]
            self._max_batch_size = int(info["max_batch_size"])
            self.ledger.batch_size = self._max_batch_size
            self.state = "ready"
            logger.info("%s: ready on Ray Serve (%s, batch up to %d)", self.name, self.device, self._max_batch_size)
        except Exception as exc:  # any failure leaves this model failed and the others serving
            self.state = "failed"
            self.error = redact_paths(f"{type(exc).__name__}: {exc}")
            logger.error("%s: failed to load: %s", self.name, self.error)
        finally:
            self._ready.set()

    def _queue_full(self) -> QueueFullError:
        retry = self.ledger.retry_after()
        limit = self.settings.ray_max_queued_requests
        return QueueFullError(
            f"{self.name}: every model replica is busy and {limit} input(s) already wait for one; retry in {retry} s",
            retry,
        )

    async def _batch(self, prepared: Prepared, claim: Claim, *, wait_for_slot: bool) -> tuple[Any, BatchStats]:
        """The forward pass of one input in its model deployment; ``claim`` is held until it has answered.

        Raises:
            QueueFullError: the deployment's queue is full (Ray Serve's ``BackPressureError``) and
                ``wait_for_slot`` is false.
            RemoteModelError: the call failed in Ray (an internal failure of the input).
            Exception: the input's failure in the replica (:func:`local_error`).
        """
        payload = forward_payload(prepared)
        claim.hold()
        try:
            while True:
                try:
                    sent = time.perf_counter()
                    reply: Forwarded = await self.handle.forward.remote(payload)
                    break
                except BackPressureError:
                    if not wait_for_slot:
                        raise self._queue_full() from None
                except Exception as exc:
                    # the replica answers an input's own failure as a value: whatever the call raises is Ray's
                    # (a dead replica, a lost connection), never the input's fault, whatever its type
                    raise RemoteModelError(f"the call to {self.name}'s model deployment failed: {exc!r}") from exc
                await asyncio.sleep(SLOT_POLL_S)
        finally:
            claim.let_go()
        # the call's time beside its forward pass: routing, Ray Serve's queue and batch wait, the transfers
        queue_s = max(0.0, time.perf_counter() - sent - reply.compute_s)
        prepared.timings.update(reply.timings)  # what ``run`` recorded (a volume's "infer")
        stats = BatchStats(queue_s, reply.compute_s, reply.batch_size)
        if reply.first:  # the batch, once
            self._observe_batch(stats, [queue_s])
        else:
            self.metrics.queue_seconds.labels(self.name).observe(queue_s)
            self.metrics.stage(self.name, "queue", queue_s)
        if reply.failure is not None:
            raise local_error(reply.failure)
        return reply.raw, stats


def runtime_factory(handles: dict[str, Any]) -> Callable[..., ModelRuntime]:
    """The ingress service's runtime factory: each task's runtime reaches its model deployment through its handle."""

    def make(
        task: Task, checkpoint_path: Path | None, settings: Settings, threads: DeviceThreads, metrics: Metrics
    ) -> ModelRuntime:
        return RayModelRuntime(task, checkpoint_path, settings, threads, metrics, handle=handles.get(task.name))

    return make


# -- the ingress deployment ------------------------------------------------------------------------------------
class Ingress:
    """The ingress replica: builds the service app there (its job store, worker and threads are the replica's)."""

    def __init__(self, settings: Settings, handles: dict[str, Any]) -> None:
        self.settings = settings
        self.handles = handles

    def __serve_build_asgi_app__(self) -> Any:
        from app.main import create_app

        app = create_app(self.settings)
        app.state.service.runtime_factory = runtime_factory(self.handles)
        return app


def deployment_options(settings: Settings, task: str) -> dict[str, Any]:
    """Ray Serve options of ``task``'s model deployment: replicas, resources, batching room and backpressure."""
    return {
        "name": model_deployment_name(task),
        "num_replicas": settings.ray_replicas.get(task, 1),
        # one batch running while the next one fills
        "max_ongoing_requests": 2 * settings.max_batch_size,
        "max_queued_requests": settings.ray_max_queued_requests,
        "ray_actor_options": {"num_cpus": settings.ray_cpus_per_replica, "num_gpus": settings.ray_gpus_per_replica},
    }


def build_app(settings: Settings, *, ingress_node: str | None = None) -> Any:
    """The Ray Serve application: one model deployment per task with a checkpoint, and the ingress.

    Args:
        settings: the service settings.
        ingress_node: the IP address of the node the ingress must run on (its ``data_dir`` and API key file are
            that node's); ``None``: wherever Ray places it.

    Returns:
        The bound application for ``serve.run``.

    Raises:
        ValueError: an unknown task in ``MEDINFER_TASKS`` or ``MEDINFER_TASK_OPTIONS``, invalid task options, a
            task in ``MEDINFER_RAY_REPLICAS`` that is not served, or keys/bind settings ``create_app`` refuses.
    """
    settings.check_bind()
    settings.keys()
    served = discover_models(settings)
    names = [task.name for task, _ in served]
    unknown = sorted(set(settings.ray_replicas) - set(names))
    if unknown:
        raise ValueError(
            f"MEDINFER_RAY_REPLICAS names {', '.join(unknown)}, not served (served: {', '.join(names) or 'none'})"
        )
    model: Any = serve.deployment(TaskModel)
    handles = {
        task.name: model.options(**deployment_options(settings, task.name)).bind(task.name, str(ckpt), settings)
        for task, ckpt in served
        if ckpt is not None
    }
    actor_options: dict[str, Any] = {"num_cpus": 0}  # its threads are bounded by the settings, not by Ray
    if ingress_node:
        actor_options["resources"] = {f"node:{ingress_node}": 0.001}
    ingress_deployment: Any = serve.deployment(serve.ingress()(Ingress))
    ingress = ingress_deployment.options(
        name=INGRESS_NAME, num_replicas=1, max_ongoing_requests=INGRESS_MAX_ONGOING, ray_actor_options=actor_options
    )
    return ingress.bind(settings, handles)


def serve_forever(settings: Settings, *, address: str | None = None, echo: Callable[[str], None] = print) -> None:
    """Join (or start) Ray, run the application behind Serve's HTTP proxy on ``settings.host:port`` and wait for
    Ctrl-C; then delete the application and leave Ray.

    Args:
        settings: the service settings (``host``/``port``: where Serve's proxy listens, on the head node).
        address: the Ray cluster (``HOST:6379``, ``auto``); ``None``: ``RAY_ADDRESS`` if set, else a local Ray.
        echo: where the start-up line goes.

    Raises:
        ValueError: as :func:`build_app`.
    """
    import ray

    build_app(settings)  # refuse bad settings before starting or joining Ray
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        application = build_app(settings, ingress_node=ray.util.get_node_ip_address())
        serve.start(http_options={"host": settings.host, "port": settings.port}, proxy_location="HeadOnly")
        serve.run(application, name=APP_NAME, route_prefix="/")
        echo(f"serving on Ray Serve at http://{settings.host}:{settings.port} (head node; Ctrl-C to stop)")
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            serve.delete(APP_NAME)
        finally:
            ray.shutdown()
