"""Persistent jobs: a SQLite store under ``MEDINFER_DATA_DIR``, the bounds of intake and the worker that runs them.

Every job has a row in ``jobs.sqlite3`` and a folder ``jobs/<id>/`` with ``input/`` (the upload, kept until
the job ends so a restart can run it again) and ``output/`` (``report.json``, ``report.csv`` and the files the
task wrote). Synchronous predictions that wrote files are stored the same way (kind ``predict``) so their
files are served through the same links and expire the same way.

One server owns a data folder: it holds an exclusive lock on ``<data_dir>/.lock`` (:class:`DataDirLock`) from
before it touches a file until it stops, and a second server on the same folder refuses to start.

On start, jobs left ``running`` by a crash are queued again until they have been started
``job_max_attempts`` times, then failed with the reason; ``queued`` ones are queued again. Then
:meth:`JobStore.sweep` removes what no job owns any more (folders of uploads or predictions cut off by a kill,
inputs of finished jobs, expired jobs' folders).

What the store keeps never names a server path: errors are built from path-free messages
(:func:`redact_paths` is the last guard), and an expired job keeps neither its result nor its error.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from starlette.concurrency import run_in_threadpool

from app.errors import ServiceError
from app.uploads import redact_paths, remove_tree

logger = logging.getLogger(__name__)

STATES = ("queued", "running", "succeeded", "failed", "expired")
FINISHED = ("succeeded", "failed")
ACTIVE = ("queued", "running")

STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, OSError)
"""What a full disk, a locked or read-only database or a vanished folder raise; retried, then the job fails."""
RETRY_DELAYS_S: tuple[float, ...] = (0.05, 0.2, 0.5)
"""Pauses between the attempts of a store call that raised one of :data:`STORE_ERRORS` (one more try each)."""

P = ParamSpec("P")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    options TEXT NOT NULL DEFAULT '{}',
    result TEXT,
    checkpoint_version TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""


def storage_reason(exc: BaseException) -> str:
    """A path-free job error for a database or disk failure (``OSError.strerror`` names no file)."""
    if isinstance(exc, sqlite3.Error):
        return f"the server's job database failed ({type(exc).__name__}: {redact_paths(str(exc))})"
    if isinstance(exc, OSError):
        return f"the server's storage failed ({exc.strerror or type(exc).__name__})"
    return f"internal error ({type(exc).__name__})"


async def retrying(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Call a store function, retrying database and disk errors (:data:`STORE_ERRORS`) with growing pauses.

    A locked database or a disk that was full a moment ago often works a little later; an error that
    lasts through :data:`RETRY_DELAYS_S` is raised for the caller to fail the job.

    Raises:
        sqlite3.Error | OSError: the last attempt's error.
    """
    name = getattr(fn, "__name__", "store call")
    for delay in RETRY_DELAYS_S:
        try:
            return fn(*args, **kwargs)
        except STORE_ERRORS as exc:
            logger.warning("%s failed (%s: %s); retrying in %.2f s", name, type(exc).__name__, _brief(exc), delay)
        await asyncio.sleep(delay)
    return fn(*args, **kwargs)


def _brief(exc: BaseException) -> str:
    """An error for the log without file names (``strerror`` for OS errors)."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return redact_paths(str(exc))


class JobFailed(Exception):
    """Raised by a job runner: the job fails with this message (path-free; shown to the client)."""


class DataDirInUse(RuntimeError):
    """Another server holds the data folder's lock."""


class DataDirLock:
    """An exclusive, non-blocking ``flock`` on ``<data_dir>/.lock``: one server per data folder.

    Two servers on one folder would each sweep the other's uploads as orphans and race on the jobs, so the
    second one refuses to start (:class:`DataDirInUse`) before it touches any file. The lock belongs to the
    open file, so the kernel drops it when its process dies however it ends: no stale lock after a kill. The
    file holds the owner's pid, for the message. (``flock`` is not reliable on some network file systems: keep
    the data folder on a local disk.)

    Args:
        data_dir: the service's data folder (created if missing).
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / ".lock"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock.

        Raises:
            DataDirInUse: another server (or another service object of this process) holds it.
        """
        if self._fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirInUse(
                f"the data folder {self.data_dir} is in use by another medinfer server (pid {owner}); stop that "
                "server first, or give this one its own folder with MEDINFER_DATA_DIR"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a server taking it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@dataclass
class JobRecord:
    """One row of the store."""

    id: str
    kind: str
    task: str
    state: str
    progress: float
    error: str | None
    attempts: int
    options: dict[str, Any]
    result: dict[str, Any] | None
    checkpoint_version: str
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRecord:
        data = dict(row)
        data["options"] = json.loads(data["options"] or "{}")
        data["result"] = json.loads(data["result"]) if data["result"] else None
        return cls(**data)


class JobStore:
    """SQLite-backed job table (thread-safe; WAL journal so readers never block the writer).

    Args:
        data_dir: the service's data folder; the database and job folders live under it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.jobs_dir = data_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self.path = data_dir / "jobs.sqlite3"
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # a failed COMMIT (database locked, disk full) leaves the transaction open: end it, so that the
                # next call can begin its own instead of failing forever
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error as exc:
                        logger.warning("rollback failed: %s", exc)
                raise

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def input_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "input"

    def output_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "output"

    def new_id(self) -> str:
        return uuid.uuid4().hex

    def create(
        self,
        job_id: str,
        task: str,
        *,
        kind: str = "job",
        state: str = "queued",
        options: dict[str, Any] | None = None,
        result: dict[str, Any] | None = None,
        checkpoint_version: str = "",
    ) -> JobRecord:
        now = time.time()
        finished = now if state in FINISHED else None
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO jobs (id, kind, task, state, options, result, checkpoint_version, created_at, updated_at,"
                " finished_at, progress) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    kind,
                    task,
                    state,
                    json.dumps(options or {}),
                    json.dumps(result) if result is not None else None,
                    checkpoint_version,
                    now,
                    now,
                    finished,
                    1.0 if finished else 0.0,
                ),
            )
        record = self.get(job_id)
        assert record is not None
        return record

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return JobRecord.from_row(row) if row else None

    def update(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        fields["updated_at"] = time.time()
        for key in ("options", "result"):
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key], default=str)
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as conn:
            conn.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*fields.values(), job_id))

    def start(self, job_id: str) -> None:
        """Mark a job running and count the attempt."""
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?, updated_at = ?,"
                " progress = 0 WHERE id = ?",
                (now, now, job_id),
            )

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        """Mark a job succeeded or failed (with any other ``fields``, in the same write)."""
        now = time.time()
        self.update(job_id, **fields, state=state, error=error, result=result, finished_at=now, progress=1.0)

    def with_state(self, *states: str) -> list[JobRecord]:
        marks = ",".join("?" for _ in states)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY created_at", states
            ).fetchall()
        return [JobRecord.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Jobs (kind ``job``) per state, every state present."""
        with self._lock:
            rows = self._conn.execute("SELECT state, COUNT(*) FROM jobs WHERE kind = 'job' GROUP BY state").fetchall()
        out = dict.fromkeys(STATES, 0)
        out.update({r[0]: int(r[1]) for r in rows})
        return out

    def active_count(self) -> int:
        """Jobs (kind ``job``) queued or running."""
        with self._lock:
            (n,) = self._conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE kind = 'job' AND state IN ('queued', 'running')"
            ).fetchone()
        return int(n)

    def disk_usage(self) -> int:
        """Bytes of the files under ``jobs/`` (uploads kept for jobs, results of jobs and predictions)."""
        total = 0
        for root, _dirs, files in os.walk(self.jobs_dir):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:  # removed while counting (an expiry, a finished job)
                    pass
        return total

    def recover(self, max_attempts: int, served: set[str]) -> list[str]:
        """After a restart: re-queue or fail unfinished jobs; return the ids to run, oldest first."""
        to_run: list[str] = []
        for rec in self.with_state(*ACTIVE):
            if rec.kind != "job":
                self.finish(rec.id, "failed", error="the server restarted before this request finished")
                continue
            reason = None
            if rec.task not in served:
                reason = f"task {rec.task!r} is no longer served"
            elif not self.input_dir(rec.id).is_dir():
                reason = "the job's input files are gone"
            elif rec.state == "running" and rec.attempts >= max_attempts:
                reason = (
                    f"the server stopped while running this job ({rec.attempts} attempt(s)); "
                    "not retried again: the input may be crashing the server"
                )
            if reason:
                logger.warning("job %s failed on recovery: %s", rec.id, reason)
                self.finish(rec.id, "failed", error=reason)
                remove_tree(self.input_dir(rec.id))
                continue
            if rec.state == "running":
                logger.warning("job %s was interrupted by a restart; queued again", rec.id)
                self.update(rec.id, state="queued", progress=0.0)
            to_run.append(rec.id)
        return to_run

    def sweep(self) -> int:
        """After :meth:`recover`, at start (nothing is being written yet): remove what no live job owns.

        Removed: every entry of ``jobs/`` without a row (an upload cut off by a kill before its job was
        recorded, the files of a prediction killed before its record), the folder of an expired job (a
        removal that failed before), and the ``input/`` of a finished job (killed between recording the
        outcome and removing the upload). Expired rows written by an older version lose their result and
        error too.

        Returns:
            The number of folders (or files) removed.
        """
        with self._lock:
            states = {row[0]: row[1] for row in self._conn.execute("SELECT id, state FROM jobs").fetchall()}
        removed = 0
        for entry in sorted(self.jobs_dir.iterdir()):
            state = states.get(entry.name)
            if state is None or state == "expired":
                logger.info("removing %s job folder %s", "an expired" if state else "an orphan", entry.name)
                if entry.is_symlink() or not entry.is_dir():
                    entry.unlink(missing_ok=True)
                else:
                    remove_tree(entry)
                removed += 1
            elif state in FINISHED and self.input_dir(entry.name).exists():
                logger.info("removing the leftover input of finished job %s", entry.name)
                remove_tree(self.input_dir(entry.name))
                removed += 1
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET result = NULL, error = NULL WHERE state = 'expired'"
                " AND (result IS NOT NULL OR error IS NOT NULL)"
            )
        return removed

    def expire(self, ttl_s: float) -> int:
        """Mark jobs finished more than ``ttl_s`` ago ``expired``, dropping result and error, and delete their files.

        The row is written first: a folder whose removal fails is an expired job's, which the next start's
        :meth:`sweep` removes; never a finished job whose files are gone.
        """
        cutoff = time.time() - ttl_s
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed') AND finished_at < ?", (cutoff,)
            ).fetchall()
        for (job_id,) in rows:
            self.update(job_id, state="expired", result=None, error=None)
            remove_tree(self.job_dir(job_id))
        return len(rows)


class JobIntake:
    """The bounds on what the job queue accepts, checked before an upload is stored.

    * queued and running jobs (kind ``job``), plus submissions being stored now, at most ``max_active``:
      beyond, 503 ``overloaded`` with ``Retry-After`` (503 rather than 429: the server is busy for everyone, it
      is not one client sending too fast);
    * bytes under ``jobs/`` (uploads of jobs, results of jobs and predictions), at most ``max_disk_bytes``:
      503 ``overloaded`` with ``Retry-After`` when the stored bytes plus the upload's announced size would
      pass it, and again when the stored upload did (an archive unpacks larger);
    * inputs per job, at most ``max_items``: 413 ``too_large``.

    Args:
        store: the job store.
        max_active: ``max_queued_jobs``.
        max_items: ``max_job_items``.
        max_disk_bytes: ``max_jobs_disk_mb`` in bytes.
        retry_after_s: the ``Retry-After`` of a refusal.
    """

    def __init__(
        self, store: JobStore, *, max_active: int, max_items: int, max_disk_bytes: int, retry_after_s: int
    ) -> None:
        self.store = store
        self.max_active = max_active
        self.max_items = max_items
        self.max_disk_bytes = max_disk_bytes
        self.retry_after_s = retry_after_s
        self._reserved = 0

    def _busy(self, message: str) -> ServiceError:
        return ServiceError(503, message, "overloaded", {"Retry-After": str(self.retry_after_s)})

    def check_queue(self) -> None:
        """Raises: ServiceError: 503 when ``max_active`` jobs are queued, running or being submitted."""
        try:
            active = self.store.active_count()
        except STORE_ERRORS as exc:
            raise self._busy(f"the job database is unavailable ({type(exc).__name__}); retry later") from exc
        if active + self._reserved >= self.max_active:
            raise self._busy(f"the job queue is full ({self.max_active} jobs queued or running); retry later")

    async def check_disk(self, incoming: int = 0, used: int | None = None) -> int:
        """The bytes of the job files (walked when ``used`` is not given), checked with ``incoming`` more.

        A submission walks the storage once (in front of its body) and passes the figure on to its later checks,
        which add what it stored since; other submissions storing at the same time are not seen by those later
        checks (each saw the storage before its body, and the bound is on the order of an upload, not a byte).

        Raises:
            ServiceError: 503 when the job files plus ``incoming`` bytes pass ``max_disk_bytes``.
        """
        if used is None:
            used = await run_in_threadpool(self.store.disk_usage)
        if used + max(0, incoming) > self.max_disk_bytes:
            limit_mb = self.max_disk_bytes / (1024 * 1024)
            raise self._busy(f"the server's job storage is full (limit {limit_mb:g} MB); retry later")
        return used

    def check_items(self, count: int) -> None:
        """Raises: ServiceError: 413 for more than ``max_items`` inputs."""
        if count > self.max_items:
            raise ServiceError(413, f"{count} inputs in one job; the limit is {self.max_items} (split the upload)")

    @contextmanager
    def reserve(self) -> Iterator[None]:
        """Hold a place in the queue while an upload is stored (checked and taken at once, with no await between).

        Raises:
            ServiceError: 503 when the queue is full.
        """
        self.check_queue()
        self._reserved += 1
        try:
            yield
        finally:
            self._reserved -= 1


JobRunner = Callable[[JobRecord], Awaitable[Any]]


class JobWorker:
    """Runs queued jobs with ``workers`` asyncio tasks, and expires old results periodically.

    Nothing but cancellation ends a worker task: a job's failure (:class:`JobFailed`, a crash, a database or
    disk error that outlasted :func:`retrying`) is recorded as the job's, and when even that record cannot be
    written the job is left for the next start's recovery and the worker takes the next job.
    :attr:`running` tells whether every task is still alive (``/readyz`` is 503 when not).

    Args:
        store: the job store.
        run_job: coroutine function that runs one job to completion (and records its success).
        workers: jobs run at once.
        ttl_s: how long finished results are kept.
        cleanup_interval_s: seconds between expiry sweeps.
    """

    def __init__(
        self, store: JobStore, run_job: JobRunner, *, workers: int, ttl_s: float, cleanup_interval_s: float
    ) -> None:
        self.store = store
        self.run_job = run_job
        self.workers = workers
        self.ttl_s = ttl_s
        self.cleanup_interval_s = cleanup_interval_s
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def running(self) -> bool:
        """Started, and none of its tasks (job workers, expiry) has ended."""
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    def start(self, pending: list[str]) -> None:
        for job_id in pending:
            self.queue.put_nowait(job_id)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work(), name=f"job-worker-{i}") for i in range(self.workers)]
        self._tasks.append(loop.create_task(self._cleanup(), name="job-cleanup"))

    def submit(self, job_id: str) -> None:
        self.queue.put_nowait(job_id)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _work(self) -> None:
        task = asyncio.current_task()
        while True:
            if task is not None and task.cancelling():
                # a cancellation swallowed by a library on the way (Python 3.11's wait_for can) still ends the worker
                raise asyncio.CancelledError
            job_id = await self.queue.get()
            try:
                await self._run_one(job_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the last guard: a bug here must not end the worker either
                logger.error("job worker: %s on job %s", type(exc).__name__, job_id, exc_info=exc)

    async def _run_one(self, job_id: str) -> None:
        try:
            rec = await retrying(self.store.get, job_id)
        except STORE_ERRORS as exc:
            # only queued jobs enter the queue, each once: failing it is right if the database lets us
            logger.error("job %s cannot be read: %s: %s", job_id, type(exc).__name__, _brief(exc))
            await self._record_failure(job_id, storage_reason(exc))
            return
        if rec is None or rec.state != "queued":
            return
        try:
            await self.run_job(rec)
            return
        except asyncio.CancelledError:
            raise
        except JobFailed as exc:
            error = str(exc)
        except STORE_ERRORS as exc:
            logger.error("job %s: %s: %s", job_id, type(exc).__name__, _brief(exc))
            error = storage_reason(exc)
        except Exception as exc:  # a job's failure is recorded, never the worker's end
            logger.error("job %s crashed: %s", job_id, type(exc).__name__, exc_info=exc)
            error = f"internal error ({type(exc).__name__})"
        await self._record_failure(job_id, error)

    async def _record_failure(self, job_id: str, error: str) -> None:
        """Fail a job and remove its upload; when the database refuses even that, leave it to the next start."""
        try:
            await retrying(self.store.finish, job_id, "failed", error=redact_paths(error))
        except STORE_ERRORS as exc:
            logger.error(
                "job %s: its failure could not be recorded (%s: %s); the next start recovers it",
                job_id,
                type(exc).__name__,
                _brief(exc),
            )
            return
        remove_tree(self.store.input_dir(job_id))

    async def _cleanup(self) -> None:
        while True:
            try:
                n = self.store.expire(self.ttl_s)
                if n:
                    logger.info("expired %d old results", n)
            except STORE_ERRORS as exc:
                logger.warning("expiry sweep failed: %s: %s", type(exc).__name__, _brief(exc))
            except Exception as exc:  # the sweep runs again next time; it never ends the worker
                logger.error("expiry sweep crashed: %s", type(exc).__name__, exc_info=exc)
            await asyncio.sleep(self.cleanup_interval_s)
