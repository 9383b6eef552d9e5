"""``/api/v1/models/{task}/predict`` and ``/explain``: synchronous, dynamically batched prediction."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, File, Form, Request, UploadFile

from app.errors import ServiceError
from app.schemas import PredictResponse, error_responses
from app.service import ServiceDep

router = APIRouter(prefix="/models", tags=["predict"])

T = TypeVar("T")

FilesField = Annotated[
    list[UploadFile],
    File(
        description="The task's files: a case as a zip or as its separate files, a DICOM series as a zip, "
        "a signal record (e.g. .hea + .dat) or an image. Zips are extracted safely."
    ),
]
RateField = Annotated[
    float | None, Form(gt=0, le=100_000, description="Sampling rate in Hz for signal files that carry none.")
]

RESPONSES = error_responses(400, 401, 404, 413, 415, 422, 503)


def require_multipart(request: Request) -> None:
    """415 for a body that is not ``multipart/form-data``."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ServiceError(415, f"expected a multipart/form-data upload, got {content_type or 'no content type'!r}")


async def until_disconnect(request: Request, work: Awaitable[T], poll_s: float = 0.2) -> T:
    """Await ``work`` but cancel it when the client goes away, so its queue slot is freed.

    Raises:
        ServiceError: 499-style cancellation is reported as 400 (nobody reads it).
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise ServiceError(400, "client disconnected", "client_closed")
    finally:
        if not task.done():
            task.cancel()


def overrides(sampling_rate: float | None) -> dict[str, Any]:
    """Per-request ``PredictOptions`` fields from the form."""
    return {"sampling_rate": sampling_rate} if sampling_rate is not None else {}


@router.post(
    "/{task}/predict",
    response_model=PredictResponse,
    summary="Predict on uploaded files",
    responses=RESPONSES,
)
async def predict(
    task: str,
    request: Request,
    service: ServiceDep,
    files: FilesField,
    sampling_rate: RateField = None,
) -> dict[str, Any]:
    """Predict on one upload; results as the CLI writes them, files (masks) through result links."""
    require_multipart(request)
    return await until_disconnect(request, service.predict(task, files, overrides(sampling_rate), explain=False))


@router.post(
    "/{task}/explain",
    response_model=PredictResponse,
    summary="Predict and explain",
    responses=RESPONSES,
)
async def explain(
    task: str,
    request: Request,
    service: ServiceDep,
    files: FilesField,
    sampling_rate: RateField = None,
) -> dict[str, Any]:
    """Predict with the task's explanation (prototypes, Grad-CAM, probability maps) among the outputs."""
    require_multipart(request)
    return await until_disconnect(request, service.predict(task, files, overrides(sampling_rate), explain=True))
