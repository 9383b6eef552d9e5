"""The service object behind the routes: models, the job store and worker, metrics, uploads."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from app.batching import Claim, when_all_released
from app.errors import ServiceError
from app.jobs import (
    STORE_ERRORS,
    DataDirLock,
    JobFailed,
    JobIntake,
    JobRecord,
    JobStore,
    JobWorker,
    redact_paths,
    retrying,
)
from app.metrics import Metrics
from app.runtime import (
    DeviceThreads,
    ModelRuntime,
    Outcome,
    ServedItem,
    discover_models,
    failure_error,
    files_size,
    set_thread_budgets,
)
from app.settings import Settings
from app.uploads import UploadRefs, remove_tree, store_uploads, store_uploads_sync, stored_uploads, upload_pairs
from pipelines.common.config import ConfigError, TaskOptions
from pipelines.common.errors import InputError
from pipelines.common.predict import ItemResult, Report
from pipelines.common.task import Collected, OutputFile, Task

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"

#: what makes a served task's runtime: ``(task, checkpoint path, settings, threads, metrics)``
RuntimeFactory = Callable[[Task, Path | None, Settings, DeviceThreads, Metrics], ModelRuntime]


def file_url(job_id: str, rel: str) -> str:
    """The link of a result file (``rel``: its path in the result folder, quoted)."""
    return f"{API_PREFIX}/jobs/{job_id}/files/{quote(rel, safe='/')}"


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
        #: makes each served task's runtime at start-up (``app.ray_serve`` sets one whose forward pass is remote)
        self.runtime_factory: RuntimeFactory = ModelRuntime
        self.thread_budgets: dict[str, Any] | None = None  # set at start-up (set_thread_budgets)
        self._grouped: dict[str, Collected] = {}  # job id → its inputs as grouped at submission
        self._cleanup = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cleanup")  # removes request folders
        self.worker: JobWorker | None = None
        self.intake: JobIntake | None = None
        self.lock = DataDirLock(self.data_dir)
        self._loading: list[asyncio.Task[None]] = []

    def _job_counts(self) -> dict[str, int]:
        return self.store.counts() if self.store is not None else {}

    def _queue_depths(self) -> dict[str, int]:
        return {name: rt.batcher.queued for name, rt in self.runtimes.items() if rt.batcher is not None}

    # -- lifecycle -------------------------------------------------------------------------------
    async def startup(self) -> None:
        """Lock the data folder, open the store, recover jobs, sweep leftovers, load models, start the worker.

        The lock comes first: a second server on the same data folder fails here (:class:`~app.jobs.DataDirInUse`)
        before it has touched a file. A startup that fails later undoes what it did (and releases the lock).
        """
        self.lock.acquire()
        try:
            remove_tree(self.tmp_dir)  # uploads of a previous process that died mid-request
            self.tmp_dir.mkdir(parents=True, exist_ok=True)
            self.tmp_dir.chmod(0o700)
            self.store = JobStore(self.data_dir)
            self.thread_budgets = set_thread_budgets(self.settings)
            for task, ckpt in discover_models(self.settings):
                self.runtimes[task.name] = self.runtime_factory(task, ckpt, self.settings, self.threads, self.metrics)
            if not self.runtimes:
                logger.warning("no task has a checkpoint in %s; nothing to serve", self.settings.checkpoints)
            loop = asyncio.get_running_loop()
            self._loading = [loop.create_task(rt.load(), name=f"load-{rt.name}") for rt in self.runtimes.values()]
            pending = self.store.recover(self.settings.job_max_attempts, served=set(self.runtimes))
            swept = self.store.sweep()
            if swept:
                logger.info("removed %d leftover job folder(s) of a previous run", swept)
            self.intake = JobIntake(
                self.store,
                max_active=self.settings.max_queued_jobs,
                max_items=self.settings.max_job_items,
                max_disk_bytes=int(self.settings.max_jobs_disk_mb * 1024 * 1024),
                retry_after_s=self.settings.jobs_retry_after_s,
            )
            self.worker = JobWorker(
                self.store,
                self._run_job,
                workers=self.settings.job_workers,
                ttl_s=self.settings.result_ttl_s,
                cleanup_interval_s=self.settings.cleanup_interval_s,
            )
            self.worker.start(pending)
        except BaseException:
            await self.shutdown()
            raise

    async def shutdown(self) -> None:
        """Stop the worker and the models, close the store and release the data folder (also after a failed start)."""
        for t in self._loading:
            t.cancel()
        if self.worker is not None:
            await self.worker.stop()
        for rt in self.runtimes.values():
            await rt.stop()
        self.threads.shutdown()
        self._cleanup.shutdown(wait=True)  # the folders of finished requests are gone before the lock is let go
        if self.store is not None:
            self.store.close()
            self.store = None
        self.lock.release()

    @property
    def ready(self) -> bool:
        """Every model loaded and warmed, and the job worker running."""
        models = bool(self.runtimes) and all(rt.ready for rt in self.runtimes.values())
        return models and self.worker is not None and self.worker.running

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
        self,
        rt: ModelRuntime,
        paths: list[Path],
        upload_dir: Path,
        explain: bool,
        options: TaskOptions,
        *,
        claim: Claim | None = None,
        grouped: Collected | None = None,
    ) -> tuple[list[ServedItem], list[Outcome]]:
        """Group the uploaded files: the items, and an error outcome for every file that could not be used.

        The task groups the files in the model's decode pool (``claim``, when given, is held until it has
        really ended). Every item becomes a :class:`~app.runtime.ServedItem` with an opaque name
        (``input-000``, ``input-001``... in the task's order, unique within the upload: its output files are named
        after it, so two cases of the same name never overwrite each other) and its upload reference as its
        ``input`` (:class:`~app.uploads.UploadRefs`: ``files[0]``, ``files[0]#2``, ``files[0,1]``). Messages name
        uploads by reference and hide every client-supplied name and server folder.

        Args:
            rt: the model.
            paths: the stored uploads in upload order, as :func:`~app.uploads.store_uploads` returns them and
                :func:`~app.uploads.stored_uploads` reads them back (never the manifest).
            upload_dir: the private folder they are stored in.
            explain: also explain every item.
            options: the request's task options.
            claim: the request's work on the model's ledger.
            grouped: the task's grouping of ``paths`` when it was made already (a job's, at submission).

        Raises:
            ServiceError: 415 when nothing usable was uploaded, 400 when every file was unusable.
        """
        work = (self._group, rt, paths, upload_dir, explain, options, grouped)
        return await rt.in_pool(*work, claim=claim, stage="group")

    def _store_and_group(
        self, rt: ModelRuntime, pairs: list[tuple[str, Any]], upload_dir: Path, explain: bool, options: TaskOptions
    ) -> tuple[list[ServedItem], list[Outcome]]:
        """A request's upload stored in its new private folder, then grouped (:meth:`_group`), in one decode
        thread; the two are recorded as the ``store`` and ``group`` stages."""
        t0 = time.perf_counter()
        paths = store_uploads_sync(pairs, upload_dir, self.settings, make_dest=True)
        t1 = time.perf_counter()
        self.metrics.stage(rt.name, "store", t1 - t0)
        try:
            return self._group(rt, paths, upload_dir, explain, options, None)
        finally:
            self.metrics.stage(rt.name, "group", time.perf_counter() - t1)

    def _group(
        self,
        rt: ModelRuntime,
        uploads: list[Path],
        upload_dir: Path,
        explain: bool,
        options: TaskOptions,
        grouped: Collected | None,
    ) -> tuple[list[ServedItem], list[Outcome]]:
        """:meth:`_collect`'s work (a decode thread)."""
        refs = UploadRefs(uploads, upload_dir, keep=rt.task.contract.channels, folders=[self.data_dir])
        try:
            collected = grouped if grouped is not None else rt.task.collect_inputs([str(p) for p in uploads])
        except (InputError, ValueError) as exc:
            raise ServiceError(400, refs.error(exc)[1]) from exc
        for it in collected.items:
            refs.redact.add(it.name)  # the name the task gave an input comes from its files' names
        errors = [refs.error(exc) for exc in collected.errors]
        if not collected.items:
            if errors:
                raise ServiceError(400, "; ".join(message for _, message in errors))
            formats = "; ".join(rt.task.contract.formats)
            raise ServiceError(415, f"no usable {rt.name} input among the uploaded files (accepted: {formats})")
        items: list[ServedItem] = []
        for i, (it, ref) in enumerate(zip(collected.items, refs.item_refs(collected.items), strict=True)):
            name = f"input-{i:03d}"
            items.append(
                ServedItem(
                    name=name,
                    paths=it.paths,
                    explain=explain or it.explain,
                    options=options,
                    ref=ref or name,
                    sources={role: refs.upload_ref(p) for role, p in it.paths.items()},
                    size=files_size(it.paths.values()),
                    redact=refs.redact,
                )
            )
        failed = [Outcome(ItemResult(ref, "error", error=message), "input") for ref, message in errors]
        return items, failed

    @staticmethod
    def _link(job_id: str, out_dir: Path, rel: str, role: str | None = None, deferred: bool = False) -> dict[str, Any]:
        """A result link of one file of a result folder (``rel`` relative to it); a deferred file not drawn yet
        says so."""
        path = out_dir / rel
        exists = path.is_file()
        size = path.stat().st_size if exists else 0
        link = {"role": role, "name": rel, "url": file_url(job_id, rel), "size": size}
        if deferred and not exists:
            link["deferred"] = True
        return link

    def _links(self, job_id: str, out_dir: Path, files: list[OutputFile]) -> list[dict[str, Any]]:
        """The links of the files an input wrote (from its typed result, never guessed from strings)."""
        return [self._link(job_id, out_dir, f.path, f.role, f.deferred) for f in files]

    def draw(self, task: str, out_dir: Path, rel: str) -> Path | None:
        """Draw a deferred file of a result of ``task`` (worker thread); ``None`` when it is none.

        Raises:
            ServiceError: 404/503 when the task's model is not served or not ready.
        """
        predictor = self.runtime(task).predictor
        return None if predictor is None else predictor.draw(out_dir, rel)

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

    def _remove_later(self, folder: Path) -> Callable[[], None]:
        """A call that has ``folder`` removed by the cleanup thread (never in the event loop, which the last
        claim's release may be); after shutdown, at once."""

        def remove() -> None:
            try:
                self._cleanup.submit(remove_tree, folder)
            except RuntimeError:  # the cleanup thread has stopped
                remove_tree(folder)

        return remove

    # -- synchronous prediction ------------------------------------------------------------------
    async def predict(
        self,
        task: str,
        files: list[UploadFile],
        options: dict[str, Any],
        *,
        explain: bool,
        admission: Claim | None = None,
        save: bool = False,
    ) -> dict[str, Any]:
        """Predict on uploaded files; the files the task writes are kept as a finished ``predict`` record.

        A prediction whose inputs need no files (``Predictor.needs_files``: a classifier without explanation) is
        answered from memory unless ``save`` asks for files: no result folder, report, CSV or record is made and
        its ``id`` is ``None``. With ``save``, or when an input writes files (a mask, a picture), the result folder
        holds each input's files and ``report.json``/``report.csv``, kept as a finished record as jobs keep theirs.

        The request's work is counted on the model's ledger throughout: ``admission`` (one item and the declared
        size, claimed before the body was read) covers unpacking and grouping, then each input holds a claim of
        its own (all or none: 503 when they do not fit beside the outstanding work, 413 when they could never
        fit) until its threads have returned. The upload and, on failure, the result folder are removed once
        every thread working for the request has returned, never under a running one.

        Args:
            task: the served task.
            files: the upload.
            options: the request's task options (validated by the task's options model).
            explain: also explain.
            admission: the request's claim from :meth:`~app.runtime.ModelRuntime.admit` (the caller lets go of
                it); ``None``: claimed here.
            save: keep the result as files even when it fits in the answer.

        Raises:
            ServiceError: 400 when every input failed for its own reason, 404/503 for the model, 413/415 for
                the upload, 422 for invalid options, 503 on a full queue, 504 when every input timed out.
        """
        rt = self.runtime(task)
        task_options = self._options(rt, options)
        store = self.job_store()
        ticket = admission if admission is not None else rt.admit(sum(f.size or 0 for f in files))
        upload_dir = self.tmp_dir / f"upload-{secrets.token_hex(8)}"  # made private by store_uploads
        job_id = store.new_id()
        out_dir = store.output_dir(job_id)
        claims: list[Claim] = []

        try:
            pairs = upload_pairs(files)
            work = (self._store_and_group, rt, pairs, upload_dir, explain, task_options)
            items, failed = await rt.in_pool(*work, claim=ticket)  # one decode thread stores and groups
            limit = min(self.settings.max_items_per_request, rt.ledger.max_items)
            if len(items) > limit:
                raise ServiceError(
                    413, f"{len(items)} inputs in one request; the limit is {limit} (submit a job for more)"
                )
            claims = rt.ledger.claim_each([it.size for it in items], replacing=ticket)
            assert rt.predictor is not None
            predictor = rt.predictor
            in_memory = not save and not any(predictor.needs_files(it) for it in items)
            if not in_memory:
                out_dir.mkdir(parents=True)
            where = None if in_memory else out_dir
            outcomes = [*failed, *await rt.predict_request(items, claims, where, upload_dir)]
        except BaseException:
            when_all_released([ticket, *claims], self._remove_later(store.job_dir(job_id)))
            raise
        finally:
            for c in claims:
                c.let_go()  # each input's threads and batch hold it on their own until they return
            if admission is None:
                ticket.let_go()
            when_all_released([ticket, *claims], self._remove_later(upload_dir))
        failures = [o for o in outcomes if o.failure]
        if len(failures) == len(outcomes):
            if not in_memory:
                when_all_released(claims, self._remove_later(store.job_dir(job_id)))
            raise failure_error(failures)
        if in_memory:
            results = [{**o.result.to_dict(), "files": []} for o in outcomes]
            return {
                "id": None,
                "task": task,
                "checkpoint_version": rt.version,
                "model": rt.model_info,
                "results": results,
                "files": [],
            }
        return await run_in_threadpool(self._store_prediction, task, rt, job_id, list(outcomes))

    def _store_prediction(self, task: str, rt: ModelRuntime, job_id: str, outcomes: list[Outcome]) -> dict[str, Any]:
        """Link the written files, write the report and keep them as a finished record (worker thread).

        The record is kept even when every input failed to write anything (``save`` asked for the report)."""
        store = self.job_store()
        out_dir = store.output_dir(job_id)
        results = self._results(outcomes, out_dir, job_id)
        version, model = rt.version, rt.model_info
        Report(task=task, checkpoint=version, results=[o.result for o in outcomes], model=model).write(out_dir)
        store.create(
            job_id,
            task,
            kind="predict",
            state="succeeded",
            checkpoint_version=version,
            result={"results": results, "model": model},
        )
        return {
            "id": job_id,
            "task": task,
            "checkpoint_version": version,
            "model": model,
            "results": results,
            "files": self.file_links(job_id),
        }

    # -- jobs ------------------------------------------------------------------------------------
    async def submit_job(
        self,
        task: str,
        files: list[UploadFile],
        options: dict[str, Any],
        *,
        explain: bool,
        disk_used: int | None = None,
    ) -> JobRecord:
        """Store the upload with a new queued job and hand it to the worker.

        In order: the model (404, or 503 when it failed to load), the options (422), the job storage with the
        upload's size (503), a place in the queue (503), then, once the upload is stored, the storage again (an
        archive unpacks larger: 503) and its number of inputs (413). A refused upload is removed. The database
        row keeps the task, the options and the explain flag: never a file name.

        The job storage is walked once per submission (``disk_used``: the bytes the route counted in front of the
        body; walked here when not given), and the inputs are grouped once: the worker takes the grouping made
        here (a job recovered after a restart is grouped again).

        Raises:
            ServiceError: as above; 503 also when the upload or the row cannot be written (disk, database).
        """
        rt = self.runtime(task, must_be_ready=False)
        if rt.state == "failed":
            raise ServiceError(503, f"model {task!r} failed to load: {rt.error}", "not_ready")
        self._options(rt, options)
        store = self.job_store()
        assert self.intake is not None
        assert self.worker is not None
        intake = self.intake
        used = await intake.check_disk(sum(f.size or 0 for f in files), used=disk_used)
        with intake.reserve():
            job_id = store.new_id()
            input_dir = store.input_dir(job_id)
            try:
                input_dir.mkdir(parents=True, mode=0o700)
                await store_uploads(files, input_dir, self.settings)
                await intake.check_disk(await run_in_threadpool(files_size, [input_dir]), used=used)
                collected: Collected | None
                try:
                    stored = [str(p) for p in stored_uploads(input_dir)]
                    collected = await run_in_threadpool(rt.task.collect_inputs, stored)
                except Exception as exc:  # an unusable upload is the job's failure to report, with its reason
                    logger.info("inputs of a job upload not counted: %s", type(exc).__name__)
                    collected = None
                intake.check_items(len(collected.items) if collected is not None else 0)
                record = await retrying(
                    store.create, job_id, task, options={"task_options": options, "explain": explain}
                )
                if collected is not None:
                    self._grouped[job_id] = collected
            except STORE_ERRORS as exc:
                remove_tree(store.job_dir(job_id))
                logger.error("job upload could not be stored: %s", type(exc).__name__)
                raise ServiceError(
                    503,
                    "the server could not store the upload; retry later",
                    "unavailable",
                    {"Retry-After": str(self.settings.jobs_retry_after_s)},
                ) from exc
            except BaseException:
                remove_tree(store.job_dir(job_id))
                raise
        self.worker.submit(job_id)
        return record

    async def _run_job(self, rec: JobRecord) -> None:
        """Run one queued job and record its outcome (the worker's ``run_job``).

        A failure the client should read raises :class:`~app.jobs.JobFailed` (the worker records it and removes
        the upload); every store write is retried (:func:`~app.jobs.retrying`) and an error that outlasts the
        retries propagates, so that the worker fails the job. A job over ``max_job_items`` (queued before the
        limit was lowered) fails here.
        """
        store = self.job_store()
        rt = self.runtimes.get(rec.task)
        if rt is None:
            raise JobFailed(f"task {rec.task!r} is not served")
        await rt.wait_loaded()
        if not rt.ready:
            raise JobFailed(f"model {rec.task!r} failed to load: {rt.error}")
        await retrying(store.start, rec.id)
        input_dir, out_dir = store.input_dir(rec.id), store.output_dir(rec.id)
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            paths = stored_uploads(input_dir)
            # jobs queued by medinfer 0.1 kept their options as "overrides"
            stored = rec.options.get("task_options") or rec.options.get("overrides") or {}
            task_options = self._options(rt, dict(stored))
            explain = bool(rec.options.get("explain"))
            grouped = self._grouped.pop(rec.id, None)
            items, outcomes = await self._collect(rt, paths, input_dir, explain, task_options, grouped=grouped)
        except ServiceError as exc:
            raise JobFailed(exc.message) from exc
        if len(items) > self.settings.max_job_items:
            raise JobFailed(f"{len(items)} inputs in one job; the limit is {self.settings.max_job_items}")
        for i, item in enumerate(items):
            outcomes.append(await rt.predict_item(item, out_dir, input_dir, wait_for_slot=True))
            await retrying(store.update, rec.id, progress=(i + 1) / len(items))
        report = Report(task=rec.task, checkpoint=rt.version, results=[o.result for o in outcomes], model=rt.model_info)
        await run_in_threadpool(report.write, out_dir)
        results = self._results(outcomes, out_dir, rec.id)
        ok = sum(o.failure is None for o in outcomes)
        result = {"results": results, "model": rt.model_info}
        if ok == 0:
            errors = "; ".join(o.result.error or "" for o in outcomes)
            await retrying(
                store.finish,
                rec.id,
                "failed",
                error=redact_paths(f"every input failed: {errors}"),
                result=result,
                checkpoint_version=rt.version,
            )
        else:
            await retrying(store.finish, rec.id, "succeeded", result=result, checkpoint_version=rt.version)
        remove_tree(input_dir)


def get_service(request: Request) -> Service:
    """Dependency: the app's service."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
