"""Persistent jobs: a SQLite store under ``MEDINFER_DATA_DIR`` and the worker that runs them.

Every job has a row in ``jobs.sqlite3`` and a folder ``jobs/<id>/`` with ``input/`` (the upload, kept until
the job ends so a restart can run it again) and ``output/`` (``report.json``, ``report.csv`` and the files the
task wrote). Synchronous predictions that wrote files are stored the same way (kind ``predict``) so their
files are served through the same links and expire the same way.

On start, jobs left ``running`` by a crash are queued again until they have been started
``job_max_attempts`` times, then failed with the reason; ``queued`` ones are queued again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.uploads import remove_tree

logger = logging.getLogger(__name__)

STATES = ("queued", "running", "succeeded", "failed", "expired")
FINISHED = ("succeeded", "failed")

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
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

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

    def finish(self, job_id: str, state: str, *, error: str | None = None, result: dict[str, Any] | None = None):
        """Mark a job succeeded or failed."""
        now = time.time()
        self.update(job_id, state=state, error=error, result=result, finished_at=now, progress=1.0)

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

    def recover(self, max_attempts: int, served: set[str]) -> list[str]:
        """After a restart: re-queue or fail unfinished jobs; return the ids to run, oldest first."""
        to_run: list[str] = []
        for rec in self.with_state("queued", "running"):
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

    def expire(self, ttl_s: float) -> int:
        """Delete the artefacts of jobs finished more than ``ttl_s`` ago and mark them ``expired``."""
        cutoff = time.time() - ttl_s
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM jobs WHERE state IN ('succeeded', 'failed') AND finished_at < ?", (cutoff,)
            ).fetchall()
        for (job_id,) in rows:
            remove_tree(self.job_dir(job_id))
            self.update(job_id, state="expired", result=None)
        return len(rows)


JobRunner = Callable[[JobRecord], Any]


class JobWorker:
    """Runs queued jobs with ``workers`` asyncio tasks, and expires old results periodically.

    Args:
        store: the job store.
        run_job: coroutine function that runs one job to completion (and records its outcome).
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
        while True:
            job_id = await self.queue.get()
            rec = self.store.get(job_id)
            if rec is None or rec.state != "queued":
                continue
            try:
                await self.run_job(rec)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a job's failure is recorded, never the worker's end
                logger.error("job %s crashed: %s", job_id, type(exc).__name__, exc_info=exc)
                self.store.finish(job_id, "failed", error=f"internal error ({type(exc).__name__})")

    async def _cleanup(self) -> None:
        while True:
            try:
                n = self.store.expire(self.ttl_s)
                if n:
                    logger.info("expired %d old results", n)
            except (sqlite3.Error, OSError) as exc:
                logger.warning("expiry sweep failed: %s", exc)
            await asyncio.sleep(self.cleanup_interval_s)
