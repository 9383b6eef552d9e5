"""The service object behind the routes: models, the job store and worker, metrics, uploads."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from app.errors import ServiceError
from app.jobs import JobRecord, JobStore, JobWorker
from app.metrics import Metrics
from app.runtime import DeviceThreads, ModelRuntime, Outcome, discover_models
from app.settings import Settings
from app.uploads import private_dir, remove_tree, scrub, store_uploads
from pipelines.common.config import ConfigError, TaskOptions
from pipelines.common.errors import InputError
from pipelines.common.predict import ItemResult, Report
from pipelines.common.task import InputItem, OutputFile

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"


def file_url(job_id: str, rel: str) -> str:
    return f"{API_PREFIX}/jobs/{job_id}/files/{rel}"


class Service:
    """Everything the routes need, created by ``create_app`` and started in its lifespan.

    Args:
        settings: the service settings.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.expanduser()
        self.tmp_dir = self.data_dir / "tmp"
        self.threads = DeviceThreads()
        self.store: JobStore | None = None
        self.metrics = Metrics(job_counts=self._job_counts, queue_depths=self._queue_depths)
        self.runtimes: dict[str, ModelRuntime] = {}
        self.worker: JobWorker | None = None
        self._loading: list[asyncio.Task[None]] = []

    def _job_counts(self) -> dict[str, int]:
        return self.store.counts() if self.store is not None else {}

    def _queue_depths(self) -> dict[str, int]:
        return {name: rt.batcher.queued for name, rt in self.runtimes.items() if rt.batcher is not None}

    # -- lifecycle -------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Open the store, recover jobs, start loading models (in the background) and the job worker."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        remove_tree(self.tmp_dir)  # uploads of a previous process that died mid-request
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.chmod(0o700)
        self.store = JobStore(self.data_dir)
        for task, ckpt in discover_models(self.settings):
            self.runtimes[task.name] = ModelRuntime(task, ckpt, self.settings, self.threads, self.metrics)
        if not self.runtimes:
            logger.warning("no task has a checkpoint in %s; nothing to serve", self.settings.checkpoints)
        loop = asyncio.get_running_loop()
        self._loading = [loop.create_task(rt.load(), name=f"load-{rt.name}") for rt in self.runtimes.values()]
        pending = self.store.recover(self.settings.job_max_attempts, served=set(self.runtimes))
        self.worker = JobWorker(
            self.store,
            self._run_job,
            workers=self.settings.job_workers,
            ttl_s=self.settings.result_ttl_s,
            cleanup_interval_s=self.settings.cleanup_interval_s,
        )
        self.worker.start(pending)

    async def shutdown(self) -> None:
        for t in self._loading:
            t.cancel()
        if self.worker is not None:
            await self.worker.stop()
        for rt in self.runtimes.values():
            await rt.stop()
        self.threads.shutdown()
        if self.store is not None:
            self.store.close()

    @property
    def ready(self) -> bool:
        return bool(self.runtimes) and all(rt.ready for rt in self.runtimes.values())

    def runtime(self, task: str, *, must_be_ready: bool = True) -> ModelRuntime:
        """The served task.

        Raises:
            ServiceError: 404 when not served, 503 when not ready.
        """
        rt = self.runtimes.get(task)
        if rt is None:
            served = ", ".join(sorted(self.runtimes)) or "none"
            raise ServiceError(404, f"task {task!r} is not served (served: {served})")
        if must_be_ready and not rt.ready:
            detail = f": {rt.error}" if rt.error else ""
            raise ServiceError(
                503,
                f"model {task!r} is not ready (state {rt.state}{detail})",
                "not_ready",
                {"Retry-After": str(self.settings.retry_after_s)},
            )
        return rt

    def job_store(self) -> JobStore:
        if self.store is None:
            raise ServiceError(503, "service is starting", "not_ready")
        return self.store

    # -- inputs ----------------------------------------------------------------------------------
    def _options(self, rt: ModelRuntime, values: dict[str, Any]) -> TaskOptions:
        """The request's task options, validated (422 naming the key)."""
        try:
            return rt.request_options(values)
        except ConfigError as exc:
            raise ServiceError(422, str(exc)) from exc

    async def _collect(
        self, rt: ModelRuntime, paths: list[Path], upload_dir: Path, explain: bool, options: TaskOptions
    ) -> tuple[list[InputItem], list[Outcome]]:
        """Group the uploaded files: the items, and an error outcome for every file that could not be used.

        Raises:
            ServiceError: 415 when nothing usable was uploaded, 400 when every file was unusable.
        """
        try:
            collected = await run_in_threadpool(rt.task.collect_inputs, [str(p) for p in paths])
        except (InputError, ValueError) as exc:
            raise ServiceError(400, scrub(str(exc), upload_dir)) from exc
        errors = [scrub(str(exc), upload_dir) for exc in collected.errors]
        if not collected.items:
            if errors:
                raise ServiceError(400, "; ".join(errors))
            formats = "; ".join(rt.task.contract.formats)
            raise ServiceError(415, f"no usable {rt.name} input among the uploaded files (accepted: {formats})")
        items = [InputItem(it.name, it.paths, explain or it.explain, options) for it in collected.items]
        failed = [
            Outcome(ItemResult(scrub(exc.path, upload_dir), "error", error=msg), "input")
            for exc, msg in zip(collected.errors, errors, strict=True)
        ]
        return items, failed

    @staticmethod
    def _link(job_id: str, out_dir: Path, rel: str, role: str | None = None) -> dict[str, Any]:
        """A result link of one file of a result folder (``rel`` relative to it)."""
        path = out_dir / rel
        size = path.stat().st_size if path.is_file() else 0
        return {"role": role, "name": rel, "url": file_url(job_id, rel), "size": size}

    def _links(self, job_id: str, out_dir: Path, files: list[OutputFile]) -> list[dict[str, Any]]:
        """The links of the files an input wrote (from its typed result, never guessed from strings)."""
        return [self._link(job_id, out_dir, f.path, f.role) for f in files]

    def file_links(self, job_id: str) -> list[dict[str, Any]]:
        """Every file of a result folder (the inputs' files and the report)."""
        out_dir = self.job_store().output_dir(job_id)
        if not out_dir.is_dir():
            return []
        return [
            self._link(job_id, out_dir, p.relative_to(out_dir).as_posix())
            for p in sorted(out_dir.rglob("*"))
            if p.is_file()
        ]

    def _results(self, outcomes: list[Outcome], out_dir: Path, job_id: str) -> list[dict[str, Any]]:
        """The outcomes as the API returns them: each input's files as links (from its typed result)."""
        return [{**o.result.to_dict(), "files": self._links(job_id, out_dir, o.result.files)} for o in outcomes]

    # -- synchronous prediction ------------------------------------------------------------------
    async def predict(
        self, task: str, files: list[UploadFile], options: dict[str, Any], *, explain: bool
    ) -> dict[str, Any]:
        """Predict on uploaded files; the files the task writes are kept as a finished ``predict`` record.

        Args:
            task: the served task.
            files: the upload.
            options: the request's task options (validated by the task's options model).
            explain: also explain.

        Raises:
            ServiceError: 400 when every input failed for its own reason, 404/503 for the model, 413/415 for
                the upload, 422 for invalid options, 503 on a full queue.
        """
        rt = self.runtime(task)
        task_options = self._options(rt, options)
        store = self.job_store()
        upload_dir = private_dir(self.tmp_dir, "upload-")
        job_id = store.new_id()
        out_dir = store.output_dir(job_id)
        try:
            paths = await store_uploads(files, upload_dir, self.settings)
            items, failed = await self._collect(rt, paths, upload_dir, explain, task_options)
            if len(items) > self.settings.max_items_per_request:
                raise ServiceError(
                    413,
                    f"{len(items)} inputs in one request; the limit is {self.settings.max_items_per_request}"
                    " (submit a job for more)",
                )
            out_dir.mkdir(parents=True)
            tasks = [
                asyncio.ensure_future(rt.predict_item(it, out_dir, upload_dir, wait_for_slot=False)) for it in items
            ]
            try:
                outcomes = [*failed, *await asyncio.gather(*tasks)]
            except BaseException:
                # a full queue (or a disconnect) for one input ends the request: stop its other inputs too
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        except BaseException:
            remove_tree(store.job_dir(job_id))
            raise
        finally:
            remove_tree(upload_dir)
        failures = [o for o in outcomes if o.failure]
        if len(failures) == len(outcomes):
            remove_tree(store.job_dir(job_id))
            if all(o.failure == "input" for o in failures):
                raise ServiceError(400, "; ".join(o.result.error or "" for o in failures))
            raise ServiceError(500, "inference failed", "internal")
        return await run_in_threadpool(self._store_prediction, task, rt.version, job_id, list(outcomes))

    def _store_prediction(self, task: str, version: str, job_id: str, outcomes: list[Outcome]) -> dict[str, Any]:
        """Link the written files, write the report and keep them as a finished record (worker thread)."""
        store = self.job_store()
        out_dir = store.output_dir(job_id)
        results = self._results(outcomes, out_dir, job_id)
        files_written = any(out_dir.rglob("*"))
        if files_written:
            Report(task=task, checkpoint=version, results=[o.result for o in outcomes]).write(out_dir)
            store.create(
                job_id, task, kind="predict", state="succeeded", checkpoint_version=version, result={"results": results}
            )
        else:
            remove_tree(store.job_dir(job_id))
        return {
            "id": job_id,
            "task": task,
            "checkpoint_version": version,
            "results": results,
            "files": self.file_links(job_id) if files_written else [],
        }

    # -- jobs ------------------------------------------------------------------------------------
    async def submit_job(
        self, task: str, files: list[UploadFile], options: dict[str, Any], *, explain: bool
    ) -> JobRecord:
        """Store the upload with a new queued job and hand it to the worker (options validated first: 422)."""
        rt = self.runtime(task, must_be_ready=False)
        if rt.state == "failed":
            raise ServiceError(503, f"model {task!r} failed to load: {rt.error}", "not_ready")
        self._options(rt, options)
        store = self.job_store()
        job_id = store.new_id()
        input_dir = store.input_dir(job_id)
        input_dir.mkdir(parents=True, mode=0o700)
        try:
            await store_uploads(files, input_dir, self.settings)
        except BaseException:
            remove_tree(store.job_dir(job_id))
            raise
        record = store.create(job_id, task, options={"task_options": options, "explain": explain})
        assert self.worker is not None
        self.worker.submit(job_id)
        return record

    async def _run_job(self, rec: JobRecord) -> None:
        store = self.job_store()
        rt = self.runtimes.get(rec.task)
        if rt is None:
            store.finish(rec.id, "failed", error=f"task {rec.task!r} is not served")
            return
        await rt.wait_loaded()
        if not rt.ready:
            store.finish(rec.id, "failed", error=f"model {rec.task!r} failed to load: {rt.error}")
            return
        store.start(rec.id)
        input_dir, out_dir = store.input_dir(rec.id), store.output_dir(rec.id)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            paths = sorted(input_dir.iterdir())
            # jobs queued by medinfer 0.1 kept their options as "overrides"
            stored = rec.options.get("task_options") or rec.options.get("overrides") or {}
            task_options = self._options(rt, dict(stored))
            items, outcomes = await self._collect(rt, paths, input_dir, bool(rec.options.get("explain")), task_options)
        except ServiceError as exc:
            store.finish(rec.id, "failed", error=exc.message)
            remove_tree(input_dir)
            return
        for i, item in enumerate(items):
            outcomes.append(await rt.predict_item(item, out_dir, input_dir, wait_for_slot=True))
            store.update(rec.id, progress=(i + 1) / len(items))
        Report(task=rec.task, checkpoint=rt.version, results=[o.result for o in outcomes]).write(out_dir)
        results = self._results(outcomes, out_dir, rec.id)
        ok = sum(o.failure is None for o in outcomes)
        result = {"results": results}
        if ok == 0:
            errors = "; ".join(o.result.error or "" for o in outcomes)
            store.update(rec.id, checkpoint_version=rt.version)
            store.finish(rec.id, "failed", error=f"every input failed: {errors}", result=result)
        else:
            store.update(rec.id, checkpoint_version=rt.version)
            store.finish(rec.id, "succeeded", result=result)
        remove_tree(input_dir)


def get_service(request: Request) -> Service:
    """Dependency: the app's service."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
