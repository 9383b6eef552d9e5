"""``/api/v1/jobs``: asynchronous jobs for volumes and anything slow, persisted across restarts."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from app.errors import ServiceError
from app.jobs import JobRecord
from app.routes.predict import OptionsField, declared_length, require_multipart, task_options
from app.schemas import Job, JobLinks, JobResult, error_responses
from app.security import require_api_key
from app.service import API_PREFIX, Service, ServiceDep, get_service


class JobIntakeRoute(APIRoute):
    """A jobs route; a submission is refused before its body is read when the queue or the job storage is full.

    FastAPI reads a multipart body before it runs any dependency, so the check sits in front of the handler:
    a client is told 503 at once rather than after sending up to ``max_upload_mb`` (the storage check counts
    the announced ``Content-Length``). The API key is checked first, so an anonymous client learns nothing
    about the queue. ``Service.submit_job`` checks again once the body is in, adding what it stored to the bytes
    counted here (the storage is walked once per submission).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if "POST" not in (self.methods or ()):
            return handler

        async def guarded(request: Request) -> Response:
            require_api_key(request)
            intake = get_service(request).intake
            if intake is not None:
                intake.check_queue()
                request.state.jobs_disk_used = await intake.check_disk(declared_length(request))
            return await handler(request)

        return guarded


router = APIRouter(prefix="/jobs", tags=["jobs"], route_class=JobIntakeRoute)

JOB_FIELDS = frozenset({"task", "files", "explain", "options"})


def job_view(rec: JobRecord, service: Service) -> Job:
    expires = rec.finished_at + service.settings.result_ttl_s if rec.finished_at else None
    return Job(
        id=rec.id,
        task=rec.task,
        state=rec.state,
        progress=max(0.0, min(1.0, rec.progress)),
        error=rec.error,
        attempts=rec.attempts,
        created_at=rec.created_at,
        updated_at=rec.updated_at,
        started_at=rec.started_at,
        finished_at=rec.finished_at,
        expires_at=expires,
        links=JobLinks(self=f"{API_PREFIX}/jobs/{rec.id}", result=f"{API_PREFIX}/jobs/{rec.id}/result"),
    )


def _record(service: Service, job_id: str) -> JobRecord:
    rec = service.job_store().get(job_id) if job_id.isalnum() else None
    if rec is None:
        raise ServiceError(404, f"job {job_id!r} not found")
    return rec


SUBMIT_RESPONSES = error_responses(400, 401, 404, 413, 415, 422, 503)


@router.post("", response_model=Job, status_code=202, summary="Submit a job", responses=SUBMIT_RESPONSES)
async def submit(
    request: Request,
    service: ServiceDep,
    task: Annotated[str, Form(min_length=1, max_length=64, description="Task name.")],
    files: Annotated[
        list[UploadFile], File(min_length=1, description="The task's files (as for predict); zips extracted.")
    ],
    explain: Annotated[bool, Form(description="Also explain.")] = False,
    options: OptionsField = None,
) -> Job:
    """Queue a prediction; poll ``links.self`` and fetch ``links.result`` when it has succeeded.

    Refused with 503 and ``Retry-After`` when ``max_queued_jobs`` jobs are queued or running or the job storage
    would pass ``max_jobs_disk_mb``, and with 413 for more than ``max_job_items`` inputs.
    """
    require_multipart(request)
    request.scope.setdefault("state", {})["task"] = task
    values = await task_options(request, options, JOB_FIELDS)
    used = getattr(request.state, "jobs_disk_used", None)
    rec = await service.submit_job(task, files, values, explain=explain, disk_used=used)
    return job_view(rec, service)


@router.get("/{job_id}", response_model=Job, summary="Job state", responses=error_responses(401, 404))
async def get_job(job_id: str, service: ServiceDep) -> Job:
    """State, progress and error of a job."""
    return job_view(_record(service, job_id), service)


@router.get("/{job_id}/result", response_model=JobResult, summary="Job result", responses=error_responses(401, 404))
async def get_result(job_id: str, service: ServiceDep) -> dict[str, Any]:
    """The report of a finished job (one outcome per input) and links to its files."""
    rec = _record(service, job_id)
    if rec.state == "expired":
        raise ServiceError(404, f"job {job_id!r} has expired; its results were deleted")
    if rec.state not in ("succeeded", "failed") or rec.result is None:
        raise ServiceError(404, f"job {job_id!r} has no result yet (state {rec.state})")
    return {
        "id": rec.id,
        "task": rec.task,
        "state": rec.state,
        "checkpoint_version": rec.checkpoint_version,
        "model": rec.result.get("model"),
        "results": rec.result.get("results", []),
        "files": service.file_links(rec.id),
    }


@router.get(
    "/{job_id}/files/{path:path}",
    summary="A result file",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file."},
        **error_responses(401, 404),
    },
)
async def get_file(job_id: str, path: str, service: ServiceDep) -> FileResponse:
    """A file written by the prediction (a mask in the input's geometry, an explanation, the report)."""
    rec = _record(service, job_id)
    if rec.state == "expired":
        raise ServiceError(404, f"job {job_id!r} has expired; its results were deleted")
    root = service.job_store().output_dir(job_id).resolve()
    target = (root / path).resolve()
    if root in target.parents and not target.exists():  # a deferred picture is drawn on its first fetch
        await run_in_threadpool(service.draw, rec.task, root, target.relative_to(root).as_posix())
    if root not in target.parents or not target.is_file():
        raise ServiceError(404, f"job {job_id!r} has no file {Path(path).name!r}")
    return FileResponse(target, filename=target.name)
